"""The training job: records -> images -> paired training -> evaluation -> versioned checkpoint,
and ``training.job.train_project`` run by a real RQ SimpleWorker (Redis DB 13) against a local HTTP
stand-in for Label Studio's export, project, image and prediction endpoints."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import numpy as np
import pytest
import torch
from PIL import Image
from redis import Redis

from label_config.render import parse_config, render_config
from ml_backend.config import Settings
from ml_backend.images import ImageFetcher
from tests.helpers import data_uri, png_bytes
from tests.test_export import annotation, brush_region, choice_region, export_task
from training.checkpoints import CheckpointStore
from training.dataset import load_splits
from training.export import parse_export
from training.options import OptionsError, TrainOptions
from training.progress import Progress
from training.synthetic import make_spurious_dataset
from training.train import run_pipeline

CLASSES = ["circle", "square", "triangle"]
LABEL_CONFIG = render_config(CLASSES)
CONFIG = parse_config(LABEL_CONFIG)
TOKEN = "0123456789abcdef0123456789abcdef01234567"
REDIS_DB = 13
FAST = {"epochs": 2, "batch_size": 16, "lr": 0.05, "device": "cpu", "num_workers": 2}


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    make_spurious_dataset(root, classes=tuple(CLASSES), n_train=12, n_test=6, size=32, seed=1)
    return root


def synthetic_export(root: Path, image_url=lambda split, cls, path: data_uri(path.read_bytes()), paint_every: int = 2):
    """Export tasks for the synthetic ImageFolder: every ``paint_every``-th train image painted."""
    tasks, files, tid = [], {}, 0
    for split in ("train", "test"):
        for cls in CLASSES:
            for path in sorted((root / split / cls).glob("*.png")):
                tid += 1
                anns = []
                if split == "train" and tid % paint_every == 0:
                    mask = np.asarray(Image.open(root / "masks" / split / cls / path.name)) > 0
                    anns = [annotation(tid, tid, [brush_region(mask), choice_region(cls)])]
                url = image_url(split, cls, path)
                files[url] = path.read_bytes()
                tasks.append(export_task(tid, url, split=split, label=cls, annotations=anns))
    return tasks, files


# --------------------------------------------------------------------------------------------------
# pipeline from records (no Label Studio)


def test_records_to_published_version(tmp_path, synthetic):
    tasks, _ = synthetic_export(synthetic)
    settings = Settings(model_dir=tmp_path / "models", model_arch="tiny-cnn", image_size=32, seed=0)
    store = CheckpointStore(settings.model_dir, 5)
    export = parse_export(tasks, CONFIG)
    opts = TrainOptions.from_env(FAST, settings)
    summary = run_pipeline(store, settings, CLASSES, export, opts, ImageFetcher(None, None),
                           extra_config={"project_id": 5})
    json.dumps(summary)  # JSON-serialisable
    assert (summary["version"], summary["parent"], summary["published"]) == ("v1", "v0", True)
    assert store.versions() == ["v0", "v1"] and store.published() == "v1"
    for who in ("parent", "new"):
        for split, n in (("train", 36), ("test", 18)):
            m = summary["metrics"][who][split]
            assert m["n"] == n and 0.0 <= m["accuracy"] <= 1.0
    assert summary["metrics"]["new"]["train"]["n_painted"] == 18
    assert summary["counts"]["train_images"] == 36 and summary["counts"]["train_painted"] == 18
    assert set(summary["timings"]) >= {"images", "train", "eval", "save"}
    assert [e["epoch"] for e in summary["history"]] == [1, 2]
    assert "test_accuracy" in summary["history"][-1]

    meta = store.read_meta("v1")
    assert (meta.arch, meta.classes, meta.image_size, meta.parent_version) == ("tiny-cnn", CLASSES, 32, "v0")
    assert meta.config["options"]["epochs"] == 2 and meta.config["project_id"] == 5
    assert meta.metrics["test"]["accuracy"] == summary["metrics"]["new"]["test"]["accuracy"]
    assert meta.metrics["parent"]["train"]["n"] == 36

    run = Path(summary["run_dir"])
    assert run == store.root / "runs" / "v1"
    assert list(run.glob("events.out.tfevents.*")) and (run / "curves.png").stat().st_size > 1000
    assert json.loads((run / "summary.json").read_text())["version"] == "v1"

    # a loaded v1 predicts like the trained model did
    model, _ = store.load("v1")
    assert isinstance(model, torch.nn.Module)

    # a second job: v2 from v1, old versions kept untouched
    v1_bytes = store.path("v1").read_bytes()
    export2 = parse_export(tasks, CONFIG)
    summary2 = run_pipeline(store, settings, CLASSES, export2, TrainOptions.from_env({**FAST, "epochs": 1,
                            "mode": "scratch", "noise_mode": "mixture", "optimizer": "adam", "lr": 1e-3}, settings),
                            ImageFetcher(None, None))
    assert (summary2["version"], summary2["parent"]) == ("v2", "v1")
    assert summary2["init"].startswith("random init")
    assert store.versions() == ["v0", "v1", "v2"] and store.published() == "v2"
    assert store.path("v1").read_bytes() == v1_bytes


def test_scratch_paired_training_learns(tmp_path, synthetic):
    """Sanity (the efficacy benchmark lives in benchmarks/): every train image painted, from scratch."""
    tasks, _ = synthetic_export(synthetic, paint_every=1)
    settings = Settings(model_dir=tmp_path / "models", model_arch="tiny-cnn", image_size=32)
    opts = TrainOptions.from_env({**FAST, "epochs": 4, "mode": "scratch", "lam": 1.0}, settings)
    s = run_pipeline(CheckpointStore(settings.model_dir, 1), settings, CLASSES, parse_export(tasks, CONFIG), opts,
                     ImageFetcher(None, None))
    assert s["metrics"]["new"]["train"]["accuracy"] > 0.5


def test_no_training_tasks_is_a_clear_error(tmp_path):
    tasks = [export_task(1, data_uri(png_bytes((8, 8))), split="test", label="circle")]
    settings = Settings(model_dir=tmp_path, model_arch="tiny-cnn", image_size=16)
    with pytest.raises(ValueError, match="no usable training tasks"):
        run_pipeline(CheckpointStore(tmp_path, 1), settings, CLASSES, parse_export(tasks, CONFIG),
                     TrainOptions.from_env(FAST, settings), ImageFetcher(None, None))
    assert CheckpointStore(tmp_path, 1).published() == "v0"  # nothing new published


# --------------------------------------------------------------------------------------------------
# dataset


def test_dataset_resizes_masks_nearest_and_skips_bad_images():
    mask = np.zeros((30, 40), dtype=bool)
    mask[:, :20] = True  # left half
    img = data_uri(png_bytes((40, 30)))
    tasks = [
        export_task(1, img, label="circle", annotations=[annotation(1, 1, [brush_region(mask)])]),
        export_task(2, img, split="test", label="square"),
        export_task(3, data_uri(png_bytes((20, 20))), label="circle", annotations=[annotation(2, 3, [brush_region(mask)])]),
        export_task(4, "data:image/png;base64,bm90IGFuIGltYWdl", label="circle"),
    ]
    export = parse_export(tasks, CONFIG)
    splits = load_splits(export, ImageFetcher(None, None), 16, CLASSES, num_workers=2)
    assert export.skipped == {"mask_size": [3], "image_error": [4]}
    assert [r.task_id for r in export.records] == [1, 2]
    train, test = splits["train"], splits["test"]
    assert (len(train), len(test), train.n_painted, test.n_painted) == (1, 1, 1, 0)
    x, m, y, painted = train[0]
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32 and 0 <= float(x.min()) <= float(x.max()) <= 1
    assert m.shape == (1, 16, 16) and m.dtype == torch.bool and painted and y == 0
    assert m[0, :, :8].all() and not m[0, :, 8:].any()
    assert test[0][2] == 1 and not test[0][3]
    xb, mb, yb = next(train.batches(4, "cpu"))
    assert xb.shape == (1, 3, 16, 16) and mb.dtype == torch.bool and yb.tolist() == [0]


# --------------------------------------------------------------------------------------------------
# options and progress


def test_options_env_overrides_and_errors(monkeypatch):
    monkeypatch.setenv("TRAIN_EPOCHS", "3")
    monkeypatch.setenv("TRAIN_LAMBDA", "0.5")
    monkeypatch.setenv("TRAIN_EVAL_EVERY_EPOCH", "false")
    settings = Settings(seed=7, device="cpu", fetch_workers=3)
    o = TrainOptions.from_env({"lambda": 2, "batch_size": "8", "noise": "random_pure"}, settings)
    assert (o.epochs, o.lam, o.batch_size, o.noise_mode, o.eval_every_epoch) == (3, 2.0, 8, "random_pure", False)
    assert (o.seed, o.device, o.num_workers, o.mode) == (7, "cpu", 3, "finetune")
    assert TrainOptions.from_env({"mode": "pretrained:/w.pth"}).pretrained_path == "/w.pth"
    for bad, match in (({"epochs": "many"}, "epochs"), ({"noise_mode": "pink"}, "noise_mode"),
                       ({"optimizer": "lbfgs"}, "optimizer"), ({"mode": "magic"}, "mode"),
                       ({"learning": 1}, "unknown training option"), ({"arch": "vgg"}, "arch"),
                       ({"lr": 0}, "lr"), ({"batch_size": 0}, "batch_size")):
        with pytest.raises(OptionsError, match=match):
            TrainOptions.from_env(bad)


def test_finetune_keeps_the_parent_arch(tmp_path, synthetic):
    tasks, _ = synthetic_export(synthetic)
    settings = Settings(model_dir=tmp_path, model_arch="tiny-cnn", image_size=32)
    with pytest.raises(OptionsError, match="keeps the parent's architecture"):
        run_pipeline(CheckpointStore(tmp_path, 1), settings, CLASSES, parse_export(tasks[:3], CONFIG),
                     TrainOptions.from_env({**FAST, "arch": "resnet-18"}, settings), ImageFetcher(None, None))


def test_finetune_with_changed_classes_gets_a_new_head():
    from training.checkpoints import CheckpointMeta
    from training.models import build_model
    from training.train import build_start_model

    parent = build_model("tiny-cnn", 3)
    meta = CheckpointMeta(version="v4", arch="tiny-cnn", classes=CLASSES, image_size=32)
    start = build_start_model(TrainOptions.from_env(FAST), Settings(), ["a", "b"], (parent, meta))
    assert start.model.fc.out_features == 2 and "new classifier head" in start.init
    torch.testing.assert_close(start.model.features[0].weight, parent.features[0].weight)
    same = build_start_model(TrainOptions.from_env({**FAST, "image_size": 48}), Settings(), CLASSES, (parent, meta))
    torch.testing.assert_close(same.model.fc.weight, parent.fc.weight)
    assert (same.arch, same.image_size, same.init) == ("tiny-cnn", 48, "fine-tuned from v4")


class FakeJob:
    id = "job-1"

    def __init__(self):
        self.meta, self.saves = {"project_id": 1}, 0

    def save_meta(self):
        self.saves += 1


def test_progress_is_throttled_and_phases_always_saved():
    job = FakeJob()
    p = Progress(job=job, min_interval=60)
    p.phase("train", epochs=2)
    for step in range(100):
        p.update(step=step, loss=1.0)
    assert job.saves == 1 and job.meta["phase"] == "train" and job.meta["project_id"] == 1
    p.update(force=True)
    assert job.meta["step"] == 99 and job.saves == 2
    p.phase("done")
    assert job.meta["phase"] == "done" and job.saves == 3


# --------------------------------------------------------------------------------------------------
# train_project through a real RQ worker, against a local stand-in for Label Studio


class FakeLabelStudio:
    """Serves Label Studio's paths the job uses (token-checked) and records every request."""

    def __init__(self, tasks: list[dict], files: dict[str, bytes], project_id: int = 1, fail_predictions=False):
        self.project = {  # the fields of GET /api/projects/<id> the job reads, plus a few for realism
            "id": project_id, "title": "Robustar", "label_config": LABEL_CONFIG, "model_version": "Robustar",
            "task_number": len(tasks), "show_collab_predictions": True, "maximum_annotations": 1,
            "created_by": {"id": 1, "first_name": "", "last_name": "", "email": "admin@example.com", "avatar": None},
        }
        self.tasks, self.files, self.pid = tasks, files, project_id
        self.fail_predictions = fail_predictions
        self.requests: list[tuple[str, str, str | None]] = []
        self.predictions: list[dict] = []
        self.patches: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _send(self, code: int, body=None, ctype="application/json"):
                data = body if isinstance(body, bytes) else json.dumps(body).encode() if body is not None else b""
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _body(self):
                n = int(self.headers.get("Content-Length") or 0)
                return json.loads(self.rfile.read(n) or b"null")

            def _route(self, method):
                url = urlparse(self.path)
                path = url.path.rstrip("/")
                outer.requests.append((method, self.path, self.headers.get("Authorization")))
                if self.headers.get("Authorization") != f"Token {TOKEN}":
                    return self._send(401, {"detail": "Authentication credentials were not provided."})
                proj = f"/api/projects/{outer.pid}"
                if method == "GET" and path == proj:
                    return self._send(200, outer.project)
                if method == "GET" and path == proj + "/export":
                    q = parse_qs(url.query)
                    if q.get("download_all_tasks") != ["true"]:
                        return self._send(200, [t for t in outer.tasks if t["annotations"]])
                    return self._send(200, outer.tasks)
                if method == "GET" and url.path in outer.files:
                    return self._send(200, outer.files[url.path], "image/png")
                if method == "POST" and path in (proj + "/import/predictions", "/api/predictions"):
                    body = self._body()
                    if outer.fail_predictions:
                        return self._send(500, {"detail": "boom"})
                    items = body if isinstance(body, list) else [body]
                    outer.predictions.extend(items)
                    if isinstance(body, list):
                        return self._send(201, {"created": len(items)})
                    return self._send(201, {"id": len(outer.predictions), **body})
                if method == "PATCH" and path == proj:
                    body = self._body()
                    outer.patches.append(body)
                    outer.project.update(body)
                    return self._send(200, outer.project)
                return self._send(404, {"detail": "not found"})

            def do_GET(self):  # noqa: N802
                self._route("GET")

            def do_POST(self):  # noqa: N802
                self._route("POST")

            def do_PATCH(self):  # noqa: N802
                self._route("PATCH")

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def redis13(redis_base_url):
    conn = Redis.from_url(f"{redis_base_url}/{REDIS_DB}")
    conn.flushdb()
    yield conn
    conn.flushdb()
    conn.close()


def _worker_env(monkeypatch, ls_url: str, model_dir: Path, parts: str = ""):
    """Worker environment; ``parts`` = PREDICT_PARTS for the pushed predictions (default: classifier only)."""
    for k, v in {"LABEL_STUDIO_URL": ls_url, "LABEL_STUDIO_API_KEY": TOKEN, "MODEL_DIR": str(model_dir),
                 "MODEL_ARCH": "tiny-cnn", "IMAGE_SIZE": "32", "DEVICE": "cpu", "TRAIN_NUM_WORKERS": "4",
                 "PREDICT_PARTS": parts}.items():
        monkeypatch.setenv(k, v)
    for k in ("MODEL_VERSION", "MODEL_CHECKPOINT", "TRAIN_MODE", "TRAIN_ARCH"):
        monkeypatch.delenv(k, raising=False)


def _ls_tasks(synthetic: Path):
    tasks, files = synthetic_export(synthetic, image_url=lambda split, cls, p: f"/data/upload/1/{split}-{p.name}")
    # one task with a class outside the config, counted and skipped
    tasks.append(export_task(999, "/data/upload/1/missing.png", label="hexagon"))
    return tasks, files


def _run_in_worker(redis13, options: dict):
    from rq import Queue, SimpleWorker

    queue = Queue("robustar-test-training", connection=redis13)
    job = queue.enqueue("training.job.train_project", kwargs={"project_id": 1, "options": options},
                        job_timeout=600, meta={"project_id": 1, "phase": "queued"})
    t0 = time.perf_counter()
    SimpleWorker([queue], connection=redis13).work(burst=True, with_scheduler=False)
    wall = time.perf_counter() - t0
    job.refresh()
    return job, wall


def test_train_project_in_rq_simple_worker(tmp_path, synthetic, redis13, monkeypatch, capsys):
    from rq.job import JobStatus

    tasks, files = _ls_tasks(synthetic)
    with FakeLabelStudio(tasks, files) as ls:
        # the pushed predictions come from the backend's own predict (with a prediction part on)
        _worker_env(monkeypatch, ls.url, tmp_path / "models", parts="saliency")
        job, wall = _run_in_worker(redis13, {**FAST, "epochs": 3})
        assert job.get_status() == JobStatus.FINISHED, job.latest_result().exc_string if job.latest_result() else None
        result = job.return_value()

    assert (result["project"], result["version"], result["parent"], result["job_id"]) == (1, "v1", "v0", job.id)
    assert result["counts"]["tasks"] == len(tasks) and result["counts"]["skipped"] == {"unknown_label": 1}
    assert result["counts"]["skipped_ids"] == {"unknown_label": [999]}
    assert result["counts"]["by_split"] == {"train": 36, "test": 18}
    assert set(result["metrics"]["new"]) == {"train", "test"} and set(result["metrics"]["parent"]) == {"train", "test"}
    assert set(result["timings"]) >= {"export", "decode", "images", "train", "eval", "save", "predictions", "total"}
    store = CheckpointStore(tmp_path / "models", 1)
    assert store.published() == "v1" and store.read_meta("v1").parent_version == "v0"
    assert job.meta["phase"] == "done" and job.meta["project_id"] == 1 and job.meta["total_steps"] == 9

    # every request carried the API key; the export asked for all tasks; images fetched from LS paths
    assert all(auth == f"Token {TOKEN}" for _, _, auth in ls.requests)
    paths = [p for _, p, _ in ls.requests]
    assert any(p.startswith("/api/projects/1/export?") and "download_all_tasks=true" in p for p in paths)
    assert sum(p.startswith("/data/upload/1/") for p in paths) >= 54

    # predictions of v1 for every readable task, then project.model_version = v1
    assert result["predictions"]["pushed"] == 54 and result["predictions"]["project_model_version"] == "v1"
    assert len(ls.predictions) == 54
    p = ls.predictions[0]
    assert p["model_version"] == "v1" and 0 <= p["score"] <= 1
    region = next(r for r in p["result"] if r["from_name"] == "pred_class")
    assert (region["from_name"], region["to_name"], region["type"]) == ("pred_class", "image", "choices")
    assert region["value"]["choices"][0] in CLASSES
    assert ls.patches == [{"model_version": "v1"}]
    with capsys.disabled():
        print(f"\n[train_project via RQ SimpleWorker] {len(tasks)} tasks, 32px tiny-cnn, 3 epochs: "
              f"worker wall {wall:.2f}s, phases {result['timings']}")


def test_prediction_push_failure_is_not_fatal(tmp_path, synthetic, redis13, monkeypatch):
    from rq.job import JobStatus

    tasks, files = _ls_tasks(synthetic)
    with FakeLabelStudio(tasks, files, fail_predictions=True) as ls:
        _worker_env(monkeypatch, ls.url, tmp_path / "models")
        job, _ = _run_in_worker(redis13, {**FAST, "epochs": 1})
    assert job.get_status() == JobStatus.FINISHED
    result = job.return_value()
    assert result["version"] == "v1" and "error" in result["predictions"]
    assert CheckpointStore(tmp_path / "models", 1).published() == "v1"
    assert ls.patches == []  # project not pointed at a version without predictions


def test_train_project_needs_label_studio_settings(monkeypatch, tmp_path):
    from training.job import train_project

    monkeypatch.delenv("LABEL_STUDIO_URL", raising=False)
    monkeypatch.delenv("LABEL_STUDIO_API_KEY", raising=False)
    monkeypatch.setenv("MODEL_DIR", str(tmp_path))
    with pytest.raises(RuntimeError, match="LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY"):
        train_project(1, {})


def test_failed_job_keeps_the_served_version(tmp_path, synthetic, redis13, monkeypatch):
    """Label Studio answers 401 (wrong key): the job fails with a clear error, nothing new is published."""
    from rq.job import JobStatus

    tasks, files = _ls_tasks(synthetic)
    with FakeLabelStudio(tasks, files) as ls:
        _worker_env(monkeypatch, ls.url, tmp_path / "models")
        monkeypatch.setenv("LABEL_STUDIO_API_KEY", "wrong-key")
        job, _ = _run_in_worker(redis13, {**FAST, "epochs": 1})
    assert job.get_status() == JobStatus.FAILED
    assert "cannot read project 1" in job.latest_result().exc_string
    assert CheckpointStore(tmp_path / "models", 1).published() is None
