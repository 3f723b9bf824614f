"""End-to-end fixtures: one real Label Studio 1.23.2 server per test session."""

from __future__ import annotations

from typing import Any, Iterator

import pytest

from ml_backend.ls_server import LabelStudioServer, default_venv, ensure_label_studio


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabelStudioServer]:
    """A running Label Studio server (installed into the LS venv first if missing)."""
    venv = default_venv()
    ensure_label_studio(venv)
    root = tmp_path_factory.mktemp("label_studio")
    server = LabelStudioServer(root / "data", venv=venv, log_path=root / "label-studio.log")
    with server:
        yield server


@pytest.fixture(scope="session")
def ls_client(label_studio: LabelStudioServer) -> Any:
    """``label_studio_sdk.LabelStudio`` client for the session server."""
    return label_studio.client()
