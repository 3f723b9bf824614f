"""Label Studio storage URLs as the image fetcher sees them, and what to do when Label Studio will not
give their bytes.

Cloud storage URLs (``s3://``, ``gs://``, ``azure-blob://``) are resolved the way Label Studio resolves
them for its own pages, through ``<LABEL_STUDIO_URL>/projects/<project>/resolve/?fileuri=…`` with the
token; Label Studio redirects to a presigned URL on the storage's endpoint (a host that must be in
``ALLOWED_IMAGE_HOSTS``, checked like any redirect) or streams the bytes itself (presign off). A storage
URL that cannot be resolved, or a Local files URL (``/data/local-files/?d=…``) Label Studio will not
serve, raises an ``ImageError`` that says why (``storage_hint``, ``local_files_hint``).
"""

from __future__ import annotations

import base64
import binascii
import re
from urllib.parse import parse_qs, unquote, urlsplit

from ml_backend.labelstudio.fetch_policy import HostNotAllowed, describe_url
from training.images import ImageError

STORAGE_SCHEMES = ("s3", "gs", "azure-blob")  # Label Studio's cloud storages: resolved through Label Studio


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
