"""``TRAIN_GPUS=2``: Start Training through the backend's ``/webhook`` and a real ``robustar worker`` process
(real Redis, RQ) against a local Label Studio stand-in; the job trains under ``torchrun --nproc_per_node=2``
(gloo, CPU) and publishes exactly one version, with the job's summary, progress in the job meta, and vN's
predictions pushed. A job whose ranks fail is failed with their reason and not retried."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from redis import Redis
from rq.job import Job, JobStatus

from label_config.render import render_config
from ml_backend.api.app import create_app
from ml_backend.jobs.launch import failure, torchrun_command
from ml_backend.settings import Settings
from devkit.builders import export_task, synthetic_export
from devkit.servers import LS_TOKEN, FakeLabelStudio
from tests.fixtures import fixture_path
from training.checkpoints import CheckpointStore
from training.synthetic import make_spurious_dataset

ROOT = Path(__file__).resolve().parents[3]
CLASSES = ["circle", "square", "triangle"]
LABEL_CONFIG = render_config(CLASSES)
QUEUE = "t-train-gpus"
JOB = {"TRAIN_EPOCHS": "2", "TRAIN_BATCH_SIZE": "12", "TRAIN_MODE": "scratch", "TRAIN_ARCH": "tiny-cnn",
       "TRAIN_IMAGE_SIZE": "32", "TRAIN_DEVICE": "cpu", "TRAIN_NUM_WORKERS": "2"}  # Label Studio sends no job options


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("gpus-synthetic")
    make_spurious_dataset(root, classes=tuple(CLASSES), n_train=8, n_test=4, size=32, seed=3)
    return root


def worker_env(ls_url: str, redis_url: str, model_dir: Path, gpus: int = 2) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("TRAIN_", "MODEL_", "LABEL_STUDIO_")) and k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env.update(LABEL_STUDIO_URL=ls_url, LABEL_STUDIO_API_KEY=LS_TOKEN, REDIS_URL=redis_url, RQ_QUEUE=QUEUE,
               MODEL_DIR=str(model_dir), MODEL_ARCH="tiny-cnn", IMAGE_SIZE="32", DEVICE="cpu", PREDICT_PARTS="",
               TRAIN_GPUS=str(gpus), TRAIN_RETRIES="1", OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), **JOB)
    return env


def start_training(redis_url: str, model_dir: Path, ls_url: str) -> str:
    """/setup, then Label Studio's recorded START_TRAINING to the backend's /webhook; the queued job's id."""
    body = json.loads((fixture_path("ls-protocol") / "webhook_start_training.json").read_text())["received"]["body"]
    settings = Settings(model_dir=model_dir, model_arch="tiny-cnn", image_size=32, redis_url=redis_url, queue_name=QUEUE)
    with TestClient(create_app(settings)) as client:
        setup = {"project": "1.1", "schema": LABEL_CONFIG, "hostname": ls_url, "access_token": LS_TOKEN}
        assert client.post("/setup", json=setup).status_code == 200
        answer = client.post("/webhook", json=body).json()
    assert answer["status"] == "queued", answer
    return answer["job"]


def run_worker(env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ml_backend.cli", "worker", "--burst"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)


@pytest.mark.slow
def test_start_training_with_train_gpus_2_publishes_one_version(tmp_path, synthetic, redis_url):
    tasks, files = synthetic_export(synthetic, CLASSES, lambda split, cls, p: f"/data/upload/1/{split}-{p.name}")
    model_dir = tmp_path / "models"
    redis = Redis.from_url(redis_url)
    with FakeLabelStudio(tasks, files, LABEL_CONFIG) as ls:
        job_id = start_training(redis_url, model_dir, ls.url)
        t0 = time.perf_counter()
        done = run_worker(worker_env(ls.url, redis_url, model_dir))
        wall = time.perf_counter() - t0
        job = Job.fetch(job_id, connection=redis)
        assert job.get_status() == JobStatus.FINISHED, (job.latest_result().exc_string if job.latest_result() else "") \
            + done.stderr[-3000:]
        result = job.return_value()

    store = CheckpointStore(model_dir, 1)
    assert (result["version"], result["parent"], result["published"], result["world_size"]) == ("v1", "v0", True, 2)
    assert (result["project"], result["job_id"]) == (1, job_id)
    assert store.published() == "v1"
    assert sorted(p.name for p in store.versions_dir.glob("*.pt")) == ["v0.pt", "v1.pt"]  # exactly one new version
    assert not [p for p in store.versions_dir.iterdir() if p.name.startswith(".") or p.suffix == ".tmp"]
    assert store.read_meta("v1").metrics["train"]["n"] == 24
    assert set(result["timings"]) >= {"export", "images", "train", "save", "predictions", "total"}
    summary = json.loads((store.root / "runs" / "v1" / "summary.json").read_text())
    assert summary["job_id"] == job_id and summary["timings"]["export"] == result["timings"]["export"]
    # rank 0's progress reached the job meta through the work-horse
    assert job.meta["phase"] == "done" and job.meta["total_steps"] == 2 * 2 and job.meta["epochs"] == 2
    # rank 0 pushed vN's predictions and pointed the project at it, once
    assert result["predictions"]["pushed"] == len(tasks) == len(ls.predictions)
    assert {p["model_version"] for p in ls.predictions} == {"v1"} and ls.patches == [{"model_version": "v1"}]
    print(f"\n[TRAIN_GPUS=2, gloo] webhook -> worker (burst) wall {wall:.1f}s; job timings {result['timings']}")


@pytest.mark.slow
def test_a_failing_rank_fails_the_job_with_its_reason(tmp_path, redis_url):
    tasks = [export_task(1, "/data/upload/1/a.png", split="test", label="circle")]  # nothing to train on
    model_dir = tmp_path / "models"
    redis = Redis.from_url(redis_url)
    with FakeLabelStudio(tasks, {}, LABEL_CONFIG) as ls:
        job_id = start_training(redis_url, model_dir, ls.url)
        done = run_worker(worker_env(ls.url, redis_url, model_dir))
    job = Job.fetch(job_id, connection=redis)
    assert job.get_status() == JobStatus.FAILED, done.stderr[-3000:]
    exc = job.latest_result().exc_string
    # every rank finds no data; torchrun stops the others when the first fails, so either may report
    assert re.search(r"ValueError: rank [01] of 2: TrainingDataError: no usable training tasks", exc), exc[-2000:]
    assert job.retries_left == 0  # bad data: not retried
    assert CheckpointStore(model_dir, 1).published() == "v0"  # nothing new


def test_torchrun_command_and_failure_reasons(tmp_path):
    cmd = torchrun_command(4, tmp_path, 3, {"epochs": 2, "amp": False}, "job-1")
    assert cmd[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4"]
    assert cmd[cmd.index("--project-id") + 1] == "3" and cmd[cmd.index("--job-id") + 1] == "job-1"
    assert [cmd[i + 1] for i, a in enumerate(cmd) if a == "--set"] == ["epochs=2", "amp=false"]

    err = failure(1, [{"rank": 1, "world_size": 2, "error": "RuntimeError: boom", "value_error": False}], [])
    assert type(err).__name__ == "RankFailed" and str(err) == "rank 1 of 2: RuntimeError: boom"
    err = failure(1, [{"rank": 0, "world_size": 2, "error": "OptionsError: bad", "value_error": True}], [])
    assert isinstance(err, ValueError)
    tail = ["Traceback (most recent call last):", "torch.OutOfMemoryError: CUDA out of memory",
            "torch.distributed.elastic.multiprocessing.errors.ChildFailedError: ", "  exitcode  : -9"]
    assert "CUDA out of memory" in str(failure(-9, [], tail))
