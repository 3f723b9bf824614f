"""What the browser loads from the backend, always for the served version: a task's saliency heatmap
(``GET /saliency/{project}/{key}``), its influence or suspicion page (``GET /influence/{project}/{key}``)
and a version's training report (``GET /report/{project}/{version}``, its ``curves.png`` and its fixed/broken
pictures ``changes/<name>``).

Project ids outside the range ``/setup`` accepts are 404 (never a file name from an arbitrary string);
task keys are hashed into file names (``ml_backend.predict.task_files``); versions must be ``v<N>``. A heatmap
of an older version is served (named in ``X-Robustar-Model-Version``) until the served one computed
its own; a page not computed yet is a short note, not an error, so Label Studio shows no error box.
A heatmap or page the served version has not made yet is made on this GET when the worker recorded the
task while pushing vN's predictions (``ml_backend.predict.lazy_views``), then cached. These routes are
async: a GET waits for its view on the event loop (at most ``VIEW_WAIT_S``), never on a request thread,
so any number of them cannot take the threads ``/predict`` runs on.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response

from ml_backend.predict.heatmaps import HeatmapCache
from ml_backend.predict.lazy_views import make_views
from ml_backend.predict.pages import pending_page
from ml_backend.predict.report_page import report_page
from ml_backend.predict.task_files import InfluencePages
from ml_backend.api.openapi import route_responses
from ml_backend.api.validation import MAX_PROJECT_ID
from training.changes import CHANGES_DIR, FILE_NAME
from training.checkpoints import CheckpointStore, version_number

VERSION_HEADER = "X-Robustar-Model-Version"
VIEW_WAIT_S = 45.0  # how long a GET waits for its view to be made (then: not made yet)


def parse_project_path(text: str) -> int | None:
    """A project id from a URL path segment, in the range /setup accepts; None otherwise."""
    if not (text.isascii() and text.isdigit()) or len(text) > len(str(MAX_PROJECT_ID)):
        return None
    pid = int(text)
    return pid if 1 <= pid < MAX_PROJECT_ID else None


def _no_project(project_id: str) -> JSONResponse:
    return JSONResponse({"status": "error", "message": f"no project {project_id[:40]!r}: project ids are "
                         f"1..{MAX_PROJECT_ID - 1}"}, status_code=404)


async def _task_file(request: Request, project_id: str, key: str, cache_class) -> tuple[int, str | None, tuple | None] | JSONResponse:
    """(project id, served version, (path, version) of the task's cached file or None), or the 404 of a
    project id /setup would refuse."""
    pid = parse_project_path(project_id)
    if pid is None:
        return _no_project(project_id)
    try:
        version = request.app.state.backend.registry.current_version(pid)
    except (FileNotFoundError, ValueError):
        version = None
    cache = cache_class(request.app.state.settings.model_dir, pid)
    found = cache.find(key, version)
    if version is not None and (found is None or found[1] != version):  # not made by the served version yet
        def made() -> bool:
            again = cache.find(key, version)
            return again is not None and again[1] == version

        backend = request.app.state.backend
        future = backend.view_maker.submit((pid, key), lambda: make_views(backend, pid, key, made))
        if future is not None:
            try:
                await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(future)), VIEW_WAIT_S)
            except TimeoutError:
                pass
            found = cache.find(key, version)
    return pid, version, found


async def saliency_png(request: Request, project_id: str, key: str):
    looked = await _task_file(request, project_id, key, HeatmapCache)
    if isinstance(looked, JSONResponse):
        return looked
    pid, version, found = looked
    if found is None:
        return JSONResponse(
            {"status": "error", "message": f"no saliency heatmap for {key!r} in project {pid} yet "
             f"(it is computed when the task is predicted{f' by {version}' if version else ''})"},
            status_code=404,
        )
    path, v = found
    return FileResponse(path, media_type="image/png", headers={"Cache-Control": "no-cache", VERSION_HEADER: v})


async def influence_html(request: Request, project_id: str, key: str):
    looked = await _task_file(request, project_id, key, InfluencePages)
    if isinstance(looked, JSONResponse):
        return looked
    _, version, found = looked
    if found is None or found[1] != version:
        return HTMLResponse(pending_page(f"{version or 'The model'} has not predicted this task yet: its influence "
                                         "or suspicion appears once it has (open the task again, or retrieve "
                                         "predictions in the Data Manager)."),
                            headers={"Cache-Control": "no-cache"})
    path, v = found
    return FileResponse(path, media_type="text/html; charset=utf-8",
                        headers={"Cache-Control": "no-cache", VERSION_HEADER: v})


def _run_file(request: Request, project_id: str, version: str, name: str) -> Path | JSONResponse:
    """A file of a version's run folder (``runs/vN/<name>``), or the 404 that says what is missing."""
    pid = parse_project_path(project_id)
    if pid is None:
        return _no_project(project_id)
    try:
        version_number(version)
    except ValueError:
        version = version[:20]
    else:
        path = CheckpointStore(request.app.state.settings.model_dir, pid).root / "runs" / version / name
        if path.is_file():
            return path
    return JSONResponse({"status": "error", "message": f"no {name} of {version!r} in project {pid}"}, status_code=404)


def report_html(request: Request, project_id: str, version: str):
    found = _run_file(request, project_id, version, "summary.json")
    if isinstance(found, JSONResponse):
        return found
    versions = CheckpointStore(request.app.state.settings.model_dir, int(project_id)).versions()
    summary = json.loads(found.read_text())
    return HTMLResponse(report_page(summary, versions, (found.parent / "curves.png").is_file()))


def report_curves(request: Request, project_id: str, version: str):
    found = _run_file(request, project_id, version, "curves.png")
    return found if isinstance(found, JSONResponse) else FileResponse(found, media_type="image/png")


def report_change(request: Request, project_id: str, version: str, name: str):
    """A fixed or broken test image's side-by-side picture (``runs/vN/changes/<name>``; ``name`` must be one
    ``training.changes`` writes: ``fixed-NN.png`` or ``broken-NN.png``, never a path)."""
    if not FILE_NAME.fullmatch(name):
        return JSONResponse({"status": "error", "message": f"no picture {name[:40]!r}: names are fixed-NN.png or "
                             "broken-NN.png"}, status_code=404)
    found = _run_file(request, project_id, version, f"{CHANGES_DIR}/{name}")
    return found if isinstance(found, JSONResponse) else FileResponse(found, media_type="image/png")


PNG = {"image/png": {"schema": {"type": "string", "format": "binary"}}}
HTML = {"text/html": {"schema": {"type": "string"}}}


def add_routes(app: FastAPI) -> None:
    """The browser's routes: heatmaps, influence pages, a version's report and its pictures."""
    for path, view, media in (
        ("/saliency/{project_id}/{key:path}", saliency_png, PNG),
        ("/influence/{project_id}/{key:path}", influence_html, HTML),
        ("/report/{project_id}/{version}", report_html, HTML),
        ("/report/{project_id}/{version}/curves.png", report_curves, PNG),
        ("/report/{project_id}/{version}/changes/{name}", report_change, PNG),
    ):
        app.add_api_route(path, view, methods=["GET", "HEAD"], response_class=Response,
                          responses=route_responses(media, 404, 422))
