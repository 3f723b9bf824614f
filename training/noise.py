"""Robustar's noise fills for paired training, done on the tensor's device, vectorized over a batch.

``apply_noise(x, mask, mode)`` returns a copy of the un-normalized image batch ``x`` (values in
[0, 1]) in which exactly the pixels under ``mask`` are replaced.  Every fill value is a byte value
divided by 255 (``k / 255``, ``k`` an integer), as in Robustar, which filled uint8 PIL images:

==============  =====================================================================================
mode            fill of the masked pixels (byte values ``k``; the tensor holds ``k / 255``)
==============  =====================================================================================
``pure_black``  0 in every channel
``noise``       independent uniform integers 0..255 per pixel and channel
``noise_weak``  independent uniform integers 64..191 per pixel and channel (Robustar: randint(64, 192))
``noise_minor`` independent uniform integers 96..159 per pixel and channel (Robustar: randint(96, 160))
``random_pure`` one random colour per sample (each channel uniform 0..255), the same over its mask
``hstrips``     horizontal stripes with a period of 5 rows: rows ``y % 5 < 2`` (2 px) take one random
                colour per sample (each channel 0..255), the other 3 rows are black (0) -- Robustar's
``vstrips``     the same with columns: columns ``x % 5 < 2`` coloured, the other 3 black
``mixture``     each sample independently draws one of the 7 modes above (uniformly), then fills as
                that mode.  (Robustar's own ``mixture`` crashed: it read a missing attribute.)
==============  =====================================================================================

Stripe phase is absolute (image row / column index), so the stripes line up with the image grid.
Pixels outside the mask are returned bit-identical.  Everything runs as a few batched tensor ops
on ``x.device``; there is no host synchronization, so the fill overlaps with the forward pass on GPU.
A ``torch.Generator`` (on ``x.device``) makes the fill reproducible.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["NOISE_MODES", "MIXTURE_MODES", "STRIPE_PERIOD", "STRIPE_WIDTH", "apply_noise", "noise_fill"]

NOISE_MODES = ("pure_black", "noise", "noise_weak", "noise_minor", "random_pure", "hstrips", "vstrips", "mixture")
MIXTURE_MODES = NOISE_MODES[:-1]
STRIPE_PERIOD = 5  # rows (hstrips) or columns (vstrips) per stripe period
STRIPE_WIDTH = 2  # coloured rows/columns at the start of each period; the rest are black

# per-mode integer range [lo, hi) of the per-pixel noise; colour modes use (0, 256) for the colour
_NOISE_RANGE = {"pure_black": (0, 1), "noise": (0, 256), "noise_weak": (64, 192), "noise_minor": (96, 160)}
_PIXEL_NOISE = ("noise", "noise_weak", "noise_minor")
_COLOUR = ("random_pure", "hstrips", "vstrips")


def _check(x: Tensor, mask: Tensor, mode: str) -> Tensor:
    if mode not in NOISE_MODES:
        raise ValueError(f"unknown noise mode {mode!r}; choose one of {', '.join(NOISE_MODES)}")
    if x.dim() != 4 or x.shape[1] < 1:
        raise ValueError(f"x must be a [B, C, H, W] image batch, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"x must be a float tensor in [0, 1], got dtype {x.dtype}")
    if mask.dim() == 3:
        mask = mask.unsqueeze(1)
    b, _, h, w = x.shape
    if mask.shape != (b, 1, h, w):
        raise ValueError(f"mask must be [B, 1, H, W] = {[b, 1, h, w]}, got {list(mask.shape)}")
    if mask.dtype != torch.bool:
        mask = mask != 0
    return mask.to(x.device)


def noise_fill(
    shape: tuple[int, int, int, int],
    mode: str,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """The fill image of ``mode`` for a batch of ``shape`` = (B, C, H, W), values ``k / 255``.

    Returns ``(fill, modes)``: ``fill`` as ``dtype`` on ``device``, ``modes`` a [B] long tensor of
    indices into ``MIXTURE_MODES`` saying which mode filled each sample (varies only for mixture).
    """
    if mode not in NOISE_MODES:
        raise ValueError(f"unknown noise mode {mode!r}; choose one of {', '.join(NOISE_MODES)}")
    b, c, h, w = shape
    device = torch.device(device)
    kw = dict(device=device, generator=generator)
    if mode == "pure_black":
        return torch.zeros(shape, device=device, dtype=dtype), torch.zeros(b, dtype=torch.long, device=device)
    if mode in _PIXEL_NOISE:
        lo, hi = _NOISE_RANGE[mode]
        fill = torch.randint(lo, hi, shape, **kw, dtype=dtype).div_(255)
        modes = torch.full((b,), MIXTURE_MODES.index(mode), dtype=torch.long, device=device)
        return fill, modes
    if mode in _COLOUR:
        colour = torch.randint(0, 256, (b, c, 1, 1), **kw, dtype=dtype).div_(255)
        modes = torch.full((b,), MIXTURE_MODES.index(mode), dtype=torch.long, device=device)
        if mode == "random_pure":
            return colour.expand(shape), modes
        if mode == "hstrips":
            on = (torch.arange(h, device=device) % STRIPE_PERIOD < STRIPE_WIDTH).view(1, 1, h, 1)
        else:
            on = (torch.arange(w, device=device) % STRIPE_PERIOD < STRIPE_WIDTH).view(1, 1, 1, w)
        return colour * on.to(dtype), modes

    # mixture: one mode per sample; fill = pixel noise (zero span outside the noise modes)
    #                                      + colour x pattern (zero colour outside the colour modes)
    modes = torch.randint(0, len(MIXTURE_MODES), (b,), **kw)
    lo_t, span_t, colour_on, pure_on, h_on, v_on = _mixture_tables(device)
    u = torch.rand(shape, **kw, dtype=torch.float32)
    # floor(u * span) with u < 1 and span a power of two (256, 128, 64) is exactly 0..span-1
    pixel = u.mul_(span_t[modes].view(b, 1, 1, 1)).floor_().add_(lo_t[modes].view(b, 1, 1, 1))
    colour = torch.randint(0, 256, (b, c, 1, 1), **kw, dtype=torch.float32)
    colour.mul_(colour_on[modes].view(b, 1, 1, 1))
    hs = (torch.arange(h, device=device) % STRIPE_PERIOD < STRIPE_WIDTH).view(1, 1, h, 1).float()
    vs = (torch.arange(w, device=device) % STRIPE_PERIOD < STRIPE_WIDTH).view(1, 1, 1, w).float()
    per = [t[modes].view(b, 1, 1, 1) for t in (pure_on, h_on, v_on)]
    pattern = per[0] + per[1] * hs + per[2] * vs  # [B, 1, H, W]
    return pixel.add_(colour * pattern).to(dtype).div_(255), modes


_TABLES: dict = {}


def _mixture_tables(device: torch.device) -> tuple[Tensor, ...]:
    """Per-mode constants indexed by position in MIXTURE_MODES, cached per device."""
    if device not in _TABLES:
        lo = [_NOISE_RANGE[m][0] if m in _PIXEL_NOISE else 0 for m in MIXTURE_MODES]
        span = [_NOISE_RANGE[m][1] - _NOISE_RANGE[m][0] if m in _PIXEL_NOISE else 0 for m in MIXTURE_MODES]
        rows = [lo, span, [m in _COLOUR for m in MIXTURE_MODES], [m == "random_pure" for m in MIXTURE_MODES],
                [m == "hstrips" for m in MIXTURE_MODES], [m == "vstrips" for m in MIXTURE_MODES]]
        _TABLES[device] = tuple(torch.tensor(r, dtype=torch.float32, device=device) for r in rows)
    return _TABLES[device]


def apply_noise(
    x: Tensor, mask: Tensor, mode: str, generator: torch.Generator | None = None
) -> Tensor:
    """Replace the masked pixels of ``x`` with Robustar noise of ``mode`` (see the module table).

    Args:
        x: [B, C, H, W] float images, un-normalized, values in [0, 1] (normalize *after* this).
        mask: [B, 1, H, W] (or [B, H, W]) bool; True = spurious pixel to replace.  Any nonzero
            value of a non-bool mask counts as True.
        mode: one of ``NOISE_MODES``.
        generator: optional ``torch.Generator`` on ``x.device`` for reproducible noise.

    Returns:
        A new tensor like ``x``: masked pixels hold the fill (byte values / 255, ranges as in the
        module docstring), all other pixels are bit-identical to ``x``.  ``x`` is not modified.

    Raises:
        ValueError: unknown mode (the message lists the modes) or mismatched shapes.
    """
    mask = _check(x, mask, mode)
    fill, _ = noise_fill(tuple(x.shape), mode, device=x.device, dtype=x.dtype, generator=generator)
    return torch.where(mask, fill, x)
