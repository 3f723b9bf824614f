"""Access control for the backend: HTTP basic auth, the webhook secret, request-size limits,
signed heatmap URLs (the credentials themselves: ``ml_backend.credentials``).

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
  without a length are counted while read, see ``ml_backend.api.app``).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
import re
from urllib.parse import parse_qs

from starlette.datastructures import Headers
from starlette.responses import JSONResponse

from ml_backend.api.trust import AUTHENTICATED
from ml_backend.credentials import SECRET_HEADER, task_signature

log = logging.getLogger(__name__)

REALM = "robustar"
_SIGNED_PATH = re.compile(r"^/(?:saliency|influence)/(\d{1,13})/(.+)$")  # at most a /setup id's digits (int() of more may raise)


def _error(message: str, status: int, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"status": "error", "message": message}, status_code=status, headers=headers)


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
            scope[AUTHENTICATED] = authenticated  # what a /setup may change depends on it (ml_backend.api.trust)
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
