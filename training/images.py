"""Images as the model sees them: decode, one resize, one normalize.

The same functions serve training, evaluation, prediction and the influence index, so a task's
image is turned into model input the same way everywhere: decoded to RGB (``decode_image``),
resized to ``size x size`` with PIL bilinear (``resize_rgb`` / ``to_batch``), scaled to [0, 1] and
normalized per channel (``normalize``). Masks are resized nearest-neighbour (``resize_mask``).
"""

from __future__ import annotations

import functools
import io
import warnings
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image

DEFAULT_MAX_PIXELS = 64_000_000
Image.MAX_IMAGE_PIXELS = 2 * DEFAULT_MAX_PIXELS  # PIL's own guard; decode_image checks the configured cap first
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)  # decode_image refuses those itself

ImageSource = Callable[[str], Image.Image]  # a task-data image URL -> RGB image (raises ImageError)


class ImageError(ValueError):
    """A task's image could not be fetched or decoded; the message says why."""


def decode_image(data: bytes, source: str = "image", max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode bytes to an RGB PIL image; raise ImageError for corrupt, truncated or huge images.

    Grayscale, palette, RGBA/LA (alpha dropped, as torchvision's loader does) and CMYK become RGB;
    16-bit images (``I;16*``, ``I``) are scaled to 8 bit (value / 256).
    """
    if not data:
        raise ImageError(f"{source}: empty image (0 bytes)")
    try:
        with Image.open(io.BytesIO(data)) as img:
            w, h = img.size
            if w <= 0 or h <= 0:
                raise ImageError(f"{source}: image has no pixels ({w}x{h})")
            if w * h > max_pixels:
                raise ImageError(f"{source}: image too large ({w}x{h} = {w * h} pixels > {max_pixels}, MAX_IMAGE_PIXELS)")
            img.load()
            if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
                img = img.point(lambda v: v / 256).convert("L")
            elif img.mode == "F":
                img = img.convert("L")
            return img.convert("RGB")
    except ImageError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageError(f"{source}: image too large ({e})") from e
    except MemoryError as e:
        raise ImageError(f"{source}: image too large to decode") from e
    except Exception as e:  # PIL raises many types on hostile input (OSError, SyntaxError, struct.error, ...)
        raise ImageError(f"{source}: not a readable image ({type(e).__name__}: {e})") from e


def resize_rgb(img: Image.Image, size: int) -> np.ndarray:
    """RGB ``size x size`` uint8 array (PIL bilinear): the one resize of every path."""
    return np.asarray(img.convert("RGB").resize((size, size), Image.BILINEAR), dtype=np.uint8)


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """Bool ``size x size`` mask (nearest-neighbour resize of a bool H x W mask)."""
    pil = Image.fromarray(mask.astype(np.uint8) * 255, "L").resize((size, size), Image.NEAREST)
    return np.asarray(pil) > 127


def to_batch(images: Sequence[Image.Image], size: int) -> torch.Tensor:
    """Resize images and stack them as a float batch ``[N, 3, size, size]`` in [0, 1]."""
    batch = torch.from_numpy(np.stack([resize_rgb(img, size) for img in images])).permute(0, 3, 1, 2)
    return batch.float().div_(255.0)


def normalize(batch: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Per-channel ``(x - mean) / std`` of a [0, 1] batch, on the batch's device and dtype."""
    m = torch.as_tensor(mean, dtype=batch.dtype, device=batch.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=batch.dtype, device=batch.device).view(1, -1, 1, 1)
    return (batch - m) / s


def make_normalizer(mean: Sequence[float], std: Sequence[float]) -> Callable[[torch.Tensor], torch.Tensor]:
    """``normalize`` bound to a model's mean/std (the ``x_norm_fn`` of the training steps)."""
    return functools.partial(normalize, mean=tuple(mean), std=tuple(std))


def resize_batch(batch: torch.Tensor, size: int) -> torch.Tensor:
    """A cached [0, 1] batch at another model size (bilinear, antialiased, on the batch's device)."""
    if batch.shape[-1] == size and batch.shape[-2] == size:
        return batch
    return torch.nn.functional.interpolate(batch, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
