"""Job progress, logged and handed to a sink (the worker's: RQ job meta), throttled to ~1 write/s.

Keys: ``phase`` (export | decode | images | train | eval | save | predictions | done), ``epoch``,
``epochs``, ``step``, ``total_steps``, ``loss``, ``eta_s``, ``progress_at`` (unix time).
Without a sink (tests, CLI) the same calls only log.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

log = logging.getLogger(__name__)


class Progress:
    """Hands the progress state to ``sink`` at most every ``min_interval`` seconds."""

    def __init__(self, sink: Callable[[dict], None] | None = None, min_interval: float = 1.0,
                 project_id: Any = None, job_id: str | None = None) -> None:
        self.sink = sink
        self.job_id = job_id
        self.min_interval = min_interval
        self.project_id = project_id
        self.state: dict[str, Any] = {}
        self._last_save = 0.0
        self._last_log = 0.0
        self.failed_saves = 0

    def phase(self, name: str, **fields: Any) -> None:
        """Enter a phase (always saved and logged)."""
        self.state = {k: v for k, v in self.state.items() if k in ("epochs", "total_steps")}
        log.info("project %s job %s: phase %s%s", self.project_id, self.job_id, name,
                 "".join(f" {k}={v}" for k, v in fields.items()))
        self.update(force=True, phase=name, **fields)

    def update(self, force: bool = False, **fields: Any) -> None:
        """Merge ``fields`` into the progress; save to Redis if forced or ``min_interval`` has passed."""
        self.state.update(fields)
        now = time.monotonic()
        if not force and now - self._last_save < self.min_interval:
            return
        self._last_save = now
        if self.sink is None:
            return
        try:
            self.sink({**self.state, "progress_at": time.time()})
        except Exception as e:  # progress is best effort; e.g. Redis hiccups must not fail training
            self.failed_saves += 1
            if self.failed_saves <= 3:
                log.warning("project %s job %s: cannot save progress: %s", self.project_id, self.job_id, e)

    def log_every(self, seconds: float, message: str, *args: Any) -> None:
        """Log ``message`` at most every ``seconds`` (step-level progress lines)."""
        now = time.monotonic()
        if now - self._last_log >= seconds:
            self._last_log = now
            log.info(message, *args)
