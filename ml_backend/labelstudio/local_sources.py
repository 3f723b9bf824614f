"""Images that need no download: ``data:`` URIs (decoded inline) and ``file://`` URLs, read only under
``IMAGE_ROOT`` (the real path, symlinks resolved, must stay inside it), both cut at ``MAX_IMAGE_BYTES``.
"""

from __future__ import annotations

import base64
import binascii
import os
from urllib.parse import unquote, unquote_to_bytes, urlsplit

from ml_backend.labelstudio.fetch_policy import describe_url
from training.images import ImageError


def read_data_uri(url: str, max_bytes: int) -> bytes:
    """The bytes a ``data:`` URI holds (base64 or percent-encoded)."""
    head, sep, payload = url.partition(",")
    if not sep:
        raise ImageError("malformed data URI: no ',' separates the header from the data")
    if head.lower().endswith(";base64"):
        if len(payload) * 3 // 4 > max_bytes:
            raise ImageError(f"data URI holds more than {max_bytes} bytes (MAX_IMAGE_BYTES)")
        try:
            return base64.b64decode(payload, validate=False)
        except (binascii.Error, ValueError) as e:
            raise ImageError(f"malformed data URI: {e}") from e
    data = unquote_to_bytes(payload)
    if len(data) > max_bytes:
        raise ImageError(f"data URI holds more than {max_bytes} bytes (MAX_IMAGE_BYTES)")
    return data


def local_path(url: str, image_root: str | None) -> str:
    """The real path of a ``file://`` URL, checked to be under ``image_root`` before anything is asked of the
    file system about it (so a refused URL reveals nothing, not even whether the file exists)."""
    parts = urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise ImageError(f"file URL {describe_url(url)!r} names a remote host; not allowed")
    if not image_root:
        raise ImageError("local file URLs are not allowed (set IMAGE_ROOT to the folder images may be read from)")
    real = os.path.realpath(unquote(parts.path))
    try:
        inside = os.path.commonpath([image_root, real]) == image_root
    except ValueError:
        inside = False
    if not inside:
        raise ImageError(f"local file {describe_url(url)!r} is outside IMAGE_ROOT; not allowed")
    return real


def read_local_file(url: str, image_root: str | None, max_bytes: int) -> bytes:
    """The bytes of a ``file://`` URL under ``image_root`` (a real path; None: no local files allowed)."""
    real = local_path(url, image_root)
    try:
        if not os.path.isfile(real):
            raise ImageError(f"local file {describe_url(url)!r} does not exist or is not a file")
        if os.path.getsize(real) > max_bytes:
            raise ImageError(f"local file {describe_url(url)!r} is larger than {max_bytes} bytes (MAX_IMAGE_BYTES)")
        with open(real, "rb") as f:
            return f.read(max_bytes + 1)
    except OSError as e:
        raise ImageError(f"cannot read local file {describe_url(url)!r}: {e.strerror or e}") from e
