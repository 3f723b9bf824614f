"""gunicorn's uvicorn worker with the backend's server limits (``ml_backend.api.http_limits``): the docker
image runs ``gunicorn -c docker/gunicorn.conf.py``, where ``robustar serve`` would run uvicorn itself.
Needs the ``deploy`` extra (``uvicorn-worker``)."""

from __future__ import annotations

from uvicorn_worker import UvicornWorker

from ml_backend.api.http_limits import uvicorn_limits
from ml_backend.settings import Settings


class RobustarUvicornWorker(UvicornWorker):
    CONFIG_KWARGS = {**UvicornWorker.CONFIG_KWARGS, **uvicorn_limits(Settings.from_env())}
