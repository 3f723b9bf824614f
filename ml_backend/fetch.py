"""Fetch task images the way Label Studio serves them: uploads, local files, absolute URLs, data URIs.

Where an image may come from (no SSRF, no path traversal):

- the Label Studio origin (``base_url``: ``LABEL_STUDIO_URL``, else the ``hostname`` Label Studio sent
  to ``/setup``); relative URLs resolve against it and only requests to it carry ``Authorization:
  Token <key>``;
- hosts listed in ``ALLOWED_IMAGE_HOSTS`` (``host`` (any port), ``host:port``, ``*.domain`` (the default
  ports only) or ``*.domain:port``, or a URL; fetched without the token). Such a host is resolved once
  when connecting, every address must be public (no loopback, private, link-local, multicast, reserved
  or other non-global address) unless ``ALLOW_PRIVATE_IMAGE_HOSTS``, and the connection goes to the
  address checked (``_pinned_adapter``: no DNS rebinding between check and connect);
- ``data:`` URIs (decoded inline);
- Label Studio storage URLs (``s3://``, ``gs://``, ``azure-blob://``): resolved the way Label Studio
  resolves them for its own pages, through ``<LABEL_STUDIO_URL>/projects/<project>/resolve/?fileuri=…``
  with the token; Label Studio redirects to a presigned URL on the storage's endpoint (a host that must
  be in ``ALLOWED_IMAGE_HOSTS``, checked like any redirect) or streams the bytes itself (presign off).
  Local files storage URLs (``/data/local-files/?d=…``) are Label Studio URLs like uploads. A storage URL
  that cannot be resolved raises an ``ImageError`` that says why (no storage, no access, a host not allowed);
- ``file://`` URLs only under ``IMAGE_ROOT`` (the real path, symlinks resolved, must stay inside it).

Anything else (other hosts, other schemes, ``file://`` without ``IMAGE_ROOT`` or outside it, user
info in the URL) raises ``ImageError``. Redirects are followed by hand (at most 5), each target
re-checked, the token dropped when leaving the Label Studio origin. Downloads are streamed and cut
at ``MAX_IMAGE_BYTES`` (default 50 MB); decoding refuses more than ``MAX_IMAGE_PIXELS`` (64 MP). For
predictions images are downscaled while decoding (``PREDICT_MAX_SIDE``), charged to the request's pixel
budget (``RequestBudget``) and decoded under the process-wide ``DecodeMemory``.
``FETCH_TIMEOUT`` bounds the whole download of one image (connect, redirects, every read: one
deadline), not each read: a host that drips a byte at a time is cut off at the deadline.

The policy (``FetchPolicy``) is a required argument: the backend and the worker both build it from
the same ``Settings`` (``FetchPolicy.from_settings``), so the worker enforces what the backend does.
"""

from __future__ import annotations

import base64
import binascii
import fnmatch
import hashlib
import ipaddress
import os
import re
import socket
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, unquote, unquote_to_bytes, urljoin, urlsplit

import requests
import urllib3
from PIL import Image
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError
from urllib3.util import connection as urllib3_connection

from ml_backend.settings import Settings
from training.images import ImageError, decode_image

__all__ = ["DecodeMemory", "FetchPolicy", "HTTPStatusImageError", "HostNotAllowed", "ImageBudgetError", "ImageError",
           "ImageFetcher", "RequestBudget", "STORAGE_SCHEMES", "describe_url", "decode_memory", "storage_uri"]

MAX_REDIRECTS = 5
STORAGE_SCHEMES = ("s3", "gs", "azure-blob")  # Label Studio's cloud storages: resolved through Label Studio
_CHUNK = 1 << 16
_BAD_URL_CHARS = re.compile(r"[\x00-\x1f\x7f\\]")
_DEFAULT_PORTS = {"http": 80, "https": 443}


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


def address_kind(address: str) -> str | None:
    """Why an IP address may not be fetched from (``loopback``, ``private``, ``link-local`` ...), or None
    for a public (globally routable) one. IPv4-mapped IPv6 addresses are judged as the IPv4 address."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return "unparseable"
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    for kind in ("loopback", "link_local", "multicast", "unspecified", "reserved", "private"):
        if getattr(ip, f"is_{kind}"):
            return kind.replace("_", "-")
    if not ip.is_global:  # e.g. 100.64.0.0/10 (carrier-grade NAT)
        return "non-global"
    return None


def _pinned_adapter(resolve) -> HTTPAdapter:
    """A requests adapter whose connections go to the address ``resolve(scheme, host, port)`` returned (it
    checks it): the address checked is the address connected to, so DNS cannot answer differently between
    the check and the connect (rebinding). The Host header, TLS SNI and certificate check keep the name."""

    def new_conn(conn, scheme: str):
        address = resolve(scheme, conn.host, conn.port)
        try:
            return urllib3_connection.create_connection((address, conn.port), conn.timeout,
                                                        source_address=conn.source_address,
                                                        socket_options=conn.socket_options)
        except socket.timeout as e:
            raise ConnectTimeoutError(conn, f"Connection to {conn.host} timed out. (connect timeout={conn.timeout})") from e
        except OSError as e:
            raise NewConnectionError(conn, f"Failed to establish a new connection: {e}") from e

    class PinnedHTTPConnection(HTTPConnection):
        def _new_conn(self):
            return new_conn(self, "http")

    class PinnedHTTPSConnection(HTTPSConnection):
        def _new_conn(self):
            return new_conn(self, "https")

    class PinnedHTTPPool(HTTPConnectionPool):
        ConnectionCls = PinnedHTTPConnection

    class PinnedHTTPSPool(HTTPSConnectionPool):
        ConnectionCls = PinnedHTTPSConnection

    class PinnedAdapter(HTTPAdapter):
        def init_poolmanager(self, *args, **kwargs):
            super().init_poolmanager(*args, **kwargs)
            self.poolmanager.pool_classes_by_scheme = {"http": PinnedHTTPPool, "https": PinnedHTTPSPool}

    return PinnedAdapter()


class HostNotAllowed(ImageError):
    """An image URL (or a redirect) points at a host the fetch policy does not allow."""

    def __init__(self, message: str, host: str) -> None:
        super().__init__(message)
        self.host = host


class HTTPStatusImageError(ImageError):
    """The image server answered with an HTTP status other than 200 (``http_status``; not ``status``, which
    callers read as the status of their own answer, as ``ImageBudgetError.status``)."""

    def __init__(self, message: str, http_status: int) -> None:
        super().__init__(message)
        self.http_status = http_status


def storage_resolve_path(project_id: int, uri: str) -> str:
    """Label Studio's resolver of a storage URI (as its frontend uses it), relative to its URL."""
    return f"projects/{int(project_id)}/resolve/?fileuri={base64.urlsafe_b64encode(uri.encode()).decode()}"


def storage_uri(url: str) -> str | None:
    """The storage URI (``s3://…``) behind a storage URL or a Label Studio resolver URL, else None."""
    if urlsplit(url).scheme.lower() in STORAGE_SCHEMES:
        return url
    parts = urlsplit(url)
    if not re.search(r"/(tasks|projects)/\d+/(resolve|presign)/?$", parts.path):
        return None
    fileuri = parse_qs(parts.query).get("fileuri", [""])[0]
    try:
        return base64.urlsafe_b64decode(fileuri.encode()).decode() or None
    except (binascii.Error, ValueError, UnicodeError):
        return unquote(fileuri) or None


def storage_hint(uri: str, error: ImageError, project_id: int | None) -> str:
    """What to do when Label Studio could not give the bytes of storage URI ``uri``."""
    project = f"project {project_id}" if project_id is not None else "the task's project"
    if isinstance(error, HostNotAllowed):
        return (f"Label Studio resolved {uri} to a presigned URL on {error.host}, which the backend may not fetch "
                f"from: add {error.host} to ALLOWED_IMAGE_HOSTS (and ALLOW_PRIVATE_IMAGE_HOSTS=true for a private "
                "network), or turn the storage's presign off so that Label Studio streams the bytes")
    status = getattr(error, "http_status", None)
    if status == 404:
        return (f"Label Studio cannot resolve {uri}: no import storage of {project} covers it, or the object is "
                "missing (register the bucket: robustar import --storage s3, or Cloud Storage in the project settings)")
    if status in (401, 403):
        return f"Label Studio refused to resolve {uri} (HTTP {status}): the API key has no access to {project}"
    return f"cannot fetch {uri} through Label Studio: {error}"


def local_files_hint(url: str, error: ImageError) -> str | None:
    """What to do when Label Studio would not serve a Local files URL (``/data/local-files/?d=…``)."""
    if "/data/local-files" not in urlsplit(url).path:
        return None
    status = getattr(error, "http_status", None)
    if status == 404:
        return (f"Label Studio does not serve {describe_url(url)}: no Local files storage (of a project the API key "
                "can read) holds that folder, or the file is missing under its LOCAL_FILES_DOCUMENT_ROOT")
    if status == 403:
        return (f"Label Studio refused {describe_url(url)} (HTTP 403): it serves local files only with "
                "LOCAL_FILES_SERVING_ENABLED=true")
    return None


class ImageBudgetError(ImageError):
    """A task's image does not fit a memory budget: 413 (the request's pixel budget) or 503 (the process is
    decoding as much as it may at once and no room came free within FETCH_TIMEOUT)."""

    def __init__(self, message: str, status: int = 413) -> None:
        super().__init__(message)
        self.status = status


class RequestBudget:
    """The decoded pixels one /predict request may hold (``PREDICT_MAX_PIXELS_PER_REQUEST``): every image is
    charged its decoded (downscaled) size before it is decoded; one that does not fit is refused (413)."""

    def __init__(self, max_pixels: int) -> None:
        self.max_pixels = int(max_pixels)
        self.used = 0
        self._lock = threading.Lock()

    def charge(self, source: str, pixels: int) -> None:
        with self._lock:
            if self.max_pixels and self.used + pixels > self.max_pixels:
                raise ImageBudgetError(
                    f"{source}: over the request's pixel budget ({pixels} decoded pixels, {self.used} already "
                    f"held of {self.max_pixels}, PREDICT_MAX_PIXELS_PER_REQUEST); send fewer tasks per request", 413)
            self.used += pixels

    def refund(self, pixels: int) -> None:
        with self._lock:
            self.used -= pixels


class DecodeMemory:
    """Process-wide: the bytes that full-size decodes may hold at once (``PREDICT_MAX_DECODE_BYTES``).

    A decode reserves its peak (full-size pixels plus one converted copy) before any pixel is decoded and
    gives it back once the image is downscaled; others wait, at most ``timeout`` (then 503). An image
    bigger than the whole budget reserves all of it (it decodes alone). Nothing is held while waiting but
    the compressed bytes, and every holder finishes in bounded time, so waiting cannot deadlock."""

    def __init__(self, limit: int) -> None:
        self.limit = int(limit)
        self.used = 0
        self.peak = 0
        self._cond = threading.Condition()

    @contextmanager
    def hold(self, source: str, nbytes: int, timeout: float):
        n = min(int(nbytes), self.limit)
        with self._cond:
            if not self._cond.wait_for(lambda: self.used + n <= self.limit, timeout):
                raise ImageBudgetError(f"{source}: the backend is decoding as many images as its memory allows "
                                       f"(PREDICT_MAX_DECODE_BYTES={self.limit}); retry later", 503)
            self.used += n
            self.peak = max(self.peak, self.used)
        try:
            yield
        finally:
            with self._cond:
                self.used -= n
                self._cond.notify_all()


_decode_memories: dict[int, DecodeMemory] = {}
_decode_memories_lock = threading.Lock()


def decode_memory(limit: int) -> DecodeMemory | None:
    """The process's ``DecodeMemory`` for ``limit`` bytes (one per process and limit; None: unbounded)."""
    if not limit or limit <= 0:
        return None
    with _decode_memories_lock:
        mem = _decode_memories.get(int(limit))
        if mem is None:
            mem = _decode_memories[int(limit)] = DecodeMemory(int(limit))
        return mem


def describe_url(url: object, limit: int = 120) -> str:
    """A short, log-safe rendering of an image URL (data URIs are not printed whole)."""
    if not isinstance(url, str):
        return f"<{type(url).__name__}>"
    if url.startswith("data:"):
        head = url.split(",", 1)[0]
        return f"{head[:60]},… ({len(url)} chars)"
    return url if len(url) <= limit else url[:limit] + f"… ({len(url)} chars)"


def _origin(url: str) -> tuple[str, str, int] | None:
    """(scheme, lower-case host, port) of an http(s) URL, or None."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        return None
    return scheme, parts.hostname.lower(), port or _DEFAULT_PORTS[scheme]


class ImageFetcher:
    """Download task images from Label Studio with its API key (``Authorization: Token``), under ``policy``.

    ``project_id``: the Label Studio project the tasks belong to, which resolves storage URLs (``s3://…``)."""

    def __init__(self, base_url: str | None, api_key: str | None, policy: FetchPolicy,
                 project_id: int | None = None) -> None:
        self.project_id = project_id
        self.base_url = base_url.rstrip("/") + "/" if base_url else None
        self.api_key = api_key
        self.policy = policy
        self.timeout = policy.timeout
        self.session = requests.Session()
        self.session.trust_env = False  # no proxies or .netrc credentials from the environment
        adapter = _pinned_adapter(self._connect_address)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.allowed_hosts = tuple(policy.allowed_hosts)
        self.image_root = os.path.realpath(policy.image_root) if policy.image_root else None
        self.max_bytes = int(policy.max_bytes)
        self._ls_origin = _origin(self.base_url) if self.base_url else None

    # ------------------------------------------------------------------------------------------
    # where a URL may point

    def resolve(self, url: str) -> str:
        """Make a task-data URL absolute against the Label Studio URL."""
        scheme = urlsplit(url).scheme.lower()
        if scheme in ("http", "https", "data", "file"):
            return url
        if scheme in STORAGE_SCHEMES:
            if not self.base_url or self.project_id is None:
                raise ImageError(f"{describe_url(url)} is a Label Studio storage URL: it is resolved through Label "
                                 "Studio's project, so LABEL_STUDIO_URL and the project must be known")
            return urljoin(self.base_url, storage_resolve_path(self.project_id, url))
        if scheme:
            raise ImageError(f"image URL scheme {scheme!r} is not allowed (http(s) from Label Studio, data:, file:, "
                             f"{', '.join(s + '://' for s in STORAGE_SCHEMES)} through Label Studio)")
        if not self.base_url:
            raise ImageError(f"relative image URL {describe_url(url)!r} but the Label Studio URL is unknown (set LABEL_STUDIO_URL)")
        return urljoin(self.base_url, url.lstrip("/"))

    def _host_allowed(self, origin: tuple[str, str, int]) -> bool:
        if origin == self._ls_origin:
            return True
        scheme, host, port = origin
        for entry in self.allowed_hosts:
            entry = entry.strip().lower()
            if "://" in entry:
                o = _origin(entry)
                if o is not None and o[1:] == (host, port):
                    return True
                continue
            name, _, want_port = entry.partition(":")
            if want_port and want_port != str(port):
                continue
            if name == host:  # a named host: any port unless the entry names one
                return True
            # a wildcard names a port, or means the scheme's default port only
            if name.startswith("*.") and fnmatch.fnmatchcase(host, name) and (want_port or port == _DEFAULT_PORTS[scheme]):
                return True
        return False

    def _connect_address(self, scheme: str, host: str, port: int) -> str:
        """The address to connect to for ``host``: resolved once, every address checked, the first returned
        (the connection goes there). The Label Studio origin connects as configured; other hosts must resolve
        to public addresses only, unless ALLOW_PRIVATE_IMAGE_HOSTS (then they are resolved and pinned all the same)."""
        if (scheme, host.lower(), port) == self._ls_origin:
            return host
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as e:
            raise ImageError(f"image host {host}: cannot resolve it ({e})") from e
        addresses = [info[4][0] for info in infos]
        for address in addresses if not self.policy.allow_private else ():
            kind = address_kind(address)
            if kind:
                raise ImageError(f"image host {host}:{port} resolves to {address}, a {kind} address: refused "
                                 "(set ALLOW_PRIVATE_IMAGE_HOSTS=true to fetch from private networks)")
        if not addresses:
            raise ImageError(f"image host {host}: resolves to no address")
        return addresses[0]

    def check_url(self, url: str) -> str:
        """The absolute URL to fetch; raises ImageError when it may not be fetched."""
        if not isinstance(url, str) or not url.strip():
            raise ImageError("image URL is empty or not a string")
        url = url.strip()
        if url.startswith("data:"):
            return url
        if _BAD_URL_CHARS.search(url):
            raise ImageError(f"image URL {describe_url(url)!r} contains control characters or backslashes")
        url = self.resolve(url)
        parts = urlsplit(url)
        if parts.scheme.lower() == "file":
            return url
        if "@" in parts.netloc:
            raise ImageError(f"image URL {describe_url(url)!r} carries user info; not allowed")
        origin = _origin(url)
        if origin is None:
            raise ImageError(f"image URL {describe_url(url)!r} is not a valid http(s) URL")
        if not self._host_allowed(origin):
            raise HostNotAllowed(
                f"image host {origin[1]}:{origin[2]} is not allowed: images come from Label Studio"
                f"{' (' + self.base_url.rstrip('/') + ')' if self.base_url else ''} or a host in ALLOWED_IMAGE_HOSTS",
                f"{origin[1]}:{origin[2]}")
        return url

    def _auth_for(self, url: str) -> dict[str, str]:
        if not (self.api_key and self._ls_origin):
            return {}
        return {"Authorization": f"Token {self.api_key}"} if _origin(url) == self._ls_origin else {}

    # ------------------------------------------------------------------------------------------
    # reading

    def _data_uri(self, url: str) -> bytes:
        head, sep, payload = url.partition(",")
        if not sep:
            raise ImageError("malformed data URI: no ',' separates the header from the data")
        if head.lower().endswith(";base64"):
            if len(payload) * 3 // 4 > self.max_bytes:
                raise ImageError(f"data URI holds more than {self.max_bytes} bytes (MAX_IMAGE_BYTES)")
            try:
                return base64.b64decode(payload, validate=False)
            except (binascii.Error, ValueError) as e:
                raise ImageError(f"malformed data URI: {e}") from e
        data = unquote_to_bytes(payload)
        if len(data) > self.max_bytes:
            raise ImageError(f"data URI holds more than {self.max_bytes} bytes (MAX_IMAGE_BYTES)")
        return data

    def _local_file(self, url: str) -> bytes:
        parts = urlsplit(url)
        if parts.netloc not in ("", "localhost"):
            raise ImageError(f"file URL {describe_url(url)!r} names a remote host; not allowed")
        if not self.image_root:
            raise ImageError("local file URLs are not allowed (set IMAGE_ROOT to the folder images may be read from)")
        real = os.path.realpath(unquote(parts.path))
        try:
            inside = os.path.commonpath([self.image_root, real]) == self.image_root
        except ValueError:
            inside = False
        if not inside:
            raise ImageError(f"local file {describe_url(url)!r} is outside IMAGE_ROOT; not allowed")
        try:
            if not os.path.isfile(real):
                raise ImageError(f"local file {describe_url(url)!r} does not exist or is not a file")
            if os.path.getsize(real) > self.max_bytes:
                raise ImageError(f"local file {describe_url(url)!r} is larger than {self.max_bytes} bytes (MAX_IMAGE_BYTES)")
            with open(real, "rb") as f:
                return f.read(self.max_bytes + 1)
        except OSError as e:
            raise ImageError(f"cannot read local file {describe_url(url)!r}: {e.strerror or e}") from e

    def _left(self, deadline: float, url: str) -> float:
        left = deadline - time.monotonic()
        if left <= 0:
            raise ImageError(f"download of {describe_url(url)} took longer than {self.timeout:g} s (FETCH_TIMEOUT)")
        return left

    def _read_body(self, response: requests.Response, url: str, deadline: float) -> bytes:
        """The body, read as it arrives (``read1``) with every socket wait bounded by the time left."""
        raw, buf = response.raw, bytearray()
        while True:
            left = self._left(deadline, url)
            sock = getattr(getattr(raw, "connection", None), "sock", None)
            if sock is not None:
                sock.settimeout(left)
            try:
                chunk = raw.read1(_CHUNK, decode_content=True)
            except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as e:
                if time.monotonic() >= deadline or "timed out" in str(e).lower():
                    raise ImageError(f"download of {describe_url(url)} took longer than {self.timeout:g} s "
                                     "(FETCH_TIMEOUT)") from e
                raise ImageError(f"download of {describe_url(url)} broke off: {type(e).__name__}") from e
            if not chunk:
                return bytes(buf)
            buf += chunk
            if len(buf) > self.max_bytes:
                raise ImageError(f"{describe_url(url)} is more than {self.max_bytes} bytes (MAX_IMAGE_BYTES)")

    def _download(self, url: str) -> bytes:
        """The body behind an http(s) URL; a storage or Local files URL that Label Studio would not resolve
        or serve raises with what to do (``storage_hint``, ``local_files_hint``)."""
        try:
            return self._follow(url)
        except (HostNotAllowed, HTTPStatusImageError) as e:
            uri = storage_uri(url)
            hint = storage_hint(uri, e, self.project_id) if uri else local_files_hint(url, e)
            if hint is None:
                raise
            raise type(e)(hint, e.host if isinstance(e, HostNotAllowed) else e.http_status) from e

    def _follow(self, url: str) -> bytes:
        deadline = time.monotonic() + self.timeout  # one deadline for the whole image, redirects included
        for _ in range(MAX_REDIRECTS + 1):
            try:
                response = self.session.get(url, headers=self._auth_for(url), timeout=self._left(deadline, url),
                                            stream=True, allow_redirects=False)
            except requests.Timeout as e:
                raise ImageError(f"cannot download {describe_url(url)}: {type(e).__name__} "
                                 f"(FETCH_TIMEOUT {self.timeout:g} s)") from e
            except requests.RequestException as e:
                raise ImageError(f"cannot download {describe_url(url)}: {type(e).__name__}") from e
            with response:
                if response.is_redirect:
                    location = response.headers.get("Location") or ""
                    url = self.check_url(urljoin(url, location))
                    if urlsplit(url).scheme.lower() not in ("http", "https"):
                        raise ImageError(f"redirect to {describe_url(url)!r} is not allowed")
                    continue
                if response.status_code != 200:
                    raise HTTPStatusImageError(f"downloading {describe_url(url)} answered HTTP {response.status_code}",
                                               response.status_code)
                declared = response.headers.get("Content-Length")
                if declared and declared.isdigit() and int(declared) > self.max_bytes:
                    raise ImageError(f"{describe_url(url)} is {declared} bytes, more than {self.max_bytes} (MAX_IMAGE_BYTES)")
                return self._read_body(response, url, deadline)
        raise ImageError(f"{describe_url(url)}: more than {MAX_REDIRECTS} redirects")

    def fetch_bytes(self, url: str) -> bytes:
        """Return the raw bytes behind a task-data image URL (raises ImageError when not allowed)."""
        try:
            return self._fetch_bytes(url)
        except ImageError:
            raise
        except (ValueError, UnicodeError, OSError) as e:  # e.g. a malformed IPv6 host in urlsplit
            raise ImageError(f"cannot fetch {describe_url(url)}: {type(e).__name__}: {e}") from e

    def _fetch_bytes(self, url: str) -> bytes:
        url = self.check_url(url)
        if url.startswith("data:"):
            return self._data_uri(url)
        if urlsplit(url).scheme.lower() == "file":
            return self._local_file(url)
        return self._download(url)

    def fetch(self, url: str, max_side: int | None = None, budget: RequestBudget | None = None) -> Image.Image:
        """Return the image behind a task-data URL as RGB.

        ``max_side``: downscale while decoding so the longer side is at most that (the prediction path; the
        stored size stays in ``training.images.original_size``); None keeps the full size (training).
        ``budget``: the request's pixel budget, charged before decoding. Every decode also reserves its peak
        memory in the process-wide ``DecodeMemory`` (``PREDICT_MAX_DECODE_BYTES``).
        """
        memory = decode_memory(self.policy.max_decode_bytes)

        @contextmanager
        def admit(source: str, nbytes: int, out_size: tuple[int, int]):
            pixels = out_size[0] * out_size[1]
            if budget is not None:
                budget.charge(source, pixels)
            try:
                if memory is None:
                    yield
                else:
                    with memory.hold(source, nbytes, self.timeout):
                        yield
            except BaseException:  # refused or unreadable: the request keeps its budget for other images
                if budget is not None:
                    budget.refund(pixels)
                raise

        return decode_image(self.fetch_bytes(url), describe_url(url), self.policy.max_pixels, max_side, admit)

    # ------------------------------------------------------------------------------------------
    # versions, for the training image cache (training.image_cache)

    def fetch_versioned(self, url: str, known: str | None = None) -> tuple[Image.Image | None, str]:
        """The image behind ``url`` and its version key, or ``(None, known)`` when it has not changed since
        version ``known`` (a ``training.image_cache.VersionedSource``). Version keys: ``upload`` for Label
        Studio's own uploads (``/data/upload/``: each file is named with a unique prefix and never rewritten,
        so a cached one is not asked for again), ``file:<mtime_ns>:<size>`` for IMAGE_ROOT files (a stat, no
        read), ``etag:`` / ``modified:`` from an HTTP server's validators (asked with a conditional GET: a
        304 transfers nothing), else ``sha256:`` of the bytes (data URIs, servers without validators)."""
        try:
            checked = self.check_url(url)
            scheme = urlsplit(checked).scheme.lower()
            if scheme == "file":
                st = os.stat(os.path.realpath(unquote(urlsplit(checked).path)))
                version = f"file:{st.st_mtime_ns}:{st.st_size}"
                data = None if version == known else self._local_file(checked)
            elif scheme in ("http", "https") and _origin(checked) == self._ls_origin \
                    and urlsplit(checked).path.startswith("/data/upload/"):
                version = "upload"
                data = None if known == version else self._download(checked)
            elif scheme in ("http", "https"):
                data, version = self._conditional_get(checked, known)
            else:
                data = self.fetch_bytes(url)
                version = "sha256:" + hashlib.sha256(data).hexdigest()
        except ImageError:
            raise
        except (ValueError, UnicodeError, OSError) as e:
            raise ImageError(f"cannot fetch {describe_url(url)}: {type(e).__name__}: {e}") from e
        if data is None or version == known:
            return None, version
        memory = decode_memory(self.policy.max_decode_bytes)
        admit = (lambda source, nbytes, _size: memory.hold(source, nbytes, self.timeout)) if memory else None
        return decode_image(data, describe_url(url), self.policy.max_pixels, None, admit), version

    def _conditional_get(self, url: str, known: str | None) -> tuple[bytes | None, str]:
        """GET with ``If-None-Match`` / ``If-Modified-Since`` from ``known``: ``(None, known)`` on 304, else the
        body and its version. A redirect takes the plain path (``_download``: every hop checked)."""
        headers = dict(self._auth_for(url))
        if known and known.startswith("etag:"):
            headers["If-None-Match"] = known[len("etag:"):]
        elif known and known.startswith("modified:"):
            headers["If-Modified-Since"] = known[len("modified:"):]
        deadline = time.monotonic() + self.timeout
        try:
            response = self.session.get(url, headers=headers, timeout=self._left(deadline, url), stream=True,
                                        allow_redirects=False)
        except requests.RequestException as e:
            raise ImageError(f"cannot download {describe_url(url)}: {type(e).__name__}") from e
        with response:
            if response.status_code == 304 and known:
                return None, known
            if not response.is_redirect and response.status_code != 200:
                raise ImageError(f"downloading {describe_url(url)} answered HTTP {response.status_code}")
            if response.status_code == 200:
                declared = response.headers.get("Content-Length")
                if declared and declared.isdigit() and int(declared) > self.max_bytes:
                    raise ImageError(f"{describe_url(url)} is {declared} bytes, more than {self.max_bytes} (MAX_IMAGE_BYTES)")
                data = self._read_body(response, url, deadline)
                etag, modified = response.headers.get("ETag"), response.headers.get("Last-Modified")
                version = f"etag:{etag}" if etag else f"modified:{modified}" if modified else \
                    "sha256:" + hashlib.sha256(data).hexdigest()
                return data, version
        data = self._download(url)
        return data, "sha256:" + hashlib.sha256(data).hexdigest()
