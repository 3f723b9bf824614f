"""``robustar demo``: Label Studio + Redis + backend + worker on this machine, with a generated project.

What it starts it stops again, and nothing else: Ctrl-C (SIGINT) and SIGTERM both end every process
it started (each runs in its own process group), a private ``redis-server`` included; a Redis that
already answered at ``REDIS_URL`` is used and left running. Every process logs to ``<data-dir>/logs/``.

The project's v0 is not a random init: before the backend first serves the project, a short plain
training run on the generated training images (``training.bootstrap``) teaches it the shortcut, so the
first predictions already attend to the class-coloured corner patch. A data dir keeps its v0.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import signal
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ml_backend.settings import Settings, env_value
from ml_backend.local.stack import (
    backend_process,
    port_busy,
    redis_answers,
    start_private_redis,
    worker_process,
)

if TYPE_CHECKING:
    from ml_backend.local.label_studio_server import LabelStudioServer

READY_LINE = "Robustar demo is up after"  # the status line's start (tests and scripts wait for it)
DEFAULT_LS_PORT, DEFAULT_BACKEND_PORT = 8080, 9090
STATE_FILE = "demo.json"  # in the data dir: the ports of the last start
DEMO_TITLE = "Robustar demo"


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


def resolve_ports(root: Path, ls_port: int | None, backend_port: int | None) -> tuple[int, int]:
    """Ports given, else those of this data dir's last start, else 8080/9090.

    The demo project's tasks link their saliency heatmaps to the backend's URL, so a data dir keeps
    its backend port: asking for another one is an error that says which port to use.
    """
    try:
        saved = json.loads((root / STATE_FILE).read_text())
    except (OSError, ValueError):
        saved = {}
    if backend_port is not None and saved.get("backend_port") not in (None, backend_port):
        raise DemoError(
            f"the demo project in {root} is connected to the ML backend on port {saved['backend_port']} (its tasks "
            f"link heatmaps there): run with --backend-port {saved['backend_port']}, or use another --data-dir"
        )
    ls_port = ls_port or saved.get("ls_port") or DEFAULT_LS_PORT
    backend_port = backend_port or saved.get("backend_port") or DEFAULT_BACKEND_PORT
    return int(ls_port), int(backend_port)


def ensure_trained_v0(model_dir: Path, project_id: int, classes: list[str], dataset: Path, env: dict[str, str]) -> str:
    """Train the demo project's v0 by a short plain run on the generated training images, unless its model
    store already holds a version (a second start); return a few words on v0 for the status line."""
    from training.bootstrap import SOURCE_PREFIX, train_initial_version
    from training.checkpoints import CheckpointStore, ModelDefaults

    store = CheckpointStore(model_dir, project_id)
    if not store.versions():
        print("training v0: a short plain run on the demo's training images, shortcut included ...", flush=True)
    settings = Settings.from_env()
    defaults = ModelDefaults(arch=env["MODEL_ARCH"], image_size=int(env["IMAGE_SIZE"]),
                             checkpoint=settings.model_checkpoint, seed=settings.seed)
    steps = logging.getLogger("training.progress")  # the engine's per-epoch lines: noise on the demo's console
    level = steps.level
    steps.setLevel(max(logging.WARNING, steps.getEffectiveLevel()))
    try:
        meta = train_initial_version(store, defaults, classes, dataset)
    except (ValueError, OSError) as e:
        raise DemoError(f"could not train the demo's v0 in {store.root}: {e}") from e
    finally:
        steps.setLevel(level)
    source = str(meta.config.get("source", ""))
    if source.startswith(SOURCE_PREFIX):
        acc = {s: meta.metrics.get(s, {}).get("accuracy") for s in ("train", "test")}
        scores = ", ".join(f"{s} accuracy {a:.2f}" for s, a in acc.items() if a is not None)
        took = meta.config.get("seconds")
        return (f"{meta.arch}, {source.removeprefix('demo: ')}" + (f" ({took:.1f}s)" if took is not None else "")
                + (f": {scores}" if scores else ""))
    if source.startswith("random init"):
        return f"{meta.arch}, {source}: untrained (this data dir predates the demo's trained v0; a new --data-dir gets one)"
    return f"{meta.arch}, {source or 'source unknown'}"


def _preload_training() -> None:
    """Import torch and the training library (seconds) while Label Studio starts; v0 is trained with them."""
    try:  # imported for its side effect only: later imports of it (ensure_trained_v0's) are instant
        importlib.import_module("training.bootstrap")
    except ImportError:  # ensure_trained_v0's own import raises it again, where it is reported
        pass


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


def _ensure_dataset(root: Path) -> Path:
    """The demo's generated image folder under ``root``, generated on the first start."""
    from training.synthetic import make_spurious_dataset

    dataset = root / "dataset"
    if not (dataset / "train").is_dir():
        print("generating the demo dataset (shapes with a class-coloured corner patch) ...", flush=True)
        make_spurious_dataset(dataset, n_train=30, n_test=15, size=64, seed=0)
    return dataset


def _ensure_redis(root: Path, logs: Path, started: list) -> tuple[str, str]:
    """``(redis_url, note)``: the Redis answering at ``REDIS_URL``, else a private ``redis-server`` started."""
    redis_url = env_value("REDIS_URL", "redis://127.0.0.1:6379/0")
    if redis_answers(redis_url):
        return redis_url, "(already running; left running on exit)"
    try:
        _, redis_url = start_private_redis(root / "redis", logs / "redis.log", started)
    except RuntimeError as e:
        raise DemoError(str(e)) from e
    return redis_url, "(private redis-server, stopped on exit)"


def _stack_env(ls: LabelStudioServer, redis_url: str, root: Path, backend_url: str) -> dict[str, str]:
    """The environment of the backend and the worker."""
    return {
        "LABEL_STUDIO_URL": ls.url,
        "LABEL_STUDIO_API_KEY": ls.token,
        "REDIS_URL": redis_url,
        "MODEL_DIR": str(root / "models"),
        "MODEL_ARCH": env_value("MODEL_ARCH", "tiny-cnn"),
        "IMAGE_SIZE": env_value("IMAGE_SIZE", "64"),
        "BACKEND_PUBLIC_URL": backend_url,
        # v0 has learned the corner patch: Grad-CAM shows it (vanilla gradients of a CNN on these noisy images
        # spread over every pixel)
        "SALIENCY_METHOD": env_value("SALIENCY_METHOD", "gradcam"),
    }


def _start_services(ls: LabelStudioServer, backend_port: int, backend_url: str, env: dict[str, str], logs: Path,
                    started: list) -> None:
    """Start the backend, a worker and Label Studio; return once all three are up."""
    from ml_backend.local.label_studio_server import LabelStudioError

    # backend and worker boot (torch imports) while Label Studio starts; they need it only per request/job
    backend = backend_process(backend_port, env, logs / "backend.log")
    worker = worker_process("worker", env, logs / "worker.log")
    for proc in (backend, worker):
        started.append(proc)
        proc.start()
    threading.Thread(target=_preload_training, name="preload-training", daemon=True).start()
    if not ls.db_path.exists() and not ls.template_path.exists():
        print("starting Label Studio (its first start migrates the database: about a minute) ...", flush=True)
    else:
        print("starting Label Studio, the ML backend and a worker ...", flush=True)
    started.append(ls)
    try:
        ls.start()
    except LabelStudioError as e:
        raise DemoError(str(e)) from e
    try:
        backend.wait_http(backend_url + "/health", timeout=120)
    except (RuntimeError, TimeoutError) as e:
        raise DemoError(str(e)) from e
    if not worker.alive():
        raise DemoError(f"the worker exited; log {worker.log_path}:\n{worker.tail()}")


def _create_project(root: Path, ls: LabelStudioServer, dataset: Path, env: dict[str, str],
                    backend_url: str) -> tuple[Any, str]:
    """``(report, v0_note)``: the demo project with a trained v0 and the dataset imported into it."""
    from ml_backend.labelstudio.importer import LabelStudioImporter, import_dataset, scan_dataset

    # v0 is trained before the backend hears of the project: connecting it (/setup) and the predictions
    # would otherwise create a random v0 first. The project is created here to learn its id.
    classes, _, _ = scan_dataset(dataset)
    project_id = LabelStudioImporter(ls.url, ls.token).find_or_create_project(DEMO_TITLE, classes)
    v0_note = ensure_trained_v0(root / "models", project_id, classes, dataset, env)
    report = import_dataset(dataset, ls.url, ls.token, title=DEMO_TITLE, backend_url=backend_url)
    return report, v0_note


def _print_ready(t0: float, ls: LabelStudioServer, report: Any, backend_url: str, redis_url: str,
                 redis_note: str, v0_note: str, logs: Path) -> None:
    """The status line (``READY_LINE``) and where to log in."""
    print(
        f"\n{READY_LINE} {time.monotonic() - t0:.0f}s: Label Studio {ls.url}/projects/{report.project_id}/data"
        f" | ML backend {backend_url} | Redis {redis_url}\n"
        f"  login         {ls.username} / {ls.password}   (API token {ls.token})\n"
        f"  model version {report.model_version};   Redis {redis_note}\n"
        f"  v0            {v0_note}\n"
        f"  logs          {logs}/  ({', '.join(sorted(f.name for f in logs.glob('*.log')))})\n"
        "Paint spurious pixels, then Settings > Model > Start Training. Ctrl-C stops everything.",
        flush=True,
    )


def _wait_for_exit(started: list, logs: Path) -> int:
    """Wait until a started process exits (an interrupt ends the wait first); say which, return 1."""
    while all(_alive(p) for p in started):
        time.sleep(1)
    dead = [getattr(p, "name", "label-studio") for p in started if not _alive(p)]
    print(f"stopping: {', '.join(dead)} exited (see {logs}/)", file=sys.stderr, flush=True)
    return 1


def _run(args: argparse.Namespace, t0: float, started: list) -> int:
    from ml_backend.local.annotate import paint_from_masks
    from ml_backend.local.label_studio_server import LabelStudioServer, ensure_label_studio

    root = Path(args.data_dir).resolve()
    ls_port, backend_port = resolve_ports(root, getattr(args, "ls_port", None), getattr(args, "backend_port", None))
    check_ports(ls_port, backend_port)
    logs = root / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    dataset = _ensure_dataset(root)
    redis_url, redis_note = _ensure_redis(root, logs, started)

    ls = LabelStudioServer(root / "label-studio", port=ls_port, log_path=logs / "label-studio.log")
    ensure_label_studio(ls.venv)
    backend_url = f"http://127.0.0.1:{backend_port}"
    env = _stack_env(ls, redis_url, root, backend_url)
    _start_services(ls, backend_port, backend_url, env, logs, started)

    report, v0_note = _create_project(root, ls, dataset, env, backend_url)
    (root / STATE_FILE).write_text(json.dumps({"ls_port": ls_port, "backend_port": backend_port}))
    if args.simulate_annotations:
        painted = paint_from_masks(ls.client(), report.project_id, dataset / "masks", args.simulate_annotations)
        print(f"painted {len(painted)} training images with their true spurious masks", flush=True)

    _print_ready(t0, ls, report, backend_url, redis_url, redis_note, v0_note, logs)
    if args.no_wait:
        return 0
    return _wait_for_exit(started, logs)
