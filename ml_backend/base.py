"""The model interface of label-studio-ml (``LabelStudioMLBase``), without its Flask 1.x server."""

from __future__ import annotations

from typing import Any


class LabelStudioMLBase:
    """What an ML backend model implements; the HTTP layer in ``ml_backend.app`` calls these.

    Mirrors label-studio-ml's class: one instance per project and label config, ``predict`` for
    ``/predict``, ``fit`` for ``/webhook`` events, ``model_version`` for ``/setup``.
    """

    def __init__(self, project_id: int, label_config: str, **kwargs: Any) -> None:
        self.project_id = project_id
        self.label_config = label_config

    @property
    def model_version(self) -> str:
        raise NotImplementedError

    def setup(self) -> None:
        """Called on ``/setup``; must be cheap (Label Studio calls it before every prediction)."""

    def predict(self, tasks: list[dict], context: dict | None = None, **kwargs: Any) -> list[dict]:
        """Return one ``{"result": [...], "score": float, "model_version": str}`` per task, in order."""
        raise NotImplementedError

    def fit(self, event: str, data: dict, **kwargs: Any) -> dict:
        """Handle a webhook event (e.g. queue a training job); must return quickly."""
        raise NotImplementedError
