"""The Label Studio client the worker and the CLI use: connect, read a project, export its tasks."""

from __future__ import annotations

import json
from typing import Any


class LabelStudioUnavailable(RuntimeError):
    """Label Studio could not be reached or refused the request; the message says which call."""


def make_client(url: str | None, api_key: str | None, timeout: float = 120.0):
    """A label-studio-sdk client; raises a clear error when the URL or key is not configured."""
    missing = [name for name, v in (("LABEL_STUDIO_URL", url), ("LABEL_STUDIO_API_KEY", api_key)) if not v]
    if missing:
        raise RuntimeError(
            f"training needs Label Studio access: set {' and '.join(missing)} in the worker's environment "
            "(the URL Label Studio is reachable at, and an API key with access to the project)"
        )
    from label_studio_sdk import LabelStudio

    return LabelStudio(base_url=url.rstrip("/"), api_key=api_key, timeout=timeout)


def fetch_project(client, project_id: int) -> Any:
    """The project object (label_config, model_version, ...)."""
    try:
        return client.projects.get(id=project_id)
    except Exception as e:
        raise LabelStudioUnavailable(f"cannot read project {project_id} from Label Studio: {e}") from e


def fetch_export(client, project_id: int) -> list[dict]:
    """All tasks of a project with their annotations (JSON export, ``download_all_tasks=true``)."""
    try:
        chunks = client.projects.exports.download_sync(project_id, export_type="JSON", download_all_tasks=True)
        raw = b"".join(chunks)
    except Exception as e:
        raise LabelStudioUnavailable(f"cannot export project {project_id} from Label Studio: {e}") from e
    try:
        tasks = json.loads(raw)
    except ValueError as e:
        raise LabelStudioUnavailable(f"project {project_id} export is not JSON ({len(raw)} bytes): {e}") from e
    if not isinstance(tasks, list):
        raise LabelStudioUnavailable(f"project {project_id} export is a {type(tasks).__name__}, expected a list of tasks")
    return tasks


def label_studio_origin(settings, hostname: str | None, access_token: str | None) -> tuple[str | None, str | None]:
    """Where the backend reaches Label Studio and which credential goes there (the one place that decides).

    - ``LABEL_STUDIO_URL`` set: that origin, with ``LABEL_STUDIO_API_KEY`` (else the /setup token); a
      /setup ``hostname`` is ignored, so no caller can point the key elsewhere.
    - ``LABEL_STUDIO_URL`` unset: the /setup ``hostname`` with the ``access_token`` that came with it,
      never the configured key (a caller names that host; the key is only for the configured origin).
    """
    if settings.label_studio_url:
        return settings.label_studio_url, settings.label_studio_api_key or access_token
    return hostname, access_token


def client_for(settings, hostname: str | None = None, token: str | None = None, timeout: float = 5.0):
    """A client for the backend's own calls to Label Studio (``label_studio_origin``); None when no
    origin and credential are known."""
    url, key = label_studio_origin(settings, hostname, token)
    return make_client(url, key, timeout=timeout) if url and key else None
