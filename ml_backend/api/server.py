"""The production app: the HTTP layer with every prediction part enabled by configuration."""

from __future__ import annotations

from fastapi import FastAPI

from ml_backend.api.app import create_app
from ml_backend.predict.predictor import configured_parts
from ml_backend.settings import Settings


def build_app(settings: Settings | None = None) -> FastAPI:
    """Build the app from the environment (used by ``robustar serve`` and gunicorn/uvicorn)."""
    settings = settings or Settings.from_env()
    return create_app(settings, configured_parts(settings))
