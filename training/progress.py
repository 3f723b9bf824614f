"""Job progress in RQ job meta (for logs, rq-dashboard and the backend), throttled to ~1 write/s.

Meta keys written on the current RQ job (top level, next to what the enqueuer put there):
``phase`` (export | decode | images | train | eval | save | predictions | done), ``epoch``,
``epochs``, ``step``, ``total_steps``, ``loss``, ``eta_s``, ``progress_at`` (unix time).
Outside an RQ job (tests, CLI) the same calls only log.
"""

from __future__ import annotations

import logging
import time
from typing import Any

log = logging.getLogger(__name__)


class Progress:
    """Writes progress to ``job.meta`` (``save_meta``) at most every ``min_interval`` seconds."""

    def __init__(self, job: Any = "current", min_interval: float = 1.0, project_id: Any = None) -> None:
        if job == "current":
            try:
                from rq import get_current_job

                job = get_current_job()
            except Exception:  # no RQ context
                job = None
        self.job = job
        self.min_interval = min_interval
        self.project_id = project_id
        self.state: dict[str, Any] = {}
        self._last_save = 0.0
        self._last_log = 0.0
        self.failed_saves = 0

    @property
    def job_id(self) -> str | None:
        return getattr(self.job, "id", None)

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
        if self.job is None:
            return
        try:
            self.job.meta.update(self.state)
            self.job.meta["progress_at"] = time.time()
            self.job.save_meta()
        except Exception as e:  # progress is best effort; Redis hiccups must not fail training
            self.failed_saves += 1
            if self.failed_saves <= 3:
                log.warning("project %s job %s: cannot save progress to RQ meta: %s", self.project_id, self.job_id, e)

    def log_every(self, seconds: float, message: str, *args: Any) -> None:
        """Log ``message`` at most every ``seconds`` (step-level progress lines)."""
        now = time.monotonic()
        if now - self._last_log >= seconds:
            self._last_log = now
            log.info(message, *args)
