"""Images as the model sees them: decode, one resize, one normalize.

The same functions serve training, evaluation, prediction and the influence index, so a task's
image is turned into model input the same way everywhere: decoded to RGB as Label Studio shows it
(``decode_image``: EXIF orientation applied, deep grayscale stretched, see there),
resized to ``size x size`` with PIL bilinear (``resize_rgb`` / ``to_batch``), scaled to [0, 1] and
normalized per channel (``normalize``). Masks are resized nearest-neighbour (``resize_mask``).
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import warnings
from typing import Callable, ContextManager, Sequence

import numpy as np
import torch
from PIL import Image

DEFAULT_MAX_PIXELS = 64_000_000
Image.MAX_IMAGE_PIXELS = 2 * DEFAULT_MAX_PIXELS  # PIL's own guard; decode_image checks the configured cap first
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)  # decode_image refuses those itself

ORIGINAL_SIZE_KEY = "robustar.original_size"  # Image.info key: (width, height) before decode_image downscaled
PAGES_KEY = "robustar.pages"  # Image.info key: the page count of a multi-page file (the first page is used)
DEEP_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")  # > 8 bits per pixel, one channel
STRETCH_PERCENTILES = (0.1, 99.9)  # deep grayscale: these percentiles of the image's own values -> 0 and 255
STRETCH_SAMPLE = 1 << 20  # pixels the percentiles are computed on (a regular subsample of larger images)
# EXIF orientation (tag 0x0112) -> the transpose that shows the image upright, as browsers do (PIL's exif_transpose)
EXIF_ORIENTATION = 0x0112
ORIENTATION_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
                         4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
                         6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90}
log = logging.getLogger(__name__)
ImageSource = Callable[[str], Image.Image]  # a task-data image URL -> RGB image (raises ImageError)


class ImageError(ValueError):
    """A task's image could not be fetched or decoded; the message says why."""


def original_size(img: Image.Image) -> tuple[int, int]:
    """``(width, height)`` of the image as it was stored, before ``decode_image`` downscaled it (else its size)."""
    size = img.info.get(ORIGINAL_SIZE_KEY)
    if isinstance(size, tuple) and len(size) == 2:
        return int(size[0]), int(size[1])
    return img.size


def fit_within(size: tuple[int, int], max_side: int | None) -> tuple[int, int]:
    """``size`` scaled down (aspect kept, each side >= 1) so that its longer side is at most ``max_side``."""
    w, h = size
    if not max_side or max(w, h) <= max_side:
        return w, h
    scale = max_side / max(w, h)
    return max(1, min(max_side, round(w * scale))), max(1, min(max_side, round(h * scale)))


def decode_bytes(mode: str, size: tuple[int, int]) -> int:
    """Bytes PIL holds for a ``mode`` image of ``size`` (1 byte per pixel for 1/L/P, 2 for 16-bit, else 4)."""
    bpp = 1 if mode in ("1", "L", "P") else 2 if mode.startswith("I;16") else 4
    return size[0] * size[1] * bpp


DecodeAdmission = Callable[[str, int, tuple[int, int]], ContextManager]
"""``admit(source, bytes, out_size)``: called once the header is read, before any pixel is decoded, with
the bytes the decode holds at its peak and the size of the image it returns; may raise ImageError (a
budget); its context is held while the full-size pixels are in memory."""


def stretch_to_8bit(img: Image.Image) -> Image.Image:
    """A deep one-channel image (16-bit, 32-bit int or float: a microscope's 12 or 16 bits) as 8-bit ``L``,
    scaled by the image's own range: its ``STRETCH_PERCENTILES`` (0.1 and 99.9 %, robust to a few hot or
    dead pixels) map to 0 and 255, clipped. A constant image keeps its level relative to the format's range
    (16-bit: value / 256)."""
    a = np.asarray(img)
    flat = a.reshape(-1)
    step = max(1, flat.size // STRETCH_SAMPLE)
    lo, hi = (float(v) for v in np.percentile(flat[::step], STRETCH_PERCENTILES))
    if not np.isfinite(lo) or not np.isfinite(hi) or hi <= lo:
        top = 65280.0 if img.mode.startswith("I;16") else 255.0  # 16-bit: value / 256
        lo, hi = 0.0, top
    out = (a.astype(np.float32) - lo) * (255.0 / (hi - lo))
    return Image.fromarray(np.clip(np.nan_to_num(out), 0, 255).astype(np.uint8), "L")


def _orientation(img: Image.Image) -> int:
    """The EXIF orientation (1..8; 1 when absent or unreadable: a broken EXIF block does not lose the image)."""
    try:
        value = img.getexif().get(EXIF_ORIENTATION, 1)
    except Exception:  # PIL raises many types on a malformed EXIF block
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _shown_size(size: tuple[int, int], orientation: int) -> tuple[int, int]:
    """The size as shown upright: orientations 5..8 swap width and height."""
    return (size[1], size[0]) if orientation in (5, 6, 7, 8) else size


def decode_image(data: bytes, source: str = "image", max_pixels: int = DEFAULT_MAX_PIXELS,
                 max_side: int | None = None, admit: DecodeAdmission | None = None) -> Image.Image:
    """Decode bytes to an RGB PIL image as Label Studio shows it; raise ImageError for corrupt, truncated
    or huge images.

    - **EXIF orientation** is applied (browsers, and so Label Studio, show photos upright, and a painted
      mask's ``original_width/height`` are the upright size), so the image, the masks and every region
      and heatmap line up with what the expert sees;
    - 8-bit grayscale and palette images become RGB as they are; RGBA/LA drop the alpha (as torchvision's
      loader does); CMYK (JPEG, Adobe-inverted too) is converted by PIL;
    - **deep grayscale** (16-bit PNG/TIFF, 32-bit int or float TIFF) is stretched by the image's own
      range (``stretch_to_8bit``: 0.1..99.9 percentiles -> 0..255), so a 12-bit microscope image in a
      16-bit file is not nearly black (value / 256 was);
    - a **multi-page** TIFF (a stack) gives its first page, logged, with the page count under ``PAGES_KEY``
      in ``info`` (animated GIF/PNG/WebP: the first frame, as PIL opens them).

    ``max_side``: downscale once, while decoding, so the longer side is at most ``max_side`` (JPEGs are
    decoded at a reduced scale by libjpeg (``Image.draft``), other formats reduced right after decoding,
    bilinear with ``reducing_gap``); the image's stored (upright) size stays readable with ``original_size``.
    ``None`` (the training path) returns the image at its full size. ``admit``: see ``DecodeAdmission``.
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
            orientation = _orientation(img)
            pages = img.n_frames if img.format == "TIFF" else 1  # TIFF pages are a walk of headers, cheap
            shown = _shown_size((w, h), orientation)
            target = _shown_size(fit_within(shown, max_side), orientation)  # in stored orientation
            if target != (w, h) and img.format == "JPEG":
                img.draft("RGB", target)  # libjpeg decodes at 1/2, 1/4 or 1/8 scale, still >= target
            peak = decode_bytes(img.mode, img.size) + img.size[0] * img.size[1] * 4  # pixels + one converted copy
            with admit(source, peak, target) if admit is not None else contextlib.nullcontext():
                img.load()
                if img.mode in DEEP_MODES:
                    img = stretch_to_8bit(img)
                elif img.mode == "P" and "transparency" in img.info:
                    img = img.convert("RGBA")
                if img.size != target:
                    if img.mode not in ("L", "RGB"):  # 1/P/CMYK/alpha: to what the model sees, then average
                        img = img.convert("L" if img.mode == "1" else "RGB")
                    img = img.resize(target, Image.BILINEAR, reducing_gap=2.0)
                out = img.convert("RGB")
                if orientation in ORIENTATION_TRANSPOSE:
                    out = out.transpose(ORIENTATION_TRANSPOSE[orientation])
    except ImageError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageError(f"{source}: image too large ({e})") from e
    except MemoryError as e:
        raise ImageError(f"{source}: image too large to decode") from e
    except Exception as e:  # PIL raises many types on hostile input (OSError, SyntaxError, struct.error, ...)
        raise ImageError(f"{source}: not a readable image ({type(e).__name__}: {e})") from e
    if out.size != shown:
        out.info[ORIGINAL_SIZE_KEY] = shown
    if pages > 1:
        out.info[PAGES_KEY] = pages
        log.info("%s: %d pages; the first is used", source, pages)
    return out


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
