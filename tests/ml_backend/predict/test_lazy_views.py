"""After training, only what the Data Manager needs is pushed (``PUSH_DETAIL=light``): the class and the
score (the confidence; a training task's suspicion goes into its data), no heatmap or page made at push time; the backend makes a task's
heatmap and influence/suspicion page on their first GET (the task was recorded by the push) and serves
the cached file after. ``PUSH_DETAIL=full`` keeps making every view at push time.

A real job (``worker_job.train_project`` in an RQ SimpleWorker, real Redis, real torch) against a local
Label Studio stand-in, then the real backend app (saliency + influence parts) over HTTP."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from redis import Redis
from rq import Queue
from rq.job import JobStatus

from label_config.render import render_config
from ml_backend.api.app import create_app
from ml_backend.predict.heatmaps import HeatmapCache
from ml_backend.predict.lazy_views import TaskRecords
from ml_backend.predict.predictor import configured_parts
from ml_backend.settings import Settings
from ml_backend.predict.task_files import InfluencePages
from ml_backend.jobs.warm_worker import worker_class  # RQ's SimpleWorker with a prompt teardown
from devkit.builders import synthetic_export
from devkit.servers import LS_TOKEN, FakeLabelStudio
from training.synthetic import make_spurious_dataset

pytestmark = pytest.mark.slow  # a training job, then predictions over HTTP

CLASSES = ["circle", "square", "triangle"]
LABEL_CONFIG = render_config(CLASSES)
PARTS = "saliency,influence"


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("lazy-synthetic")
    make_spurious_dataset(root, classes=tuple(CLASSES), n_train=6, n_test=3, size=32, seed=5)
    return root


def train_and_push(monkeypatch, redis_url: str, ls_url: str, model_dir: Path, detail: str) -> dict:
    env = {"LABEL_STUDIO_URL": ls_url, "LABEL_STUDIO_API_KEY": LS_TOKEN, "MODEL_DIR": str(model_dir),
           "MODEL_ARCH": "tiny-cnn", "IMAGE_SIZE": "32", "DEVICE": "cpu", "PREDICT_PARTS": PARTS, "PUSH_DETAIL": detail,
           "TRAIN_EPOCHS": "2", "TRAIN_NUM_WORKERS": "2", "INFLUENCE_BUILD": "sync"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    for k in ("MODEL_VERSION", "MODEL_CHECKPOINT", "TRAIN_MODE", "TRAIN_ARCH", "TRAIN_GPUS"):
        monkeypatch.delenv(k, raising=False)
    redis = Redis.from_url(redis_url)
    queue = Queue("t-lazy-parts", connection=redis)
    job = queue.enqueue("ml_backend.jobs.train_job.train_project", kwargs={"project_id": 1}, job_timeout=600)
    worker_class(simple=True)([queue], connection=redis).work(burst=True, with_scheduler=False)
    job.refresh()
    assert job.get_status() == JobStatus.FINISHED, job.latest_result().exc_string
    return job.return_value()


def backend(model_dir: Path, ls_url: str, redis_url: str) -> TestClient:
    settings = Settings(model_dir=model_dir, model_arch="tiny-cnn", image_size=32, redis_url=redis_url,
                        label_studio_url=ls_url, label_studio_api_key=LS_TOKEN, predict_parts=tuple(PARTS.split(",")),
                        public_url="http://backend.example")
    return TestClient(create_app(settings, configured_parts(settings)))


def test_light_push_then_views_made_on_first_view(tmp_path, synthetic, redis_url, monkeypatch):
    tasks, files = synthetic_export(synthetic, CLASSES, lambda split, cls, p: f"/data/upload/1/{split}-{p.name}")
    model_dir = tmp_path / "models"
    with FakeLabelStudio(tasks, files, LABEL_CONFIG) as ls:
        result = train_and_push(monkeypatch, redis_url, ls.url, model_dir, "light")
        assert result["version"] == "v1" and result["influence_index"] == "built"
        assert result["predictions"]["pushed"] == len(tasks) == len(ls.predictions)
        by_task = {p["task"]: p for p in ls.predictions}
        for task in tasks:  # the class, and a score: the confidence, on every task
            p = by_task[task["id"]]
            assert [r["type"] for r in p["result"]] == ["choices"] and p["model_version"] == "v1"
            assert p["score"] == p["result"][0]["score"] and 0.0 <= p["score"] <= 1.0
        # the suspicion is its own column: written into every training task's data, with its definition
        patched = {t["id"]: t["data"] for t in ls.task_patches}
        assert set(patched) == {t["id"] for t in tasks if t["data"]["split"] == "train"}
        for data in patched.values():
            assert 0.0 <= data["suspicion"] <= 1.0 and data["suspicion_by"].startswith("v1 · ")
            assert data["image"] and data["split"] == "train"  # merged into the task's data, nothing lost
        assert result["predictions"]["suspicion_column"]["written"] == len(patched)
        # nothing heavy was made at push time; every task was recorded for its first view
        assert not HeatmapCache(model_dir, 1).root.exists() and not InfluencePages(model_dir, 1).root.exists()
        train, test = (next(t for t in tasks if t["data"]["split"] == s) for s in ("train", "test"))
        assert TaskRecords(model_dir, 1).task(str(train["id"]))["data"] == train["data"]

        with backend(model_dir, ls.url, redis_url) as client:
            t0 = time.perf_counter()
            first = client.get(f"/saliency/1/{test['id']}")
            first_s = time.perf_counter() - t0
            assert first.status_code == 200 and first.headers["content-type"] == "image/png", first.text
            assert first.headers["X-Robustar-Model-Version"] == "v1"
            path = HeatmapCache(model_dir, 1).path("v1", str(test["id"]))
            assert Image.open(path).size == (32, 32)
            mtime = path.stat().st_mtime_ns
            t0 = time.perf_counter()
            again = client.get(f"/saliency/1/{test['id']}")
            again_s = time.perf_counter() - t0
            assert again.content == first.content and path.stat().st_mtime_ns == mtime  # the cached file
            # the influence page of the test task (made with the heatmap), the suspicion page of a training task
            page = client.get(f"/influence/1/{test['id']}")
            assert page.status_code == 200 and "v1: training report" in page.text, page.text[:400]
            page = client.get(f"/influence/1/{train['id']}")
            assert page.status_code == 200 and "uspicion" in page.text and "has not predicted" not in page.text
            # a task never pushed keeps the old answer: no heatmap yet (404), the pending note
            assert client.get("/saliency/1/never-pushed").status_code == 404
    print(f"\n[lazy views] first heatmap GET {first_s * 1000:.0f} ms (made), second {again_s * 1000:.0f} ms (cached); "
          f"push {result['predictions']['seconds']}s for {len(tasks)} tasks")


def test_full_push_makes_every_view_at_push_time(tmp_path, synthetic, redis_url, monkeypatch):
    tasks, files = synthetic_export(synthetic, CLASSES, lambda split, cls, p: f"/data/upload/1/{split}-{p.name}")
    model_dir = tmp_path / "models"
    with FakeLabelStudio(tasks, files, LABEL_CONFIG) as ls:
        result = train_and_push(monkeypatch, redis_url, ls.url, model_dir, "full")
    assert result["predictions"]["pushed"] == len(tasks)
    assert len(list((HeatmapCache(model_dir, 1).root / "v1").glob("*.png"))) == len(tasks)
    assert len(list((InfluencePages(model_dir, 1).root / "v1").glob("*.html"))) == len(tasks)
    assert not TaskRecords(model_dir, 1).root.exists()
