"""Train until learned, decided on the validation split: keep the best val epoch, stop when val stops
improving.

After every epoch ``engine.fit`` scores the ``val`` split (``label_config.export.VAL_SPLIT``). The best
epoch is the one with the highest val accuracy, ties broken by the lower val loss and then by the later
epoch (trained longer); its weights are what the job saves. Training stops early when val has not
improved for ``patience`` epochs, never before half of the epoch budget. The test split is evaluated
for the curves only: it never picks an epoch. Without a val split every epoch runs and the last one is
kept (the summary says so).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from label_config.export import VAL_SPLIT

NO_VAL = f"no {VAL_SPLIT} split: every epoch ran and the last one is kept"


@dataclass
class BestEpoch:
    """Tracks the best val epoch of one run and its weights (on the CPU)."""

    epochs: int  # the budget
    patience: int  # 0: never stop early (the best epoch is still kept)
    best_key: tuple[float, float] | None = None
    best_epoch: int = 0
    since: int = 0  # epochs since the last strict improvement
    stopped_at: int | None = None
    state: dict[str, Any] | None = field(default=None, repr=False)

    @property
    def min_epochs(self) -> int:
        return max(1, self.epochs // 2)

    def update(self, epoch: int, accuracy: float, loss: float, model: nn.Module) -> bool:
        """Record epoch ``epoch``'s val ``accuracy``/``loss``; True when training should stop now."""
        key = (float(accuracy), -float(loss))
        if self.best_key is None or key >= self.best_key:
            self.since = 0 if self.best_key is None or key > self.best_key else self.since + 1
            self.best_key, self.best_epoch = key, epoch
            self.state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        else:
            self.since += 1
        stop = bool(self.patience) and epoch >= self.min_epochs and self.since >= self.patience and epoch < self.epochs
        if stop:
            self.stopped_at = epoch
        return stop

    def restore(self, model: nn.Module) -> None:
        """Load the best epoch's weights into ``model`` (nothing when no epoch was scored)."""
        if self.state is not None:
            model.load_state_dict(copy.deepcopy(self.state))

    def summary(self, last_epoch: int) -> dict[str, Any]:
        """What the job result records: the split that decided, the kept epoch and why training ended."""
        if self.best_key is None:
            return {"split": None, "kept_epoch": last_epoch, "epochs_run": last_epoch, "note": NO_VAL}
        acc, neg_loss = self.best_key
        ended = (f"stopped at epoch {self.stopped_at}: no {VAL_SPLIT} improvement for {self.patience} epochs"
                 if self.stopped_at else f"ran the whole budget of {self.epochs} epochs")
        return {"split": VAL_SPLIT, "kept_epoch": self.best_epoch, "epochs_run": last_epoch,
                f"{VAL_SPLIT}_accuracy": round(acc, 6), f"{VAL_SPLIT}_loss": round(-neg_loss, 6),
                "note": f"kept epoch {self.best_epoch} (best {VAL_SPLIT} accuracy {acc:.3f}, loss {-neg_loss:.4f}); "
                        f"{ended}; test never picks an epoch"}
