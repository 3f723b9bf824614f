"""``robustar demo``: Label Studio + Redis + backend + worker on this machine, with a generated project."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

from ml_backend.stack import backend_process, redis_answers, start_private_redis, worker_process


def run_demo(args: argparse.Namespace) -> int:
    """Start everything, create the demo project, print where to log in; Ctrl-C stops all it started."""
    from ml_backend.annotate import paint_from_masks
    from ml_backend.importer import import_dataset
    from ml_backend.ls_server import LabelStudioServer, ensure_label_studio
    from training.synthetic import make_spurious_dataset

    t0 = time.monotonic()
    root = Path(args.data_dir).resolve()
    logs = root / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    started = []

    def stop_all(*_):
        for proc in reversed(started):
            proc.stop()

    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        dataset = root / "dataset"
        if not (dataset / "train").is_dir():
            print("generating the demo dataset (shapes with a class-coloured corner patch) ...", flush=True)
            make_spurious_dataset(dataset, n_train=30, n_test=15, size=64, seed=0)

        redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
        if not redis_answers(redis_url):
            redis, redis_url = start_private_redis(root / "redis", logs / "redis.log")
            started.append(redis)

        print("starting Label Studio (the first start migrates its database: about a minute) ...", flush=True)
        ls = LabelStudioServer(root / "label-studio", port=args.ls_port, log_path=logs / "label-studio.log")
        ensure_label_studio(ls.venv)
        ls.start()
        started.append(ls)

        env = {
            "LABEL_STUDIO_URL": ls.url,
            "LABEL_STUDIO_API_KEY": ls.token,
            "REDIS_URL": redis_url,
            "MODEL_DIR": str(root / "models"),
            "MODEL_ARCH": os.environ.get("MODEL_ARCH", "tiny-cnn"),
            "IMAGE_SIZE": os.environ.get("IMAGE_SIZE", "64"),
        }
        backend_url = f"http://127.0.0.1:{args.backend_port}"
        backend = backend_process(args.backend_port, env, logs / "backend.log").start()
        started.append(backend)
        backend.wait_http(backend_url + "/health")
        worker = worker_process("worker", env, logs / "worker.log").start()
        started.append(worker)

        report = import_dataset(dataset, ls.url, ls.token, title="Robustar demo", backend_url=backend_url)
        if args.simulate_annotations:
            painted = paint_from_masks(ls.client(), report.project_id, dataset / "masks", args.simulate_annotations)
            print(f"painted {len(painted)} training images with their true spurious masks", flush=True)

        print(
            f"\nRobustar demo is up after {time.monotonic() - t0:.0f}s\n"
            f"  Label Studio  {ls.url}/projects/{report.project_id}/data   login {ls.username} / {ls.password}\n"
            f"  ML backend    {backend_url}   (model version {report.model_version})\n"
            f"  Redis         {redis_url}\n"
            f"  logs          {logs}/\n"
            "Paint spurious pixels, then Settings > Model > Start Training. Ctrl-C stops everything.",
            flush=True,
        )
        if args.no_wait:
            return 0
        def alive(p) -> bool:
            return p.running() if isinstance(p, LabelStudioServer) else p.alive()

        while all(alive(p) for p in started):
            time.sleep(1)
        dead = [getattr(p, "name", "label-studio") for p in started if not alive(p)]
        print(f"stopping: {', '.join(dead)} exited (see {logs}/)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nstopping ...", flush=True)
        return 0
    finally:
        stop_all()
