"""Pushing vN's predictions after training: ``PUSH_DETAIL=full`` (every part for every task at push time:
saliency heatmap, influence/suspicion page) vs ``light`` (class + score; the views made on a task's first
view), side by side in one run, plus what a first view then costs.

    python -m benchmarks.bench_push [--per-class 60] [--size 64] [--arch resnet-18]

The real job (``ml_backend.jobs.train_job.train_project`` in an RQ SimpleWorker, 1 epoch, private redis-server, a local
Label Studio stand-in serving the images) once per mode, each in a fresh model folder; the push time is the
job's own ``timings.predictions``. Then the real backend app answers ``GET /saliency`` for 10 tasks: the
first GET makes the heatmap and the page (light), the second reads the cache. torch at 1 thread.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from fastapi.testclient import TestClient
from redis import Redis
from rq import Queue

from label_config.render import render_config
from ml_backend.api.app import create_app
from ml_backend.predict.predictor import configured_parts
from ml_backend.settings import Settings
from ml_backend.jobs.warm_worker import worker_class  # RQ's SimpleWorker with a prompt teardown
from devkit.builders import synthetic_export
from devkit.servers import LS_TOKEN, FakeLabelStudio, start_redis_server
from training.synthetic import make_spurious_dataset

CLASSES = ["circle", "square", "triangle"]
PARTS = "saliency,influence"


def serve_label_studio(tasks: list[dict], files: dict[str, bytes], urls: mp.Queue, stop: mp.Event) -> None:
    """The Label Studio stand-in in a process of its own (serving images does not compete for our GIL)."""
    with FakeLabelStudio(tasks, files, render_config(CLASSES)) as ls:
        urls.put(ls.url)
        stop.wait()


def run_job(redis_url: str, env: dict[str, str]) -> dict:
    os.environ.update(env)  # the job reads its settings from the environment, as in the worker
    redis = Redis.from_url(redis_url)
    queue = Queue("bench-push", connection=redis)
    job = queue.enqueue("ml_backend.jobs.train_job.train_project", kwargs={"project_id": 1}, job_timeout=3600)
    worker_class(simple=True)([queue], connection=redis).work(burst=True, with_scheduler=False)
    job.refresh()
    if job.get_status() != "finished":
        raise RuntimeError(job.latest_result().exc_string)
    return job.return_value()


def view_times(model_dir: Path, ls_url: str, redis_url: str, keys: list[str], arch: str, size: int) -> tuple[float, float]:
    """Median ms of the first and the second ``GET /saliency`` of each task key."""
    settings = Settings(model_dir=model_dir, model_arch=arch, image_size=size, redis_url=redis_url, label_studio_url=ls_url,
                        label_studio_api_key=LS_TOKEN, predict_parts=tuple(PARTS.split(",")))
    first, second = [], []
    with TestClient(create_app(settings, configured_parts(settings))) as client:
        client.get(f"/saliency/1/{keys[0]}x")  # load the served model and the index outside the timings
        for key in keys:
            for out in (first, second):
                t0 = time.perf_counter()
                r = client.get(f"/saliency/1/{key}")
                out.append((time.perf_counter() - t0) * 1000)
                assert r.status_code == 200, r.text
    return statistics.median(first), statistics.median(second)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-class", type=int, default=60, help="training images per class (test: a third)")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--arch", default="resnet-18")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        make_spurious_dataset(work / "data", classes=tuple(CLASSES), n_train=args.per_class,
                              n_test=max(1, args.per_class // 3), size=args.size, seed=0)
        tasks, files = synthetic_export(work / "data", CLASSES, lambda split, cls, p: f"/data/upload/1/{split}-{p.name}")
        redis_proc, redis_base = start_redis_server(work)
        rows = {}
        ctx = mp.get_context("fork")
        urls, stop = ctx.Queue(), ctx.Event()
        server = ctx.Process(target=serve_label_studio, args=(tasks, files, urls, stop), daemon=True)
        server.start()
        try:
            ls_url = urls.get(timeout=60)
            for detail in ("full", "light"):
                model_dir = work / f"models-{detail}"
                env = {"LABEL_STUDIO_URL": ls_url, "LABEL_STUDIO_API_KEY": LS_TOKEN, "MODEL_DIR": str(model_dir),
                       "MODEL_ARCH": args.arch, "IMAGE_SIZE": str(args.size), "DEVICE": "cpu", "PREDICT_PARTS": PARTS,
                       "PUSH_DETAIL": detail, "TRAIN_EPOCHS": "1", "TRAIN_MODE": "scratch", "TRAIN_NUM_WORKERS": "2",
                       "INFLUENCE_BUILD": "sync", "TRAIN_GPUS": "0", "MODEL_VERSION": "", "MODEL_CHECKPOINT": ""}
                result = run_job(f"{redis_base}/0", env)
                keys = [str(t["id"]) for t in tasks[:: max(1, len(tasks) // 10)]][:10]  # spread over both splits
                rows[detail] = (result, view_times(model_dir, ls_url, f"{redis_base}/0", keys, args.arch, args.size))
        finally:
            stop.set()
            server.join(10)
            redis_proc.terminate()
            redis_proc.wait()
    n = len(tasks)
    print(f"\n{n} tasks, {args.arch} {args.size} px, CPU (torch 1 thread), parts {PARTS}; push = the job's "
          "timings.predictions; GET /saliency: median of 10 tasks\n")
    print("| PUSH_DETAIL | push (s) | push per task (ms) | job total (s) | push share of job | first view GET (ms) | "
          "cached GET (ms) |")
    print("|---|---|---|---|---|---|---|")
    for detail, (r, (first, second)) in rows.items():
        push, total = r["timings"]["predictions"], r["timings"]["total"]
        print(f"| {detail} | {push:.2f} | {push / n * 1000:.1f} | {total:.1f} | {push / total:.0%} | {first:.0f} | {second:.0f} |")
    full, light = rows["full"][0]["timings"]["predictions"], rows["light"][0]["timings"]["predictions"]
    print(f"| light / full | {light / full:.2f}x | | | | | |")


if __name__ == "__main__":
    main()
