"""Proposals before training: seconds from the third painted image to a proposal on every training image.

    python -m benchmarks.bench_propose              # 1000 training images at 64 px (the issue's size)
    python -m benchmarks.bench_propose --n 200
    python -m benchmarks.bench_propose --after-training   # v1 served: every task also holds a v0 prediction

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

from redis import Redis

from devkit.backend_thread import serve_app
from devkit.project_jobs import paint_true_mask, run_queue
from devkit.servers import redis_answers, start_redis_server
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


def publish_v1(client, model_dir: Path, pid: int, label_config: str) -> str:
    """``--after-training``: v1 (v0's weights) published and its predictions pushed as a job does, so every
    task also holds an older version's prediction (v0), which the proposal push must keep."""
    from ml_backend.jobs.push_predictions import backend_predictor, push_predictions
    from ml_backend.settings import Settings
    from training.checkpoints import CheckpointStore

    store = CheckpointStore(model_dir, pid)
    model, meta = store.load("v0")
    meta.version, meta.parent_version = "v1", "v0"
    store.save(model, meta)
    store.publish("v1")
    tasks = [{"id": t.id, "data": t.data} for t in client.tasks.list(project=pid, fields="all")]
    push_predictions(client, pid, tasks, backend_predictor(Settings.from_env(), pid, label_config, "v1"), "v1")
    return "v1"


def check(client, pid: int, unpainted: list[int], version: str) -> int:
    """Unpainted training tasks with exactly one prediction of ``version``, which holds a Spurious brush region
    (and, ``version`` past v0, still their one v0 prediction)."""
    by_task: dict[int, list] = {}
    for p in client.predictions.list(project=pid):
        by_task.setdefault(p.task, []).append(p)
    ok = 0
    for tid in unpainted:
        preds = [p for p in by_task.get(tid, []) if p.model_version == version]
        older = [p for p in by_task.get(tid, []) if p.model_version != version]
        ok += (len(preds) == 1 and any(r.get("type") == "brushlabels" for r in preds[0].result)
               and len(older) == (version != "v0"))
    return ok


def run(n: int, size: int, tmp: Path, after_training: bool = False) -> dict:
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
                version = "v0"
                if after_training:
                    config = client.projects.get(id=report.project_id).label_config
                    version = publish_v1(client, tmp / "models", report.project_id, config)
                tasks = list(client.tasks.list(project=report.project_id, fields="all"))
                train = sorted([t for t in tasks if t.data["split"] == "train"],
                               key=lambda t: (t.data["key"].rsplit("_", 1)[-1], t.data["label"]))
                for task in train[:2]:
                    paint_true_mask(client, task, data)
                run_queue(redis, QUEUE, "WARNING")  # below the threshold: skipped
                painted_at = datetime.now(timezone.utc)
                paint_true_mask(client, train[2], data)
                (job,) = run_queue(redis, QUEUE, "WARNING")
                wall = (aware(job.ended_at) - painted_at).total_seconds()
                result = job.return_value()
                if result is None:
                    raise RuntimeError(f"the proposal job failed: {job.latest_result().exc_string}")
                ok = check(client, report.project_id, [t.id for t in train[3:]], version)
                project_version = client.projects.get(id=report.project_id).model_version
    finally:
        if private is not None:
            private.terminate()
    return {"train": len(train), "version": version, "import_s": import_s, "wall_s": wall, "result": result, "ok": ok,
            "project_version": project_version}


def table(out: dict, size: int) -> str:
    r, t = out["result"], out["result"]["timings"]
    lines = [f"proposals for {r['unpainted']} unpainted of {out['train']} training images at {size} px, "
             f"{r['painted']} painted (tiny-cnn {out['version']} served, default PREDICT_PARTS"
             f"{', every task also holding a v0 prediction' if out['version'] != 'v0' else ''}), one run on {os.cpu_count()} cores",
             "", "| phase | seconds |", "|---|---:|"]
    lines += [f"| {k} | {t[k]:.2f} |" for k in ("export", "fetch", "fit", "push", "total")]
    lines += [f"| third paint → job ended, proposals on every training image (wall) | {out['wall_s']:.2f} |",
              f"| (not timed above) robustar import with v0 predictions | {out['import_s']:.2f} |", "",
              f"{out['ok']} of {r['unpainted']} unpainted training tasks hold exactly one {out['version']} prediction "
              f"with a proposal; {r['replaced']} old {out['version']} predictions replaced; project model_version "
              f"{out['project_version']}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000, help="training images")
    ap.add_argument("--size", type=int, default=64, help="image side in pixels")
    ap.add_argument("--after-training", action="store_true",
                    help="serve a v1 first (every task then also holds a v0 prediction, kept by the push)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-propose-") as tmp:
        out = run(args.n, args.size, Path(tmp), args.after_training)
    print(table(out, args.size))
    return 0 if out["ok"] == out["result"]["unpainted"] else 1


if __name__ == "__main__":
    sys.exit(main())
