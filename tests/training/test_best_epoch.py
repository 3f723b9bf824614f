"""Train until learned, decided on val: the best val epoch is kept, training stops when val stops
improving, and the test split never picks an epoch (real model, real training)."""

from __future__ import annotations

import torch
from torch import nn

from training.best_epoch import NO_VAL, BestEpoch


def test_best_epoch_keeps_the_best_weights_and_stops_after_patience():
    model = nn.Linear(2, 2)
    best = BestEpoch(epochs=20, patience=2)
    scores = [(0.5, 1.0), (0.7, 0.9), (0.7, 0.8), (0.6, 0.7), (0.6, 0.7), (0.6, 0.7), (0.6, 0.7), (0.6, 0.7)]
    kept = None
    stopped = None
    for epoch, (acc, loss) in enumerate(scores, 1):
        with torch.no_grad():
            model.weight.fill_(epoch)
        if (acc, loss) == (0.7, 0.8):
            kept = model.weight.clone()
        if best.update(epoch, acc, loss, model):
            stopped = epoch
            break
    # epoch 3 is best (same accuracy, lower loss); not before half of the budget (epoch 10) does it stop
    assert stopped is None and best.best_epoch == 3
    for epoch in range(9, 13):
        if best.update(epoch, 0.6, 0.7, model):
            stopped = epoch
            break
    assert stopped == 10 and best.stopped_at == 10
    best.restore(model)
    assert torch.equal(model.weight, kept)
    s = best.summary(10)
    assert s["split"] == "val" and s["kept_epoch"] == 3 and "stopped at epoch 10" in s["note"]
    assert BestEpoch(5, 0).summary(5) == {"split": None, "kept_epoch": 5, "epochs_run": 5, "note": NO_VAL}


def test_fit_decides_on_val_never_on_test():
    """A real fit: with a val split the history's selection names val and its kept epoch; the same data
    given only as ``test`` decides nothing (the last epoch is kept)."""
    from training.dataset import PairedDataset
    from training.engine import fit
    from training.models import build_model
    from training.options import TrainOptions

    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 255, (24, 3, 16, 16), generator=g, dtype=torch.uint8)
    targets = torch.arange(24) % 2
    images[targets == 1, 0] = 255  # learnable: class 1 is red
    masks = torch.zeros(24, 1, 16, 16, dtype=torch.bool)
    ds = PairedDataset(images, masks, targets, list(range(24)))
    opts = TrainOptions(mode="scratch", epochs=4, batch_size=8, device="cpu", patience=0)
    mean = std = (0.5, 0.5, 0.5)
    with_val = fit(build_model("tiny-cnn", 2), ds, opts, mean, std, "cpu", {"val": ds, "test": ds})
    sel = with_val["selection"]
    assert sel["split"] == "val" and 1 <= sel["kept_epoch"] <= 4 and sel["epochs_run"] == 4
    assert all("val_accuracy" in row and "val_loss" in row for row in with_val["epochs"])
    no_val = fit(build_model("tiny-cnn", 2), ds, opts, mean, std, "cpu", {"test": ds})
    assert no_val["selection"]["split"] is None and no_val["selection"]["kept_epoch"] == 4
