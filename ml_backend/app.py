"""The HTTP layer Label Studio talks to: /health, /setup, /predict, /webhook, /metrics.

A thin FastAPI app around ``RobustarModel`` (label-studio-ml's model interface); request and
response shapes follow Label Studio 1.23 as recorded in shared/ls-protocol.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from redis import Redis
from redis.exceptions import RedisError

from label_config.render import LabelConfigError
from ml_backend.config import Settings
from ml_backend.jobs import TrainingPolicy, TrainingQueue
from ml_backend.metrics import Metrics
from ml_backend.model import RobustarModel
from ml_backend.parts import PredictionPart
from ml_backend.serving import ClassMismatchError, ModelRegistry

log = logging.getLogger(__name__)


def parse_project_id(value: Any) -> int:
    """Label Studio sends the project as ``"<id>.<created_ts>"`` in /setup and /predict, a dict in webhooks."""
    if isinstance(value, dict):
        value = value.get("id")
    try:
        return int(str(value).split(".", 1)[0])
    except (TypeError, ValueError):
        raise ValueError(f"'project' must be '<id>.<timestamp>' or an object with an id, got {value!r}") from None


def bad_request(message: str, status: int = 400) -> JSONResponse:
    return JSONResponse({"status": "error", "message": message}, status_code=status)


def create_app(settings: Settings | None = None, parts: list[PredictionPart] | None = None) -> FastAPI:
    """Build the backend app; ``parts`` are the prediction parts beyond the classifier."""
    settings = settings or Settings.from_env()
    registry = ModelRegistry(settings)
    metrics = Metrics()
    redis = Redis.from_url(settings.redis_url, socket_timeout=0.5, socket_connect_timeout=0.5)
    queue = TrainingQueue(redis, settings.queue_name, TrainingPolicy.from_env())
    models: dict[int, RobustarModel] = {}
    creds: dict[int, tuple[str | None, str | None]] = {}
    lock = threading.Lock()
    app = FastAPI(title="Robustar ML backend for Label Studio")
    app.state.settings, app.state.registry, app.state.queue, app.state.metrics = settings, registry, queue, metrics

    def model_for(project_id: int, label_config: str | None) -> RobustarModel:
        with lock:
            model = models.get(project_id)
            if model is None or (label_config and label_config != model.label_config):
                if not label_config:
                    raise LabelConfigError(f"project {project_id}: no label config received yet (call /setup first)")
                hostname, token = creds.get(project_id, (None, None))
                model = RobustarModel(
                    project_id, label_config, settings, registry, parts,
                    hostname=hostname, access_token=token,
                    enqueue_training=lambda pid, event, data: queue.handle_event(pid, event),
                )
                models[project_id] = model
            return model

    @app.middleware("http")
    async def count_requests(request: Request, call_next):
        start = time.perf_counter()
        response = await call_next(request)
        metrics.observe(request.url.path, response.status_code, time.perf_counter() - start)
        return response

    @app.get("/health")
    @app.get("/")
    def health() -> dict:
        return {"status": "UP", "model_class": "RobustarModel", "parts": [p.name for p in parts or []],
                "disabled_parts": dict(settings.extra.get("disabled_parts") or {})}

    @app.post("/setup")
    async def setup(request: Request):
        body = await _json_body(request)
        if isinstance(body, JSONResponse):
            return body
        try:
            project_id = parse_project_id(body.get("project"))
            creds[project_id] = (body.get("hostname"), body.get("access_token"))
            model = model_for(project_id, body.get("schema"))
            return {"model_version": model.model_version}
        except (ValueError, FileNotFoundError) as e:
            return bad_request(str(e))

    @app.post("/predict")
    async def predict(request: Request):
        body = await _json_body(request)
        if isinstance(body, JSONResponse):
            return body
        tasks = body.get("tasks")
        if not isinstance(tasks, list) or not all(isinstance(t, dict) for t in tasks):
            return bad_request("'tasks' must be a list of task objects")
        try:
            project_id = parse_project_id(body.get("project"))
            model = model_for(project_id, body.get("label_config"))
        except ValueError as e:
            return bad_request(str(e))
        params = body.get("params") or {}
        start = time.perf_counter()
        try:
            results = await _run_sync(model.predict, tasks, params.get("context") if isinstance(params, dict) else None)
        except ClassMismatchError as e:
            return bad_request(str(e), 409)
        metrics.observe_predict(len(tasks), time.perf_counter() - start)
        return {"results": results, "model_version": results[0]["model_version"] if results else model.model_version}

    @app.post("/webhook")
    async def webhook(request: Request):
        body = await _json_body(request)
        if isinstance(body, JSONResponse):
            return body
        action = body.get("action")
        if not isinstance(action, str):
            return bad_request("webhook body has no 'action'")
        try:
            project_id = parse_project_id(body.get("project"))
        except ValueError as e:
            return bad_request(str(e))
        try:
            answer = await _run_sync(queue.handle_event, project_id, action)
        except RedisError as e:
            log.error("webhook %s for project %s: Redis unavailable: %s", action, project_id, e)
            return bad_request(f"training queue unavailable (Redis at {settings.redis_url}): {e}", 503)
        metrics.count_event(action, answer.get("status", ""))
        return answer

    @app.get("/metrics")
    def prometheus() -> PlainTextResponse:
        versions = {}
        for pid in list(models):
            try:
                versions[pid] = registry.current_version(pid)
            except FileNotFoundError:
                pass
        return PlainTextResponse(metrics.render(versions), media_type="text/plain; version=0.0.4")

    return app


async def _json_body(request: Request) -> dict | JSONResponse:
    try:
        body = await request.json()
    except Exception:
        return bad_request("request body is not valid JSON")
    if not isinstance(body, dict):
        return bad_request("request body must be a JSON object")
    return body


async def _run_sync(fn, *args):
    from starlette.concurrency import run_in_threadpool

    return await run_in_threadpool(fn, *args)
