"""Suspicion score of a training task: "this image probably teaches the model a spurious feature".

With last-layer TracIn (see ``ml_backend.influence``) the influence of training task ``i`` on a
test task ``t`` at the served checkpoint is

    TracIn(i, t) = <g_i, g_t> = (delta_i . delta_t) * (h_i . h_t)

where ``g = dCE/dW_head = delta (outer) h``, ``delta = softmax(logits) - onehot(label)`` and ``h``
is the input of the final linear layer. A positive value means a gradient step on ``i`` lowers the
loss of ``t``; a negative value means it raises it.

The suspicion of training task ``i`` is its total *harmful* influence on the test tasks the model
gets wrong (their loss taken at their ground-truth label):

    harm_i      = sum over misclassified labelled test tasks t of max(0, -TracIn(i, t))
    suspicion_i = harm_i / max_j harm_j                                    (in [0, 1])

A training image that carries a class-correlated shortcut (a patch, a background, a texture the
misclassified test images share) or a wrong label pushes those test images towards the wrong
class, so it scores high. When the project has no labelled test task the model gets wrong, the
score falls back to normalised self-influence ``||g_i||^2 = |delta_i|^2 |h_i|^2`` (high-loss,
atypical or mislabelled training images first). The index records which formula it used.
"""

from __future__ import annotations

import torch

HARMFUL = "harmful_influence_on_misclassified_tests"
SELF = "self_influence"


def tracin_scores(delta_a: torch.Tensor, feats_a: torch.Tensor, delta_b: torch.Tensor, feats_b: torch.Tensor) -> torch.Tensor:
    """``A x B`` last-layer TracIn scores: ``(delta_a @ delta_b.T) * (feats_a @ feats_b.T)``."""
    return (delta_a @ delta_b.T) * (feats_a @ feats_b.T)


def harmful_influence(delta: torch.Tensor, feats: torch.Tensor, test_delta: torch.Tensor, test_feats: torch.Tensor,
                      chunk: int = 4096) -> torch.Tensor:
    """``harm_i = sum_t max(0, -TracIn(i, t))`` for every training row ``i`` (chunked over training rows)."""
    out = torch.zeros(delta.shape[0], dtype=torch.float32, device=delta.device)
    if test_delta.shape[0] == 0:
        return out
    for s in range(0, delta.shape[0], chunk):
        scores = tracin_scores(delta[s : s + chunk], feats[s : s + chunk], test_delta, test_feats)
        out[s : s + chunk] = (-scores).clamp_min(0).sum(dim=1)
    return out


def self_influence(delta: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
    """``||g_i||^2 = |delta_i|^2 * |h_i|^2``."""
    return delta.pow(2).sum(dim=1) * feats.pow(2).sum(dim=1)


def raw_suspicion(delta: torch.Tensor, feats: torch.Tensor, test_delta: torch.Tensor | None,
                  test_feats: torch.Tensor | None) -> tuple[torch.Tensor, str]:
    """Unnormalised suspicion of training rows and the formula used."""
    if test_delta is not None and test_feats is not None and test_delta.shape[0] > 0:
        return harmful_influence(delta, feats, test_delta, test_feats), HARMFUL
    return self_influence(delta, feats), SELF


def normalise(raw: torch.Tensor, scale: float) -> torch.Tensor:
    """Divide by the index's maximum and clip to [0, 1] (new tasks may exceed the indexed maximum)."""
    if scale <= 0:
        return torch.zeros_like(raw)
    return (raw / scale).clamp(0.0, 1.0)
