"""Heavy prediction views made when a task is opened, not when vN's predictions are pushed.

After training, the worker pushes only what Label Studio stores and the Data Manager sorts by (the class
and the score: a training task's suspicion), ``PUSH_DETAIL=light``; the views the labeling page loads by
URL — the saliency heatmap (``$saliency``) and the influence/suspicion page (``$influence``) — are made by
the backend on their first GET (``ml_backend.api.views``) and cached on disk per version
(``ml_backend.predict.task_files``), so every later GET is a file read.

For that the push records, per task key, the task's id and data (its image URL, split, label) and the
project's label config under ``<MODEL_DIR>/project-<id>/task-records/``; a view GET that finds no file of
the served version predicts that one task with the view parts (saliency, influence) of the served version.

Views never block ``/predict`` (``ViewMaker``): they are made on a few daemon threads of their own (no
request thread waits for them: the GET awaits the result on the event loop, at most a while), one
computation per task (later GETs share it), a bounded queue (past it: not made now), and a failure is
remembered for a while (a task whose image host drips is not fetched again by every GET).
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Callable, Hashable

from ml_backend.predict.task_files import key_hash, task_key
from training.files import write_bytes_atomic

log = logging.getLogger(__name__)

RECORDS_DIR = "task-records"
CONFIG_FILE = "label_config.xml"
VIEW_PARTS = ("saliency", "influence")


class TaskRecords:
    """Task id + data by task key, and the label config, of one project (what a view needs to predict it)."""

    def __init__(self, model_dir: str | Path, project_id: int | str) -> None:
        self.root = Path(model_dir) / f"project-{project_id}" / RECORDS_DIR

    def write(self, tasks: list[dict], label_config: str) -> None:
        """Record ``tasks`` (replacing older records of the same keys) and the label config."""
        self.root.mkdir(parents=True, exist_ok=True)
        config = self.root / CONFIG_FILE
        if not config.is_file() or config.read_text() != label_config:
            write_bytes_atomic(config, label_config.encode())
        for task in tasks:
            record = {"id": task.get("id"), "data": task.get("data") or {}}
            write_bytes_atomic(self.root / f"{key_hash(task_key(task))}.json", json.dumps(record).encode())

    def task(self, key: str) -> dict | None:
        try:
            return json.loads((self.root / f"{key_hash(key)}.json").read_text())
        except (OSError, ValueError):
            return None

    def label_config(self) -> str | None:
        try:
            return (self.root / CONFIG_FILE).read_text()
        except OSError:
            return None


_guard = threading.Lock()
_locks: dict[tuple[int, str], threading.Lock] = {}


def _lock_for(project_id: int, key: str) -> threading.Lock:
    """One computation per task at a time (the heatmap and the page of a task are often requested together)."""
    with _guard:
        if len(_locks) > 10_000:
            _locks.clear()
        return _locks.setdefault((project_id, key), threading.Lock())


def make_views(backend, project_id: int, key: str, is_done) -> bool | None:
    """Predict the recorded task ``key`` with the served version's view parts, unless ``is_done()`` (checked
    again under the task's lock); True when the views were computed. None when there was nothing to do (the
    task was never recorded (pushed), or is done), False when making them failed (logged, never raised)."""
    records = TaskRecords(backend.settings.model_dir, project_id)
    task = records.task(key)
    if task is None:
        return None
    with _lock_for(project_id, key):
        if is_done():
            return None
        try:
            model = backend.models.get(project_id)
            if model is None:
                config = records.label_config()
                if not config:
                    return False
                model = backend.model_for(project_id, config, "the recorded label config")
            errors: list[tuple] = []
            model.predict([task], errors=errors, only=VIEW_PARTS)
            if errors:
                log.warning("project %s task %s: views not made: %s", project_id, task.get("id"), errors[0][1])
                return False
            return True
        except Exception:
            log.exception("project %s task %s: making the heatmap / page on first view failed", project_id,
                          task.get("id"))
            return False


class ViewMaker:
    """Runs ``make_views`` calls on ``workers`` daemon threads of its own, at most ``max_queued`` waiting; one
    computation per key at a time (a second ``submit`` gets the same future); a key whose computation failed
    (returned False) is not tried again for ``failure_ttl_s``. Daemon threads: a process that is told to stop
    does not wait for a download in progress."""

    def __init__(self, workers: int = 2, max_queued: int = 32, failure_ttl_s: float = 60.0) -> None:
        self.workers, self.failure_ttl_s = max(1, workers), failure_ttl_s
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, max_queued))
        self._running: dict[Hashable, Future] = {}
        self._failed: dict[Hashable, float] = {}
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def _failed_recently(self, key: Hashable) -> bool:
        at = self._failed.get(key)
        if at is not None and time.monotonic() - at >= self.failure_ttl_s:
            del self._failed[key]
            return False
        return at is not None

    def submit(self, key: Hashable, fn: Callable[[], bool | None]) -> Future | None:
        """The future of ``fn()`` for ``key`` (the one running or queued, or a new one); None when ``key``
        failed within ``failure_ttl_s`` or the queue is full (the view is not made now)."""
        with self._lock:
            if self._failed_recently(key):
                return None
            running = self._running.get(key)
            if running is not None:
                return running
            future: Future = Future()
            try:
                self._queue.put_nowait((key, fn, future))
            except queue.Full:
                return None
            self._running[key] = future
            if len(self._threads) < self.workers:
                t = threading.Thread(target=self._work, daemon=True, name=f"lazy-views-{len(self._threads)}")
                self._threads.append(t)
                t.start()
            return future

    def _work(self) -> None:
        while True:
            key, fn, future = self._queue.get()
            try:
                result = fn()
            except Exception:  # make_views never raises; anything else counts as a failure
                log.exception("making views for %s failed", key)
                result = False
            with self._lock:
                self._running.pop(key, None)
                if result is False:
                    if len(self._failed) > 10_000:
                        self._failed.clear()
                    self._failed[key] = time.monotonic()
            future.set_result(result)
