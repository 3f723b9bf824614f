"""Access control for the backend: HTTP basic auth, the webhook secret, request-size limits,
signed heatmap URLs and redaction of secrets from log lines.

- ``BASIC_AUTH_USER`` / ``BASIC_AUTH_PASS`` set: every endpoint needs ``Authorization: Basic …``
  (constant-time comparison); otherwise 401 with ``WWW-Authenticate``. Label Studio sends it when the
  ML backend is connected with basic auth (``robustar import`` does that when the variables are set).
  The one exception is a heatmap or influence-page URL with a valid ``sig`` (``signed_page_url``):
  browsers load ``$saliency`` and ``$influence`` without credentials, so the importer writes signed
  URLs into the task data.
- ``WEBHOOK_SECRET`` set: ``POST /webhook`` needs ``X-Robustar-Secret: <secret>`` unless the request
  already passed basic auth (Label Studio's ML connector sends ``START_TRAINING`` with basic auth but
  no custom headers; event webhooks carry the header, set by ``robustar import``).
- A declared body larger than ``MAX_REQUEST_BYTES`` is refused with 413 before it is read (bodies
  without a length are counted while read, see ``ml_backend.app``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import re
import threading
from urllib.parse import parse_qs, quote

from starlette.datastructures import Headers
from starlette.responses import JSONResponse

log = logging.getLogger(__name__)

SECRET_HEADER = "X-Robustar-Secret"
REALM = "robustar"
SIGNED_KINDS = ("saliency", "influence")
_SIGNED_PATH = re.compile(r"^/(?:saliency|influence)/(\d{1,13})/(.+)$")  # at most a /setup id's digits (int() of more may raise)


def _error(message: str, status: int, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"status": "error", "message": message}, status_code=status, headers=headers)


def basic_auth_header(user: str, password: str) -> str:
    """The ``Authorization`` header value for HTTP basic auth."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def _signing_key(user: str, password: str) -> bytes:
    return hashlib.sha256(b"robustar-heatmap-url\0" + user.encode() + b"\0" + password.encode()).digest()


def task_signature(project_id: int | str, key: str, user: str, password: str) -> str:
    """HMAC of ``<project id>/<task key>`` under a key derived from the basic-auth credentials: opens a
    task's heatmap and influence page (what the browser loads without credentials)."""
    msg = f"{int(project_id)}/{key}".encode()
    return hmac.new(_signing_key(user, password), msg, hashlib.sha256).hexdigest()[:32]


def signed_page_url(backend_url: str, kind: str, project_id: int, key: str, user: str | None,
                    password: str | None) -> str:
    """``<backend>/<kind>/<pid>/<quoted key>`` (kind: saliency | influence), with ``?sig=`` when basic
    auth is configured."""
    if kind not in SIGNED_KINDS:
        raise ValueError(f"no signed URLs for {kind!r}")
    url = f"{backend_url.rstrip('/')}/{kind}/{int(project_id)}/{quote(key)}"
    if user and password:
        url += "?sig=" + task_signature(project_id, key, user, password)
    return url


class AccessMiddleware:
    """Pure ASGI middleware: size limit, basic auth, webhook secret (see the module docstring)."""

    def __init__(
        self,
        app,
        *,
        basic_user: str | None = None,
        basic_pass: str | None = None,
        webhook_secret: str | None = None,
        max_request_bytes: int | None = None,
    ) -> None:
        self.app = app
        self.basic = (basic_user, basic_pass) if basic_user and basic_pass else None
        self.webhook_secret = webhook_secret or None
        self.max_request_bytes = max_request_bytes
        if basic_user and not basic_pass or basic_pass and not basic_user:
            log.warning("basic auth is OFF: set both BASIC_AUTH_USER and BASIC_AUTH_PASS")
        if self.webhook_secret and not self.basic:
            log.warning("WEBHOOK_SECRET is set without basic auth: Label Studio's 'Start Training' "
                        "(START_TRAINING from the ML connector) carries no custom header and will get 401; "
                        "set BASIC_AUTH_USER/BASIC_AUTH_PASS too")

    def _basic_ok(self, header: str | None) -> bool:
        if not header or not header[:6].lower() == "basic ":
            return False
        try:
            decoded = base64.b64decode(header[6:].strip(), validate=True)
        except (binascii.Error, ValueError):
            return False
        user, sep, password = decoded.partition(b":")
        want_user, want_pass = (v.encode() for v in self.basic)  # type: ignore[union-attr]
        # evaluate both comparisons (no short-circuit) so timing does not reveal which one failed
        ok_user = hmac.compare_digest(user, want_user)
        ok_pass = hmac.compare_digest(password, want_pass)
        return bool(sep) and ok_user & ok_pass

    def _signed_page(self, scope) -> bool:
        if scope.get("method") not in ("GET", "HEAD"):
            return False
        m = _SIGNED_PATH.match(scope.get("path") or "")
        if not m:
            return False
        sig = parse_qs((scope.get("query_string") or b"").decode("latin-1")).get("sig", [""])[0]
        if not sig:
            return False
        want = task_signature(m.group(1), m.group(2), *self.basic)  # type: ignore[misc]
        return hmac.compare_digest(sig.encode(), want.encode())

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        path = scope.get("path") or ""
        length = headers.get("content-length")
        if length is not None and self.max_request_bytes:
            if not length.strip().isdigit():
                await _error(f"{path}: invalid Content-Length {length[:40]!r}", 400)(scope, receive, send)
                return
            if int(length) > self.max_request_bytes:
                await _error(f"{path}: request body of {int(length)} bytes is larger than "
                             f"{self.max_request_bytes} (MAX_REQUEST_BYTES)", 413)(scope, receive, send)
                return
        authenticated = False
        if self.basic is not None:
            authenticated = self._basic_ok(headers.get("authorization"))
            if not authenticated and not self._signed_page(scope):
                await _error(f"{path}: authentication required (HTTP basic auth)", 401,
                             {"WWW-Authenticate": f'Basic realm="{REALM}", charset="UTF-8"'})(scope, receive, send)
                return
        if self.webhook_secret and path.rstrip("/") == "/webhook" and not authenticated:
            given = headers.get(SECRET_HEADER)
            if not given:
                await _error(f"/webhook: missing {SECRET_HEADER} header (WEBHOOK_SECRET is set)", 401)(scope, receive, send)
                return
            if not hmac.compare_digest(given.encode(), self.webhook_secret.encode()):
                await _error(f"/webhook: wrong {SECRET_HEADER} header", 403)(scope, receive, send)
                return
        await self.app(scope, receive, send)


# --------------------------------------------------------------------------------------------------
# secrets never reach a log line

_SECRETS: set[str] = set()
_SECRETS_LOCK = threading.Lock()
_AUTH_VALUE = re.compile(r"\b(Token|Bearer|Basic)(\s+)[A-Za-z0-9._~+/=-]{6,}")
_installed = False


def register_secret(value: str | None) -> None:
    """Redact ``value`` from every log line of this process from now on (values under 6 chars are ignored).

    Only configuration registers secrets (``install_log_redaction`` at start-up): a value a caller
    sends (e.g. /setup's ``access_token``) is never registered, so no caller can blank strings of
    its choice from the logs. Credentials after ``Token``/``Bearer``/``Basic`` are redacted by pattern.
    """
    if isinstance(value, str) and len(value) >= 6:
        with _SECRETS_LOCK:
            _SECRETS.add(value)


def redact(text: str) -> str:
    """``text`` with registered secrets and ``Token|Bearer|Basic <credential>`` values replaced by ``***``."""
    for secret in sorted(_SECRETS, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, "***")
    return _AUTH_VALUE.sub(r"\1\2***", text)


def _redact_arg(value):
    """One logging argument, redacted; left as it is (type included) when it holds nothing to redact,
    so ``%d`` and formatters that unpack the arguments (uvicorn's access log) keep working."""
    text = value if isinstance(value, str) else str(value) if not isinstance(value, (int, float)) else None
    if text is None:
        return value
    cleaned = redact(text)
    return value if cleaned == text else cleaned


def redact_record(record: logging.LogRecord) -> None:
    """Redact ``record`` in place, keeping it a valid record: each argument is redacted on its own
    (same number and kinds of arguments), then the message template; only when a secret still shows
    in the formatted message (e.g. split across two arguments) is the record replaced by its redacted,
    formatted text with empty arguments. Never raises: a record that cannot be formatted is left as is."""
    try:
        args = record.args
        if isinstance(args, tuple):
            record.args = tuple(_redact_arg(a) for a in args)
        elif isinstance(args, dict):
            record.args = {k: _redact_arg(v) for k, v in args.items()}
        if isinstance(record.msg, str):
            template = redact(record.msg)
            if template.count("%") == record.msg.count("%"):  # never drop a placeholder of the arguments
                record.msg = template
        if record.name not in _ARGS_FORMATTED:  # those formatters unpack the arguments: they must stay
            message = record.getMessage()
            cleaned = redact(message)
            if cleaned != message:
                record.msg, record.args = cleaned, ()
        if record.exc_info and record.exc_info[0] is not None:
            record.exc_text = redact(_formatter.formatException(record.exc_info))
    except Exception:  # a record that cannot be formatted is left to logging's own error handling
        pass


_formatter = logging.Formatter()
# loggers whose formatter unpacks ``record.args`` (uvicorn's access log: client, method, path, version,
# status): their arguments are redacted one by one and never replaced by a formatted message
_ARGS_FORMATTED = frozenset({"uvicorn.access"})


def install_log_redaction(*secrets: str | None) -> None:
    """Register ``secrets`` (from configuration) and (once per process) wrap the log-record factory so
    that every record's arguments, message and traceback text are redacted before any handler sees them."""
    global _installed
    for s in secrets:
        register_secret(s)
    with _SECRETS_LOCK:
        if _installed:
            return
        _installed = True
    previous = logging.getLogRecordFactory()

    def factory(*args, **kwargs):
        record = previous(*args, **kwargs)
        redact_record(record)
        return record

    logging.setLogRecordFactory(factory)
