"""The training image cache (training.image_cache) with the worker's image source
(ml_backend.labelstudio.fetch.ImageFetcher.fetch_versioned), against real local HTTP servers and files: a second job
on an unchanged project fetches no image, a changed image is fetched again, entries are written
atomically and the cache is pruned least recently used first."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import threading
import time
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler

import numpy as np
import pytest

from label_config.export import parse_export
from label_config.render import parse_config, render_config
from ml_backend.labelstudio.fetch import FetchPolicy, ImageFetcher
from ml_backend.predict.registry import model_defaults
from ml_backend.settings import Settings
from devkit.builders import export_task, png_bytes
from devkit.servers import LS_TOKEN, FileServer, LocalServer
from training.checkpoints import CheckpointStore
from training.dataset import load_splits
from training.image_cache import ImageCache, read_header, read_pixels
from training.images import ImageError
from training.options import TrainOptions
from training.pipeline import run_pipeline

CLASSES = ["red", "blue"]
CONFIG = parse_config(render_config(CLASSES))
COLOURS = {"red": (220, 20, 20), "blue": (20, 20, 220)}


class ValidatingServer(LocalServer):
    """Serves ``files`` (path -> bytes) with an ``ETag`` (a hash of the bytes) or, with ``etag=False``, a
    ``Last-Modified``, and answers a matching ``If-None-Match`` / ``If-Modified-Since`` with 304, as static
    file servers and S3 do. Records ``(path, status)`` of every GET."""

    def __init__(self, files: dict[str, bytes], etag: bool = True) -> None:
        self.files, self.etag = files, etag
        self.modified = {p: time.time() - 60 for p in files}
        self.requests: list[tuple[str, int]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):  # noqa: N802
                body = outer.files.get(self.path)
                if body is None:
                    return self._answer(404, b"")
                tag = '"' + hashlib.md5(body).hexdigest() + '"'
                stamp = formatdate(outer.modified[self.path], usegmt=True)
                fresh = (self.headers.get("If-None-Match") == tag if outer.etag
                         else self.headers.get("If-Modified-Since") == stamp)
                self._answer(304 if fresh else 200, b"" if fresh else body,
                             {"ETag": tag} if outer.etag else {"Last-Modified": stamp})

            def _answer(self, code: int, body: bytes, headers: dict | None = None) -> None:
                outer.requests.append((self.path, code))
                self.send_response(code)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self._serve(Handler)

    def change(self, path: str, body: bytes) -> None:
        self.files[path] = body
        self.modified[path] = time.time()

    def served(self) -> int:
        """Image bodies sent (200 answers)."""
        return sum(code == 200 for _, code in self.requests)


def policy(**kw) -> FetchPolicy:
    return dataclasses.replace(FetchPolicy.from_settings(Settings()), **kw)


def tasks_for(urls: dict[str, str]) -> list[dict]:
    """One training task per URL (url -> class); every third also a test task."""
    tasks = [export_task(i + 1, url, split="train", label=cls) for i, (url, cls) in enumerate(urls.items())]
    tasks += [export_task(100 + i, url, split="test", label=cls) for i, (url, cls) in enumerate(urls.items()) if i % 3 == 0]
    return tasks


def image_files(n: int) -> tuple[dict[str, bytes], dict[str, str]]:
    """``n`` small PNGs (path -> bytes) and their classes (path -> class)."""
    files, classes = {}, {}
    for i in range(n):
        cls = CLASSES[i % 2]
        r, g, b = COLOURS[cls]
        files[f"/img/{i}.png"] = png_bytes((20 + i % 5, 16), (r, (g + 7 * i) % 256, b))
        classes[f"/img/{i}.png"] = cls
    return files, classes


def test_a_second_job_fetches_no_image_and_a_changed_image_is_fetched_again(tmp_path):
    """Two jobs (``run_pipeline`` as the worker calls it) on an unchanged project: the second one's
    images all come from the cache (every GET answered 304, no image body sent); then one image
    changes on the server and the next job fetches exactly that one, and trains on its new pixels."""
    files, classes = image_files(12)
    with ValidatingServer(files) as server:
        urls = {server.url + p: c for p, c in classes.items()}
        fetcher = ImageFetcher(None, None, policy(allowed_hosts=(server.url,), allow_private=True))
        cache = ImageCache(tmp_path / "cache")
        store = CheckpointStore(tmp_path / "models", 1)
        defaults = model_defaults(Settings(model_arch="tiny-cnn", image_size=16))
        opts = TrainOptions(epochs=1, batch_size=8, device="cpu", num_workers=2)

        def job() -> dict:
            export = parse_export(tasks_for(urls), CONFIG)
            return run_pipeline(store, CLASSES, export, opts, fetcher.fetch, defaults, cache=cache,
                                source=fetcher.fetch_versioned).summary

        first = job()
        assert server.served() == 12  # each URL once, though 4 are also test tasks
        assert {k: v for k, v in first["data"]["cache"].items() if k != "dir"} == \
            {"images": 12, "fetched": 12, "cached": 0, "pruned": 0}
        assert first["data"]["train"] == first["data"]["test"] == "memory"

        server.requests.clear()
        second = job()
        assert server.served() == 0 and {code for _, code in server.requests} == {304}
        assert second["data"]["cache"]["fetched"] == 0 and second["data"]["cache"]["cached"] == 12
        assert second["counts"]["train_images"] == 12

        changed = "/img/3.png"
        before = read_pixels(cache.path(server.url + changed, 16), 16).copy()
        server.change(changed, png_bytes((21, 16), (0, 255, 0)))
        server.requests.clear()
        third = job()
        assert [p for p, code in server.requests if code == 200] == [changed]
        assert third["data"]["cache"]["fetched"] == 1
        after = read_pixels(cache.path(server.url + changed, 16), 16)
        assert not np.array_equal(before, after) and after[1].min() > 200  # green now


def test_last_modified_serves_as_the_version_when_there_is_no_etag(tmp_path):
    files, classes = image_files(4)
    with ValidatingServer(files, etag=False) as server:
        fetcher = ImageFetcher(None, None, policy(allowed_hosts=(server.url,), allow_private=True))
        cache = ImageCache(tmp_path)
        urls = [server.url + p for p in files]
        assert all(e.fetched for e in cache.fill(urls, 8, fetcher.fetch_versioned).values())
        assert read_header(cache.path(urls[0], 8))["version"].startswith("modified:")
        assert not any(e.fetched for e in cache.fill(urls, 8, fetcher.fetch_versioned).values())
        assert {code for _, code in server.requests[4:]} == {304}


def test_label_studio_uploads_are_not_asked_for_again(tmp_path):
    """Label Studio's own uploads (``/data/upload/<project>/<unique prefix>-<name>``) never change under
    their URL: once cached, a job sends Label Studio no request for them at all."""
    files = {f"/data/upload/1/abc{i}-x.png": png_bytes((10, 12), (30 * i, 0, 0)) for i in range(5)}
    with FileServer(files, LS_TOKEN) as ls:
        fetcher = ImageFetcher(ls.url, LS_TOKEN, policy())
        cache = ImageCache(tmp_path)
        urls = list(files)  # relative, as Label Studio puts them in task data
        assert all(e.fetched for e in cache.fill(urls, 8, fetcher.fetch_versioned).values())
        assert len(ls.requests) == 5
        assert not any(e.fetched for e in cache.fill(urls, 8, fetcher.fetch_versioned).values())
        assert len(ls.requests) == 5


def test_files_are_versioned_by_mtime_and_size_and_other_servers_by_a_hash(tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    paths = [root / f"{i}.png" for i in range(3)]
    for i, p in enumerate(paths):
        p.write_bytes(png_bytes((9, 9), (10 * i, 0, 0)))
    fetcher = ImageFetcher(None, None, policy(image_root=root))
    cache = ImageCache(tmp_path / "cache")
    urls = [p.as_uri() for p in paths]
    assert [e.fetched for e in cache.fill(urls, 8, fetcher.fetch_versioned).values()] == [True] * 3
    assert [e.fetched for e in cache.fill(urls, 8, fetcher.fetch_versioned).values()] == [False] * 3
    paths[1].write_bytes(png_bytes((9, 9), (0, 200, 0)))
    os.utime(paths[1], ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
    assert [e.fetched for e in cache.fill(urls, 8, fetcher.fetch_versioned).values()] == [False, True, False]

    # a server without validators: fetched every time, but an unchanged body is not decoded or written again
    files = {"/a.png": png_bytes()}
    with FileServer(files, LS_TOKEN) as plain:
        fetcher = ImageFetcher(plain.url, LS_TOKEN, policy())
        assert cache.get(plain.url + "/a.png", 8, fetcher.fetch_versioned).fetched
        assert not cache.get(plain.url + "/a.png", 8, fetcher.fetch_versioned).fetched
        assert read_header(cache.path(plain.url + "/a.png", 8))["version"].startswith("sha256:")
        assert len(plain.requests) == 2


def test_an_unreadable_image_is_skipped_and_named(tmp_path, caplog):
    files = {"/ok.png": png_bytes((8, 8), COLOURS["red"]), "/bad.png": b"not an image"}
    with ValidatingServer(files) as server:
        fetcher = ImageFetcher(None, None, policy(allowed_hosts=(server.url,), allow_private=True))
        export = parse_export([export_task(1, server.url + "/ok.png", label="red"),
                               export_task(2, server.url + "/bad.png", label="blue")], CONFIG)
        splits = load_splits(export, fetcher.fetch, 8, CLASSES, 2, cache=ImageCache(tmp_path),
                             source=fetcher.fetch_versioned)
    assert splits["train"].task_ids == [1]
    assert export.counts()["skipped"] == {"image_error": 1}
    assert export.skipped == {"image_error": [2]}
    assert any("task 2 skipped (image_error)" in m and "bad.png: not a readable image" in m for m in caplog.messages)
    assert not list(tmp_path.rglob("*.tmp"))


def test_concurrent_writers_leave_whole_entries(tmp_path):
    """Jobs filling the same cache at once (threads here, processes or torchrun ranks in production)
    replace an entry atomically: it is always whole, and no temporary file is left behind."""
    from PIL import Image

    cache = ImageCache(tmp_path)
    imgs = [Image.new("RGB", (12, 12), (i, 255 - i, 0)) for i in range(0, 256, 32)]
    seen_bad = []

    def write(img):
        for _ in range(20):
            cache.write("http://x/a.png", 8, f"v{img.getpixel((0, 0))[0]}", img)

    def read():
        for _ in range(200):
            head = read_header(cache.path("http://x/a.png", 8))
            if head is not None and os.path.getsize(cache.path("http://x/a.png", 8)) != 256 + 3 * 64:
                seen_bad.append(head)

    threads = [threading.Thread(target=write, args=(img,)) for img in imgs] + [threading.Thread(target=read)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not seen_bad and not list(tmp_path.rglob("*.tmp"))
    head = read_header(cache.path("http://x/a.png", 8))
    pixels = read_pixels(cache.path("http://x/a.png", 8), 8)
    assert int(pixels[0, 0, 0]) == int(head["version"][1:])  # header and pixels from the same write


def test_prune_removes_the_least_recently_used_and_spares_running_jobs(tmp_path):
    from PIL import Image

    cache = ImageCache(tmp_path, max_bytes=0, grace_s=3600)
    paths = [cache.write(f"http://x/{i}.png", 8, "v", Image.new("RGB", (8, 8))) for i in range(6)]
    entry = paths[0].stat().st_size
    now = time.time()
    for i, p in enumerate(paths[:4]):  # four used long ago (0 the oldest), two just now
        os.utime(p, (now - 10_000 + i, now - 10_000 + i))
    assert cache.prune() == (0, 0)  # max_bytes 0: unbounded
    assert cache.prune(3 * entry) == (3, 3 * entry)
    assert [p.exists() for p in paths] == [False, False, False, True, True, True]
    assert cache.prune(entry) == (1, entry)  # the two recent ones are spared: a job may be reading them
    assert cache.usage() == (2, 2 * entry)


def test_the_source_must_not_call_a_missing_entry_unchanged(tmp_path):
    with pytest.raises(ImageError, match="not in the cache"):
        ImageCache(tmp_path).get("http://x/a.png", 8, lambda url, known: (None, "v1"))


def test_an_entry_is_served_only_to_the_project_that_fetched_it(tmp_path):
    """Issue 21 (11): entries were keyed by URL only, so ``/data/upload/1/secret.png`` cached for project 1 was
    handed to project 2 without a request. Now the worker's cache is keyed by Label Studio's origin and the
    project too: project 2 gets the image only through its own (authorised) fetch."""
    from ml_backend.jobs.train_job import image_cache

    url = "/data/upload/1/abc-secret.png"
    with FileServer({url: png_bytes((10, 12))}, LS_TOKEN) as ls:
        settings = Settings(label_studio_url=ls.url, label_studio_api_key=LS_TOKEN, train_cache_dir=tmp_path / "cache")
        fetcher = ImageFetcher(ls.url, LS_TOKEN, policy())
        assert image_cache(settings, 1).get(url, 8, fetcher.fetch_versioned).fetched
        assert not image_cache(settings, 1).get(url, 8, fetcher.fetch_versioned).fetched  # project 1's own entry
        assert len(ls.requests) == 1
        assert image_cache(settings, 2).get(url, 8, fetcher.fetch_versioned).fetched  # project 2 asks itself
        assert len(ls.requests) == 2
        denied = ImageFetcher(ls.url, "a token of a user without access", policy())
        with pytest.raises(ImageError, match="401"):
            image_cache(settings, 3).get(url, 8, denied.fetch_versioned)
