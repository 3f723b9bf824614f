"""The one error shape of every endpoint (``{"status": "error", "message": ...}``): ``SafeJSONResponse``
(the app's JSON answers, which cannot fail to encode), ``error()``, and the exception handlers that turn
what the routes raise into that shape.
"""

from __future__ import annotations

import json
import logging
import math
import re

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException as StarletteHTTPException

from ml_backend.api.validation import PayloadError
from ml_backend.predict.registry import ClassMismatchError

log = logging.getLogger("ml_backend.api.app")  # these lines were always logged as the app's


def _finite(value):
    """``value`` with NaN/inf floats as null (JSON has no such numbers)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


class SafeJSONResponse(JSONResponse):
    """A JSON answer whose encoding cannot raise: strings that are not valid UTF-8 (lone surrogates) are
    written as ``\\udXXX`` escapes (valid JSON), non-finite floats as null. Every route answers with it
    (the app's default response class) and so does ``error()``."""

    def render(self, content) -> bytes:
        attempts = (lambda: json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":")),
                    # NaN/inf or an object json does not know: nulls and str()
                    lambda: json.dumps(_finite(content), ensure_ascii=False, allow_nan=False, separators=(",", ":"),
                                       default=str))
        for dump in attempts:
            try:
                return dump().encode("utf-8", "backslashreplace")
            except (ValueError, TypeError, RecursionError):
                continue
        log.error("an answer could not be encoded as JSON (circular or nested too deeply)")
        return b'{"status":"error","message":"the answer could not be encoded as JSON"}'


def error(message: str, status: int = 400, headers: dict[str, str] | None = None, **extra) -> JSONResponse:
    """The one error shape of every endpoint."""
    return SafeJSONResponse({"status": "error", "message": message, **extra}, status_code=status, headers=headers)


def _without_userinfo(url: str) -> str:
    """``redis://:secret@host:6379/0`` -> ``redis://host:6379/0`` (for messages)."""
    return re.sub(r"//[^/@]*@", "//", url)


async def on_payload_error(request: Request, exc: PayloadError) -> JSONResponse:
    # 408: the rest of the body may still be coming; close the connection rather than read it
    return error(str(exc), exc.status, headers={"Connection": "close"} if exc.status == 408 else None)


async def on_class_mismatch(request: Request, exc: ClassMismatchError) -> JSONResponse:
    return error(str(exc), 409)


async def on_value_error(request: Request, exc: Exception) -> JSONResponse:
    """A project the backend cannot serve (e.g. MODEL_VERSION names a missing checkpoint)."""
    return error(str(exc))


async def on_http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """404 (no such route), 405 (method) and the like, in the one error shape (not FastAPI's ``detail``)."""
    detail = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail, default=str)
    return error(f"{request.method} {request.url.path[:200]}: {detail}", exc.status_code, headers=exc.headers)


async def on_request_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's own parameter checks (path/query parameters), in the one error shape."""
    parts = []
    for e in exc.errors()[:5]:
        where = ".".join(str(x) for x in e.get("loc", ()) if x not in ("path", "query", "body"))
        parts.append(f"{where or 'request'}: {e.get('msg', 'invalid')}")
    return error("; ".join(parts) or "invalid request", 422)


async def on_redis_error(request: Request, exc: RedisError) -> JSONResponse:
    url = _without_userinfo(request.app.state.backend.settings.redis_url)
    log.error("%s: Redis unavailable: %s", request.url.path, exc)
    return error(f"training queue unavailable (Redis at {url}): {type(exc).__name__}: {exc}; "
                 "the event was not queued, retry when Redis is back", 503)
