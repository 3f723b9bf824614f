"""Influence scores between tasks, and the suspicion score of a training task.

With last-layer TracIn (see ``ml_backend.predict.influence``) the influence of training task ``i`` on a
task ``t`` at the served checkpoint is

    TracIn(i, t) = <g_i, g_t> = (delta_i . delta_t) * (h_i . h_t)

where ``g = dCE/dW_head = delta (outer) h``, ``delta = softmax(logits) - onehot(label)`` and ``h``
is the input of the final linear layer. A positive value means a gradient step on ``i`` lowers the
loss of ``t`` (a proponent), a negative value that it raises it (an opponent).

Two scores (``INFLUENCE_SCORE``):

- ``tracin``: the raw dot product above, exactly what captum's ``TracInCPFast`` computes;
- ``cosine`` (default): the renormalised version ``cos(g_i, g_t) = cos(delta_i, delta_t) *
  cos(h_i, h_t)`` (Hammoudeh & Lowd's "GAS"). At a single, converged checkpoint the raw score is
  dominated by the few training images the model has not fitted yet (a fitted image has
  ``delta ~ 0``), so images that *taught* the model a shortcut — and are now fitted — vanish from the
  raw ranking; the cosine keeps the direction of each gradient and finds them.

Suspicion of training task ``i`` (the prediction score of training tasks): mainly its total
*harmful* influence on the labelled test tasks the model gets wrong (their loss taken at the
ground truth), with self-influence as a small tie-breaker:

    harm_i      = sum over misclassified labelled test tasks t of max(0, -score(i, t))
    self_i      = ||g_i||^2 = |delta_i|^2 |h_i|^2
    suspicion_i = 0.9 * harm_i / max_j harm_j  +  0.1 * self_i / max_j self_j      (in [0, 1])

A training image that carries a class-correlated shortcut (a patch, a background, a texture that
the misclassified test images share) or a wrong label pushes those test images towards the wrong
class, so it scores high; among the images that harm no misclassified test (harm 0), the ones the
model still finds hard or contradictory (high loss: often mislabelled) come first. When the project
has no labelled test task that the model gets wrong, ``suspicion_i = self_i / max_j self_j``.
The maxima are taken over the indexed training set; a training task added later is scored with
the same maxima (clipped to 1). The index records which formula it used.
"""

from __future__ import annotations

import torch

SCORES = ("cosine", "tracin")
SELF = "self_influence"


def harmful_formula(score: str) -> str:
    return f"harmful_{score}_on_misclassified_tests"


def unit(x: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit length (zero rows stay zero)."""
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)


def pair_scores(delta_a: torch.Tensor, feats_a: torch.Tensor, delta_b: torch.Tensor, feats_b: torch.Tensor,
                score: str = "cosine") -> torch.Tensor:
    """``A x B`` influence scores: ``(delta_a @ delta_b.T) * (feats_a @ feats_b.T)``, on unit rows for cosine."""
    if score not in SCORES:
        raise ValueError(f"INFLUENCE_SCORE={score!r}: choose one of {', '.join(SCORES)}")
    if score == "cosine":
        delta_a, feats_a, delta_b, feats_b = unit(delta_a), unit(feats_a), unit(delta_b), unit(feats_b)
    return (delta_a @ delta_b.T) * (feats_a @ feats_b.T)


def harmful_influence(delta: torch.Tensor, feats: torch.Tensor, test_delta: torch.Tensor, test_feats: torch.Tensor,
                      score: str = "cosine", chunk: int = 4096) -> torch.Tensor:
    """``harm_i = sum_t max(0, -score(i, t))`` for every training row ``i`` (chunked over training rows)."""
    out = torch.zeros(delta.shape[0], dtype=torch.float32)
    if test_delta is None or test_delta.shape[0] == 0:
        return out
    for s in range(0, delta.shape[0], chunk):
        scores = pair_scores(delta[s : s + chunk], feats[s : s + chunk], test_delta, test_feats, score)
        out[s : s + chunk] = (-scores).clamp_min(0).sum(dim=1).cpu()
    return out


def self_influence(delta: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
    """``||g_i||^2 = |delta_i|^2 * |h_i|^2``."""
    return delta.pow(2).sum(dim=1) * feats.pow(2).sum(dim=1)


HARM_WEIGHT = 0.9


def suspicion(delta: torch.Tensor, feats: torch.Tensor, test_delta: torch.Tensor | None,
              test_feats: torch.Tensor | None, score: str = "cosine",
              scales: tuple[float, float] | None = None) -> tuple[torch.Tensor, str, tuple[float, float]]:
    """Suspicion of training rows, the formula's name and the ``(harm, self)`` maxima it was scaled by.

    ``scales=None`` takes the maxima from these rows (building an index); pass an index's scales to
    score new rows consistently with it.
    """
    self_inf = self_influence(delta, feats).cpu()
    use_harm = test_delta is not None and test_feats is not None and test_delta.shape[0] > 0
    harm = harmful_influence(delta, feats, test_delta, test_feats, score) if use_harm else None
    if scales is None:
        scales = (float(harm.max()) if harm is not None and harm.numel() else 0.0,
                  float(self_inf.max()) if self_inf.numel() else 0.0)
    s = normalise(self_inf, scales[1])
    if harm is None:
        return s, SELF, scales
    return HARM_WEIGHT * normalise(harm, scales[0]) + (1.0 - HARM_WEIGHT) * s, harmful_formula(score), scales


def normalise(raw: torch.Tensor, scale: float) -> torch.Tensor:
    """Divide by the index's maximum and clip to [0, 1] (new tasks may exceed the indexed maximum)."""
    if scale <= 0:
        return torch.zeros_like(raw)
    return (raw / scale).clamp(0.0, 1.0)
