"""Proposals before training: seconds from the third painted image to a proposal on every training image.

    python -m benchmarks.bench_propose              # 1000 training images at 64 px (the issue's size)
    python -m benchmarks.bench_propose --n 200

The product's path, one run: a real Label Studio 1.23 (fresh SQLite data dir), the backend app (uvicorn in
this process), ``robustar import`` of a generated dataset (``training.synthetic``, ``--n`` training images
and a few test images, uploaded; the backend connected; v0's predictions retrieved through Label Studio —
timed apart, not part of the result), a Redis DB (127.0.0.1:6379, else a private redis-server). Three
training images (one per class) are painted through the SDK; Label Studio sends the annotation webhooks to
the backend, which queues ``propose_job.propose_project``; an RQ SimpleWorker runs it. Prints a Markdown
table of the job's phases (export, fetch, fit, push, total) and the wall time from the third paint to the
job's end (RQ's ``ended_at``: a burst worker's own exit is not counted), and how many unpainted training tasks then hold exactly one v0 prediction with a proposal.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from PIL import Image
from redis import Redis
from rq import Queue, SimpleWorker

from devkit.backend_thread import serve_app
from devkit.servers import redis_answers, start_redis_server
from label_config import regions
from ml_backend.labelstudio.importer import import_dataset
from ml_backend.local.label_studio_server import LabelStudioServer, default_venv, ensure_label_studio
from training.synthetic import make_spurious_dataset

CLASSES = ("circle", "square", "triangle")
QUEUE = "bench-propose"
LOCAL_REDIS = "redis://127.0.0.1:6379"


def redis_url(tmp: Path) -> tuple[str, object | None]:
    """DB 14 of the local Redis (flushed), else a private server's DB 0; and the private process."""
    if redis_answers(LOCAL_REDIS + "/14"):
        Redis.from_url(LOCAL_REDIS + "/14").flushdb()
        return LOCAL_REDIS + "/14", None
    proc, url = start_redis_server(tmp / "redis")
    return url + "/0", proc


def environment(ls: LabelStudioServer, model_dir: Path, redis: str, size: int) -> None:
    """What the backend and the worker (this process) read: the demo's model, the default prediction parts."""
    for k in ("MODEL_VERSION", "MODEL_CHECKPOINT", "WEBHOOK_SECRET", "BASIC_AUTH_USER", "BASIC_AUTH_PASS",
              "PREDICT_PARTS"):
        os.environ.pop(k, None)
    os.environ.update({"LABEL_STUDIO_URL": ls.url, "LABEL_STUDIO_API_KEY": ls.token, "MODEL_DIR": str(model_dir),
                       "MODEL_ARCH": "tiny-cnn", "IMAGE_SIZE": str(size), "REDIS_URL": redis, "RQ_QUEUE": QUEUE,
                       "PROPOSE_AFTER_PAINTED": "3", "TRAIN_EVERY_N_ANNOTATIONS": "0"})


def aware(when: datetime) -> datetime:
    """RQ's timestamps are UTC, naive or not."""
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


def paint(client, task, data: Path) -> None:
    mask = np.asarray(Image.open(data / "masks" / task.data["key"])) > 0
    client.annotations.create(id=task.id, result=[regions.brush(mask)])


def work(redis: Redis) -> list:
    queue = Queue(QUEUE, connection=redis)
    jobs = queue.jobs
    SimpleWorker([queue], connection=redis).work(burst=True, with_scheduler=False, logging_level="WARNING")
    for job in jobs:
        job.refresh()
    return jobs


def check(client, pid: int, unpainted: list[int]) -> int:
    """Unpainted training tasks with exactly one v0 prediction, which holds a Spurious brush region."""
    by_task: dict[int, list] = {}
    for p in client.predictions.list(project=pid):
        by_task.setdefault(p.task, []).append(p)
    ok = 0
    for tid in unpainted:
        preds = [p for p in by_task.get(tid, []) if p.model_version == "v0"]
        ok += len(preds) == 1 and any(r.get("type") == "brushlabels" for r in preds[0].result)
    return ok


def run(n: int, size: int, tmp: Path) -> dict:
    from ml_backend.api.app import create_app
    from ml_backend.settings import Settings

    data = tmp / "data"
    per_class = -(-n // len(CLASSES))
    make_spurious_dataset(data, classes=CLASSES, n_train=per_class, n_test=2, size=size, seed=0)
    ensure_label_studio(default_venv())
    url, private = redis_url(tmp)
    try:
        with LabelStudioServer(tmp / "ls", venv=default_venv(), log_path=tmp / "ls.log") as ls:
            environment(ls, tmp / "models", url, size)
            with serve_app(create_app(Settings.from_env())) as backend:
                os.environ["BACKEND_PUBLIC_URL"] = backend
                t = time.perf_counter()
                report = import_dataset(data, ls.url, ls.token, title="bench propose", backend_url=backend,
                                        progress=False)
                import_s = time.perf_counter() - t
                client, redis = ls.client(), Redis.from_url(url)
                tasks = list(client.tasks.list(project=report.project_id, fields="all"))
                train = sorted([t for t in tasks if t.data["split"] == "train"],
                               key=lambda t: (t.data["key"].rsplit("_", 1)[-1], t.data["label"]))
                for task in train[:2]:
                    paint(client, task, data)
                work(redis)  # below the threshold: skipped
                painted_at = datetime.now(timezone.utc)
                paint(client, train[2], data)
                (job,) = work(redis)
                wall = (aware(job.ended_at) - painted_at).total_seconds()
                result = job.return_value()
                if result is None:
                    raise RuntimeError(f"the proposal job failed: {job.latest_result().exc_string}")
                ok = check(client, report.project_id, [t.id for t in train[3:]])
                project_version = client.projects.get(id=report.project_id).model_version
    finally:
        if private is not None:
            private.terminate()
    return {"train": len(train), "import_s": import_s, "wall_s": wall, "result": result, "ok": ok,
            "project_version": project_version}


def table(out: dict, size: int) -> str:
    r, t = out["result"], out["result"]["timings"]
    lines = [f"proposals for {r['unpainted']} unpainted of {out['train']} training images at {size} px, "
             f"{r['painted']} painted (tiny-cnn v0, default PREDICT_PARTS), one run on {os.cpu_count()} cores",
             "", "| phase | seconds |", "|---|---:|"]
    lines += [f"| {k} | {t[k]:.2f} |" for k in ("export", "fetch", "fit", "push", "total")]
    lines += [f"| third paint → job ended, proposals on every training image (wall) | {out['wall_s']:.2f} |",
              f"| (not timed above) robustar import with v0 predictions | {out['import_s']:.2f} |", "",
              f"{out['ok']} of {r['unpainted']} unpainted training tasks hold exactly one v0 prediction with a "
              f"proposal; {r['replaced']} old v0 predictions replaced; project model_version {out['project_version']}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000, help="training images")
    ap.add_argument("--size", type=int, default=64, help="image side in pixels")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-propose-") as tmp:
        out = run(args.n, args.size, Path(tmp))
    print(table(out, args.size))
    return 0 if out["ok"] == out["result"]["unpainted"] else 1


if __name__ == "__main__":
    sys.exit(main())
