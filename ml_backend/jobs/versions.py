"""Label Studio's view of training and versions: ``GET /versions``, ``POST /job_status``, and the
project's model-version selection as the way to switch (or roll back) the served version.

- ``GET /versions`` (Label Studio's ``GET /api/ml/{id}/versions``) carries no project; it answers the
  versions of the project Label Studio set up last (the one whose settings page asks), newest first.
- ``POST /job_status {"job": id}`` (Label Studio records the ``job`` our START_TRAINING answer returns
  and asks for its status): ``{"job_status": queued|started|finished|failed|..., "phase", "epoch",
  "epochs", "version", "error"}``; 410 when RQ no longer knows the job.
- Selection: when the project's ``model_version`` in Label Studio differs from the value last known
  to be there (``label-studio-model-version`` beside the checkpoints: written by the worker when it
  points the project at the version it published, and by the backend when it sees a change) and
  names one of our versions other than the published one, the user picked it (e.g. to roll back):
  that version is published, so the backend serves it and the next job fine-tunes from it, without
  a restart. Between the worker's publish and its update of the project nothing moves back, because
  Label Studio still shows the value the file remembers.
"""

from __future__ import annotations

import logging
import os
import threading
import time

from rq.job import Job

from ml_backend.labelstudio.client import client_for
from ml_backend.jobs.model_card import ModelCard
from ml_backend.settings import Settings
from training.checkpoints import CheckpointStore, version_number
from training.files import atomic_write

log = logging.getLogger(__name__)


def list_versions(settings: Settings, project_id: int) -> list[str]:
    """A project's saved versions, newest first."""
    return sorted(CheckpointStore(settings.model_dir, project_id).versions(), key=version_number, reverse=True)


def projects_with_versions(model_dir, limit: int) -> list[int]:
    """Up to ``limit`` project ids with at least one saved version (``project-<id>/versions/v*.pt``)."""
    found: list[int] = []
    try:
        entries = list(os.scandir(model_dir))
    except OSError:
        return found
    for entry in entries:
        name = entry.name
        if name.startswith("project-") and name[8:].isdigit() and CheckpointStore(model_dir, name[8:]).versions():
            found.append(int(name[8:]))
            if len(found) >= limit:
                break
    return found


def job_state(job: Job) -> dict:
    """What Label Studio and the UI need to know of a training job."""
    status = job.get_status(refresh=True)
    meta = job.get_meta(refresh=True) if hasattr(job, "get_meta") else job.meta
    state = {"job": job.id, "job_status": getattr(status, "value", str(status)),
             **{k: meta.get(k) for k in ("project_id", "phase", "epoch", "epochs", "step", "total_steps", "eta_s",
                                         "version") if k in meta}}
    if state["job_status"] == "failed":
        result = job.latest_result()
        exc = (getattr(result, "exc_string", None) or "").strip().splitlines()
        state["error"] = exc[-1][:500] if exc else "failed"
    elif state["job_status"] == "finished":
        value = job.return_value() or {}
        state["version"] = value.get("version", state.get("version"))
    return state


SELECTION_FILE = "label-studio-model-version"
MAX_SELECTION_CHARS = 200  # a model version name Label Studio shows; anything longer is not remembered


def remember_selection(store: CheckpointStore, version: str) -> None:
    """Record the model version Label Studio shows for the project (atomic; a few bytes)."""
    store.root.mkdir(parents=True, exist_ok=True)
    atomic_write(store.root / SELECTION_FILE, lambda f: f.write(version.encode()))


def remembered_selection(store: CheckpointStore) -> str | None:
    path = store.root / SELECTION_FILE
    return path.read_text().strip() or None if path.is_file() else None


class VersionSelection:
    """Publishes the version a user selects as the project's model version in Label Studio."""

    MIN_INTERVAL_S = 5.0
    MAX_TRACKED = 4096  # projects whose last check time is kept (older ones are forgotten first)

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._checked: dict[int, float] = {}
        self._lock = threading.Lock()

    def due(self, project_id: int) -> bool:
        """Whether a check is due (at most one every ``MIN_INTERVAL_S`` per project); claims it if so."""
        now = time.monotonic()
        with self._lock:
            if now - self._checked.get(project_id, -1e9) < self.MIN_INTERVAL_S:
                return False
            if len(self._checked) >= self.MAX_TRACKED:
                self._checked = {p: t for p, t in self._checked.items() if now - t < self.MIN_INTERVAL_S}
            self._checked[project_id] = now
            return True

    def can_roll_back(self, project_id: int) -> bool:
        """Whether a selection could change anything: the project has a version besides the published one
        (else no request to Label Studio is made at all: a /setup for a new id costs nothing)."""
        return len(CheckpointStore(self.settings.model_dir, project_id).versions()) >= 2

    def check_soon(self, project_id: int, hostname: str | None = None, token: str | None = None) -> None:
        """``sync`` in a background thread when due and a rollback is possible: ``/setup`` never waits for
        Label Studio. The caller passes a ``hostname`` only when Label Studio vouched for it
        (``ml_backend.api.trust``); with ``LABEL_STUDIO_URL`` set it is ignored (``client_for``)."""
        if self.can_roll_back(project_id) and self.due(project_id):
            threading.Thread(target=self.sync, args=(project_id, hostname, token), daemon=True,
                             name=f"version-selection-{project_id}").start()

    def sync(self, project_id: int, hostname: str | None = None, token: str | None = None) -> str | None:
        """Read Label Studio's selection; publish it when it changed to another of our versions.
        Returns the version it published, else None."""
        client = client_for(self.settings, hostname, token)
        if client is None:
            return None
        try:
            selected = getattr(client.projects.get(id=project_id), "model_version", None) or None
        except Exception as e:  # Label Studio unreachable: keep serving what is published
            log.info("project %s: cannot read the model version selected in Label Studio: %s", project_id, e)
            return None
        store = CheckpointStore(self.settings.model_dir, project_id)
        known = remembered_selection(store)
        if not isinstance(selected, str) or len(selected) > MAX_SELECTION_CHARS:
            return None
        if selected == known or selected is None:
            return None
        remember_selection(store, selected)
        if known is None:  # first look at this project: a baseline, not a choice
            return None
        try:
            version_number(selected)
        except ValueError:
            return None  # e.g. the backend's title: not one of our versions
        if not store.path(selected).is_file() or store.published() == selected:
            return None
        store.publish(selected)
        log.warning("project %s: %s selected in Label Studio; now served and the parent of the next job",
                    project_id, selected)
        ModelCard.for_project(client, project_id, self.settings).show(f"serving {selected}", force=True)
        return selected
