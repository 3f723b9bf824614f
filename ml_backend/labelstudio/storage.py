"""Images where users keep them: register a dataset with Label Studio as *Local files* or *S3* storage.

``robustar import --storage local-files|s3`` registers the folder or the bucket as an import storage of
the project (``POST /api/storages/localfiles/`` or ``/api/storages/s3/``: Label Studio checks that it
can read it) and then creates the tasks itself, in batches, with image URLs Label Studio resolves:

- Local files: ``/data/local-files/?d=<path under LOCAL_FILES_DOCUMENT_ROOT>``. Label Studio serves the
  file to whoever may read a project whose Local files storage holds it (the browser's session, the
  backend's ``Token``); it needs ``LOCAL_FILES_SERVING_ENABLED=true`` and the folder inside its
  ``LOCAL_FILES_DOCUMENT_ROOT``.
- S3 (any S3-compatible endpoint): ``s3://bucket/key``. Label Studio resolves it
  (``/projects/<id>/resolve/?fileuri=…``) to a presigned URL on the endpoint, or streams the bytes
  itself when the storage's ``presign`` is off.

The storage is never synced: a sync would create one task per file without ``split``, ``label`` and
``key``. An S3 dataset is listed with boto3 (``pip install 'robustar-ls[s3]'``) using the same
endpoint and credentials that Label Studio is given.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import quote, urlsplit

import requests

STORAGE_TITLE = "robustar"


class ImportErrorWithHint(RuntimeError):
    """The dataset or the server is not usable; the message says what to fix."""


@dataclass(frozen=True)
class LocalFilesSource:
    """A dataset folder that Label Studio serves as Local files storage."""

    folder: Path  # the dataset, as this machine sees it (it is scanned here)
    document_root: Path  # Label Studio's LOCAL_FILES_DOCUMENT_ROOT
    ls_folder: Path  # the dataset, as Label Studio sees it (the same path unless mounted elsewhere)

    kind = "localfiles"

    @classmethod
    def create(cls, folder: str | Path, document_root: str | Path | None, ls_folder: str | Path | None = None
               ) -> "LocalFilesSource":
        if not document_root:
            raise ImportErrorWithHint("--storage local-files needs Label Studio's LOCAL_FILES_DOCUMENT_ROOT "
                                      "(--document-root or the LOCAL_FILES_DOCUMENT_ROOT variable)")
        folder = Path(folder).absolute()
        ls_folder = Path(os.path.normpath(Path(ls_folder or folder).absolute()))
        root = Path(os.path.normpath(Path(document_root).absolute()))
        if ls_folder != root and root not in ls_folder.parents:
            raise ImportErrorWithHint(f"{ls_folder} is not inside Label Studio's LOCAL_FILES_DOCUMENT_ROOT {root}: "
                                      "Label Studio serves local files only from there")
        return cls(folder, root, ls_folder)

    def describe(self) -> str:
        return f"Local files storage {self.ls_folder}"

    def image_url(self, key: str) -> str:
        """What Label Studio's own sync writes (``quote`` of the path under the document root), relative."""
        relative = (self.ls_folder / key).relative_to(self.document_root).as_posix()
        return f"/data/local-files/?d={quote(relative)}"

    def payload(self, project_id: int) -> dict:
        return {"project": project_id, "title": STORAGE_TITLE, "path": str(self.ls_folder), "use_blob_urls": True}

    def same(self, storage: dict) -> bool:
        return os.path.normpath(storage.get("path") or "") == str(self.ls_folder)


@dataclass(frozen=True)
class S3Source:
    """A dataset under ``s3://bucket/prefix`` that Label Studio reads as S3 storage."""

    bucket: str
    prefix: str  # no leading or trailing "/"
    endpoint: str | None = None  # an S3-compatible endpoint (MinIO, Ceph, moto ...); None: AWS
    region: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = None
    session_token: str | None = None
    presign: bool = True  # Label Studio redirects to presigned URLs (else it streams the bytes itself)

    kind = "s3"

    @classmethod
    def parse(cls, url: str, **options) -> "S3Source":
        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc:
            raise ImportErrorWithHint(f"{url!r} is not an s3://bucket/prefix URL")
        return cls(parts.netloc, parts.path.strip("/"), **options)

    def describe(self) -> str:
        return f"S3 storage s3://{self.bucket}/{self.prefix}" + (f" at {self.endpoint}" if self.endpoint else "")

    def object_key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def image_url(self, key: str) -> str:
        return f"s3://{self.bucket}/{self.object_key(key)}"

    def payload(self, project_id: int) -> dict:
        body = {"project": project_id, "title": STORAGE_TITLE, "bucket": self.bucket, "prefix": self.prefix,
                "use_blob_urls": True, "recursive_scan": True, "presign": self.presign,
                "s3_endpoint": self.endpoint or "", "region_name": self.region or ""}
        credentials = {"aws_access_key_id": self.access_key_id, "aws_secret_access_key": self.secret_access_key,
                       "aws_session_token": self.session_token}
        return {**body, **{k: v for k, v in credentials.items() if v}}

    def same(self, storage: dict) -> bool:
        return (storage.get("bucket") == self.bucket and (storage.get("prefix") or "").strip("/") == self.prefix
                and (storage.get("s3_endpoint") or "") == (self.endpoint or ""))

    def list_keys(self) -> list[str]:
        """Every object key under the prefix, relative to it (``train/cat/1.png``), listed with boto3."""
        try:
            import boto3
            from botocore.exceptions import BotoCoreError, ClientError
        except ImportError as e:
            raise ImportErrorWithHint("listing an S3 dataset needs boto3: pip install 'robustar-ls[s3]'") from e
        client = boto3.client("s3", endpoint_url=self.endpoint or None, region_name=self.region or None,
                              aws_access_key_id=self.access_key_id, aws_secret_access_key=self.secret_access_key,
                              aws_session_token=self.session_token)
        start = f"{self.prefix}/" if self.prefix else ""
        keys = []
        try:
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=start):
                keys += [obj["Key"][len(start):] for obj in page.get("Contents", []) if not obj["Key"].endswith("/")]
        except (BotoCoreError, ClientError) as e:
            raise ImportErrorWithHint(f"cannot list s3://{self.bucket}/{start}: {e}") from e
        return keys


StorageSource = LocalFilesSource | S3Source


def split_key(key: str) -> tuple[str, str] | None:
    """(split, class) of a dataset key ``<split>/<class>/<file>``, or None for any other shape."""
    parts = PurePosixPath(key).parts
    return (parts[0], parts[1]) if len(parts) == 3 else None


def register_storage(http: requests.Session, url: str, project_id: int, source: StorageSource,
                     timeout: float = 60.0) -> int:
    """The id of the project's import storage for ``source``: the one registered before (its settings
    refreshed, so new credentials take effect) or a new one. Label Studio checks the connection."""
    endpoint = f"{url}/api/storages/{source.kind}/"
    r = http.get(endpoint, params={"project": project_id}, timeout=timeout)
    if r.status_code == 404:
        raise ImportErrorWithHint(f"Label Studio at {url} has no {source.kind} storage API (for Local files: "
                                  "ENABLE_LOCAL_FILES_STORAGE must not be false)")
    _raise_for(r, f"listing the {source.kind} storages of project {project_id}")
    payload = source.payload(project_id)
    known = [s for s in r.json() if source.same(s)]
    if known:
        r = http.patch(f"{endpoint.rstrip('/')}/{known[0]['id']}", json=payload, timeout=timeout)
    else:
        r = http.post(endpoint, json=payload, timeout=timeout)
    _raise_for(r, f"registering the {source.describe()} with project {project_id}")
    return int(r.json()["id"])


def _raise_for(r: requests.Response, doing: str) -> None:
    if r.status_code >= 400:
        try:
            body = r.json()
            detail = body.get("validation_errors") or body.get("detail") or body
        except ValueError:
            detail = r.text[:300]
        raise ImportErrorWithHint(f"{doing} failed: HTTP {r.status_code}: {detail}")
