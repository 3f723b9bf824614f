"""Issue 21: bounded work per request and per process. Declared brush-mask sizes and the number of marks in
an interactive /predict are capped before any part runs (2); one fetch deadline for all the images of a
request (9); heatmap GETs on a dripping image host never freeze /predict, are fetched once (the failure is
remembered), and SIGTERM stops the process (1). Real app, real sockets, a host that drips.
"""

from __future__ import annotations

import os
import signal
import statistics
import threading
import time

import pytest
import requests
from fastapi.testclient import TestClient

from devkit.attack_servers import DripServer
from devkit.builders import data_uri, png_bytes
from label_config import render_config
from ml_backend.api.app import create_app
from ml_backend.predict.lazy_views import TaskRecords
from ml_backend.settings import Settings
from tests.e2e.backend import BackendProcess
from training.checkpoints import CheckpointStore, ModelDefaults, create_initial_version

CLASSES = ["cat", "dog"]
CONFIG = render_config(CLASSES)


def make_client(tmp_path, redis_url, **kw) -> TestClient:
    settings = Settings(model_dir=tmp_path / "models", model_arch="tiny-cnn", image_size=16, redis_url=redis_url,
                        queue_name="robustar-issue21-work", predict_parts=(), **kw)
    return TestClient(create_app(settings), raise_server_exceptions=False)


def interactive(marks: list[dict]) -> dict:
    return {"project": "1.1", "label_config": CONFIG, "tasks": [{"id": 1, "data": {"image": data_uri(png_bytes((8, 8)))}}],
            "params": {"context": {"result": marks}}}


def brush(width: int, height: int) -> dict:
    return {"from_name": "spurious", "to_name": "image", "type": "brushlabels", "original_width": width,
            "original_height": height, "value": {"format": "rle", "rle": [0, 0, 0], "brushlabels": ["Spurious"]}}


def rectangle() -> dict:
    return {"from_name": "spurious", "to_name": "image", "type": "rectanglelabels",
            "value": {"x": 0, "y": 0, "width": 100, "height": 100, "rectanglelabels": ["Spurious"]}}


# --------------------------------------------------------------------------------------------------
# 2. brush-mask bombs and mark floods in params.context


@pytest.mark.parametrize("marks,status,words", [
    ([brush(8192, 8192)], 413, "MAX_MASK_PIXELS"),
    ([brush(16384, 16384)], 413, "MAX_MASK_PIXELS"),
    ([brush(4000, 4000)] * 2, 413, "together"),
    ([rectangle()] * 100_000, 413, "MAX_CONTEXT_MARKS"),
    ([brush("8192", 8)], 400, "positive integer"),
    ([{**brush(8, 8), "original_height": None}], 400, "go together"),
])
def test_interactive_marks_are_capped_before_any_part_runs(tmp_path, redis_url, marks, status, words):
    """Before: a 14 KB RLE declaring 8192 x 8192 cost +320 MiB (16384²: +1,283 MiB) once a mask net served,
    and 100,000 full-image rectangles 47.5 s of CPU; nothing looked at the declared sizes or the count."""
    with make_client(tmp_path, redis_url) as c:
        t0 = time.perf_counter()
        r = c.post("/predict", json=interactive(marks))
        took = time.perf_counter() - t0
        ok = c.post("/predict", json=interactive([brush(8, 8), rectangle()]))
    assert r.status_code == status and words in r.json()["message"], r.text[:300]
    assert took < 10  # refused on reading (the 100,000-mark body is 10 MB of JSON)
    assert ok.status_code == 200, ok.text


# --------------------------------------------------------------------------------------------------
# 9. one deadline per request, not per image


def test_one_fetch_deadline_for_all_images_of_a_request(tmp_path, redis_url):
    """Before: each image had its own FETCH_TIMEOUT, so 6 dripping images on 2 fetch threads held the request
    for 3 x FETCH_TIMEOUT (16 images: 60 s in the attack)."""
    with DripServer(interval=0.2) as drip, make_client(tmp_path, redis_url, label_studio_url=drip.url,
                                                        label_studio_api_key="k", fetch_timeout=1.0, fetch_workers=2) as c:
        body = {"project": "1.1", "label_config": CONFIG,
                "tasks": [{"id": i, "data": {"image": f"/data/upload/1/{i}.png"}} for i in range(6)]}
        t0 = time.perf_counter()
        r = c.post("/predict", json=body)
        took = time.perf_counter() - t0
    assert r.status_code == 422 and len(r.json()["errors"]) == 6, r.text[:300]
    assert took < 2.0, f"the request held its slot {took:.1f} s (FETCH_TIMEOUT 1 s for all its images)"
    assert len(drip.requests) <= 2  # the images not started by the deadline are not fetched at all


# --------------------------------------------------------------------------------------------------
# 1. heatmap GETs on a dripping host, a real server process


def _recorded_project(model_dir, n_tasks: int = 1) -> None:
    store = CheckpointStore(model_dir, 1)
    create_initial_version(store, ModelDefaults(arch="tiny-cnn", image_size=16), CLASSES)
    TaskRecords(model_dir, 1).write([{"id": i, "data": {"image": f"/data/upload/1/{i}.png"}} for i in range(n_tasks)],
                                    CONFIG)


@pytest.mark.slow
def test_heatmap_gets_on_a_dripping_host_never_freeze_predict(tmp_path, redis_url):
    """Before: 45 concurrent GET /saliency/<p>/<key> of one task whose image host drips held a worker thread
    each on the task's lock and each fetched again (404 at 30 s, 60 s, ...); a valid /predict got no answer in
    75 s; SIGTERM did not stop the process within 28 s."""
    model_dir = tmp_path / "models"
    _recorded_project(model_dir)
    with DripServer(interval=2.0) as drip:
        env = {**os.environ, "LABEL_STUDIO_URL": drip.url, "LABEL_STUDIO_API_KEY": "k", "MODEL_DIR": str(model_dir),
               "MODEL_ARCH": "tiny-cnn", "IMAGE_SIZE": "16", "PREDICT_PARTS": "saliency", "FETCH_TIMEOUT": "8",
               "REDIS_URL": redis_url, "DEVICE": "cpu"}
        backend = BackendProcess(env, tmp_path / "backend.log").start()
        try:
            gets: list[int] = []

            def get() -> None:
                try:
                    gets.append(requests.get(f"{backend.url}/saliency/1/0", timeout=60).status_code)
                except requests.RequestException:
                    gets.append(-1)

            threads = [threading.Thread(target=get, daemon=True) for _ in range(45)]
            for t in threads:
                t.start()
            time.sleep(1.0)
            body = {"project": "1.1", "label_config": CONFIG, "tasks": [{"id": 9, "data": {"image": data_uri(png_bytes((16, 16)))}}]}
            latencies = []
            for _ in range(20):
                t0 = time.perf_counter()
                r = requests.post(f"{backend.url}/predict", json=body, timeout=10)
                latencies.append(time.perf_counter() - t0)
                assert r.status_code == 200, r.text
            t0 = time.perf_counter()
            backend.proc.send_signal(signal.SIGTERM)
            backend.proc.wait(timeout=20)
            stopped_s = time.perf_counter() - t0
        finally:
            backend.stop()
        for t in threads:
            t.join(timeout=5)
    p99 = sorted(latencies)[int(0.99 * (len(latencies) - 1))]
    print(f"\n[issue 21] /predict during 45 heatmap GETs on a dripping host: p50 {statistics.median(latencies) * 1000:.0f} ms, "
          f"p99 {p99 * 1000:.0f} ms; image host asked {len(drip.requests)}x; SIGTERM -> exit {stopped_s:.1f} s")
    assert p99 < 2.0
    assert len(drip.requests) == 1  # one fetch for 45 GETs (the others waited for it, none started its own)
    assert stopped_s < 10
