"""Secure by default: who may change what every user of the backend shares.

Label Studio's identity comes from configuration, never from what a request says about itself:

- ``LABEL_STUDIO_URL`` is the one Label Studio: the fetch origin, the credential's destination, the CORS
  origin and the place a version selection (rollback) is read from. A ``/setup`` ``hostname`` is ignored.
- A ``/setup`` is *vouched for* when it passed basic auth (``BASIC_AUTH_*``: Label Studio was connected
  with them) or its ``access_token`` is the configured ``LABEL_STUDIO_API_KEY`` (a secret only Label
  Studio and its users hold). Only a vouched ``/setup`` may name the Label Studio origin (when
  ``LABEL_STUDIO_URL`` is unset), add a CORS origin, or pick the project ``/versions`` answers for.
- Anyone else's ``/setup`` is answered (its config is checked, the served version named) and changes
  nothing shared: no origin, no credential (but the ``access_token`` toward ``LABEL_STUDIO_URL`` when no
  key is configured), no CORS origin, no outbound request, no rollback.

``protections_line`` is the one start-up line that says which protections are on and what is open.
``ProjectLRU`` bounds per-project state (least recently used evicted).
"""

from __future__ import annotations

import hmac
import threading
from collections import OrderedDict
from typing import Generic, Hashable, TypeVar
from urllib.parse import urlsplit

from starlette.requests import Request

from ml_backend.settings import Settings

AUTHENTICATED = "robustar.authenticated"  # ASGI scope key: the request passed basic auth (security.AccessMiddleware)

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


def authenticated(request: Request) -> bool:
    """Whether the request passed HTTP basic auth (never true when basic auth is off)."""
    return bool(request.scope.get(AUTHENTICATED))


def is_configured_key(settings: Settings, token: str | None) -> bool:
    """``token`` is the configured ``LABEL_STUDIO_API_KEY`` (constant-time comparison)."""
    key = settings.label_studio_api_key
    return bool(key and token) and hmac.compare_digest(key.encode(), token.encode())  # type: ignore[union-attr]


def setup_vouched(request: Request, settings: Settings, access_token: str | None) -> bool:
    """A ``/setup`` that Label Studio vouches for: basic auth passed, or it carries the configured API key."""
    return authenticated(request) or is_configured_key(settings, access_token)


def _origin(url: str) -> str:
    o = urlsplit(url)
    return f"{o.scheme}://{o.netloc.rpartition('@')[2]}"  # never user info in a log line


def protections_line(settings: Settings, key_line: str) -> tuple[bool, str]:
    """(anything open, the start-up line): which protections are on and what is open."""
    on, open_ = [], []
    basic = bool(settings.basic_auth_user and settings.basic_auth_pass)
    (on if basic else open_).append("basic auth " + ("on" if basic else "off: anyone who reaches the port may "
                                                     "call /predict, /setup and /webhook"))
    if settings.webhook_secret:
        on.append("webhook secret on")
    elif not basic:
        open_.append("/webhook unauthenticated (WEBHOOK_SECRET unset)")
    if settings.label_studio_url:
        on.append(f"Label Studio is {_origin(settings.label_studio_url)} (LABEL_STUDIO_URL): fetch origin, CORS and "
                  "rollback follow it only, /setup hostnames are ignored")
        if not settings.label_studio_api_key:
            open_.append("LABEL_STUDIO_API_KEY unset: the access_token of the latest /setup is sent to LABEL_STUDIO_URL")
    elif basic:
        on.append("LABEL_STUDIO_URL unset: the Label Studio origin is the hostname of /setup calls that pass basic auth")
    else:
        on.append("LABEL_STUDIO_URL unset: no /setup hostname is trusted (relative image URLs and rollback need "
                  "LABEL_STUDIO_URL)")
    if "*" in [o.strip() for o in settings.cors_origins]:
        open_.append("CORS_ORIGINS=*: any web page may read heatmaps and pages")
    on.append(f"per-project state for at most {settings.max_projects} projects")
    line = ("protections: " + "; ".join(on) + (" | open: " + "; ".join(open_) if open_ else " | open: nothing")
            + " | " + key_line)
    return bool(open_), line


class ProjectLRU(Generic[K, V]):
    """A mapping that keeps at most ``limit`` entries, the least recently used evicted (thread-safe)."""

    def __init__(self, limit: int) -> None:
        self.limit = max(1, int(limit))
        self._items: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: K, default: V | None = None) -> V | None:
        with self._lock:
            if key not in self._items:
                return default
            self._items.move_to_end(key)
            return self._items[key]

    def __setitem__(self, key: K, value: V) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.limit:
                self._items.popitem(last=False)

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._items

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def __iter__(self):
        with self._lock:
            return iter(list(self._items))
