"""The HTTP layer Label Studio talks to: /health, /setup, /predict, /webhook, /versions, /job_status,
/metrics, and what the browser loads (``ml_backend.api.views``: heatmaps, influence pages, reports).

Flat route functions over one ``Backend`` (settings, model registry, training queue, metrics, one
``RobustarModel`` per project); errors are raised as exceptions and turned into the one error shape
``{"status": "error", "message": ...}`` by the exception handlers of ``ml_backend.api.errors``; the served
OpenAPI schema is ``ml_backend.api.openapi``'s. Request and response shapes follow Label Studio 1.23
(tests/fixtures/ls-protocol).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import threading
import time
import weakref

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import PlainTextResponse
from redis import Redis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry
from rq.exceptions import NoSuchJobError
from rq.job import Job
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from label_config.render import LabelConfigError
from ml_backend.api import views
from ml_backend.api.context_limits import validate_context
from ml_backend.api.cors import AllowedOrigins, LabelStudioCORS
from ml_backend.api.errors import (
    SafeJSONResponse,
    error,
    on_class_mismatch,
    on_http_error,
    on_payload_error,
    on_redis_error,
    on_request_validation,
    on_value_error,
)
from ml_backend.api.openapi import request_body, route_responses, with_components
from ml_backend.jobs.queue import (
    ANNOTATION_EVENTS,
    START_TRAINING,
    TrainingPolicy,
    TrainingQueue,
)
from ml_backend.api.metrics import Metrics
from ml_backend.labelstudio.client import label_studio_origin
from ml_backend.predict.predictor import RobustarModel, describe_key_destination, reported_version
from ml_backend.jobs.model_card import show_training_queued
from ml_backend.predict.lazy_views import ViewMaker
from ml_backend.predict.parts import PredictionPart
from ml_backend.api.security import AccessMiddleware
from ml_backend.api.trust import ProjectLRU, protections_line, setup_vouched
from ml_backend.credentials import install_log_redaction
from ml_backend.predict.registry import ClassMismatchError, ModelRegistry
from ml_backend.settings import Settings
from ml_backend.api.validation import (
    PayloadError,
    check_encodable,
    is_json_media_type,
    may_hold_lone_surrogates,
    setup_classes,
    task_label,
    validate_predict,
    validate_setup,
    validate_task_images,
    validate_webhook,
)
from ml_backend.jobs.versions import VersionSelection, job_state, list_versions, projects_with_versions

log = logging.getLogger(__name__)

HANDLED_ACTIONS = frozenset({START_TRAINING, *ANNOTATION_EVENTS})
MAX_JOB_ID_CHARS = 128
_EVENT_NAME = re.compile(r"^[A-Z][A-Z_]{0,63}$")  # Label Studio's action names; anything else counts as "other"


class Backend:
    """What the routes share: settings, served models, the training queue, metrics, per-project models."""

    def __init__(self, settings: Settings, parts: list[PredictionPart] | None = None) -> None:
        self.settings = settings
        self.parts = parts or []
        self.registry = ModelRegistry(settings)
        self.metrics = Metrics()
        # fail fast when Redis is down (Label Studio gives event webhooks 1 s): one try, 0.5 s timeouts
        redis = Redis.from_url(settings.redis_url, socket_timeout=0.5, socket_connect_timeout=0.5,
                               retry=Retry(NoBackoff(), 0))
        self.queue = TrainingQueue(redis, settings.queue_name, TrainingPolicy.from_settings(settings))
        # per-project state, bounded (least recently used evicted; a model is rebuilt when asked for again)
        self.models: ProjectLRU[int, RobustarModel] = ProjectLRU(settings.max_projects)
        self.creds: ProjectLRU[int, tuple[str | None, str | None]] = ProjectLRU(settings.max_projects)
        self.known: ProjectLRU[int, bool] = ProjectLRU(max(1024, settings.max_projects))  # ids a webhook may queue
        self.origins = AllowedOrigins(settings)
        self.selection = VersionSelection(settings)
        self.view_maker = ViewMaker()  # heatmaps and pages made on first GET, on threads of their own
        self.last_project: int | None = None  # the project /versions answers for: the last vouched /setup's
        self._lock = threading.Lock()
        self._slots: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def model_for(self, project_id: int, label_config: str | None, field: str) -> RobustarModel:
        """The project's model, rebuilt when its label config changes; a bad config names ``field``."""
        with self._lock:
            model = self.models.get(project_id)
            hostname, token = self.creds.get(project_id, (None, None))
            stale = model is not None and model.label_studio != label_studio_origin(self.settings, hostname, token)
            if model is None or stale or (label_config and label_config != model.label_config):
                try:
                    label_config = label_config or (model.label_config if model is not None else None)
                    if not label_config:
                        raise LabelConfigError(f"project {project_id}: no label config received yet (call /setup first)")
                    model = RobustarModel(project_id, label_config, self.settings, self.registry, self.parts,
                                          hostname=hostname, access_token=token)
                except LabelConfigError as e:
                    raise PayloadError(f"'{field}' (project {project_id}): {e}") from e
                self.models[project_id] = model
            return model

    def knows_project(self, project_id: int) -> bool:
        """A project a webhook may queue a job for: set up (``/setup`` or ``/predict`` with its label config, in
        this process; a bounded set of ids) or with a model folder (a version was written for it). The job
        itself reads the project from Label Studio with the configured key."""
        return project_id in self.known or project_id in self.models or self.registry.store(project_id).root.is_dir()

    def predict_slots(self) -> asyncio.Semaphore:
        """At most ``PREDICT_CONCURRENCY`` predictions at once (one semaphore per event loop)."""
        loop = asyncio.get_running_loop()
        sem = self._slots.get(loop)
        if sem is None:
            sem = self._slots[loop] = asyncio.Semaphore(max(1, self.settings.predict_concurrency))
        return sem


def _backend(request: Request) -> Backend:
    return request.app.state.backend


async def json_body(request: Request) -> dict:
    """The request's JSON object; PayloadError 415 unless sent as ``application/json`` (a web page cannot send
    that to another origin without a CORS preflight, which it does not pass), 413 past ``MAX_REQUEST_BYTES``
    (counted while reading, so a body without Content-Length is cut off too), 400 for bodies that are not a
    JSON object."""
    settings, path = _backend(request).settings, request.url.path
    if not is_json_media_type(request.headers.get("content-type")):
        raise PayloadError(f"{path}: Content-Type must be application/json, got "
                           f"{(request.headers.get('content-type') or 'none')[:60]!r}", 415)
    max_bytes, budget = settings.max_request_bytes, settings.http_body_timeout
    chunks, size = [], 0
    try:
        async with asyncio.timeout(budget if budget and budget > 0 else None):  # one deadline for the whole body
            async for chunk in request.stream():
                size += len(chunk)
                if max_bytes and size > max_bytes:
                    raise PayloadError(f"{path}: request body is larger than {max_bytes} bytes (MAX_REQUEST_BYTES)", 413)
                chunks.append(chunk)
    except PayloadError:
        raise
    except TimeoutError:  # a client dripping its body: 408, and the connection is closed (on_payload_error)
        raise PayloadError(f"{path}: request body not received within {budget:g} s (HTTP_BODY_TIMEOUT; "
                           f"{size} bytes arrived)", 408) from None
    except Exception as e:  # client went away mid-body
        raise PayloadError(f"{path}: could not read the request body ({type(e).__name__})") from e
    raw = b"".join(chunks)
    if not raw.strip():
        raise PayloadError(f"{path}: request body is empty (expected a JSON object)")
    try:
        body = json.loads(raw)
    except RecursionError:
        raise PayloadError(f"{path}: request body is nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise PayloadError(f"{path}: request body is not valid JSON ({str(e)[:120]})") from None
    if not isinstance(body, dict):
        raise PayloadError(f"{path}: request body must be a JSON object, got {type(body).__name__}")
    if may_hold_lone_surrogates(raw):  # no string that cannot be encoded reaches an endpoint, answer or log line
        await run_in_threadpool(check_encodable, body)
    return body


async def health(request: Request) -> dict:
    """Async: answers from the event loop even when every worker thread is busy."""
    backend = _backend(request)
    return {"status": "UP", "model_class": "RobustarModel", "parts": [p.name for p in backend.parts],
            "disabled_parts": dict(backend.settings.extra.get("disabled_parts") or {})}


async def setup(request: Request) -> dict:
    """Cheap (Label Studio calls it before every prediction): checks the config, names the served version,
    builds nothing. Only a /setup Label Studio vouches for (``ml_backend.api.trust``) changes shared state;
    a version the user selected in Label Studio becomes the served one (``VersionSelection``)."""
    backend, settings = _backend(request), _backend(request).settings
    req = validate_setup(await json_body(request))
    vouched = setup_vouched(request, settings, req.access_token)
    classes = setup_classes(req.schema, req.project_id)
    model = backend.models.get(req.project_id)
    if vouched:
        backend.creds[req.project_id] = (req.hostname, req.access_token)
        backend.origins.learn(req.hostname)
        backend.last_project = req.project_id
        if req.measured is not None:  # the input size `robustar import` measured (only Label Studio's word counts)
            backend.registry.measured_input(req.project_id, req.measured)
    elif settings.label_studio_url and not settings.label_studio_api_key and req.access_token:
        backend.creds[req.project_id] = (None, req.access_token)  # a token only ever goes to LABEL_STUDIO_URL
    backend.known[req.project_id] = True
    if settings.label_studio_url or vouched:  # read from the configured (or a vouched) Label Studio only
        backend.selection.check_soon(req.project_id, req.hostname if vouched else None, req.access_token)
    if classes is None:
        classes = model.config.classes if model is not None else None
    if classes is None:
        return {"model_version": reported_version(settings, backend.registry, req.project_id, [])}
    return {"model_version": await run_in_threadpool(reported_version, settings, backend.registry, req.project_id,
                                                     classes)}


async def versions(request: Request):
    """Label Studio's ``GET /api/ml/{id}/versions`` carries no project: ``?project=<id>``, else the project of
    the last vouched /setup, else the only project with versions; otherwise 404 (Label Studio then shows its
    stored model version)."""
    backend = _backend(request)
    asked = request.query_params.get("project")
    pid = views.parse_project_path(asked) if asked is not None else backend.last_project
    if asked is not None and pid is None:
        return error(f"/versions: no project {asked[:40]!r}", 404)
    if pid is None:
        with_versions = await run_in_threadpool(projects_with_versions, backend.settings.model_dir, 2)
        if len(with_versions) != 1:
            return error("/versions: which project? ask /versions?project=<id> (this backend serves "
                         f"{'several projects' if with_versions else 'no project yet'})", 404)
        pid = with_versions[0]
    return {"versions": list_versions(backend.settings, pid), "project": pid}


async def job_status(request: Request):
    """``{"job": id}`` -> the training job's state (410 once RQ no longer knows it)."""
    backend = _backend(request)
    job_id = (await json_body(request)).get("job")
    if not isinstance(job_id, str) or not job_id or len(job_id) > MAX_JOB_ID_CHARS:
        raise PayloadError(f"'job' must be a job id string (at most {MAX_JOB_ID_CHARS} characters)")
    try:
        job = await run_in_threadpool(Job.fetch, job_id, backend.queue.redis)
    except NoSuchJobError:
        return error(f"no training job {job_id!r} (expired or removed)", 410, job_status="removed")
    return await run_in_threadpool(job_state, job)


def _described_errors(tasks: list[dict], errors: list[tuple], field: str) -> list[dict]:
    """``(index, message[, status])`` per failed task -> the ``errors`` entries (status 422 unless given:
    413 for an image over a memory budget, 503 when the backend is too busy to decode it)."""
    out = []
    for i, msg, *rest in sorted(errors, key=lambda e: e[0]):
        out.append({"index": i, "task": tasks[i].get("id"), "field": field, "status": int(rest[0]) if rest else 422,
                    "message": f"{task_label(i, tasks[i])}: {field}: {msg}"})
    return out


async def predict(request: Request):
    backend = _backend(request)
    req = validate_predict(await json_body(request), backend.settings.max_predict_tasks)
    validate_context(req.context, backend.settings.max_context_marks, backend.settings.max_mask_pixels)
    model = backend.model_for(req.project_id, req.label_config, "label_config")
    tasks = req.tasks
    validate_task_images(tasks, model.config.image_value)
    start = time.perf_counter()
    errors: list[tuple[int, str]] = []
    async with backend.predict_slots():  # waiting requests hold no thread and no images
        results = await run_in_threadpool(model.predict, tasks, req.context, errors)
    backend.metrics.observe_predict(len(tasks), time.perf_counter() - start)
    described = _described_errors(tasks, errors, f"data.{model.config.image_value}")
    if tasks and len(described) == len(tasks):
        # nothing could be predicted: say why (a batch with some good tasks still gets its predictions)
        more = f" (and {len(described) - 3} more)" if len(described) > 3 else ""
        statuses = {d["status"] for d in described}  # all over budget: 413; all busy: 503; else 422
        status = statuses.pop() if len(statuses) == 1 else 422
        return error("; ".join(d["message"] for d in described[:3]) + more, status, errors=described)
    answer = {"results": results, "model_version": results[0]["model_version"] if results else model.model_version}
    if described:
        answer["errors"] = described
    return answer


async def webhook(request: Request) -> dict:
    backend = _backend(request)
    req = validate_webhook(await json_body(request), HANDLED_ACTIONS)
    action, project_id = req.action, req.project_id
    if project_id is None:  # Label Studio sends every event type to the auto-created webhook
        backend.metrics.count_event(action if _EVENT_NAME.match(action) else "other", "ignored")
        return {"status": "ignored", "action": action}
    answer = await run_in_threadpool(_handle_event, backend, project_id, action)
    backend.metrics.count_event(action, answer.get("status", ""))
    show_training_queued(backend.settings, project_id, answer, *backend.creds.get(project_id, (None, None)))
    return answer


def _handle_event(backend: Backend, project_id: int, action: str) -> dict:
    """Queue policy for a project the backend knows; an unknown project id costs nothing (no job, no key)."""
    if not backend.knows_project(project_id):
        log.info("webhook %s for project %s ignored: the backend was never set up for it", action, project_id)
        return {"status": "ignored", "action": action, "reason": "unknown project",
                "message": f"project {project_id} is unknown to this backend (no /setup for it, no model): "
                           "connect the model to the project in Label Studio first"}
    return backend.queue.handle_event(project_id, action)


def prometheus(request: Request) -> PlainTextResponse:
    backend = _backend(request)
    versions = {}
    for pid in list(backend.models):
        try:
            versions[pid] = backend.registry.current_version(pid)
        except FileNotFoundError:
            pass
    return PlainTextResponse(backend.metrics.render(versions), media_type="text/plain; version=0.0.4")


def route_template(request: Request) -> str:
    """The route a request is for, as its template (``/saliency/{project_id}/{key:path}``), or ``other``:
    metrics are labelled from this bounded set, never from the raw path a client chose."""
    for route in request.app.router.routes:
        match, _ = route.matches(request.scope)
        if match != Match.NONE:
            return getattr(route, "path", "other")
    return "other"


async def count_requests(request: Request, call_next):
    start = time.perf_counter()
    route = route_template(request)  # before the call: refused (401) requests count under their route too
    response = await call_next(request)
    _backend(request).metrics.observe(route, response.status_code, time.perf_counter() - start)
    response.headers["X-Content-Type-Options"] = "nosniff"  # an answer that echoes a path is never sniffed as HTML
    return response


def create_app(settings: Settings | None = None, parts: list[PredictionPart] | None = None) -> FastAPI:
    """Build the backend app; ``parts`` are the prediction parts beyond the classifier."""
    settings = settings or Settings.from_env()
    install_log_redaction(settings.label_studio_api_key, settings.basic_auth_pass, settings.webhook_secret)
    key_unused = bool(settings.label_studio_api_key and not settings.label_studio_url)
    is_open, line = protections_line(settings, describe_key_destination(settings))
    log.log(logging.WARNING if key_unused or is_open else logging.INFO, "%s", line)
    backend = Backend(settings, parts)
    app = FastAPI(title="Robustar ML backend for Label Studio", default_response_class=SafeJSONResponse)
    app.state.backend = backend
    app.state.settings, app.state.registry, app.state.queue, app.state.metrics = (
        settings, backend.registry, backend.queue, backend.metrics)
    app.add_middleware(
        AccessMiddleware, basic_user=settings.basic_auth_user, basic_pass=settings.basic_auth_pass,
        webhook_secret=settings.webhook_secret, max_request_bytes=settings.max_request_bytes,
    )
    app.middleware("http")(count_requests)  # added after AccessMiddleware, so it wraps it: refused requests count too
    app.add_middleware(LabelStudioCORS, origins=backend.origins)  # outermost: preflights need no credentials
    # an explicit response class (not only the default) keeps FastAPI off its pydantic fast path, whose
    # encoder raises on what SafeJSONResponse escapes
    body_errors = (400, 408, 413, 415)
    app.add_api_route("/health", health, methods=["GET", "HEAD"], response_class=SafeJSONResponse,
                      responses=route_responses({"application/json": {"schema": {"type": "object"}}}))
    app.add_api_route("/", health, methods=["GET", "HEAD"], response_class=SafeJSONResponse,
                      responses=route_responses({"application/json": {"schema": {"type": "object"}}}))
    app.add_api_route("/setup", setup, methods=["POST"], response_class=SafeJSONResponse,
                      openapi_extra=request_body("SetupRequest"),
                      responses=route_responses("SetupResponse", *body_errors, 409))
    app.add_api_route("/predict", predict, methods=["POST"], response_class=SafeJSONResponse,
                      openapi_extra=request_body("PredictRequest"),
                      responses=route_responses("PredictResponse", *body_errors, 409, 422, 503))
    app.add_api_route("/webhook", webhook, methods=["POST"], response_class=SafeJSONResponse,
                      openapi_extra=request_body("WebhookRequest"),
                      responses=route_responses("WebhookResponse", *body_errors, 403, 503))
    app.add_api_route("/versions", versions, methods=["GET"], response_class=SafeJSONResponse,
                      responses=route_responses({"application/json": {"schema": {"type": "object"}}}, 404))
    app.add_api_route("/job_status", job_status, methods=["POST"], response_class=SafeJSONResponse,
                      openapi_extra=request_body("JobStatusRequest"),
                      responses=route_responses({"application/json": {"schema": {"type": "object"}}},
                                                *body_errors, 410, 503))
    app.add_api_route("/metrics", prometheus, methods=["GET", "HEAD"], response_class=PlainTextResponse,
                      responses=route_responses({"text/plain": {"schema": {"type": "string"}}}))
    views.add_routes(app)
    app.openapi = with_components(app)
    app.add_exception_handler(PayloadError, on_payload_error)
    app.add_exception_handler(ClassMismatchError, on_class_mismatch)
    app.add_exception_handler(FileNotFoundError, on_value_error)
    app.add_exception_handler(ValueError, on_value_error)
    app.add_exception_handler(RedisError, on_redis_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(RequestValidationError, on_request_validation)
    return app
