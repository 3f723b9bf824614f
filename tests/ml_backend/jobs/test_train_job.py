"""The training job: records -> images -> paired training -> evaluation -> versioned checkpoint,
and ``ml_backend.jobs.train_job.train_project`` run by a real RQ SimpleWorker (a Redis DB of its own) against a local HTTP
stand-in for Label Studio's export, project, image and prediction endpoints."""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from redis import Redis

from label_config import regions
from label_config.export import parse_export
from label_config.render import parse_config, render_config
from ml_backend.labelstudio.fetch import FetchPolicy, ImageFetcher
from ml_backend.jobs.queue import rq_progress_sink
from ml_backend.predict.registry import model_defaults
from ml_backend.settings import Settings
from ml_backend.jobs.train_job import job_options
from ml_backend.jobs.warm_worker import worker_class  # RQ's SimpleWorker with a prompt teardown
from devkit import builders
from devkit.builders import annotation, data_uri, export_task, png_bytes
from devkit.servers import LS_TOKEN, FakeLabelStudio, FileServer
from training.checkpoints import CheckpointStore
from training.dataset import load_splits
from training.options import OptionsError, TrainOptions
from training.pipeline import run_pipeline
from training.progress import Progress
from training.synthetic import make_spurious_dataset

CLASSES = ["circle", "square", "triangle"]
LABEL_CONFIG = render_config(CLASSES)
CONFIG = parse_config(LABEL_CONFIG)
TOKEN = LS_TOKEN  # the key FakeLabelStudio accepts
# mask propagation off except in the one test of the whole default job (it fits a net: a third of a small job)
FAST = {"epochs": 2, "batch_size": 16, "lr": 0.05, "device": "cpu", "num_workers": 2, "propagated_masks": "off"}
POLICY = FetchPolicy.from_settings(Settings())


def options(overrides: dict | None = None, settings: Settings | None = None) -> TrainOptions:
    """The job's options: settings (TRAIN_* from the environment) <- ``overrides``."""
    return job_options(settings or Settings.from_env(), overrides)


def pipeline(store: CheckpointStore, settings: Settings, export, opts: TrainOptions, **kw) -> dict:
    """``run_pipeline`` as the worker calls it (data URIs need no Label Studio): its summary."""
    fetch = ImageFetcher(None, None, POLICY).fetch
    return run_pipeline(store, CLASSES, export, opts, fetch, model_defaults(settings), **kw).summary


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    make_spurious_dataset(root, classes=tuple(CLASSES), n_train=12, n_test=6, size=32, seed=1)
    return root


def synthetic_export(root: Path, image_url=lambda split, cls, path: data_uri(path.read_bytes()), paint_every: int = 2):
    """Export tasks for the synthetic ImageFolder: every ``paint_every``-th train image painted."""
    return builders.synthetic_export(root, CLASSES, image_url, paint_every)


# --------------------------------------------------------------------------------------------------
# pipeline from records (no Label Studio)


def test_records_to_published_version(tmp_path, synthetic):
    tasks, _ = synthetic_export(synthetic)
    settings = Settings(model_dir=tmp_path / "models", model_arch="tiny-cnn", image_size=32, seed=0)
    store = CheckpointStore(settings.model_dir, 5)
    export = parse_export(tasks, CONFIG)
    opts = options(FAST, settings)
    summary = pipeline(store, settings, export, opts, extra_config={"project_id": 5})
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
    # issue 23: what v1 changed against v0 on test, with pictures beside the report, and the attention share
    changes, attention = summary["changes"], summary["attention"]
    assert changes["split"] == "test" and changes["method"] == settings.saliency_method
    assert changes["fixed"] >= len(changes["shown"]["fixed"]) and changes["broken"] >= len(changes["shown"]["broken"])
    for row in changes["shown"]["fixed"] + changes["shown"]["broken"]:
        assert set(row) == {"task", "true", "parent", "new", "image"} and (run / row["image"]).stat().st_size > 100
    assert attention["painted"] == 18 and attention["measured"] == attention["masked"] >= 18
    assert set(attention["classes"]) == set(CLASSES) and attention["overall"]["images"] == attention["measured"]
    assert all(0.0 <= attention["overall"][k] <= 1.0 for k in ("before", "after", "area"))
    assert "compare" in summary["timings"]

    # a loaded v1 predicts like the trained model did
    model, _ = store.load("v1")
    assert isinstance(model, torch.nn.Module)

    # a second job: v2 from v1, old versions kept untouched
    v1_bytes = store.path("v1").read_bytes()
    export2 = parse_export(tasks, CONFIG)
    summary2 = pipeline(store, settings, export2, options({**FAST, "epochs": 1,
                            "mode": "scratch", "noise_mode": "mixture", "optimizer": "adam", "lr": 1e-3}, settings))
    assert (summary2["version"], summary2["parent"]) == ("v2", "v1")
    assert summary2["init"].startswith("random init")
    assert store.versions() == ["v0", "v1", "v2"] and store.published() == "v2"
    assert store.path("v1").read_bytes() == v1_bytes


def test_scratch_paired_training_learns(tmp_path, synthetic):
    """Sanity (the efficacy benchmark lives in benchmarks/): every train image painted, from scratch."""
    tasks, _ = synthetic_export(synthetic, paint_every=1)
    settings = Settings(model_dir=tmp_path / "models", model_arch="tiny-cnn", image_size=32)
    # 12 steps: too few for augmented data (the recipe's default); pinned to the earlier no-augmentation
    opts = options({**FAST, "epochs": 4, "mode": "scratch", "lam": 1.0, "augment": "none"}, settings)
    s = pipeline(CheckpointStore(settings.model_dir, 1), settings, parse_export(tasks, CONFIG), opts)
    assert s["metrics"]["new"]["train"]["accuracy"] > 0.5


def test_no_training_tasks_is_a_clear_error(tmp_path):
    tasks = [export_task(1, data_uri(png_bytes((8, 8))), split="test", label="circle")]
    settings = Settings(model_dir=tmp_path, model_arch="tiny-cnn", image_size=16)
    with pytest.raises(ValueError, match="no usable training tasks"):
        pipeline(CheckpointStore(tmp_path, 1), settings, parse_export(tasks, CONFIG), options(FAST, settings))
    assert CheckpointStore(tmp_path, 1).published() == "v0"  # nothing new published


# --------------------------------------------------------------------------------------------------
# dataset


def test_dataset_resizes_masks_nearest_and_skips_bad_images():
    mask = np.zeros((30, 40), dtype=bool)
    mask[:, :20] = True  # left half
    img = data_uri(png_bytes((40, 30)))
    tasks = [
        export_task(1, img, label="circle", annotations=[annotation(1, 1, [regions.brush(mask)])]),
        export_task(2, img, split="test", label="square"),
        export_task(3, data_uri(png_bytes((20, 20))), label="circle", annotations=[annotation(2, 3, [regions.brush(mask)])]),
        export_task(4, "data:image/png;base64,bm90IGFuIGltYWdl", label="circle"),
    ]
    export = parse_export(tasks, CONFIG)
    splits = load_splits(export, ImageFetcher(None, None, POLICY).fetch, 16, CLASSES, num_workers=2)
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
    settings = dataclasses.replace(Settings.from_env(), seed=7, device="cpu", fetch_workers=3)
    o = options({"lambda": 2, "batch_size": "8", "noise": "random_pure"}, settings)
    assert (o.epochs, o.lam, o.batch_size, o.noise_mode, o.eval_every_epoch) == (3, 2.0, 8, "random_pure", False)
    assert (o.seed, o.device, o.num_workers, o.mode) == (7, "cpu", 3, "finetune")
    assert options({"mode": "pretrained:/w.pth"}).pretrained_path == "/w.pth"
    for bad, match in (({"epochs": "many"}, "epochs"), ({"noise_mode": "pink"}, "noise_mode"),
                       ({"optimizer": "lbfgs"}, "optimizer"), ({"mode": "magic"}, "mode"),
                       ({"learning": 1}, "unknown training option"), ({"arch": "vgg"}, "arch"),
                       ({"lr": 0}, "lr"), ({"batch_size": 0}, "batch_size")):
        with pytest.raises(OptionsError, match=match):
            options(bad)


def test_finetune_keeps_the_parent_arch(tmp_path, synthetic):
    tasks, _ = synthetic_export(synthetic)
    settings = Settings(model_dir=tmp_path, model_arch="tiny-cnn", image_size=32)
    with pytest.raises(OptionsError, match="keeps the parent's architecture"):
        pipeline(CheckpointStore(tmp_path, 1), settings, parse_export(tasks[:3], CONFIG),
                 options({**FAST, "arch": "resnet-18"}, settings))


def test_finetune_with_changed_classes_gets_a_new_head():
    from training.checkpoints import CheckpointMeta
    from training.models import build_model
    from training.start_model import start_model

    parent = build_model("tiny-cnn", 3)
    meta = CheckpointMeta(version="v4", arch="tiny-cnn", classes=CLASSES, image_size=32)
    start = start_model(options(FAST), model_defaults(Settings()), ["a", "b"], (parent, meta))
    assert start.model.fc.out_features == 2 and "new classifier head" in start.init
    torch.testing.assert_close(start.model.features[0].weight, parent.features[0].weight)
    same = start_model(options({**FAST, "image_size": 48}), model_defaults(Settings()), CLASSES, (parent, meta))
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
    p = Progress(rq_progress_sink(job), min_interval=60)
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


@pytest.fixture
def redis_conn(redis_url):
    conn = Redis.from_url(redis_url)
    yield conn
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


def _run_in_worker(redis_conn, options: dict):
    from rq import Queue

    queue = Queue("robustar-test-training", connection=redis_conn)
    job = queue.enqueue("ml_backend.jobs.train_job.train_project", kwargs={"project_id": 1, "options": options},
                        job_timeout=600, meta={"project_id": 1, "phase": "queued"})
    t0 = time.perf_counter()
    worker_class(simple=True)([queue], connection=redis_conn).work(burst=True, with_scheduler=False)
    wall = time.perf_counter() - t0
    job.refresh()
    return job, wall


def test_train_project_in_rq_simple_worker(tmp_path, synthetic, redis_conn, monkeypatch, capsys):
    from rq.job import JobStatus

    tasks, files = _ls_tasks(synthetic)
    with FakeLabelStudio(tasks, files, LABEL_CONFIG) as ls:
        # the pushed predictions come from the backend's own predict (with a prediction part on)
        _worker_env(monkeypatch, ls.url, tmp_path / "models", parts="saliency")
        job, wall = _run_in_worker(redis_conn, {**FAST, "epochs": 3, "propagated_masks": "confident"})
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


def test_prediction_push_failure_is_not_fatal(tmp_path, synthetic, redis_conn, monkeypatch):
    from rq.job import JobStatus

    tasks, files = _ls_tasks(synthetic)
    with FakeLabelStudio(tasks, files, LABEL_CONFIG, fail_predictions=True) as ls:
        _worker_env(monkeypatch, ls.url, tmp_path / "models")
        job, _ = _run_in_worker(redis_conn, {**FAST, "epochs": 1})
    assert job.get_status() == JobStatus.FINISHED
    result = job.return_value()
    assert result["version"] == "v1" and "error" in result["predictions"]
    assert CheckpointStore(tmp_path / "models", 1).published() == "v1"
    assert ls.patches == []  # project not pointed at a version without predictions


def test_train_project_needs_label_studio_settings(monkeypatch, tmp_path):
    from ml_backend.jobs.train_job import train_project

    monkeypatch.delenv("LABEL_STUDIO_URL", raising=False)
    monkeypatch.delenv("LABEL_STUDIO_API_KEY", raising=False)
    monkeypatch.setenv("MODEL_DIR", str(tmp_path))
    with pytest.raises(RuntimeError, match="LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY"):
        train_project(1, {})


def test_failed_job_keeps_the_served_version(tmp_path, synthetic, redis_conn, monkeypatch):
    """Label Studio answers 401 (wrong key): the job fails with a clear error, nothing new is published."""
    from rq.job import JobStatus

    tasks, files = _ls_tasks(synthetic)
    with FakeLabelStudio(tasks, files, LABEL_CONFIG) as ls:
        _worker_env(monkeypatch, ls.url, tmp_path / "models")
        monkeypatch.setenv("LABEL_STUDIO_API_KEY", "wrong-key")
        job, _ = _run_in_worker(redis_conn, {**FAST, "epochs": 1})
    assert job.get_status() == JobStatus.FAILED
    assert "cannot read project 1" in job.latest_result().exc_string
    assert CheckpointStore(tmp_path / "models", 1).published() is None


def test_worker_fetches_under_the_backends_image_policy(tmp_path, synthetic, monkeypatch, caplog):
    """The job builds its ImageFetcher from the same settings as the backend: a task image on a host
    that is not allowed is refused (skipped, named) and never requested; allowed (ALLOWED_IMAGE_HOSTS),
    it is requested, without the Label Studio key."""
    from ml_backend.jobs.train_job import train_project

    tasks, files = _ls_tasks(synthetic)
    train_tasks = [t for t in tasks if t["data"]["split"] == "train"]
    elsewhere = {t["data"]["image"]: files[t["data"]["image"]] for t in train_tasks[:6]}
    with FakeLabelStudio(tasks, files, LABEL_CONFIG) as ls, FileServer(elsewhere, TOKEN) as other:
        for t in train_tasks[:6]:
            t["data"]["image"] = other.url + t["data"]["image"]
        _worker_env(monkeypatch, ls.url, tmp_path / "refused", parts="")
        monkeypatch.delenv("ALLOWED_IMAGE_HOSTS", raising=False)
        with caplog.at_level(logging.WARNING, logger="label_config.export"):
            refused = train_project(1, {**FAST, "epochs": 1, "push_predictions": False})
        assert other.requests == []
        refusals = [r.getMessage() for r in caplog.records if "image_error" in r.getMessage()]
        assert len(refusals) == 6 and all(f"image host 127.0.0.1:{other.url.rsplit(':', 1)[1]} is not allowed" in m
                                          for m in refusals)
        assert refused["counts"]["skipped"] == {"unknown_label": 1, "image_error": 6}
        assert sorted(refused["counts"]["skipped_ids"]["image_error"]) == sorted(t["id"] for t in train_tasks[:6])
        assert refused["counts"]["by_split"]["train"] == 30

        _worker_env(monkeypatch, ls.url, tmp_path / "allowed", parts="")
        monkeypatch.setenv("ALLOWED_IMAGE_HOSTS", other.url)
        monkeypatch.setenv("ALLOW_PRIVATE_IMAGE_HOSTS", "true")  # the other host is on loopback: opt in
        allowed = train_project(1, {**FAST, "epochs": 1, "push_predictions": False})
        # now fetched from that host, without Label Studio's key (which goes to Label Studio only): it answers 401
        assert len(other.requests) == 6 and all(auth is None for _, auth in other.requests)
        assert allowed["counts"]["skipped"] == {"unknown_label": 1, "image_error": 6}


def test_a_regression_is_kept_but_not_published(tmp_path, synthetic):
    """A version clearly worse than its parent on the val split is saved (with its report) but not
    published; the parent stays served. A drop a small val set can explain (1/sqrt(n)) publishes. The
    test split never decides; without a val split the gate says it did not gate."""
    from training.gate import NO_VAL, gate, regression
    from training.pipeline import save_version

    parent = {"val": {"accuracy": 0.90, "n": 400}, "test": {"accuracy": 0.90, "n": 400}}
    assert regression({"val": {"accuracy": 0.89, "n": 400}}, parent, 0.02) is None  # within the margin
    why = regression({"val": {"accuracy": 0.70, "n": 400}}, parent, 0.02)
    assert why and "0.700" in why and "0.900" in why and "TRAIN_MAX_REGRESSION" in why and "val" in why
    assert regression({"val": {"accuracy": 0.70, "n": 9}}, parent, 0.02) is None  # 1/sqrt(9) = 0.33 allowed
    assert regression({"val": {"accuracy": 0.10, "n": 400}}, {}, 0.02) is None  # no parent metrics: publish
    assert regression({"val": {"accuracy": 0.10, "n": 400}}, parent, float("inf")) is None
    # a test drop decides nothing (test is reported); only val gates
    test_drop = gate({"val": {"accuracy": 0.91, "n": 400}, "test": {"accuracy": 0.10, "n": 400}}, parent, 0.02)
    assert test_drop.held_back is None and test_drop.split == "val" and "test is reported" in test_drop.note
    val_drop = gate({"val": {"accuracy": 0.50, "n": 400}, "test": {"accuracy": 0.99, "n": 400}}, parent, 0.02)
    assert val_drop.held_back and val_drop.split == "val"
    no_val = gate({"test": {"accuracy": 0.10, "n": 400}}, parent, 0.02)
    assert no_val.held_back is None and no_val.split is None and no_val.note == NO_VAL

    tasks, _ = synthetic_export(synthetic)
    settings = Settings(model_dir=tmp_path / "models", model_arch="tiny-cnn", image_size=32, seed=0)
    store = CheckpointStore(settings.model_dir, 5)
    pipeline(store, settings, parse_export(tasks, CONFIG), options(FAST, settings))
    model, meta = store.load("v1")
    meta.version, meta.parent_version = "v2", "v1"
    path, meta, run = save_version(store, model, meta, store.root / "runs" / "v2", publish=False)
    assert path.is_file() and store.versions() == ["v0", "v1", "v2"] and store.published() == "v1"
    assert options().max_regression == 0.02 == TrainOptions().max_regression


def test_code_defaults_are_what_a_job_runs(monkeypatch):
    """One set of defaults: ``TrainOptions()`` built in code equals the options a job resolves with no
    TRAIN_* variable and no job option (the backend's default seed, device and fetch workers)."""
    import os

    for name in [k for k in os.environ if k.startswith("TRAIN_") or k in ("SEED", "DEVICE", "FETCH_WORKERS")]:
        monkeypatch.delenv(name)
    assert job_options(Settings.from_env(), None) == TrainOptions()
