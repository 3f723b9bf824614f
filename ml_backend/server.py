"""The production app: the HTTP layer with every prediction part enabled by configuration."""

from __future__ import annotations

import logging

from fastapi import FastAPI

from ml_backend.app import create_app
from ml_backend.config import Settings
from ml_backend.heatmaps import register_heatmap_route
from ml_backend.parts import PredictionPart

log = logging.getLogger(__name__)

KNOWN_PARTS = ("saliency", "segmentation", "influence")


def configured_parts(settings: Settings) -> list[PredictionPart]:
    """The prediction parts switched on by ``PREDICT_PARTS`` (default: saliency, influence, and
    segmentation when ``SEGMENTATION_WEIGHTS`` is set).

    A part that is asked for but cannot run (segmentation without weights) is left out and named,
    with the reason, in ``settings.extra["disabled_parts"]`` (reported by ``/health``). A bad value
    (unknown part or method) raises ValueError at startup.
    """
    wanted = [p.strip().lower() for p in settings.predict_parts if p.strip()]
    unknown = sorted(set(wanted) - set(KNOWN_PARTS))
    if unknown:
        raise ValueError(f"PREDICT_PARTS: unknown part(s) {unknown}; choose from {', '.join(KNOWN_PARTS)}")
    disabled: dict[str, str] = settings.extra.setdefault("disabled_parts", {})
    for name in KNOWN_PARTS:
        if name not in wanted:
            disabled[name] = "off (not in PREDICT_PARTS)"
    parts: list[PredictionPart] = []
    if "saliency" in wanted:
        from ml_backend.saliency import SaliencyPart

        parts.append(SaliencyPart.from_settings(settings))
    if "segmentation" in wanted:
        if settings.segmentation_weights is None:
            disabled["segmentation"] = "no weights: set SEGMENTATION_WEIGHTS to a local Mask R-CNN state_dict"
        elif not settings.segmentation_weights.is_file():
            disabled["segmentation"] = f"no weights: SEGMENTATION_WEIGHTS={settings.segmentation_weights} does not exist"
        else:
            from ml_backend.segmentation import SegmentationPart

            parts.append(SegmentationPart.from_settings(settings))
    if "influence" in wanted:
        from ml_backend.influence import InfluencePart

        parts.append(InfluencePart.from_settings(settings))
    for name, why in disabled.items():
        log.info("prediction part %s: %s", name, why)
    return parts


def build_app(settings: Settings | None = None) -> FastAPI:
    """Build the app from the environment (used by ``robustar serve`` and gunicorn/uvicorn)."""
    settings = settings or Settings.from_env()
    app = create_app(settings, configured_parts(settings))
    register_heatmap_route(app, settings, app.state.registry)
    return app
