"""CORS for what the browser loads from the backend (heatmap PNGs, influence pages, reports).

Label Studio loads ``<Image>`` sources with ``crossorigin="anonymous"`` and ``<HyperText valueType="url">``
with ``fetch``: without ``Access-Control-Allow-Origin`` for Label Studio's origin the browser blocks
them. Allowed origins: ``CORS_ORIGINS`` (comma-separated origins, or ``*``), the origin of
``LABEL_STUDIO_URL``, and — only while ``LABEL_STUDIO_URL`` is unset — the ``hostname`` of a ``/setup``
that Label Studio vouches for (basic auth passed: ``ml_backend.api.trust``; at most ``MAX_LEARNED``). Access control is unchanged: signed URLs and basic auth still apply; CORS only
lets Label Studio's pages read what they could already request.
"""

from __future__ import annotations

import threading
from urllib.parse import urlsplit

from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp

from ml_backend.settings import Settings


def origin_of(url: str | None) -> str | None:
    """``scheme://host[:port]`` of a URL, lower-case, default ports dropped; None when it has none."""
    if not isinstance(url, str):
        return None
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        return None
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    default = {"http": 80, "https": 443}[scheme]
    return f"{scheme}://{host}" + (f":{port}" if port and port != default else "")


LOOPBACK = ("localhost", "127.0.0.1", "::1")


def spellings(origin: str) -> set[str]:
    """An origin and, for a loopback host, its other loopback spellings (a user may browse Label Studio
    at http://localhost:8080 while it calls itself http://127.0.0.1:8080)."""
    parts = urlsplit(origin)
    if parts.hostname not in LOOPBACK:
        return {origin}
    port = f":{parts.port}" if parts.port else ""
    return {o for o in (origin_of(f"{parts.scheme}://{h if ':' not in h else f'[{h}]'}{port}") for h in LOOPBACK) if o}


class AllowedOrigins:
    """The origins whose pages may read the backend's responses; grows with vouched ``/setup`` hostnames
    only when no ``LABEL_STUDIO_URL`` is configured."""

    MAX_LEARNED = 32

    def __init__(self, settings: Settings) -> None:
        configured = [o.strip() for o in settings.cors_origins if o.strip()]
        self.any = "*" in configured
        self._static = {o for o in (origin_of(c) for c in configured if c != "*") if o}
        ls = origin_of(settings.label_studio_url)
        if ls:
            self._static |= spellings(ls)
        self._learn = not settings.label_studio_url
        self._learned: set[str] = set()
        self._lock = threading.Lock()

    def learn(self, hostname: str | None) -> None:
        """Add the origin of a vouched ``/setup`` hostname (ignored when LABEL_STUDIO_URL is configured)."""
        origin = origin_of(hostname)
        if self._learn and origin:
            with self._lock:
                if len(self._learned) < self.MAX_LEARNED:
                    self._learned |= spellings(origin)

    def allows(self, origin: str) -> bool:
        if self.any:
            return True
        normalized = origin_of(origin)
        return normalized is not None and (normalized in self._static or normalized in self._learned)


class LabelStudioCORS(CORSMiddleware):
    """Starlette's CORS middleware with the allowed origins decided by ``AllowedOrigins``."""

    def __init__(self, app: ASGIApp, origins: AllowedOrigins) -> None:
        super().__init__(app, allow_origins=(), allow_methods=("GET", "HEAD", "POST", "OPTIONS"),
                         allow_headers=("Authorization", "Content-Type"), expose_headers=("X-Robustar-Model-Version",),
                         max_age=600)
        self.origins = origins

    def is_allowed_origin(self, origin: str) -> bool:
        return self.origins.allows(origin)
