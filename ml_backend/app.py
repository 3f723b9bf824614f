"""The HTTP layer Label Studio talks to: /health, /setup, /predict, /webhook, /metrics.

A thin FastAPI app around ``RobustarModel`` (label-studio-ml's model interface); request and
response shapes follow Label Studio 1.23 as recorded in shared/ls-protocol.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import threading
import time
import weakref
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from redis import Redis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from label_config.render import LabelConfigError
from ml_backend.config import Settings
from ml_backend.jobs import ANNOTATION_EVENTS, START_TRAINING, TrainingPolicy, TrainingQueue
from ml_backend.metrics import Metrics
from ml_backend.model import RobustarModel
from ml_backend.parts import PredictionPart
from ml_backend.security import AccessMiddleware, install_log_redaction, register_secret
from ml_backend.serving import ClassMismatchError, ModelRegistry
from ml_backend.validation import (
    PayloadError, task_label, validate_predict, validate_setup, validate_task_images, validate_webhook,
)

log = logging.getLogger(__name__)


def parse_project_id(value: Any) -> int:
    """Label Studio sends the project as ``"<id>.<created_ts>"`` in /setup and /predict, a dict in webhooks."""
    from ml_backend.validation import parse_project_id as parse

    return parse(value)


def bad_request(message: str, status: int = 400) -> JSONResponse:
    return JSONResponse({"status": "error", "message": message}, status_code=status)


def create_app(settings: Settings | None = None, parts: list[PredictionPart] | None = None) -> FastAPI:
    """Build the backend app; ``parts`` are the prediction parts beyond the classifier."""
    settings = settings or Settings.from_env()
    registry = ModelRegistry(settings)
    metrics = Metrics()
    install_log_redaction(settings.label_studio_api_key, settings.basic_auth_pass, settings.webhook_secret)
    # fail fast when Redis is down (Label Studio gives event webhooks 1 s): one try, 0.5 s timeouts
    redis = Redis.from_url(settings.redis_url, socket_timeout=0.5, socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0))
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

    slots_by_loop: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def predict_slots() -> asyncio.Semaphore:
        """At most ``PREDICT_CONCURRENCY`` predictions at once (one semaphore per event loop)."""
        loop = asyncio.get_running_loop()
        sem = slots_by_loop.get(loop)
        if sem is None:
            sem = slots_by_loop[loop] = asyncio.Semaphore(max(1, settings.predict_concurrency))
        return sem

    app.add_middleware(
        AccessMiddleware, basic_user=settings.basic_auth_user, basic_pass=settings.basic_auth_pass,
        webhook_secret=settings.webhook_secret, max_request_bytes=settings.max_request_bytes,
    )

    @app.middleware("http")  # added after AccessMiddleware, so it wraps it: refused requests are counted too
    async def count_requests(request: Request, call_next):
        start = time.perf_counter()
        response = await call_next(request)
        metrics.observe(request.url.path, response.status_code, time.perf_counter() - start)
        return response

    @app.get("/health")
    @app.get("/")
    async def health() -> dict:  # async: answers from the event loop even when every worker thread is busy
        return {"status": "UP", "model_class": "RobustarModel", "parts": [p.name for p in parts or []],
                "disabled_parts": dict(settings.extra.get("disabled_parts") or {})}

    @app.post("/setup")
    async def setup(request: Request):
        body = await _json_body(request, settings.max_request_bytes)
        if isinstance(body, JSONResponse):
            return body
        try:
            req = validate_setup(body)
        except PayloadError as e:
            return bad_request(str(e), e.status)
        register_secret(req.access_token)
        try:
            creds[req.project_id] = (req.hostname, req.access_token)
            model = model_for(req.project_id, req.schema)
            return {"model_version": model.model_version}
        except LabelConfigError as e:
            return bad_request(f"'schema' (project {req.project_id}): {e}")
        except (ValueError, FileNotFoundError) as e:
            return bad_request(str(e))

    @app.post("/predict")
    async def predict(request: Request):
        body = await _json_body(request, settings.max_request_bytes)
        if isinstance(body, JSONResponse):
            return body
        try:
            req = validate_predict(body, settings.max_predict_tasks)
        except PayloadError as e:
            return bad_request(str(e), e.status)
        tasks = req.tasks
        try:
            model = model_for(req.project_id, req.label_config)
        except LabelConfigError as e:
            return bad_request(f"'label_config' (project {req.project_id}): {e}")
        except (ValueError, FileNotFoundError) as e:
            return bad_request(str(e))
        try:
            validate_task_images(tasks, model.config.image_value)
        except PayloadError as e:
            return bad_request(str(e), e.status)
        start = time.perf_counter()
        errors: list[tuple[int, str]] = []
        try:
            async with predict_slots():  # waiting requests hold no thread and no images
                results = await _run_sync(model.predict, tasks, req.context, errors)
        except ClassMismatchError as e:
            return bad_request(str(e), 409)
        metrics.observe_predict(len(tasks), time.perf_counter() - start)
        field = f"data.{model.config.image_value}"
        described = [
            {"index": i, "task": tasks[i].get("id"), "field": field, "message": f"{task_label(i, tasks[i])}: {field}: {msg}"}
            for i, msg in sorted(errors)
        ]
        if tasks and len(described) == len(tasks):
            # nothing could be predicted: say why (a batch with some good tasks still gets its predictions)
            more = f" (and {len(described) - 3} more)" if len(described) > 3 else ""
            return JSONResponse(
                {"status": "error", "message": "; ".join(d["message"] for d in described[:3]) + more, "errors": described},
                status_code=422,
            )
        answer = {"results": results, "model_version": results[0]["model_version"] if results else model.model_version}
        if described:
            answer["errors"] = described
        return answer

    handled_actions = frozenset({START_TRAINING, *ANNOTATION_EVENTS})

    @app.post("/webhook")
    async def webhook(request: Request):
        body = await _json_body(request, settings.max_request_bytes)
        if isinstance(body, JSONResponse):
            return body
        try:
            req = validate_webhook(body, handled_actions)
        except PayloadError as e:
            return bad_request(str(e), e.status)
        action, project_id = req.action, req.project_id
        if project_id is None:  # Label Studio sends every event type to the auto-created webhook
            metrics.count_event(action if _EVENT_NAME.match(action) else "other", "ignored")
            return {"status": "ignored", "action": action}
        try:
            answer = await _run_sync(queue.handle_event, project_id, action)
        except RedisError as e:
            log.error("webhook %s for project %s: Redis unavailable: %s", action, project_id, e)
            return bad_request(f"training queue unavailable (Redis at {_without_userinfo(settings.redis_url)}): "
                               f"{type(e).__name__}: {e}; the event was not queued, retry when Redis is back", 503)
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


_EVENT_NAME = re.compile(r"^[A-Z][A-Z_]{0,63}$")  # Label Studio's action names; anything else counts as "other"


def _without_userinfo(url: str) -> str:
    """``redis://:secret@host:6379/0`` -> ``redis://host:6379/0`` (for messages)."""
    return re.sub(r"//[^/@]*@", "//", url)


async def _json_body(request: Request, max_bytes: int | None = None) -> dict | JSONResponse:
    """The request's JSON object, or a 4xx answer: 413 past ``max_bytes`` (counted while reading, so a
    body without Content-Length is cut off too), 400 for bodies that are not a JSON object."""
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if max_bytes and size > max_bytes:
                return bad_request(f"{request.url.path}: request body is larger than {max_bytes} bytes (MAX_REQUEST_BYTES)", 413)
            chunks.append(chunk)
    except Exception as e:  # client went away mid-body
        return bad_request(f"{request.url.path}: could not read the request body ({type(e).__name__})")
    raw = b"".join(chunks)
    if not raw.strip():
        return bad_request(f"{request.url.path}: request body is empty (expected a JSON object)")
    try:
        body = json.loads(raw)
    except RecursionError:
        return bad_request(f"{request.url.path}: request body is nested too deeply")
    except (ValueError, UnicodeDecodeError) as e:
        return bad_request(f"{request.url.path}: request body is not valid JSON ({str(e)[:120]})")
    if not isinstance(body, dict):
        return bad_request(f"{request.url.path}: request body must be a JSON object, got {type(body).__name__}")
    return body


async def _run_sync(fn, *args):
    from starlette.concurrency import run_in_threadpool

    return await run_in_threadpool(fn, *args)
