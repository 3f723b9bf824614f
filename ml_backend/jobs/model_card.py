"""The model card in Label Studio (Settings › Model) as the place a user sees training: its title says
the served version and what training is doing (queued, epoch k of n, failed with the reason), its
description links the version's report page. Written by the worker through the SDK; best effort."""

from __future__ import annotations

import logging
import re
import threading
import time
from typing import Any

from ml_backend.labelstudio.client import client_for
from training.checkpoints import CheckpointStore

log = logging.getLogger(__name__)

TITLE = "Robustar"
MIN_INTERVAL_S = 2.0
VERSION_NAME = re.compile(r"^v\d+$")


def training_version(store: CheckpointStore) -> str:
    """The version a job is about to train: the next one; on a fresh project v1 (the job makes v0 first)."""
    return store.next_version() if store.versions() else "v1"


def decision_line(summary: dict[str, Any]) -> str:
    """The card's one line on which split decided: ``decided on val (gate, epoch N, suspicion)`` or why
    nothing was gated (no val split)."""
    d = summary.get("decisions") or {}
    gate, epoch, susp = (d.get(k) or {} for k in ("gate", "epoch", "suspicion"))
    if gate.get("split") is None and epoch.get("split") is None:
        return f"{gate.get('note') or 'not gated'}; test reported only"
    on_val = [name for name, part in (("gate", gate), (f"epoch {epoch.get('kept_epoch')}", epoch),
                                      ("suspicion", susp)) if part.get("split")]
    return f"decided on val ({', '.join(on_val)}); test reported only"


def progress_text(state: dict[str, Any], version: str | None) -> str | None:
    """A short status from the job's progress state; None when nothing worth showing changed."""
    phase = state.get("phase")
    target = f"training {version}" if version else "training"
    if phase == "train" and state.get("epoch"):
        return f"{target}: epoch {state['epoch']} of {state.get('epochs', '?')}"
    if phase in ("export", "decode", "images", "eval", "save", "predictions"):
        return f"{target}: {phase}"
    return None


class ModelCard:
    """The Label Studio ML backend entry of one project, found by its URL (else the only one)."""

    def __init__(self, client, project_id: int, backend_url: str | None,
                 basic_auth: tuple[str | None, str | None] = (None, None)) -> None:
        self.client, self.project_id, self.backend_url = client, project_id, (backend_url or "").rstrip("/")
        self.basic_auth = basic_auth
        self._id: int | None = None
        self._url: str | None = None
        self._last_text: str | None = None
        self._last_at = 0.0
        self._failed = False
        self.served: str | None = None
        self.training: str | None = None

    @classmethod
    def for_project(cls, client, project_id: int, settings) -> "ModelCard":
        """The project's card, found by the backend's public URL, with the backend's basic auth."""
        return cls(client, project_id, settings.public_url, (settings.basic_auth_user, settings.basic_auth_pass))

    def show_failure(self, what: str, error: BaseException, served: str | None) -> None:
        """``serving vN · <what> failed: <the error's first line>`` (its type when it has no text)."""
        text = str(error).strip()
        reason = text.splitlines()[0][:160] if text else type(error).__name__
        self.show((f"serving {served} · " if served else "") + f"{what} failed: {reason}", force=True)

    def _backend_id(self) -> int | None:
        if self._id is None:
            backends = list(self.client.ml.list(project=self.project_id))
            mine = [b for b in backends if (b.url or "").rstrip("/") == self.backend_url] or backends[:1]
            self._id, self._url = (mine[0].id, mine[0].url) if mine else (None, None)
        return self._id

    def keep_version_out_of_title(self) -> None:
        """Label Studio moves the project's ``model_version`` along with the backend's title while the two are
        equal (``MLBackend.save``; it sets it to the title when the backend is added): before the title changes,
        a project ``model_version`` that is not a version (``vN``) is set to the served one, so the version select
        never shows a card status."""
        current = getattr(self.client.projects.get(id=self.project_id), "model_version", None) or ""
        if VERSION_NAME.match(current):
            return
        version = self.served or "v0"
        self.client.projects.update(id=self.project_id, model_version=version)
        log.info("project %s: model_version %r is not a version; set to %s", self.project_id, current, version)

    def show(self, status: str, force: bool = False, description: str | None = None) -> None:
        """Set the card's title to ``Robustar · <status>`` (rate-limited unless ``force``)."""
        text = f"{TITLE} · {status}"
        now = time.monotonic()
        if self._failed or text == self._last_text or (not force and now - self._last_at < MIN_INTERVAL_S):
            return
        try:
            backend_id = self._backend_id()
            if backend_id is None:
                return
            self.keep_version_out_of_title()
            # Label Studio 1.23 validates an update like a new connection: URL, project and credentials again
            fields = {"title": text, "url": self._url, "project": self.project_id}
            user, password = self.basic_auth
            if user and password:
                fields.update(auth_method="BASIC_AUTH", basic_auth_user=user, basic_auth_pass=password)
            if description is not None:
                fields["description"] = description
            self.client.ml.update(id=backend_id, **fields, request_options={"max_retries": 0, "timeout_in_seconds": 10})
            self._last_text, self._last_at = text, now
        except Exception as e:  # the card is a view: never fail a job for it (nor retry it every step)
            self._failed = True
            log.info("project %s: cannot update the model card in Label Studio: %s", self.project_id, e)

    def progress(self, state: dict[str, Any]) -> None:
        """A ``training.progress.Progress`` sink."""
        text = progress_text(state, self.training)
        if text:
            served = f"serving {self.served} · " if self.served else ""
            self.show(served + text, force=state.get("phase") != "train")


def show_training_queued(settings, project_id: int, answer: dict, hostname: str | None, token: str | None) -> None:
    """After START_TRAINING queued a job: the card says so (in a background thread: webhooks answer at once)."""
    if answer.get("status") not in ("queued", "follow-up"):
        return
    client = client_for(settings, hostname, token)
    if client is None:
        return
    served = CheckpointStore(settings.model_dir, project_id).published()
    text = (f"serving {served} · " if served else "") + "training queued"
    card = ModelCard.for_project(client, project_id, settings)
    threading.Thread(target=card.show, args=(text,), kwargs={"force": True}, daemon=True,
                     name=f"model-card-{project_id}").start()
