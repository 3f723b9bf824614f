"""What the browser loads from the backend, always for the served version: a task's saliency heatmap
(``GET /saliency/{project}/{key}``), its influence or suspicion page (``GET /influence/{project}/{key}``)
and a version's training report (``GET /report/{project}/{version}`` and its ``curves.png``).

Project ids outside the range ``/setup`` accepts are 404 (never a file name from an arbitrary string);
task keys are hashed into file names (``ml_backend.task_files``); versions must be ``v<N>``. A heatmap
of an older version is served (named in ``X-Robustar-Model-Version``) until the served one computed
its own; a page not computed yet is a short note, not an error, so Label Studio shows no error box.
"""

from __future__ import annotations

import json
from pathlib import Path

from fastapi import Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse

from ml_backend.heatmaps import HeatmapCache
from ml_backend.pages import pending_page, report_page
from ml_backend.task_files import InfluencePages
from ml_backend.validation import MAX_PROJECT_ID
from training.checkpoints import CheckpointStore, version_number

VERSION_HEADER = "X-Robustar-Model-Version"


def parse_project_path(text: str) -> int | None:
    """A project id from a URL path segment, in the range /setup accepts; None otherwise."""
    if not (text.isascii() and text.isdigit()) or len(text) > len(str(MAX_PROJECT_ID)):
        return None
    pid = int(text)
    return pid if 1 <= pid < MAX_PROJECT_ID else None


def _no_project(project_id: str) -> JSONResponse:
    return JSONResponse({"status": "error", "message": f"no project {project_id[:40]!r}: project ids are "
                         f"1..{MAX_PROJECT_ID - 1}"}, status_code=404)


def _served_version(request: Request, project_id: int) -> str | None:
    try:
        return request.app.state.backend.registry.current_version(project_id)
    except (FileNotFoundError, ValueError):
        return None


def saliency_png(request: Request, project_id: str, key: str):
    pid = parse_project_path(project_id)
    if pid is None:
        return _no_project(project_id)
    version = _served_version(request, pid)
    found = HeatmapCache(request.app.state.settings.model_dir, pid).find(key, version)
    if found is None:
        return JSONResponse(
            {"status": "error", "message": f"no saliency heatmap for {key!r} in project {pid} yet "
             f"(it is computed when the task is predicted{f' by {version}' if version else ''})"},
            status_code=404,
        )
    path, v = found
    return FileResponse(path, media_type="image/png", headers={"Cache-Control": "no-cache", VERSION_HEADER: v})


def influence_html(request: Request, project_id: str, key: str):
    pid = parse_project_path(project_id)
    if pid is None:
        return _no_project(project_id)
    version = _served_version(request, pid)
    found = InfluencePages(request.app.state.settings.model_dir, pid).find(key, version)
    if found is None or found[1] != version:
        return HTMLResponse(pending_page(f"{version or 'The model'} has not predicted this task yet: its influence "
                                         "or suspicion appears once it has (open the task again, or retrieve "
                                         "predictions in the Data Manager)."),
                            headers={"Cache-Control": "no-cache"})
    path, v = found
    return FileResponse(path, media_type="text/html; charset=utf-8",
                        headers={"Cache-Control": "no-cache", VERSION_HEADER: v})


def _run_dir(request: Request, pid: int, version: str) -> Path | None:
    try:
        version_number(version)
    except ValueError:
        return None
    return CheckpointStore(request.app.state.settings.model_dir, pid).root / "runs" / version


def report_html(request: Request, project_id: str, version: str):
    pid = parse_project_path(project_id)
    if pid is None:
        return _no_project(project_id)
    run = _run_dir(request, pid, version)
    if run is None or not (run / "summary.json").is_file():
        return JSONResponse({"status": "error", "message": f"no report of {version[:20]!r} in project {pid}"},
                            status_code=404)
    summary = json.loads((run / "summary.json").read_text())
    versions = CheckpointStore(request.app.state.settings.model_dir, pid).versions()
    return HTMLResponse(report_page(summary, versions, (run / "curves.png").is_file()))


def report_curves(request: Request, project_id: str, version: str):
    pid = parse_project_path(project_id)
    if pid is None:
        return _no_project(project_id)
    run = _run_dir(request, pid, version)
    if run is None or not (run / "curves.png").is_file():
        return JSONResponse({"status": "error", "message": f"no curves of {version[:20]!r} in project {pid}"},
                            status_code=404)
    return FileResponse(run / "curves.png", media_type="image/png")
