"""Influence part: for test tasks the training tasks that most influenced the prediction, for training
tasks a suspicion score (``ml_backend.predict.influence.suspicion``), from a per-version index of gradient embeddings.

TracIn at the served checkpoint, restricted to the final linear layer (what captum's
``TracInCPFast`` computes). The gradient of the summed cross-entropy w.r.t. the head's weight is
the outer product ``delta (x) h`` of ``delta = softmax(logits) - onehot(label)`` (``C`` numbers)
and the head's input ``h`` (``D`` numbers), so ``<g_i, g_t> = (delta_i . delta_t)(h_i . h_t)`` and
a training task is stored as ``(delta_i, h_i)`` instead of a ``C*D`` gradient. A query for a batch
of test images is ``(Delta_q @ Delta.T) * (H_q @ H.T)``: one (factored) matrix product over the
whole training set. ``INFLUENCE_SCORE=tracin`` ranks by that raw product (identical to captum);
``cosine`` (default) by its renormalised form (see ``ml_backend.predict.influence.suspicion`` for why). Test tasks
use their *predicted* class as the label ("what made the model say this"), training tasks the
class they were trained on. As in captum, the head's bias is left out.

The index of version ``vN`` is ``<MODEL_DIR>/project-<id>/influence/vN.pt`` (temp file + rename).
It is built by ``build_influence_index`` — from the training job right after it publishes a version
(cheapest: the images are already in memory), or lazily by the backend (``INFLUENCE_BUILD``:
``background`` builds it in a thread behind a lock while predictions go out without influence,
``sync`` builds it inside the first request, ``off`` never builds it in the backend).
"""

from ml_backend.predict.influence.embedding import (
    Embeddings,
    InfluenceRecord,
    delta_for,
    embed_batch,
    embed_records,
    split_head,
)
from ml_backend.predict.influence.index import (
    InfluenceIndex,
    build_influence_index,
    index_path,
    load_influence_index,
    rank,
)
from ml_backend.predict.influence.manager import IndexManager, label_studio_records
from ml_backend.predict.influence.part import InfluencePart, task_link

__all__ = [
    "Embeddings", "IndexManager", "InfluenceIndex", "InfluencePart", "InfluenceRecord", "build_influence_index",
    "delta_for", "embed_batch", "embed_records", "index_path", "label_studio_records", "load_influence_index",
    "rank", "split_head", "task_link",
]
