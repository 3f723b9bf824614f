"""Counterfactual fills: the painted pixels of x take the painted pixels of ANOTHER painted image.

Robustar's noise fills (``training.noise``) remove the spurious pixels; a counterfactual fill puts
another image's spurious pixels in their place, so the feature the expert painted now disagrees with
the label (a wolf on another class's grass rather than on noise).  For a painted sample i with mask
M_i and a donor d with image x_d and mask M_d::

    x~_i = x_i                     outside M_i           (bit-identical)
         = x_d                     in M_i and M_d        (the donor's own spurious pixels, same place)
         = noise (``fallback``)    in M_i but not M_d    (where the donor has no painted pixel)

==========================  ===================================================================
mode                        donor of each painted sample
==========================  ===================================================================
``counterfactual``          a random other painted image of ANOTHER class when one is available,
                            else any other painted image; none at all: the noise fill
``counterfactual_any``      a random other painted image of any class
``counterfactual_mix``      per sample, 50/50: ``counterfactual``, or the noise fill everywhere
``counterfactual_mixture``  ``counterfactual``; but a sample without a donor of another class, or
                            whose donor covers less than half of its mask, takes Robustar's
                            ``mixture`` fill over its whole mask instead
==========================  ===================================================================

Why the last one: the donor's pixels are taken at the same place, so a painted corner patch finds
no donor pixels when another class paints another corner (the fill is then all noise, where
``mixture`` does better), while a painted background or texture is mostly covered by the donor's and
the few uncovered pixels (the donor's object) are best left as plain noise: a flat or striped fill
there draws the donor's object, of another class, into x~.  A donor of the same class carries the
same shortcut (x~ would keep it), so when every painted image available is of one class, the noise
fill is the better twin.

Donors come from the painted samples of the batch and from a small ``DonorBank``: the last
``capacity`` (64) painted samples seen in this job (uint8 image + bool mask at the model size, kept
on the device), so that a batch with one painted image still finds a donor.  A sample is never its
own donor within the batch; the bank may hold an earlier (differently augmented) copy of the same
image, which the another-class preference excludes whenever another class is available.

Everything runs on ``x.device`` as a few batched ops (a [P, C] random score, an ``argmax`` and a
gather; no Python loop over samples or pixels and no host synchronization); a ``torch.Generator`` on
that device makes the draw and the noise reproducible.
"""

from __future__ import annotations

import weakref

import torch
from torch import Tensor

from training.noise import NOISE_MODES, noise_fill

__all__ = ["COUNTERFACTUAL_MODES", "FILL_MODES", "DonorBank", "apply_counterfactual", "bank_for",
           "choose_donors", "is_counterfactual"]

COUNTERFACTUAL_MODES = ("counterfactual", "counterfactual_any", "counterfactual_mix", "counterfactual_mixture")
# every value TRAIN_NOISE_MODE accepts: Robustar's noise modes, then the counterfactual fills
FILL_MODES = NOISE_MODES + COUNTERFACTUAL_MODES
FALLBACK = "noise"  # the fill where a donor's mask does not cover, and of samples without a donor
MIN_COVER = 0.5  # counterfactual_mixture: the least share of the mask the donor must cover
BANK_SIZE = 64


def is_counterfactual(mode: str) -> bool:
    return mode in COUNTERFACTUAL_MODES


class DonorBank:
    """A ring buffer of the last ``capacity`` painted samples (uint8 images, bool masks, targets) on
    the device they were pushed from.  One bank per training job (``bank_for`` keys it on the job's
    noise generator); a batch of another image size empties it."""

    def __init__(self, capacity: int | None = None) -> None:
        capacity = BANK_SIZE if capacity is None else capacity
        if capacity < 0:
            raise ValueError(f"capacity must be >= 0, got {capacity}")
        self.capacity = capacity
        self.images: Tensor | None = None  # [K, C, H, W] uint8
        self.masks: Tensor | None = None  # [K, 1, H, W] bool
        self.targets: Tensor | None = None  # [K] long
        self.count = 0  # filled slots (host int: the bank never syncs)
        self.pos = 0  # next slot to write

    def __len__(self) -> int:
        return self.count

    def view(self, like: Tensor) -> tuple[Tensor, Tensor, Tensor] | None:
        """The filled part as (float images in [0, 1], masks, targets), or None when empty or when
        ``like`` (a [B, C, H, W] batch) has another shape or device."""
        if not self.count or self.images is None or self.images.shape[1:] != like.shape[1:] \
                or self.images.device != like.device:
            return None
        n = self.count
        return self.images[:n].to(like.dtype).div_(255), self.masks[:n], self.targets[:n]

    def push(self, images: Tensor, masks: Tensor, targets: Tensor) -> None:
        """Add painted samples (float [0, 1] images, [P, 1, H, W] masks, [P] targets); the oldest go."""
        p = images.shape[0]
        if not self.capacity or not p:
            return
        if self.images is None or self.images.shape[1:] != images.shape[1:] or self.images.device != images.device:
            k = self.capacity
            self.images = torch.zeros((k, *images.shape[1:]), dtype=torch.uint8, device=images.device)
            self.masks = torch.zeros((k, *masks.shape[1:]), dtype=torch.bool, device=images.device)
            self.targets = torch.zeros(k, dtype=torch.long, device=images.device)
            self.count = self.pos = 0
        if p > self.capacity:
            images, masks, targets = images[-self.capacity:], masks[-self.capacity:], targets[-self.capacity:]
            p = self.capacity
        slots = (torch.arange(p, device=images.device) + self.pos) % self.capacity
        self.images[slots] = images.detach().float().mul(255).round_().clamp_(0, 255).to(torch.uint8)
        self.masks[slots] = masks.to(torch.bool)
        self.targets[slots] = targets.to(torch.long)
        self.pos = (self.pos + p) % self.capacity
        self.count = min(self.capacity, self.count + p)


_BANKS: "weakref.WeakKeyDictionary[torch.Generator, DonorBank]" = weakref.WeakKeyDictionary()


def bank_for(generator: torch.Generator | None) -> DonorBank | None:
    """The donor bank of the job that owns ``generator`` (``training.engine.fit`` makes one noise
    generator per job), created on first use and dropped with the generator; None without one."""
    if generator is None:
        return None
    bank = _BANKS.get(generator)
    if bank is None:
        bank = _BANKS[generator] = DonorBank()
    return bank


def choose_donors(targets: Tensor, cand_targets: Tensor, n_batch: int, mode: str,
                  generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """A donor for each of the P painted samples among C candidates.

    The first ``n_batch`` candidates are the painted samples themselves (candidate i is sample i, never
    its own donor); the rest come from the bank.  Returns ``(donor, has_donor)``: [P] long indices into
    the candidates and [P] bool (False: no candidate at all, or ``counterfactual_mix`` drew noise).
    Uniform among the preferred candidates (another class, for ``counterfactual`` and the mix), else
    uniform among all allowed ones: argmax of a random key in [0, 1) plus 1 per tier.
    """
    p, c = targets.shape[0], cand_targets.shape[0]
    device = targets.device
    keys = torch.rand((p, c), device=device, generator=generator)
    allowed = torch.ones((p, c), dtype=torch.bool, device=device)
    if n_batch:
        allowed[:, :n_batch] &= ~torch.eye(p, n_batch, dtype=torch.bool, device=device)
    score = keys + allowed.to(keys.dtype)
    if mode != "counterfactual_any":
        score += (allowed & (cand_targets.view(1, c) != targets.view(p, 1))).to(keys.dtype)
    score.masked_fill_(~allowed, -1.0)
    if c:
        donor = score.argmax(1)
        has = allowed.any(1)
    else:
        donor = torch.zeros(p, dtype=torch.long, device=device)
        has = torch.zeros(p, dtype=torch.bool, device=device)
    if mode == "counterfactual_mix":
        has = has & (torch.rand(p, device=device, generator=generator) < 0.5)
    return donor, has


def apply_counterfactual(
    x: Tensor,
    mask: Tensor,
    targets: Tensor,
    mode: str = "counterfactual",
    generator: torch.Generator | None = None,
    bank: DonorBank | None = None,
    fallback: str | None = None,
) -> Tensor:
    """Fill the masked pixels of the painted batch ``x`` from donors (see the module docstring).

    Args:
        x: [P, C, H, W] float images in [0, 1], every one painted (un-normalized).
        mask: [P, 1, H, W] (or [P, H, W]) bool; nonzero counts as True.
        targets: [P] class indices (the another-class preference).
        mode: one of ``COUNTERFACTUAL_MODES``.
        generator: optional ``torch.Generator`` on ``x.device`` (donor draw and noise).
        bank: optional ``DonorBank``: extra donors from earlier batches; this batch is pushed into it
            after the fill.
        fallback: the noise mode (``training.noise.NOISE_MODES``) where no donor pixel applies;
            None: ``FALLBACK`` (``noise``).

    Returns:
        A new tensor like ``x``: pixels outside ``mask`` bit-identical, masked pixels the donor's where
        the donor's mask covers, the fallback noise elsewhere.
    """
    if mode not in COUNTERFACTUAL_MODES:
        raise ValueError(f"unknown counterfactual mode {mode!r}; choose one of {', '.join(COUNTERFACTUAL_MODES)}")
    if x.dim() != 4 or not x.is_floating_point():
        raise ValueError(f"x must be a float [P, C, H, W] batch, got {x.dtype} {tuple(x.shape)}")
    if mask.dim() == 3:
        mask = mask.unsqueeze(1)
    p = x.shape[0]
    if mask.shape != (p, 1, *x.shape[2:]):
        raise ValueError(f"mask must be [P, 1, H, W] = {[p, 1, *x.shape[2:]]}, got {list(mask.shape)}")
    mask = (mask if mask.dtype == torch.bool else mask != 0).to(x.device)
    targets = targets.to(x.device).reshape(-1)
    if targets.shape[0] != p:
        raise ValueError(f"targets must have {p} entries, got {targets.shape[0]}")
    fallback = FALLBACK if fallback is None else fallback
    noise, _ = noise_fill(tuple(x.shape), fallback, device=x.device, dtype=x.dtype, generator=generator)
    banked = bank.view(x) if bank is not None else None
    if banked is None:
        cand_x, cand_m, cand_y = x, mask, targets
    else:
        cand_x = torch.cat([x, banked[0]])
        cand_m = torch.cat([mask, banked[1]])
        cand_y = torch.cat([targets, banked[2]])
    donor, has = choose_donors(targets, cand_y, p, mode, generator)
    donor_m = cand_m.index_select(0, donor) & has.view(p, 1, 1, 1)
    if mode == "counterfactual_mixture":
        area = mask.sum((1, 2, 3))
        covered = (donor_m & mask).sum((1, 2, 3))
        other_class = cand_y.index_select(0, donor) != targets
        use = other_class & (covered >= MIN_COVER * area)  # False also without a donor (covered 0)
        donor_m = donor_m & use.view(p, 1, 1, 1)
        other, _ = noise_fill(tuple(x.shape), "mixture", device=x.device, dtype=x.dtype, generator=generator)
        noise = torch.where(use.view(p, 1, 1, 1), noise, other)
    fill = torch.where(donor_m, cand_x.index_select(0, donor), noise)
    out = torch.where(mask, fill, x)
    if bank is not None:
        bank.push(x, mask, targets)
    return out
