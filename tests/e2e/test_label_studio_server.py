"""The Label Studio fixture: server up, token works, SDK can create a project, stop() cleans up."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import pytest
import requests

from ml_backend.local.label_studio_server import (
    LabelStudioError,
    LabelStudioServer,
    default_venv,
    process_group_alive,
)

pytestmark = pytest.mark.slow

CONFIG = (
    '<View><Image name="image" value="$image"/>'
    '<Choices name="c" toName="image"><Choice value="a"/></Choices></View>'
)


def test_server_up_and_token_authenticates(label_studio: LabelStudioServer) -> None:
    assert requests.get(f"{label_studio.url}/health", timeout=10).json()["status"] == "UP"
    r = requests.get(f"{label_studio.url}/api/current-user/whoami", headers=label_studio.headers, timeout=30)
    assert r.status_code == 200 and r.json()["email"] == label_studio.username
    bad = requests.get(f"{label_studio.url}/api/projects", headers={"Authorization": "Token nope"}, timeout=30)
    assert bad.status_code == 401


def test_sdk_creates_project(ls_client: Any) -> None:
    project = ls_client.projects.create(title="e2e fixture check", label_config=CONFIG)
    assert project.id
    fetched = ls_client.projects.get(id=project.id)
    assert fetched.title == "e2e fixture check" and 'name="c"' in fetched.label_config


def test_stop_leaves_no_process(tmp_path: Path) -> None:
    server = LabelStudioServer(tmp_path / "data", venv=default_venv(), log_path=tmp_path / "ls.log")
    with server:
        pgid = server.pid
        assert pgid is not None and os.getpgid(pgid) == pgid
        assert requests.get(f"{server.url}/health", timeout=10).ok
    assert not server.running()
    assert not process_group_alive(pgid)
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", server.port)) != 0


def test_busy_port_fails_clearly(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        server = LabelStudioServer(tmp_path / "data", port=busy.getsockname()[1], venv=default_venv())
        with pytest.raises(LabelStudioError, match="already in use"):
            server.start()
