"""Where a task image may come from: the ``FetchPolicy`` and the URL checks built on it (no SSRF, no path
traversal).

- the Label Studio origin (``base_url``: ``LABEL_STUDIO_URL``, else the ``hostname`` Label Studio sent
  to ``/setup``); relative URLs resolve against it and only requests to it carry ``Authorization:
  Token <key>``;
- hosts listed in ``ALLOWED_IMAGE_HOSTS`` (``host`` (any port), ``host:port``, ``*.domain`` (the default
  ports only) or ``*.domain:port``, or a URL; fetched without the token). Such a host is resolved once
  when connecting, every address must be public (no loopback, private, link-local, multicast, reserved
  or other non-global address) unless ``ALLOW_PRIVATE_IMAGE_HOSTS``, and the connection goes to the
  address checked (``ml_backend.labelstudio.address_pinning``: no DNS rebinding between check and connect);
- ``data:`` URIs (decoded inline);
- Label Studio storage URLs (``s3://``, ``gs://``, ``azure-blob://``): resolved through Label Studio
  (``ml_backend.labelstudio.storage_urls``). Local files storage URLs (``/data/local-files/?d=…``) are
  Label Studio URLs like uploads;
- ``file://`` URLs only under ``IMAGE_ROOT`` (the real path, symlinks resolved, must stay inside it).

Anything else (other hosts, other schemes, ``file://`` without ``IMAGE_ROOT`` or outside it, user
info in the URL) raises ``ImageError``.

The policy (``FetchPolicy``) is a required argument of ``ImageFetcher``: the backend and the worker both
build it from the same ``Settings`` (``FetchPolicy.from_settings``), so the worker enforces what the
backend does.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from ml_backend.settings import Settings
from training.images import ImageError

BAD_URL_CHARS = re.compile(r"[\x00-\x1f\x7f\\]")
DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True)
class FetchPolicy:
    """Where images may come from and how much of them: the same for the backend and the worker."""

    allowed_hosts: tuple[str, ...]
    image_root: str | Path | None
    max_bytes: int
    max_pixels: int
    timeout: float
    max_decode_bytes: int = 0  # process-wide bytes of full-size decodes at once (0: unbounded)
    allow_private: bool = False  # ALLOWED_IMAGE_HOSTS may resolve to loopback/private/link-local addresses

    @classmethod
    def from_settings(cls, settings: Settings) -> "FetchPolicy":
        return cls(allowed_hosts=tuple(settings.allowed_image_hosts), image_root=settings.image_root,
                   max_bytes=settings.max_image_bytes, max_pixels=settings.max_image_pixels,
                   timeout=settings.fetch_timeout, max_decode_bytes=settings.predict_max_decode_bytes,
                   allow_private=settings.allow_private_image_hosts)


class HostNotAllowed(ImageError):
    """An image URL (or a redirect) points at a host the fetch policy does not allow."""

    def __init__(self, message: str, host: str) -> None:
        super().__init__(message)
        self.host = host


def describe_url(url: object, limit: int = 120) -> str:
    """A short, log-safe rendering of an image URL (data URIs are not printed whole)."""
    if not isinstance(url, str):
        return f"<{type(url).__name__}>"
    if url.startswith("data:"):
        head = url.split(",", 1)[0]
        return f"{head[:60]},… ({len(url)} chars)"
    return url if len(url) <= limit else url[:limit] + f"… ({len(url)} chars)"


def url_origin(url: str) -> tuple[str, str, int] | None:
    """(scheme, lower-case host, port) of an http(s) URL, or None."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS or not parts.hostname:
        return None
    return scheme, parts.hostname.lower(), port or DEFAULT_PORTS[scheme]


def listed_host(origin: tuple[str, str, int], allowed_hosts: tuple[str, ...]) -> bool:
    """Whether an http(s) origin matches an ``ALLOWED_IMAGE_HOSTS`` entry (the Label Studio origin is the
    fetcher's own business: it is always allowed)."""
    scheme, host, port = origin
    for entry in allowed_hosts:
        entry = entry.strip().lower()
        if "://" in entry:
            o = url_origin(entry)
            if o is not None and o[1:] == (host, port):
                return True
            continue
        name, _, want_port = entry.partition(":")
        if want_port and want_port != str(port):
            continue
        if name == host:  # a named host: any port unless the entry names one
            return True
        # a wildcard names a port, or means the scheme's default port only
        if name.startswith("*.") and fnmatch.fnmatchcase(host, name) and (want_port or port == DEFAULT_PORTS[scheme]):
            return True
    return False
