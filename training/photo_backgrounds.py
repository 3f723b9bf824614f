"""Photographic backgrounds: crops of real photographs, one photograph per shortcut value.

The ``photo`` kind of ``training.synthetic``: each spurious value is one real photograph (grass, a
landscape, a brick wall, a coffee cup, gravel, a flower), and every image's background is a fresh
random crop of it (position, scale 25–60 % of the short side, mirror, exposure), so no two
backgrounds are alike while the value's content, texture and colours stay. Unlike the procedural
``natural`` kind, the statistics are those of photographs, objects and edges included.

The photographs are the sample images that scikit-image and scikit-learn ship inside their wheels
(nothing is downloaded; only the files are read, neither package is imported):
``pip install scikit-image scikit-learn`` (both are in the ``bench`` and ``test`` extras).
"""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

# (package, file inside it), in value order: textures and photographs alternate, colour and grey mixed
PHOTOS = (
    ("skimage", "data/grass.png"),
    ("sklearn", "datasets/images/china.jpg"),
    ("skimage", "data/brick.png"),
    ("skimage", "data/coffee.png"),
    ("skimage", "data/gravel.png"),
    ("sklearn", "datasets/images/flower.jpg"),
)
CROP_SCALE = (0.25, 0.6)  # crop side as a share of the photograph's short side


class PhotosMissing(RuntimeError):
    """The sample photographs are not installed."""


def photo_path(package: str, name: str) -> Path:
    """Where ``package``'s bundled file ``name`` lies, without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise PhotosMissing(f"the photo kind reads the sample photographs bundled with {package!r}, which is not "
                            "installed: pip install scikit-image scikit-learn")
    path = Path(next(iter(spec.submodule_search_locations))) / name
    if not path.is_file():
        raise PhotosMissing(f"{path} is missing from the installed {package!r}: reinstall it "
                            "(pip install --force-reinstall scikit-image scikit-learn)")
    return path


@lru_cache(maxsize=None)
def photographs() -> tuple[np.ndarray, ...]:
    """Every photograph of ``PHOTOS`` as a uint8 RGB array (loaded once)."""
    return tuple(np.asarray(Image.open(photo_path(pkg, name)).convert("RGB")) for pkg, name in PHOTOS)


def photo_background(value: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """An int16 ``size x size x 3`` background: a random crop of photograph ``value`` (mod their number)."""
    photo = photographs()[value % len(PHOTOS)]
    h, w = photo.shape[:2]
    side = max(size, int(rng.uniform(*CROP_SCALE) * min(h, w)))
    y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    crop = photo[y:y + side, x:x + side]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    img = np.asarray(Image.fromarray(np.ascontiguousarray(crop)).resize((size, size), Image.BOX), dtype=np.float64)
    img = img * rng.uniform(0.85, 1.15) + rng.normal(0, 3, img.shape)  # exposure and sensor noise
    return img.clip(0, 255).astype(np.int16)
