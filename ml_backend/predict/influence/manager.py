"""Where the backend gets an index: memory, disk, or a lazy build (``INFLUENCE_BUILD``) from the
project's tasks read through the Label Studio SDK and fetched under the configured fetch policy."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Iterable

from label_config.export import TRAIN_SPLIT, VAL_SPLIT
from ml_backend.labelstudio.fetch import FetchPolicy, ImageFetcher
from ml_backend.predict.influence.embedding import InfluenceRecord
from ml_backend.predict.influence.index import InfluenceIndex, build_influence_index, index_path
from ml_backend.labelstudio.client import make_client
from training.checkpoints import CheckpointStore

log = logging.getLogger(__name__)

BUILD_MODES = ("background", "sync", "off")


def label_studio_records(origin: tuple[str | None, str | None], project_id: int, image_value: str = "image"
                         ) -> tuple[list[InfluenceRecord], list[InfluenceRecord]]:
    """The project's training and val tasks (``data.split``), with ``data.label`` as class, via the SDK
    (``origin``: Label Studio's URL and credential, as ``ls_client.label_studio_origin`` decides). The
    suspicion ranking is built from the val tasks' errors; test tasks are only reported, never used."""
    client = make_client(*origin)
    train, val = [], []
    for task in client.tasks.list(project=project_id, fields="task_only", page_size=1000):
        data = getattr(task, "data", None) or {}
        url = data.get(image_value)
        if not isinstance(url, str):
            continue
        rec = InfluenceRecord(int(task.id), data.get("label"), image_url=url)
        if data.get("split") == TRAIN_SPLIT:
            train.append(rec)
        elif data.get("split") == VAL_SPLIT:
            val.append(rec)
    return train, val


RecordSource = Callable[[int, Any], tuple[Iterable, Iterable]]


class IndexManager:
    """Loads each project's index of the served version once; builds a missing one lazily, once."""

    RETRY_AFTER_S = 300.0

    def __init__(self, settings, record_source: RecordSource | None = None, fetcher=None, mode: str | None = None) -> None:
        self.settings = settings
        self.mode = mode or settings.influence_build
        if self.mode not in BUILD_MODES:
            raise ValueError(f"INFLUENCE_BUILD={self.mode!r}: choose one of {', '.join(BUILD_MODES)}")
        self.record_source = record_source
        self.fetcher = fetcher
        self._lock = threading.Lock()
        self._build_locks: dict[tuple[int, str], threading.Lock] = {}
        self._loaded: dict[int, InfluenceIndex] = {}
        self._building: dict[tuple[int, str], threading.Thread] = {}
        self._failed: dict[tuple[int, str], float] = {}

    def _records(self, project_id: int, config, origin) -> tuple[Iterable, Iterable]:
        if self.record_source is not None:
            return self.record_source(project_id, config)
        return label_studio_records(origin, project_id, config.image_value)

    def _fetcher(self, origin, fetcher) -> ImageFetcher:
        return self.fetcher or fetcher or ImageFetcher(*origin, FetchPolicy.from_settings(self.settings))

    def build(self, project_id: int, served, config, origin=(None, None), fetcher=None) -> InfluenceIndex | None:
        """``origin``/``fetcher``: the project's Label Studio and image fetcher (the requesting model's)."""
        """Build (once per project and version, behind a lock) and cache the index; None on failure."""
        key = (project_id, served.version)
        with self._lock:
            lock = self._build_locks.setdefault(key, threading.Lock())
        with lock:
            cached = self._loaded.get(project_id)
            if cached is not None and cached.version == served.version:
                return cached
            store = CheckpointStore(self.settings.model_dir, project_id)
            path = index_path(store, served.version)
            try:
                if path.is_file():
                    index = InfluenceIndex.load(path)
                else:
                    train, val = self._records(project_id, config, origin)  # val ranks; test never does
                    index = build_influence_index(
                        store, served.version, train, val or None, fetcher=self._fetcher(origin, fetcher),
                        device=served.device, batch_size=self.settings.influence_batch_size, model=served.model,
                        meta=served.meta, score=self.settings.influence_score, ranked_on=VAL_SPLIT,
                    )
            except Exception:
                self._failed[key] = time.monotonic()
                log.exception("project %s: building the influence index of %s failed (retry in %.0fs)",
                              project_id, served.version, self.RETRY_AFTER_S)
                return None
            self._loaded[project_id] = index
            return index

    def get(self, project_id: int, served, config, wait: bool = False, origin=(None, None),
            fetcher=None) -> InfluenceIndex | None:
        """The index of the served version: from memory, from disk, or built per ``INFLUENCE_BUILD``
        (``wait``: build it now unless INFLUENCE_BUILD=off, e.g. for training tasks, whose score is
        the suspicion)."""
        cached = self._loaded.get(project_id)
        if cached is not None and cached.version == served.version:
            return cached
        path = index_path(CheckpointStore(self.settings.model_dir, project_id), served.version)
        if path.is_file():
            return self.build(project_id, served, config)  # loads it (once, under the lock)
        args = (project_id, served, config, origin, fetcher)
        key = (project_id, served.version)
        failed_at = self._failed.get(key)
        if self.mode == "off" or (failed_at is not None and time.monotonic() - failed_at < self.RETRY_AFTER_S):
            return None
        if self.mode == "sync" or wait:
            return self.build(*args)
        with self._lock:
            thread = self._building.get(key)
            if thread is None or not thread.is_alive():
                thread = threading.Thread(target=self.build, args=args,
                                          name=f"influence-index-{project_id}-{served.version}", daemon=True)
                self._building[key] = thread
                thread.start()
                log.info("project %s: building the influence index of %s in the background", project_id,
                         served.version)
        return None

    def wait(self, project_id: int, version: str, timeout: float | None = None) -> None:
        """Wait for a background build (tests, CLI)."""
        thread = self._building.get((project_id, version))
        if thread is not None:
            thread.join(timeout)
