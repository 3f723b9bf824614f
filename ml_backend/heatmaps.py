"""Saliency heatmap PNGs: rendering, an on-disk cache per project/version/task, and the HTTP route.

Layout under ``<MODEL_DIR>/project-<id>/heatmaps/``::

    <version>/<sha256(task key)[:32]>.png

The task key is ``task["data"]["key"]`` (the importer writes the image's path inside the dataset
there) or the task id when the task has none. The label config's second ``<Image name="saliency">``
shows ``$saliency`` = ``<backend>/saliency/<project id>/<url-quoted key>``, which
``GET /saliency/{project_id}/{key:path}`` answers from this cache. The file name is a hash of the
key, so no request can name a path outside the cache folder. Files are written to a temp file and
renamed, so a reader never gets half a PNG.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from training.checkpoints import version_number

log = logging.getLogger(__name__)

HEATMAP_DIR = "heatmaps"


def task_key(task: dict) -> str:
    """The stable key of a task's heatmap: ``data.key`` when the task has one, else its id."""
    data = task.get("data") or {}
    key = data.get("key")
    if isinstance(key, str) and key:
        return key
    return str(task.get("id"))


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:32]


class HeatmapCache:
    """The cached heatmap PNGs of one project."""

    def __init__(self, model_dir: str | Path, project_id: int | str) -> None:
        self.root = Path(model_dir) / f"project-{project_id}" / HEATMAP_DIR

    def path(self, version: str, key: str) -> Path:
        version_number(version)  # only v<N> names reach the file system
        return self.root / version / f"{key_hash(key)}.png"

    def write(self, version: str, key: str, png: bytes) -> Path:
        """Store a PNG atomically (replacing an older one of the same task and version)."""
        path = self.path(version, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".heatmap.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(png)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return path

    def find(self, key: str, version: str | None) -> tuple[Path, str] | None:
        """The PNG of ``key`` for ``version``; else the newest one of an older version; else None."""
        name = f"{key_hash(key)}.png"
        if version is not None:
            p = self.path(version, key)
            if p.is_file():
                return p, version
        if not self.root.is_dir():
            return None
        limit = version_number(version) if version is not None else None
        older = []
        for d in self.root.iterdir():
            try:
                n = version_number(d.name)
            except ValueError:
                continue
            if (limit is None or n < limit) and (d / name).is_file():
                older.append((n, d.name))
        if not older:
            return None
        _, v = max(older)
        return self.root / v / name, v


# --------------------------------------------------------------------------------------------------
# rendering


def _jet(values: np.ndarray) -> np.ndarray:
    """The classic 'jet' colour map (blue -> cyan -> yellow -> red) of values in [0, 1], as uint8 RGB."""
    v = np.clip(values, 0.0, 1.0)[..., None]
    r = np.clip(1.5 - np.abs(4.0 * v - 3.0), 0.0, 1.0)
    g = np.clip(1.5 - np.abs(4.0 * v - 2.0), 0.0, 1.0)
    b = np.clip(1.5 - np.abs(4.0 * v - 1.0), 0.0, 1.0)
    return (np.concatenate([r, g, b], axis=-1) * 255.0).astype(np.uint8)


def normalize_map(saliency: np.ndarray) -> np.ndarray:
    """Scale a non-negative saliency map to [0, 1] by its 99.5th percentile (robust to single hot pixels)."""
    s = np.asarray(saliency, dtype=np.float32)
    s = np.maximum(s, 0.0)
    top = float(np.percentile(s, 99.5)) if s.size else 0.0
    if top <= 0.0:
        top = float(s.max()) if s.size else 0.0
    if top <= 0.0:
        return np.zeros_like(s)
    return np.clip(s / top, 0.0, 1.0)


def overlay_png(image: Image.Image, saliency: np.ndarray, alpha: float = 0.5) -> bytes:
    """A PNG of the heatmap (jet) blended over the image; ``saliency`` is H x W at the image's size."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    if saliency.shape != rgb.shape[:2]:
        raise ValueError(f"saliency map {saliency.shape} does not match the image {rgb.shape[:2]}")
    heat = _jet(normalize_map(saliency)).astype(np.float32)
    out = (1.0 - alpha) * rgb + alpha * heat
    buf = io.BytesIO()
    Image.fromarray(out.round().astype(np.uint8), "RGB").save(buf, "PNG", compress_level=1)
    return buf.getvalue()


# --------------------------------------------------------------------------------------------------
# HTTP route


def register_heatmap_route(app, settings, registry=None) -> None:
    """Add ``GET /saliency/{project_id}/{key:path}`` to a FastAPI app.

    Serves the PNG of the served version when it exists (else the newest cached one of an older
    version, named in the ``X-Robustar-Model-Version`` header); 404 with a JSON message when the
    heatmap was not computed yet.
    """
    from fastapi.responses import FileResponse, JSONResponse

    registry = registry or getattr(app.state, "registry", None)

    @app.get("/saliency/{project_id}/{key:path}")
    def saliency_png(project_id: int, key: str):
        version = None
        if registry is not None:
            try:
                version = registry.current_version(project_id)
            except (FileNotFoundError, ValueError):
                version = None
        found = HeatmapCache(settings.model_dir, project_id).find(key, version)
        if found is None:
            return JSONResponse(
                {"status": "error", "message": f"no saliency heatmap for {key!r} in project {project_id} yet "
                 f"(it is computed when the task is predicted{f' by {version}' if version else ''})"},
                status_code=404,
            )
        path, v = found
        return FileResponse(
            path, media_type="image/png",
            headers={"Cache-Control": "no-cache", "X-Robustar-Model-Version": v},
        )
