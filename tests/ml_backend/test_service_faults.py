"""Faults, with real processes: a private redis-server, ``robustar serve`` and ``robustar worker``
subprocesses, a local HTTP stand-in for Label Studio, SIGSTOP/SIGKILL and a full (tmpfs) disk.

Every scenario checks the same guarantees: the served version is untouched, no partial checkpoint
is ever visible, the job ends in RQ's failed registry or is retried, and a new job succeeds."""

from __future__ import annotations

import errno
import io
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image
from redis import Redis
from rq import Queue
from rq.job import Job, JobStatus
from rq.registry import FailedJobRegistry, StartedJobRegistry

from label_config import regions, render_config
from ml_backend.jobs.queue import TrainingPolicy, TrainingQueue
from devkit.builders import annotation, data_uri, export_task, png_bytes
from tests.e2e.backend import BackendProcess
from devkit.servers import LS_TOKEN, FakeLabelStudio
from tests.faultkit import children, kill, private_redis, time_limit, wait_for  # noqa: F401  (fixture)
from training.checkpoints import CheckpointStore

pytestmark = pytest.mark.slow  # real processes, fault injection: seconds each

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
CLASSES = ["circle", "square", "triangle"]
TOKEN = LS_TOKEN  # the key FakeLabelStudio accepts
QUEUE = "robustar-faults"
LONG = {"epochs": 500, "batch_size": 8, "lr": 0.05, "device": "cpu", "num_workers": 1}
SHORT = {**LONG, "epochs": 1}
SURVIVED: list[str] = []  # fault scenarios that passed, printed at the end (README figure)


def _png(colour, size=24, seed=0) -> bytes:
    rng = np.random.default_rng(seed)
    arr = np.clip(np.array(colour)[None, None, :] + rng.integers(-20, 20, (size, size, 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr, "RGB").save(buf, "PNG")
    return buf.getvalue()


def small_export(n_train: int = 6, n_test: int = 2):
    """Label Studio export + image files: class-coloured 24px images, every other train image painted."""
    colours = {"circle": (200, 40, 40), "square": (40, 200, 40), "triangle": (40, 40, 200)}
    tasks, files, tid = [], {}, 0
    for split, n in (("train", n_train), ("test", n_test)):
        for cls in CLASSES:
            for i in range(n):
                tid += 1
                path = f"/data/upload/1/{split}-{cls}-{i}.png"
                files[path] = _png(colours[cls], seed=tid)
                anns = []
                if split == "train" and tid % 2 == 0:
                    mask = np.zeros((24, 24), bool)
                    mask[:8, :8] = True
                    anns = [annotation(tid, tid, [regions.brush(mask)])]
                tasks.append(export_task(tid, path, split=split, label=cls, annotations=anns))
    return tasks, files


@pytest.fixture
def fake_ls():
    tasks, files = small_export()
    with FakeLabelStudio(tasks, files, render_config(CLASSES)) as ls:
        ls.drop_exports = 0  # > 0: that many export requests get their connection cut mid-answer
        base = ls.httpd.RequestHandlerClass

        class Flaky(base):
            def do_GET(self):  # noqa: N802
                if "/export" in self.path and ls.drop_exports > 0:
                    ls.drop_exports -= 1
                    ls.requests.append(("GET", self.path, "dropped"))
                    self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n[{\"id\": 1, ")
                    self.wfile.flush()
                    self.close_connection = True
                    return
                super().do_GET()

        ls.httpd.RequestHandlerClass = Flaky
        yield ls


class Worker:
    """``robustar worker`` (forking RQ worker) in its own session, output to a log file."""

    def __init__(self, env: dict[str, str], log: Path, burst: bool = False):
        self.log = log
        args = [str(BIN / "robustar"), "worker", QUEUE] + (["--burst"] if burst else [])
        self.proc = subprocess.Popen(args, env=env, cwd=ROOT, stdout=open(log, "ab"), stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def horse(self, timeout: float = 60) -> int:
        return wait_for(lambda: (children(self.proc.pid) or [None])[0], timeout, what="work-horse process")

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        """Stop the worker and its work-horse (RQ gives the horse a session of its own)."""
        horses = children(self.proc.pid)
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
            except ProcessLookupError:
                pass
        for pid in horses:
            kill(pid, signal.SIGKILL)


def worker_env(redis_url: str, ls_url: str, model_dir: Path, retries: int, **extra) -> dict[str, str]:
    env = {**os.environ, "REDIS_URL": redis_url, "RQ_QUEUE": QUEUE, "LABEL_STUDIO_URL": ls_url,
           "LABEL_STUDIO_API_KEY": TOKEN, "MODEL_DIR": str(model_dir), "MODEL_ARCH": "tiny-cnn", "IMAGE_SIZE": "24",
           "DEVICE": "cpu", "TRAIN_NUM_WORKERS": "1", "PREDICT_PARTS": "", "TRAIN_PUSH_PREDICTIONS": "false",
           "TRAIN_EVAL_EVERY_EPOCH": "false", "TRAIN_RETRIES": str(retries), "PYTHONPATH": str(ROOT),
           "OMP_NUM_THREADS": "1", "LOG_LEVEL": "info", **extra}
    for k in ("MODEL_VERSION", "MODEL_CHECKPOINT", "TRAIN_MODE", "TRAIN_ARCH", "BASIC_AUTH_USER", "WEBHOOK_SECRET"):
        env.pop(k, None)
    return env


def visible_files(store: CheckpointStore) -> list[str]:
    return sorted(p.name for p in store.versions_dir.iterdir()) if store.versions_dir.is_dir() else []


def assert_untouched(store: CheckpointStore, published: str | None, versions: list[str]) -> None:
    """The served version did not change and no partial checkpoint is visible."""
    assert store.published() == published
    assert store.versions() == versions
    assert [n for n in visible_files(store) if not n.startswith(".")] == [f"{v}.pt" for v in versions]
    for v in versions:
        store.load(v)  # every visible checkpoint is complete


def job_meta(redis: Redis, job_id: str) -> dict:
    return Job.fetch(job_id, connection=redis).get_meta(refresh=True)


def wait_status(redis: Redis, job_id: str, statuses: set, timeout: float = 240) -> JobStatus:
    return wait_for(lambda: (s := Job.fetch(job_id, connection=redis).get_status(refresh=True)) in statuses and s,
                    timeout, 0.2, what=f"job {job_id} in {statuses}")


def wait_training(redis: Redis, job_id: str, timeout: float = 240) -> dict:
    return wait_for(lambda: (m := job_meta(redis, job_id)).get("phase") == "train" and m, timeout, 0.1,
                    what=f"job {job_id} training")


# --------------------------------------------------------------------------------------------------
# Redis down or hung: /webhook answers 503 at once, /predict keeps serving, recovery without restart


def test_redis_down_webhook_503_fast_predict_keeps_serving(tmp_path, private_redis):
    env = {"REDIS_URL": private_redis.url, "RQ_QUEUE": QUEUE, "MODEL_DIR": str(tmp_path / "models"), "MODEL_ARCH": "tiny-cnn",
           "IMAGE_SIZE": "24", "DEVICE": "cpu", "PREDICT_PARTS": "", "OMP_NUM_THREADS": "1",
           "TRAIN_EVERY_N_ANNOTATIONS": "1"}
    config = render_config(CLASSES)
    predict = {"tasks": [{"id": i, "data": {"image": data_uri(png_bytes((24, 24)))}} for i in range(4)],
               "project": "1.1", "label_config": config}
    hook = {"action": "START_TRAINING", "project": {"id": 1}}
    with BackendProcess(env, tmp_path / "backend.log") as backend, time_limit(180, "redis-down scenario"):
        url = backend.url
        assert requests.post(url + "/setup", json={"project": "1.1", "schema": config}, timeout=30).ok
        assert requests.post(url + "/webhook", json=hook, timeout=10).json()["status"] == "queued"
        for fault in ("hung (SIGSTOP)", "down (killed)"):
            if fault.startswith("hung"):
                private_redis.freeze()
            else:
                private_redis.thaw()
                private_redis.stop()
            for action in ("START_TRAINING", "ANNOTATION_CREATED"):
                t = time.perf_counter()
                r = requests.post(url + "/webhook", json={**hook, "action": action}, timeout=10)
                took = time.perf_counter() - t
                assert r.status_code == 503 and took < 1.5, (fault, action, r.status_code, took)
                assert "training queue unavailable" in r.json()["message"] and "retry" in r.json()["message"]
            r = requests.post(url + "/predict", json=predict, timeout=60)
            assert r.status_code == 200 and all(res["result"] for res in r.json()["results"]), fault
            assert requests.get(url + "/health", timeout=5).ok
        private_redis.start()  # same port, empty: the backend reconnects by itself
        r = requests.post(url + "/webhook", json=hook, timeout=10)
        assert r.status_code == 200 and r.json()["status"] == "queued"
    SURVIVED.extend(["Redis hung (SIGSTOP)", "Redis down (killed)"])


# --------------------------------------------------------------------------------------------------
# Label Studio unreachable mid-export: clean failure with a clear message, retried per TRAIN_RETRIES


def test_label_studio_unreachable_mid_export_is_retried_then_fails_cleanly(tmp_path, private_redis, fake_ls):
    redis = Redis.from_url(private_redis.url, socket_timeout=None)  # blpop waits past redis-py's 5 s read timeout
    store = CheckpointStore(tmp_path / "models", 1)
    env = worker_env(private_redis.url, fake_ls.url, tmp_path / "models", retries=1)
    queue = TrainingQueue(redis, QUEUE, TrainingPolicy(retries=1))

    # 1. the export breaks off once: the retry (same job) succeeds
    fake_ls.drop_exports = 1
    job_id = queue.request(1, "START_TRAINING", SHORT)["job"]
    w = Worker(env, tmp_path / "worker1.log", burst=True)
    with time_limit(300, "export retry"):
        w.proc.wait(280)
    log = w.text()
    job = Job.fetch(job_id, connection=redis)
    assert job.get_status() == JobStatus.FINISHED, log[-3000:]
    assert job.retries_left == 0 and job.return_value()["version"] == "v1"
    assert "LabelStudioUnavailable: cannot export project 1 from Label Studio" in log
    assert sum(1 for r in fake_ls.requests if r[2] == "dropped") == 1 and store.published() == "v1"

    # 2. Label Studio stays unreachable: first try + 1 retry, then the failed registry; v1 still served
    fake_ls.drop_exports = 10
    job_id = queue.request(1, "START_TRAINING", SHORT)["job"]
    w = Worker(env, tmp_path / "worker2.log", burst=True)
    with time_limit(300, "export failure"):
        w.proc.wait(280)
    job = Job.fetch(job_id, connection=redis)
    assert job.get_status() == JobStatus.FAILED, w.text()[-3000:]
    assert job_id in FailedJobRegistry(QUEUE, connection=redis).get_job_ids()
    exc = job.latest_result().exc_string
    assert "LabelStudioUnavailable" in exc and "cannot export project 1 from Label Studio" in exc
    assert sum(1 for r in fake_ls.requests if r[2] == "dropped") == 3
    assert_untouched(store, "v1", ["v0", "v1"])
    for text in (log, w.text(), exc):
        assert TOKEN not in text  # the API key never reaches a log line or the stored traceback

    # 3. a bad option is not transient: no retry
    job_id = queue.request(1, "START_TRAINING", {**SHORT, "noise_mode": "pink"})["job"]
    w = Worker(env, tmp_path / "worker3.log", burst=True)
    w.proc.wait(280)
    job = Job.fetch(job_id, connection=redis)
    assert job.get_status() == JobStatus.FAILED and "noise_mode" in job.latest_result().exc_string
    assert "OptionsError is not transient; not retried" in w.text()
    SURVIVED.extend(["Label Studio cut off mid-export (retried)", "Label Studio unreachable (failed cleanly)"])


# --------------------------------------------------------------------------------------------------
# a work-horse SIGKILLed mid-training and mid-checkpoint-write


def test_sigkill_mid_training_fails_job_and_follow_up_succeeds(tmp_path, private_redis, fake_ls):
    redis = Redis.from_url(private_redis.url, socket_timeout=None)  # blpop waits past redis-py's 5 s read timeout
    store = CheckpointStore(tmp_path / "models", 1)
    queue = TrainingQueue(redis, QUEUE, TrainingPolicy(retries=0))
    w = Worker(worker_env(private_redis.url, fake_ls.url, tmp_path / "models", retries=0), tmp_path / "worker.log")
    try:
        with time_limit(400, "sigkill mid-training"):
            first = queue.request(1, "START_TRAINING", LONG)["job"]
            wait_training(redis, first)
            follow = queue.request(1, "START_TRAINING", SHORT)
            assert follow["status"] == "follow-up"
            assert Job.fetch(follow["job"], connection=redis).get_status() == JobStatus.DEFERRED
            wait_for(lambda: (job_meta(redis, first).get("step") or 0) > 0, 120, what="a training step")
            horse = w.horse()
            assert_untouched(store, "v0", ["v0"])
            kill(horse, signal.SIGKILL)

            assert wait_status(redis, first, {JobStatus.FAILED}) == JobStatus.FAILED
            exc = Job.fetch(first, connection=redis).latest_result().exc_string
            assert "Work-horse terminated unexpectedly" in exc and "signal 9" in exc
            assert first in FailedJobRegistry(QUEUE, connection=redis).get_job_ids()
            assert_untouched(store, "v0", ["v0"])

            # the follow-up depended on the killed job (allow_failure): it runs and publishes v1
            assert wait_status(redis, follow["job"], {JobStatus.FINISHED, JobStatus.FAILED}) == JobStatus.FINISHED, w.text()[-3000:]
            assert_untouched(store, "v1", ["v0", "v1"])
            assert queue.request(1, "START_TRAINING", SHORT)["status"] == "queued"  # nothing stale left behind
    finally:
        w.stop()
    SURVIVED.append("work-horse SIGKILL mid-training (failed registry, follow-up ran)")


def slow_checkpoint_write(project_id: int, options: dict) -> dict:
    """A job (run by the real worker) that trains nothing but writes v1 through ``CheckpointStore.save``
    slowly: half the bytes, then it waits to be killed."""
    import torch
    from rq import get_current_job

    import training.checkpoints as ck
    from ml_backend.predict.registry import model_defaults
    from ml_backend.settings import Settings

    settings = Settings.from_env()
    store = ck.CheckpointStore(settings.model_dir, project_id)
    if store.published() is None:
        ck.create_initial_version(store, model_defaults(settings), CLASSES)
    model, meta = store.load(store.published())
    meta.version, meta.parent_version = store.next_version(), meta.version
    real_save, job = torch.save, get_current_job()

    def slow_save(obj, f, *a, **kw):
        buf = io.BytesIO()
        real_save(obj, buf, *a, **kw)
        data = buf.getvalue()
        f.write(data[: len(data) // 2])
        f.flush()
        temp = [p.name for p in store.versions_dir.glob(f".{meta.version}.pt.*.tmp")]
        job.connection.rpush("faults:writing", temp[0])
        time.sleep(options.get("sleep", 600))
        f.write(data[len(data) // 2:])

    ck.torch.save = slow_save
    store.save(model, meta)
    store.publish(meta.version)
    return {"version": meta.version}


def test_sigkill_mid_checkpoint_write_leaves_no_partial_file(tmp_path, private_redis, fake_ls):
    redis = Redis.from_url(private_redis.url, socket_timeout=None)  # blpop waits past redis-py's 5 s read timeout
    store = CheckpointStore(tmp_path / "models", 1)
    slow = TrainingQueue(redis, QUEUE, TrainingPolicy(retries=0), target="tests.ml_backend.test_service_faults.slow_checkpoint_write")
    real = TrainingQueue(redis, QUEUE, TrainingPolicy(retries=0))
    w = Worker(worker_env(private_redis.url, fake_ls.url, tmp_path / "models", retries=0), tmp_path / "worker.log")
    try:
        with time_limit(400, "sigkill mid-write"):
            job_id = slow.request(1, "START_TRAINING", {})["job"]
            tmp_name = redis.blpop("faults:writing", timeout=120)
            assert tmp_name is not None, w.text()[-3000:]
            tmp_name = tmp_name[1].decode()
            assert tmp_name.startswith(".v1.pt.") and tmp_name.endswith(".tmp")
            assert (store.versions_dir / tmp_name).stat().st_size > 0  # half a checkpoint on disk...
            assert_untouched(store, "v0", ["v0"])  # ...but invisible
            kill(w.horse(), signal.SIGKILL)
            assert wait_status(redis, job_id, {JobStatus.FAILED}) == JobStatus.FAILED
            assert job_id in FailedJobRegistry(QUEUE, connection=redis).get_job_ids()
            assert_untouched(store, "v0", ["v0"])
            assert (store.versions_dir / tmp_name).exists()  # the killed writer's temp file...

            new = real.request(1, "START_TRAINING", SHORT)["job"]
            assert wait_status(redis, new, {JobStatus.FINISHED, JobStatus.FAILED}) == JobStatus.FINISHED, w.text()[-3000:]
            assert not (store.versions_dir / tmp_name).exists()  # ...was removed by the next save
            assert_untouched(store, "v1", ["v0", "v1"])
            assert [n for n in visible_files(store) if n.startswith(".")] == []
    finally:
        w.stop()
    SURVIVED.append("work-horse SIGKILL mid-checkpoint-write (temp file invisible, cleaned at next save)")


def test_whole_worker_killed_job_is_abandoned_then_retried(tmp_path, private_redis, fake_ls):
    """The worker and its horse die together (machine loss, OOM of the group): RQ's abandoned-job
    handling (StartedJobRegistry cleanup, run by the next worker) retries the job (TRAIN_RETRIES=1)."""
    redis = Redis.from_url(private_redis.url, socket_timeout=None)  # blpop waits past redis-py's 5 s read timeout
    store = CheckpointStore(tmp_path / "models", 1)
    queue = TrainingQueue(redis, QUEUE, TrainingPolicy(retries=1))
    env = worker_env(private_redis.url, fake_ls.url, tmp_path / "models", retries=1)
    w = Worker(env, tmp_path / "worker1.log")
    w2 = None
    try:
        with time_limit(400, "worker killed"):
            job_id = queue.request(1, "START_TRAINING", {**LONG, "epochs": 60})["job"]
            wait_training(redis, job_id)
            horse = w.horse()  # RQ puts the horse in its own session: kill the worker first, then the horse
            os.killpg(w.proc.pid, signal.SIGKILL)
            kill(horse, signal.SIGKILL)
            w.proc.wait(10)
            wait_for(lambda: not Path(f"/proc/{horse}").exists() or "zombie" in Path(f"/proc/{horse}/status").read_text(),
                     10, what="horse gone")
            job = Job.fetch(job_id, connection=redis)
            assert job.get_status() == JobStatus.STARTED  # nobody is left to say otherwise
            assert_untouched(store, "v0", ["v0"])
            # a webhook meanwhile waits for the dead job instead of racing it
            assert queue.request(1, "START_TRAINING", SHORT)["status"] == "follow-up"
            # RQ declares the execution abandoned once its heartbeat lapses (60 s + monitoring interval);
            # we move RQ's clock forward instead of sleeping
            StartedJobRegistry(QUEUE, connection=redis).cleanup(timestamp=time.time() + 3600)
            assert Job.fetch(job_id, connection=redis).get_status() == JobStatus.QUEUED  # retried (1 retry left)
            w2 = Worker(env, tmp_path / "worker2.log")
            assert wait_status(redis, job_id, {JobStatus.FINISHED, JobStatus.FAILED}) == JobStatus.FINISHED, w2.text()[-3000:]
            assert f"Job OK ({job_id})" in w2.text()  # the same job, run again by the new worker
            assert store.published() == "v1"
            follow = [j for j in Queue(QUEUE, connection=redis).deferred_job_registry.get_job_ids()]
            wait_for(lambda: store.published() == "v2", 240, 0.3, what="follow-up publishes v2")
            assert_untouched(store, "v2", ["v0", "v1", "v2"])
            assert not follow or all(Job.fetch(j, connection=redis).get_status() == JobStatus.FINISHED for j in follow)
    finally:
        w.stop()
        if w2:
            w2.stop()
    SURVIVED.append("whole worker SIGKILL (abandoned, retried by RQ, follow-up ran)")


# --------------------------------------------------------------------------------------------------
# disk full while writing a checkpoint


def enospc_train_project(project_id: int, options: dict) -> dict:
    """``ml_backend.jobs.train_job.train_project`` with a checkpoint write that runs out of space half-way (the
    fallback where no tmpfs can be mounted)."""
    import torch

    import training.checkpoints as ck
    from ml_backend.jobs.train_job import train_project

    real_save = torch.save

    def full_disk(obj, f, *a, **kw):
        buf = io.BytesIO()
        real_save(obj, buf, *a, **kw)
        f.write(buf.getvalue()[:1000])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    if options.pop("disk_full", False):
        ck.torch.save = full_disk
    return train_project(project_id, options)


def _mount_tmpfs(path: Path, size_kib: int) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    if os.environ.get("FAULTS_NO_TMPFS") or os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", str(path)], capture_output=True)
    return r.returncode == 0


def test_disk_full_while_writing_checkpoint(tmp_path, private_redis, fake_ls):
    redis = Redis.from_url(private_redis.url, socket_timeout=None)  # blpop waits past redis-py's 5 s read timeout
    model_dir = tmp_path / "models"
    mounted = _mount_tmpfs(model_dir, 4096)
    try:
        store = CheckpointStore(model_dir, 1)
        queue = TrainingQueue(redis, QUEUE, TrainingPolicy(retries=1),
                              target="ml_backend.jobs.train_job.train_project" if mounted else "tests.ml_backend.test_service_faults.enospc_train_project")
        env = worker_env(private_redis.url, fake_ls.url, model_dir, retries=1)
        # v0 first (as the backend creates it), then fill the disk to the last few KiB
        first = queue.request(1, "START_TRAINING", SHORT)["job"]
        w = Worker(env, tmp_path / "worker0.log", burst=True)
        w.proc.wait(280)
        assert Job.fetch(first, connection=redis).get_status() == JobStatus.FINISHED, w.text()[-3000:]
        assert_untouched(store, "v1", ["v0", "v1"])
        ckpt = store.path("v1").stat().st_size
        filler = model_dir / "filler"
        if mounted:
            st = os.statvfs(model_dir)
            free = st.f_bavail * st.f_frsize
            filler.write_bytes(b"\0" * max(0, free - ckpt // 2))

        with time_limit(300, "disk full"):
            job_id = queue.request(1, "START_TRAINING", SHORT if mounted else {**SHORT, "disk_full": True})["job"]
            w = Worker(env, tmp_path / "worker1.log", burst=True)
            w.proc.wait(280)
        job = Job.fetch(job_id, connection=redis)
        exc = job.latest_result().exc_string
        assert job.get_status() == JobStatus.FAILED and "No space left on device" in exc, w.text()[-3000:]
        assert "training/checkpoints.py" in exc  # it ran out of space writing the checkpoint
        assert w.text().count("No space left on device") >= 2  # first try and its retry
        assert job_id in FailedJobRegistry(QUEUE, connection=redis).get_job_ids()
        assert_untouched(store, "v1", ["v0", "v1"])
        assert [n for n in visible_files(store) if n.startswith(".")] == []  # the temp file was removed

        if filler.exists():
            filler.unlink()
        new = queue.request(1, "START_TRAINING", SHORT)["job"]
        w = Worker(env, tmp_path / "worker2.log", burst=True)
        w.proc.wait(280)
        assert Job.fetch(new, connection=redis).get_status() == JobStatus.FINISHED, w.text()[-3000:]
        assert_untouched(store, "v2", ["v0", "v1", "v2"])
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(model_dir)], check=False)
    SURVIVED.append(f"disk full mid-checkpoint ({'tmpfs' if mounted else 'injected ENOSPC'}; failed after its retry)")


def test_retried_job_keeps_the_project_slot(private_redis):
    """While RQ has requeued a failed job for a retry, a webhook does not start a second job."""
    redis = Redis.from_url(private_redis.url, socket_timeout=None)  # blpop waits past redis-py's 5 s read timeout
    queue = TrainingQueue(redis, QUEUE, TrainingPolicy(retries=1))
    job_id = queue.request(5, "START_TRAINING")["job"]
    queue.mark_started(5, job_id)  # as the job does when it starts; then it fails and RQ requeues it
    assert Job.fetch(job_id, connection=redis).get_status() == JobStatus.QUEUED
    assert queue.request(5, "START_TRAINING") == {"job": job_id, "status": "already queued"}
    assert Job.fetch(job_id, connection=redis).retries_left == 1


def test_faults_summary(capsys):
    with capsys.disabled():
        print(f"\n[faults] {len(SURVIVED)} injected and survived: " + "; ".join(SURVIVED))
