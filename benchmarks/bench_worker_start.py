"""How long a queued training job waits before its first phase: a cold ``robustar worker --cold`` (each
job's forked work-horse imports torch & co.) vs the default warm worker (imported once, before forking).

    python -m benchmarks.bench_worker_start [--jobs 3]

A private redis-server, a local Label Studio stand-in (devkit.servers.FakeLabelStudio, 24 tiny tasks), a
real ``robustar worker`` process per mode, the real job (1 epoch, no prediction parts). Measured per
job: enqueue -> the first progress update in the RQ job meta (``progress_at`` of phase ``export``), and
enqueue -> finished. Prints a Markdown table with the warm/cold ratios.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from redis import Redis
from rq import Worker
from rq.job import Job

from label_config.render import render_config
from ml_backend.jobs.queue import TrainingPolicy, TrainingQueue
from devkit.builders import synthetic_export
from devkit.servers import LS_TOKEN, FakeLabelStudio, start_redis_server
from training.synthetic import make_spurious_dataset

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["circle", "square", "triangle"]
QUEUE = "bench-worker-start"


def worker_env(ls_url: str, redis_url: str, model_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRAIN_", "MODEL_", "LABEL_STUDIO_"))}
    env.update(LABEL_STUDIO_URL=ls_url, LABEL_STUDIO_API_KEY=LS_TOKEN, REDIS_URL=redis_url, RQ_QUEUE=QUEUE,
               MODEL_DIR=str(model_dir), MODEL_ARCH="tiny-cnn", IMAGE_SIZE="32", DEVICE="cpu", PREDICT_PARTS="",
               TRAIN_EPOCHS="1", TRAIN_MODE="scratch", TRAIN_NUM_WORKERS="2", OMP_NUM_THREADS="1",
               PYTHONPATH=str(ROOT))
    return env


def wait_for_worker(redis: Redis, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not Worker.all(connection=redis):
        if time.monotonic() > deadline:
            raise RuntimeError("the worker did not register with Redis")
        time.sleep(0.1)


def run_jobs(mode: str, n: int, ls_url: str, redis_url: str, workdir: Path) -> list[tuple[float, float]]:
    """(enqueue -> first progress, enqueue -> finished) seconds of ``n`` successive jobs on one worker."""
    redis = Redis.from_url(redis_url)
    redis.flushdb()
    cmd = [sys.executable, "-m", "ml_backend.cli", "--log-level", "warning", "worker"] + (["--cold"] if mode == "cold" else [])
    log_path = workdir / f"worker-{mode}.log"
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=worker_env(ls_url, redis_url, workdir / f"models-{mode}"),
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_worker(redis)
        time.sleep(1.0)  # the worker is idle, waiting on the queue
        queue = TrainingQueue(redis, QUEUE, TrainingPolicy(retries=0))
        times = []
        for _ in range(n):
            t0 = time.time()
            job = Job.fetch(queue.request(1, "bench")["job"], connection=redis)
            first = None
            while True:
                job.refresh()
                if first is None and job.meta.get("phase") not in (None, "queued"):
                    first = float(job.meta.get("progress_at", time.time())) - t0
                status = job.get_status()
                if status in ("finished", "failed"):
                    break
                if time.time() - t0 > 300:
                    raise RuntimeError(f"job {job.id} did not finish\n{log_path.read_text()[-2000:]}")
                time.sleep(0.02)
            if status != "finished":
                raise RuntimeError(f"job {job.id} {status}\n{log_path.read_text()[-3000:]}")
            times.append((first, time.time() - t0))
        return times
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=3, help="jobs per worker mode")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        make_spurious_dataset(workdir / "data", classes=tuple(CLASSES), n_train=8, n_test=4, size=32, seed=0)
        tasks, files = synthetic_export(workdir / "data", CLASSES, lambda split, cls, p: f"/data/upload/1/{split}-{p.name}")
        redis_proc, redis_base = start_redis_server(workdir)
        try:
            with FakeLabelStudio(tasks, files, render_config(CLASSES)) as ls:
                results = {mode: run_jobs(mode, args.jobs, ls.url, redis_base + "/0", workdir) for mode in ("cold", "warm")}
        finally:
            redis_proc.terminate()
            redis_proc.wait()
    med = {m: (statistics.median(f for f, _ in r), statistics.median(d for _, d in r)) for m, r in results.items()}
    print(f"\n{len(tasks)} tasks, tiny-cnn 32 px, 1 epoch, no prediction parts; {args.jobs} successive jobs per worker "
          f"(median; all: {({m: [round(f, 2) for f, _ in r] for m, r in results.items()})})\n")
    print("| worker | enqueue -> first progress (s) | enqueue -> finished (s) |")
    print("|---|---|---|")
    for mode in ("cold", "warm"):
        print(f"| {mode} (`robustar worker{' --cold' if mode == 'cold' else ''}`) | {med[mode][0]:.2f} | {med[mode][1]:.2f} |")
    print(f"| warm / cold | {med['warm'][0] / med['cold'][0]:.2f}x | {med['warm'][1] / med['cold'][1]:.2f}x |")


if __name__ == "__main__":
    main()
