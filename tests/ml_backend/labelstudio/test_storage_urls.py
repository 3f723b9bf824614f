"""Storage URLs (``s3://``, ``/data/local-files/?d=``) are fetched the way Label Studio resolves them, under the
fetch policy: real HTTP servers on 127.0.0.1 play Label Studio's resolver and an S3 endpoint."""

from __future__ import annotations

import base64
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from ml_backend.labelstudio.fetch import FetchPolicy, HostNotAllowed, ImageError, ImageFetcher, storage_uri
from ml_backend.labelstudio.importer import scan_keys
from ml_backend.labelstudio.storage import ImportErrorWithHint, LocalFilesSource, S3Source
from devkit.builders import png_bytes
from devkit.servers import LS_TOKEN, LocalServer

PNG = png_bytes((20, 10))
PROJECT = 7


class BucketServer(LocalServer):
    """An S3-like endpoint: ``/<bucket>/<key>?X-Amz-Signature=…`` -> the object; records each request's headers."""

    def __init__(self, objects: dict[str, bytes]) -> None:
        self.objects, self.requests = objects, []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                outer.requests.append((self.path, self.headers.get("Authorization")))
                body = outer.objects.get(urlsplit(self.path).path.lstrip("/"))
                self.send_response(200 if body is not None else 404)
                self.send_header("Content-Length", str(len(body or b"")))
                self.end_headers()
                self.wfile.write(body or b"")

            def log_message(self, *args):
                pass

        self._serve(Handler)


class ResolverServer(LocalServer):
    """Label Studio's storage endpoints as 1.23 answers them: ``/projects/<id>/resolve/?fileuri=<base64>`` and
    ``/tasks/<id>/resolve/`` -> 303 to a presigned URL (``presign``) or the bytes; ``/data/local-files/?d=`` ->
    the file; 404 for what no storage covers, 401 without the token, 403 with local-files serving off."""

    def __init__(self, bucket_url: str, objects: dict[str, bytes], presign: bool = True, serve_local: bool = True,
                 local: dict[str, bytes] | None = None) -> None:
        self.requests = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def send(self, code: int, body: bytes = b"", location: str | None = None):
                self.send_response(code)
                if location:
                    self.send_header("Location", location)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):  # noqa: N802
                parts = urlsplit(self.path)
                query = parse_qs(parts.query)
                outer.requests.append((self.path, self.headers.get("Authorization")))
                if self.headers.get("Authorization") != f"Token {LS_TOKEN}":
                    return self.send(401)
                if parts.path == "/data/local-files/":
                    if not serve_local:
                        return self.send(403)
                    body = (local or {}).get(query["d"][0])
                    return self.send(200, body) if body is not None else self.send(404)
                if parts.path in (f"/projects/{PROJECT}/resolve/", "/tasks/5/resolve/"):
                    uri = base64.urlsafe_b64decode(query["fileuri"][0]).decode()
                    key = uri.removeprefix("s3://")
                    if not uri.startswith("s3://imgs/") or key not in objects:
                        return self.send(404)
                    if presign:
                        return self.send(303, location=f"{bucket_url}/{key}?X-Amz-Signature=abc")
                    return self.send(200, objects[key])
                self.send(404)

            def log_message(self, *args):
                pass

        self._serve(Handler)


OBJECTS = {"imgs/data/train/cat/1.png": PNG, "imgs/data/train/cat/big.png": b"x" * 5000}


@pytest.fixture
def bucket():
    with BucketServer(OBJECTS) as server:
        yield server


def fetcher(ls_url: str, allowed=(), project_id: int | None = PROJECT, max_bytes: int = 1_000_000) -> ImageFetcher:
    policy = FetchPolicy(allowed_hosts=tuple(allowed), image_root=None, max_bytes=max_bytes, max_pixels=10**7,
                         timeout=10, allow_private=True)
    return ImageFetcher(ls_url, LS_TOKEN, policy, project_id=project_id)


def test_s3_url_resolves_through_the_project_and_the_presigned_host(bucket):
    with ResolverServer(bucket.url, OBJECTS) as ls:
        image = fetcher(ls.url, allowed=[bucket.url]).fetch("s3://imgs/data/train/cat/1.png")
        assert image.size == (20, 10)
        (path, auth), = ls.requests
        assert path.startswith(f"/projects/{PROJECT}/resolve/?fileuri=") and auth == f"Token {LS_TOKEN}"
        (path, auth), = bucket.requests
        assert path.startswith("/imgs/data/train/cat/1.png?X-Amz-Signature") and auth is None  # no token to S3


def test_label_studio_resolver_urls_and_streamed_bytes(bucket):
    uri = "s3://imgs/data/train/cat/1.png"
    resolver = f"/tasks/5/resolve/?fileuri={base64.urlsafe_b64encode(uri.encode()).decode()}"
    assert storage_uri(resolver) == uri and storage_uri("/data/upload/1/x.png") is None
    with ResolverServer(bucket.url, OBJECTS) as ls:  # what Label Studio's task API hands out
        assert fetcher(ls.url, allowed=[bucket.url]).fetch(ls.url + resolver).size == (20, 10)
    with ResolverServer(bucket.url, OBJECTS, presign=False) as ls:  # presign off: Label Studio streams the bytes
        assert fetcher(ls.url).fetch(uri).size == (20, 10)
        assert not bucket.requests[1:]


def test_presigned_host_must_be_allowed(bucket):
    with ResolverServer(bucket.url, OBJECTS) as ls:
        with pytest.raises(HostNotAllowed) as e:
            fetcher(ls.url).fetch("s3://imgs/data/train/cat/1.png")
    message = str(e.value)
    assert "s3://imgs/data/train/cat/1.png" in message and "ALLOWED_IMAGE_HOSTS" in message
    assert "presign off" in message and not bucket.requests  # nothing was fetched from the host


def test_unresolvable_storage_urls_say_why(bucket):
    with ResolverServer(bucket.url, OBJECTS) as ls:
        with pytest.raises(ImageError, match=f"no import storage of project {PROJECT} covers it"):
            fetcher(ls.url, allowed=[bucket.url]).fetch("s3://other-bucket/x.png")
        with pytest.raises(ImageError, match="the project must be known"):
            fetcher(ls.url, project_id=None).fetch("s3://imgs/data/train/cat/1.png")
        with pytest.raises(ImageError, match="the API key has no access"):
            ImageFetcher(ls.url, "wrong", fetcher(ls.url).policy, project_id=PROJECT).fetch("s3://imgs/data/train/cat/1.png")
        with pytest.raises(ImageError, match="scheme 'ftp' is not allowed"):
            fetcher(ls.url).fetch("ftp://imgs/x.png")
        # the fetch policy holds behind the redirect: the byte cap cuts the presigned download
        with pytest.raises(ImageError, match="MAX_IMAGE_BYTES"):
            fetcher(ls.url, allowed=[bucket.url], max_bytes=1000).fetch("s3://imgs/data/train/cat/big.png")


def test_local_files_urls(bucket):
    local = {"ds/train/cat/1.png": PNG}
    with ResolverServer(bucket.url, OBJECTS, local=local) as ls:
        assert fetcher(ls.url).fetch("/data/local-files/?d=ds/train/cat/1.png").size == (20, 10)
        with pytest.raises(ImageError, match="no Local files storage"):
            fetcher(ls.url).fetch("/data/local-files/?d=ds/train/cat/2.png")
    with ResolverServer(bucket.url, OBJECTS, serve_local=False, local=local) as ls:
        with pytest.raises(ImageError, match="LOCAL_FILES_SERVING_ENABLED=true"):
            fetcher(ls.url).fetch("/data/local-files/?d=ds/train/cat/1.png")


def test_sources(tmp_path: Path):
    root = tmp_path / "root"
    source = LocalFilesSource.create(root / "my data", root)
    assert source.image_url("train/cat/a b.png") == "/data/local-files/?d=my%20data/train/cat/a%20b.png"
    assert source.payload(3) == {"project": 3, "title": "robustar", "path": str(root / "my data"), "use_blob_urls": True}
    mounted = LocalFilesSource.create(tmp_path / "here", "/srv/ls", ls_folder="/srv/ls/sets/one")
    assert mounted.image_url("test/dog/1.jpg") == "/data/local-files/?d=sets/one/test/dog/1.jpg"
    with pytest.raises(ImportErrorWithHint, match="not inside Label Studio's LOCAL_FILES_DOCUMENT_ROOT"):
        LocalFilesSource.create(tmp_path / "elsewhere", root)
    with pytest.raises(ImportErrorWithHint, match="--document-root"):
        LocalFilesSource.create(root, None)

    s3 = S3Source.parse("s3://imgs/data/set/", endpoint="http://minio:9000", presign=False)
    assert (s3.bucket, s3.prefix, s3.image_url("train/cat/1.png")) == ("imgs", "data/set", "s3://imgs/data/set/train/cat/1.png")
    assert s3.payload(1)["presign"] is False and "aws_access_key_id" not in s3.payload(1)
    assert S3Source.parse("s3://imgs").image_url("train/a/1.png") == "s3://imgs/train/a/1.png"
    with pytest.raises(ImportErrorWithHint, match="not an s3://bucket/prefix URL"):
        S3Source.parse("/local/folder")

    classes, items = scan_keys("s3://imgs/set", ["train/cat/1.png", "test/dog/2.JPG", "README.md", "train/cat/notes.txt",
                                                 "other/cat/3.png", "train/4.png"])
    assert classes == ["cat", "dog"] and [(it.key, it.split, it.label) for it in items] == [
        ("test/dog/2.JPG", "test", "dog"), ("train/cat/1.png", "train", "cat")]
    with pytest.raises(ImportErrorWithHint, match="no images under train/<class>/"):
        scan_keys("s3://imgs/set", ["README.md"])
