"""``ImageFetcher``: fetch task images the way Label Studio serves them (uploads, local files, absolute
URLs, data URIs, storage URLs), under a required ``FetchPolicy``.

Every URL is checked first (``check_url``: ``ml_backend.labelstudio.fetch_policy`` says where an image may
come from). Redirects are followed by hand (at most 5), each target re-checked, the token dropped when
leaving the Label Studio origin. Downloads are streamed and cut at ``MAX_IMAGE_BYTES`` (default 50 MB);
decoding refuses more than ``MAX_IMAGE_PIXELS`` (64 MP). For predictions images are downscaled while
decoding (``PREDICT_MAX_SIDE``), charged to the request's pixel budget (``RequestBudget``) and decoded
under the process-wide ``DecodeMemory`` (``ml_backend.labelstudio.image_budget``). ``FETCH_TIMEOUT``
bounds the whole download of one image (connect, redirects, every read: one deadline), not each read: a
host that drips a byte at a time is cut off at the deadline.

The fetcher's pieces live beside it and are re-exported here: ``fetch_policy`` (the policy, URL checks),
``address_pinning`` (public addresses only, no DNS rebinding), ``storage_urls`` (``s3://…`` through Label
Studio), ``local_sources`` (data URIs, IMAGE_ROOT files), ``image_budget`` (memory budgets).
"""

from __future__ import annotations

import hashlib
import os
import time
from contextlib import contextmanager, nullcontext
from urllib.parse import urljoin, urlsplit

import requests
import urllib3
from PIL import Image

from ml_backend.labelstudio import image_budget
from ml_backend.labelstudio.address_pinning import address_kind, checked_address, pinned_adapter
from ml_backend.labelstudio.fetch_policy import (
    BAD_URL_CHARS,
    FetchPolicy,
    HostNotAllowed,
    describe_url,
    listed_host,
    url_origin,
)
from ml_backend.labelstudio.image_budget import DecodeMemory, ImageBudgetError, RequestBudget, decode_memory
from ml_backend.labelstudio.local_sources import local_path, read_data_uri, read_local_file
from ml_backend.labelstudio.storage_urls import (
    STORAGE_SCHEMES,
    local_files_hint,
    storage_hint,
    storage_resolve_path,
    storage_uri,
)
from training.images import ImageError, decode_image

__all__ = ["DecodeMemory", "FetchPolicy", "HTTPStatusImageError", "HostNotAllowed", "ImageBudgetError", "ImageError",
           "ImageFetcher", "RequestBudget", "STORAGE_SCHEMES", "describe_url", "decode_memory", "storage_uri",
           # re-exported from the modules that own them (imported from here before the split)
           "address_kind", "local_files_hint", "storage_hint", "storage_resolve_path"]

MAX_REDIRECTS = 5
_CHUNK = 1 << 16
_decode_memories = image_budget._decode_memories  # the process's DecodeMemory per limit (tests seed it here)


class HTTPStatusImageError(ImageError):
    """The image server answered with an HTTP status other than 200 (``http_status``; not ``status``, which
    callers read as the status of their own answer, as ``ImageBudgetError.status``)."""

    def __init__(self, message: str, http_status: int) -> None:
        super().__init__(message)
        self.http_status = http_status


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
        adapter = pinned_adapter(self._connect_address)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.allowed_hosts = tuple(policy.allowed_hosts)
        self.image_root = os.path.realpath(policy.image_root) if policy.image_root else None
        self.max_bytes = int(policy.max_bytes)
        self._ls_origin = url_origin(self.base_url) if self.base_url else None

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
        return origin == self._ls_origin or listed_host(origin, self.allowed_hosts)

    def _connect_address(self, scheme: str, host: str, port: int) -> str:
        """The address to connect to for ``host``: resolved once, every address checked, the first returned
        (the connection goes there). The Label Studio origin connects as configured; other hosts must resolve
        to public addresses only, unless ALLOW_PRIVATE_IMAGE_HOSTS (then they are resolved and pinned all the same)."""
        if (scheme, host.lower(), port) == self._ls_origin:
            return host
        return checked_address(host, port, self.policy.allow_private)

    def check_url(self, url: str) -> str:
        """The absolute URL to fetch; raises ImageError when it may not be fetched."""
        if not isinstance(url, str) or not url.strip():
            raise ImageError("image URL is empty or not a string")
        url = url.strip()
        if url.startswith("data:"):
            return url
        if BAD_URL_CHARS.search(url):
            raise ImageError(f"image URL {describe_url(url)!r} contains control characters or backslashes")
        url = self.resolve(url)
        parts = urlsplit(url)
        if parts.scheme.lower() == "file":
            return url
        if "@" in parts.netloc:
            raise ImageError(f"image URL {describe_url(url)!r} carries user info; not allowed")
        origin = url_origin(url)
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
        return {"Authorization": f"Token {self.api_key}"} if url_origin(url) == self._ls_origin else {}

    # ------------------------------------------------------------------------------------------
    # reading

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

    def _download(self, url: str, deadline: float | None = None) -> bytes:
        """The body behind an http(s) URL; a storage or Local files URL that Label Studio would not resolve
        or serve raises with what to do (``storage_hint``, ``local_files_hint``). ``deadline``: the request's
        (``RequestBudget.deadline``), when sooner than this image's ``FETCH_TIMEOUT``."""
        try:
            return self._follow(url, deadline)
        except (HostNotAllowed, HTTPStatusImageError) as e:
            uri = storage_uri(url)
            hint = storage_hint(uri, e, self.project_id) if uri else local_files_hint(url, e)
            if hint is None:
                raise
            raise type(e)(hint, e.host if isinstance(e, HostNotAllowed) else e.http_status) from e

    def _follow(self, url: str, request_deadline: float | None = None) -> bytes:
        deadline = time.monotonic() + self.timeout  # one deadline for the whole image, redirects included
        if request_deadline is not None:
            deadline = min(deadline, request_deadline)  # and one for all the images of a request
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

    def fetch_bytes(self, url: str, deadline: float | None = None) -> bytes:
        """Return the raw bytes behind a task-data image URL (raises ImageError when not allowed)."""
        try:
            return self._fetch_bytes(url, deadline)
        except ImageError:
            raise
        except (ValueError, UnicodeError, OSError) as e:  # e.g. a malformed IPv6 host in urlsplit
            raise ImageError(f"cannot fetch {describe_url(url)}: {type(e).__name__}: {e}") from e

    def _fetch_bytes(self, url: str, deadline: float | None = None) -> bytes:
        url = self.check_url(url)
        if url.startswith("data:"):
            return read_data_uri(url, self.max_bytes)
        if urlsplit(url).scheme.lower() == "file":
            return read_local_file(url, self.image_root, self.max_bytes)
        if deadline is not None and time.monotonic() >= deadline:
            raise ImageError(f"{describe_url(url)}: not fetched, the request's images took longer than "
                             f"{self.timeout:g} s together (FETCH_TIMEOUT)")
        return self._download(url, deadline)

    def fetch(self, url: str, max_side: int | None = None, budget: RequestBudget | None = None) -> Image.Image:
        """Return the image behind a task-data URL as RGB.

        ``max_side``: downscale while decoding so the longer side is at most that (the prediction path; the
        stored size stays in ``training.images.original_size``); None keeps the full size (training).
        ``budget``: the request's pixel budget, charged before decoding, and its deadline (one for all its
        images). Every decode also reserves its peak memory in the process-wide ``DecodeMemory``
        (``PREDICT_MAX_DECODE_BYTES``).
        """
        memory = decode_memory(self.policy.max_decode_bytes)
        deadline = budget.deadline if budget is not None else None
        share = budget.decode if budget is not None else None
        wait = self.timeout if deadline is None else max(0.0, min(self.timeout, deadline - time.monotonic()))

        @contextmanager
        def admit(source: str, nbytes: int, out_size: tuple[int, int]):
            pixels = out_size[0] * out_size[1]
            if budget is not None:
                budget.charge(source, pixels)
            try:
                with share.hold(source, nbytes, wait) if share is not None else nullcontext():
                    with memory.hold(source, nbytes, wait) if memory is not None else nullcontext():
                        yield
            except BaseException:  # refused or unreadable: the request keeps its budget for other images
                if budget is not None:
                    budget.refund(pixels)
                raise

        return decode_image(self.fetch_bytes(url, deadline), describe_url(url), self.policy.max_pixels, max_side, admit)

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
                st = os.stat(local_path(checked, self.image_root))  # IMAGE_ROOT checked before the stat
                version = f"file:{st.st_mtime_ns}:{st.st_size}"
                data = None if version == known else read_local_file(checked, self.image_root, self.max_bytes)
            elif scheme in ("http", "https") and url_origin(checked) == self._ls_origin \
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
