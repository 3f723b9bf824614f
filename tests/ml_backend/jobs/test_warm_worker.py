"""A warm ``robustar worker``: the job's libraries are imported before RQ forks the work-horse, so the horse
starts with them (a real worker process, real Redis, RQ's forking Worker); a real training job runs in
such a horse (torch imported before the fork, used only after it). ``--cold`` keeps the old behaviour.
How much sooner a job starts is measured by ``benchmarks/bench_worker_start.py``, not asserted here."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from redis import Redis
from rq.job import Job, JobStatus

from label_config.render import render_config
from ml_backend.jobs.queue import TrainingPolicy, TrainingQueue
from devkit.builders import synthetic_export
from devkit.servers import LS_TOKEN, FakeLabelStudio
from training.checkpoints import CheckpointStore
from training.synthetic import make_spurious_dataset

pytestmark = pytest.mark.slow  # `robustar worker` processes

ROOT = Path(__file__).resolve().parents[3]
CLASSES = ["circle", "square", "triangle"]
QUEUE = "t-warm-worker"
HEAVY = ("torch", "torchvision", "captum.attr", "label_studio_sdk.client", "ml_backend.jobs.train_job", "matplotlib.pyplot")


def probe(project_id: int, options: dict) -> dict:
    """A job target: which heavy modules the work-horse already had when the job began."""
    return {name: name in sys.modules for name in HEAVY}


def run_worker(redis_url: str, cold: bool, extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRAIN_", "MODEL_", "LABEL_STUDIO_"))}
    env.update(REDIS_URL=redis_url, RQ_QUEUE=QUEUE, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", **(extra or {}))
    cmd = [sys.executable, "-m", "ml_backend.cli", "worker", "--burst"] + (["--cold"] if cold else [])
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)


def test_the_work_horse_inherits_the_preloaded_libraries(redis_url):
    redis = Redis.from_url(redis_url)
    queue = TrainingQueue(redis, QUEUE, TrainingPolicy(retries=0), target="tests.ml_backend.jobs.test_warm_worker.probe")
    seen = {}
    for cold in (True, False):
        job_id = queue.request(1, "test")["job"]
        done = run_worker(redis_url, cold)
        job = Job.fetch(job_id, connection=redis)
        assert job.get_status() == JobStatus.FINISHED, done.stderr[-3000:]
        seen["cold" if cold else "warm"] = job.return_value()
    assert all(seen["warm"].values()), seen["warm"]
    # (this test module itself imports torch through training.*; the job-only libraries stay unloaded)
    assert not any(seen["cold"][m] for m in ("captum.attr", "label_studio_sdk.client", "ml_backend.jobs.train_job")), seen["cold"]


def test_a_training_job_runs_in_a_warm_work_horse(tmp_path, redis_url):
    make_spurious_dataset(tmp_path / "data", classes=tuple(CLASSES), n_train=6, n_test=3, size=32, seed=4)
    tasks, files = synthetic_export(tmp_path / "data", CLASSES, lambda split, cls, p: f"/data/upload/1/{split}-{p.name}")
    redis = Redis.from_url(redis_url)
    with FakeLabelStudio(tasks, files, render_config(CLASSES)) as ls:
        job_id = TrainingQueue(redis, QUEUE, TrainingPolicy(retries=0)).request(1, "test")["job"]
        done = run_worker(redis_url, cold=False, extra={
            "LABEL_STUDIO_URL": ls.url, "LABEL_STUDIO_API_KEY": LS_TOKEN, "MODEL_DIR": str(tmp_path / "models"),
            "MODEL_ARCH": "tiny-cnn", "IMAGE_SIZE": "32", "DEVICE": "cpu", "PREDICT_PARTS": "saliency",
            "TRAIN_EPOCHS": "2", "TRAIN_NUM_WORKERS": "2"})
    job = Job.fetch(job_id, connection=redis)
    assert job.get_status() == JobStatus.FINISHED, done.stderr[-3000:]
    assert job.return_value()["version"] == "v1" and CheckpointStore(tmp_path / "models", 1).published() == "v1"
    assert job.return_value()["predictions"]["pushed"] == len(tasks)
