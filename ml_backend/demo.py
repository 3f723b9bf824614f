"""``robustar demo``: Label Studio + Redis + backend + worker on this machine, with a generated project.

What it starts it stops again, and nothing else: Ctrl-C (SIGINT) and SIGTERM both end every process
it started (each runs in its own process group), a private ``redis-server`` included; a Redis that
already answered at ``REDIS_URL`` is used and left running. Every process logs to ``<data-dir>/logs/``.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

from ml_backend.stack import backend_process, port_busy, redis_answers, start_private_redis, worker_process

READY_LINE = "Robustar demo is up after"  # the status line's start (tests and scripts wait for it)


class DemoError(RuntimeError):
    """A problem the user can fix (busy port, missing redis-server); printed without a traceback."""


def _interrupt(signum, _frame):
    raise KeyboardInterrupt(signal.Signals(signum).name)


def check_ports(ls_port: int, backend_port: int) -> None:
    """Fail before starting anything when a port is taken."""
    if ls_port == backend_port:
        raise DemoError(f"--ls-port and --backend-port are both {ls_port}")
    for port, what, flag in ((ls_port, "Label Studio", "--ls-port"), (backend_port, "the ML backend", "--backend-port")):
        if port_busy(port):
            raise DemoError(
                f"port {port} (for {what}) is already in use on 127.0.0.1; stop what runs there "
                f"(another demo or Label Studio?) or pass {flag} <free port>"
            )


def run_demo(args: argparse.Namespace) -> int:
    """Start everything, create the demo project, print where to log in; Ctrl-C stops all it started."""
    t0 = time.monotonic()
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    started: list = []  # appended *before* each start, so an interrupt mid-start still stops it
    try:
        return _run(args, t0, started)
    except KeyboardInterrupt:
        print("\nstopping ...", flush=True)
        return 0
    except DemoError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    finally:
        for sig in previous:  # a second Ctrl-C must not cut the clean-up short
            signal.signal(sig, signal.SIG_IGN)
        for proc in reversed(started):
            try:
                proc.stop()
            except Exception as e:  # keep stopping the others
                print(f"could not stop {getattr(proc, 'name', 'label-studio')}: {e}", file=sys.stderr)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _alive(proc) -> bool:
    return proc.running() if hasattr(proc, "running") else proc.alive()


def _run(args: argparse.Namespace, t0: float, started: list) -> int:
    from ml_backend.annotate import paint_from_masks
    from ml_backend.importer import import_dataset
    from ml_backend.ls_server import LabelStudioError, LabelStudioServer, ensure_label_studio
    from training.synthetic import make_spurious_dataset

    check_ports(args.ls_port, args.backend_port)
    root = Path(args.data_dir).resolve()
    logs = root / "logs"
    logs.mkdir(parents=True, exist_ok=True)

    dataset = root / "dataset"
    if not (dataset / "train").is_dir():
        print("generating the demo dataset (shapes with a class-coloured corner patch) ...", flush=True)
        make_spurious_dataset(dataset, n_train=30, n_test=15, size=64, seed=0)

    redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    if redis_answers(redis_url):
        redis_note = "(already running; left running on exit)"
    else:
        try:
            _, redis_url = start_private_redis(root / "redis", logs / "redis.log", started)
        except RuntimeError as e:
            raise DemoError(str(e)) from e
        redis_note = "(private redis-server, stopped on exit)"

    ls = LabelStudioServer(root / "label-studio", port=args.ls_port, log_path=logs / "label-studio.log")
    if not ls.db_path.exists() and not ls.template_path.exists():
        print("starting Label Studio (its first start migrates the database: about a minute) ...", flush=True)
    else:
        print("starting Label Studio ...", flush=True)
    ensure_label_studio(ls.venv)
    started.append(ls)
    try:
        ls.start()
    except LabelStudioError as e:
        raise DemoError(str(e)) from e

    backend_url = f"http://127.0.0.1:{args.backend_port}"
    env = {
        "LABEL_STUDIO_URL": ls.url,
        "LABEL_STUDIO_API_KEY": ls.token,
        "REDIS_URL": redis_url,
        "MODEL_DIR": str(root / "models"),
        "MODEL_ARCH": os.environ.get("MODEL_ARCH", "tiny-cnn"),
        "IMAGE_SIZE": os.environ.get("IMAGE_SIZE", "64"),
        "BACKEND_PUBLIC_URL": backend_url,
    }
    backend = backend_process(args.backend_port, env, logs / "backend.log")
    started.append(backend)
    backend.start().wait_http(backend_url + "/health")
    worker = worker_process("worker", env, logs / "worker.log")
    started.append(worker)
    worker.start()

    report = import_dataset(dataset, ls.url, ls.token, title="Robustar demo", backend_url=backend_url)
    if args.simulate_annotations:
        painted = paint_from_masks(ls.client(), report.project_id, dataset / "masks", args.simulate_annotations)
        print(f"painted {len(painted)} training images with their true spurious masks", flush=True)

    print(
        f"\n{READY_LINE} {time.monotonic() - t0:.0f}s: Label Studio {ls.url}/projects/{report.project_id}/data"
        f" | ML backend {backend_url} | Redis {redis_url}\n"
        f"  login         {ls.username} / {ls.password}   (API token {ls.token})\n"
        f"  model version {report.model_version};   Redis {redis_note}\n"
        f"  logs          {logs}/  (redis.log, label-studio.log, backend.log, worker.log)\n"
        "Paint spurious pixels, then Settings > Model > Start Training. Ctrl-C stops everything.",
        flush=True,
    )
    if args.no_wait:
        return 0
    while all(_alive(p) for p in started):
        time.sleep(1)
    dead = [getattr(p, "name", "label-studio") for p in started if not _alive(p)]
    print(f"stopping: {', '.join(dead)} exited (see {logs}/)", file=sys.stderr, flush=True)
    return 1
