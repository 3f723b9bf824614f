"""Paired training (Robustar / Wang et al. 2022): one step on x and its noised twin x~.

For a batch of B images x_i with labels y_i, of which the "painted" ones (index set P) carry a mask
M_i of spurious pixels, x~_i is x_i with M_i replaced by noise (``training.noise``) or by another
painted image's painted pixels (``training.counterfactual``).  The loss is

    L = 1/B * sum_i CE(z_i, y_i)                                   (every sample)
      + 1/B * sum_{i in P} CE(z~_i, y_i)                          (painted samples only)
      + lam * 1/B * sum_{i in P} || z_i - z~_i ||_2^2              (painted samples only)

with z = f(x), z~ = f(x~) the logits (``align="kl"`` replaces ``||z - z~||^2`` by the symmetric KL
divergence of the two softmax outputs, which stays bounded when fine-tuning a model with large logits;
``weights`` scale each painted sample's two twin terms, e.g. by a propagated mask's confidence).  That is the per-sample loss of the design doc
(``CE(f(x), y) + CE(f(x~), y) + lam * ||f(x) - f(x~)||^2``) averaged over the whole batch, where an
unpainted sample contributes plain ``CE(f(x), y)`` (its x~ would equal x: the alignment is 0 and we
do not count its CE twice).  Dividing by B rather than |P| keeps the weight of one painted sample
independent of how many others in the batch are painted, and makes an all-unpainted batch give
exactly plain cross-entropy.  The alignment term is a plain differentiable function of both
logits -- nothing is detached -- so it pulls z and z~ towards each other (a public implementation
detached one side, which turns the regularizer into a no-op for the clean branch).

``paired_step`` runs ONE forward pass on ``cat([x, x~_P])`` (only the painted subset is
duplicated), one backward and one optimizer step, so a fully painted batch costs about one plain
step at twice the batch (``fused=False`` runs two forward passes instead, see its docstring).

BatchNorm note: in train mode BN normalizes with the statistics of the concatenated batch (clean
and noised images together) and its running averages see both; this is the usual choice for
paired/consistency training (and what a single concatenated pass implies).  It keeps z and z~
computed under the same normalization, which is what the alignment term compares.  The running
statistics used at eval time therefore include noised images (half of them when every sample is
painted); a short plain epoch or BN recalibration on clean data can be added by the caller if that
ever matters.  Models without BN (or with GroupNorm) are unaffected.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from training.counterfactual import (
    DonorBank,
    apply_counterfactual,
    bank_for,
    is_counterfactual,
)
from training.noise import apply_noise

__all__ = ["ALIGNS", "alignment", "paired_loss", "paired_step", "plain_step"]

ALIGNS = ("l2", "kl")  # the alignment term: Robustar's squared logit distance, or a symmetric KL


def paired_loss(
    logits: Tensor, logits_tilde: Tensor, targets: Tensor, lam: float, paired: Tensor, align: str = "l2",
    weights: Tensor | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """Robustar's paired loss (see the module docstring for the exact normalization).

    Args:
        logits: [B, K] logits of the clean images.
        logits_tilde: logits of the noised images, either [B, K] (rows of unpainted samples are
            ignored) or [P, K] for the painted samples only, in batch order (P = paired.sum()).
        targets: [B] class indices.
        lam: weight of the alignment term (squared L2 distance between logit vectors).
        paired: [B] bool, True where the sample has a mask (its x~ differs from x).
        align: the alignment term, ``l2`` (Robustar's) or ``kl`` (``alignment``).
        weights: optional [B] float, the weight of each painted sample's twin terms (unpainted rows
            are ignored); None: 1.

    Returns:
        ``(loss, stats)``: the scalar loss (differentiable w.r.t. both logits) and floats
        ``loss``, ``ce`` (mean clean CE over B), ``ce_tilde`` and ``align`` (means over the painted
        samples, 0 if none), ``n_paired``.  When nothing is painted, loss == CE(logits, targets).
    """
    if logits.dim() != 2:
        raise ValueError(f"logits must be [B, K], got {tuple(logits.shape)}")
    b = logits.shape[0]
    paired = paired.to(device=logits.device, dtype=torch.bool).reshape(-1)
    if paired.numel() != b or targets.shape[0] != b:
        raise ValueError("logits, targets and paired must have the same batch size")
    idx = paired.nonzero().squeeze(1)
    w = weights.to(logits.device).reshape(-1).index_select(0, idx) if weights is not None else None
    loss, terms = _loss_terms(logits, logits_tilde, targets, lam, idx, align, w)
    return loss, _stats(terms, idx.numel())


def alignment(z: Tensor, zt: Tensor, align: str) -> Tensor:
    """Per-sample distance between the logits of x and of x~ (both differentiable), [P].

    ``l2``: Robustar's ``||z - z~||^2``; it grows with the logits' scale, so when fine-tuning a
    converged model (logits ~10-30) it dominates the first steps.  ``kl``: the symmetric KL divergence
    of the two predicted distributions, ``KL(p || p~) + KL(p~ || p)``: zero exactly when the
    predictions agree, bounded by the confidence rather than the logits' scale, and unaffected by a
    shift of all logits; the benchmark's default (docs/benchmarks.md)."""
    if align == "l2":
        return (z - zt).pow(2).sum(1)
    if align == "kl":
        lp, lpt = F.log_softmax(z.float(), 1), F.log_softmax(zt.float(), 1)
        return ((lp.exp() - lpt.exp()) * (lp - lpt)).sum(1)
    raise ValueError(f"unknown alignment {align!r}; choose one of {', '.join(ALIGNS)}")


def _loss_terms(logits: Tensor, logits_tilde: Tensor, targets: Tensor, lam: float, idx: Tensor,
                align: str = "l2", weights: Tensor | None = None):
    """The paired loss given the painted indices; returns (loss, detached [loss, ce, ce~, align]).

    ``weights`` ([P], in [0, 1]): how much each painted sample's twin counts (a propagated mask's
    confidence; 1 for the expert's own painting); None: 1 for all."""
    b, n_p = logits.shape[0], idx.numel()
    if logits_tilde.shape[0] == b and n_p != b:
        zt = logits_tilde.index_select(0, idx)
    elif logits_tilde.shape[0] == n_p:
        zt = logits_tilde
    else:
        raise ValueError(
            f"logits_tilde has {logits_tilde.shape[0]} rows; expected {b} (whole batch) or {n_p} (painted)"
        )
    ce = F.cross_entropy(logits, targets, reduction="sum") / b
    if n_p:
        z = logits.index_select(0, idx)
        y = targets.index_select(0, idx)
        ce_t = F.cross_entropy(zt, y, reduction="none")
        al = alignment(z, zt, align)  # no detach: the gradient reaches both z and z~
        if weights is not None:
            w = weights.to(ce_t.dtype)
            ce_t_sum, align_sum = (ce_t * w).sum(), (al * w).sum()
        else:
            ce_t_sum, align_sum = ce_t.sum(), al.sum()
        loss = ce + (ce_t_sum + lam * align_sum) / b
        ce_t, align_v = ce_t_sum.detach() / n_p, align_sum.detach() / n_p
    else:
        loss = ce
        ce_t = align_v = torch.zeros((), device=logits.device)
    return loss, torch.stack([loss.detach(), ce.detach(), ce_t.to(ce.dtype), align_v.to(ce.dtype)]).float()


def _stats(terms: Tensor, n_paired: int, *extra: Tensor) -> dict[str, float]:
    values = torch.cat([terms, *(e.reshape(1).float() for e in extra)]).cpu().tolist()  # one host sync
    stats = dict(zip(("loss", "ce", "ce_tilde", "align"), values[:4]))
    stats["n_paired"] = float(n_paired)
    if extra:
        stats["acc"] = values[4]
    return stats


def _accuracy(logits: Tensor, targets: Tensor) -> Tensor:
    return (logits.detach().argmax(1) == targets).float().mean()


def paired_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x_norm_fn: Callable[[Tensor], Tensor],
    images: Tensor,
    masks: Tensor,
    targets: Tensor,
    lam: float,
    noise_mode: str,
    generator: torch.Generator | None = None,
    *,
    fused: bool = True,
    donor_bank: DonorBank | None = None,
    align: str = "l2",
    weights: Tensor | None = None,
) -> dict[str, float]:
    """One paired training step: noise the painted images, one forward on [x; x~_P], backward, step.

    Args:
        model: the classifier, already on the data's device and in train mode (not changed here).
        optimizer: its optimizer; ``zero_grad`` / ``step`` are called here.
        x_norm_fn: maps [0, 1] images to model input (e.g. ``training.images.make_normalizer(mean, std)``).
        images: [B, 3, H, W] float in [0, 1], un-normalized (noise is filled in pixel space).
        masks: [B, 1, H, W] (or [B, H, W]) bool; all-False for unpainted samples.
        targets: [B] class indices.
        lam: alignment weight.
        noise_mode: one of ``training.counterfactual.FILL_MODES``: a Robustar noise mode
            (``training.noise``) or a counterfactual fill (``training.counterfactual``: the painted
            pixels take another painted image's painted pixels).
        generator: optional ``torch.Generator`` on the images' device, for reproducible noise.
        fused: True (default): one forward pass on ``cat([x, x~_P])`` -- best on GPUs, where a
            larger batch is nearly free.  False: two forward passes (x, then x~_P) into the same
            loss and one backward; BatchNorm then normalizes each half with its own statistics
            and updates its running averages twice.  Useful on CPUs whose step time grows faster
            than the batch (cache cliffs), see ``benchmarks/bench_paired_step.py``.
        donor_bank: counterfactual fills only: the bank of earlier painted samples to draw donors
            from besides this batch's; None: the job's bank, keyed on ``generator``
            (``training.counterfactual.bank_for``; no bank without a generator); ``DonorBank(0)``:
            this batch's painted samples only.
        align: the alignment term (``alignment``): ``l2`` (Robustar's) or ``kl``.
        weights: optional [B] float in [0, 1], the weight of each painted sample's twin (a propagated
            mask's confidence); None: every painted sample counts 1.

    Returns:
        floats ``loss``, ``ce``, ``ce_tilde``, ``align``, ``n_paired``, ``acc`` (clean-branch
        training accuracy of this batch).
    """
    if masks.dim() == 3:
        masks = masks.unsqueeze(1)
    b = images.shape[0]
    masks = masks.to(images.device, non_blocking=True)
    targets = targets.to(images.device, non_blocking=True)
    paired = masks.reshape(b, -1).any(dim=1)
    idx = paired.nonzero().squeeze(1)  # the only host sync before the forward: sizes the batch
    if idx.numel():
        x_p, m_p = images.index_select(0, idx), masks.index_select(0, idx)
        if is_counterfactual(noise_mode):
            bank = donor_bank if donor_bank is not None else bank_for(generator)
            x_tilde = apply_counterfactual(x_p, m_p, targets.index_select(0, idx), noise_mode, generator, bank)
        else:
            x_tilde = apply_noise(x_p, m_p, noise_mode, generator)
        if fused:
            out = model(x_norm_fn(torch.cat([images, x_tilde], dim=0)))
            logits, logits_tilde = out[:b], out[b:]
        else:
            logits = model(x_norm_fn(images))
            logits_tilde = model(x_norm_fn(x_tilde))
    else:
        logits = model(x_norm_fn(images))
        logits_tilde = logits[:0]
    w = weights.to(images.device).reshape(-1).index_select(0, idx) if weights is not None and idx.numel() else None
    loss, terms = _loss_terms(logits, logits_tilde, targets, lam, idx, align, w)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return _stats(terms, idx.numel(), _accuracy(logits, targets))  # the step's only sync after forward


def plain_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x_norm_fn: Callable[[Tensor], Tensor],
    images: Tensor,
    targets: Tensor,
) -> dict[str, float]:
    """One plain cross-entropy step (the baseline ``paired_step`` is compared with).

    Returns floats ``loss``, ``ce`` (the same value), ``acc``.
    """
    targets = targets.to(images.device, non_blocking=True)
    logits = model(x_norm_fn(images))
    loss = F.cross_entropy(logits, targets)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    loss_v, acc = torch.stack([loss.detach(), _accuracy(logits, targets)]).cpu().tolist()
    return {"loss": loss_v, "ce": loss_v, "acc": acc}
