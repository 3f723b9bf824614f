"""The demo's v0 has learned the shortcut: a short plain run on the generated shortcut set (as ``robustar
demo`` trains it, no Label Studio needed) gives a model that is (a) accurate on its training images,
(b) looks at the class-coloured corner patch (Grad-CAM, the demo's saliency method, puts a large share of
its top-5% pixels inside the true patch mask, far above the patch's area share), and (c) on test images
whose patch disagrees with the class mostly predicts the patch's class.

The margins hold for seeds 0-9 (measured: train accuracy 0.93-0.99; Grad-CAM share 0.45-0.48 against an
area share of 0.024; accuracy on conflicting test images 0.00-0.32, the patch's class predicted on
0.68-1.00 of them).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ml_backend.local.demo import ensure_trained_v0
from ml_backend.predict.saliency import saliency_maps, top_q_mask
from ml_backend.predict.registry import ModelRegistry
from ml_backend.settings import Settings
from training import bootstrap
from training.bootstrap import SOURCE_PREFIX, train_initial_version
from training.checkpoints import CheckpointStore, ModelDefaults
from training.images import decode_image, normalize, to_batch
from training.synthetic import make_spurious_dataset

SIZE = 64
TOP_Q = 5.0  # the demo's SALIENCY_TOP_Q: the "Model attention" region


def make_demo_dataset(root: Path, seed: int) -> dict:
    """The demo's dataset (``robustar demo``: 30 train / 15 test images per class at 64 px), at ``seed``."""
    return make_spurious_dataset(root, n_train=30, n_test=15, size=SIZE, seed=seed, kind="patch")


def load(root: Path, keys: list[str]) -> torch.Tensor:
    """Images as the backend turns them into model input: decode, one resize, [0, 1] (not normalized)."""
    return to_batch([decode_image((root / k).read_bytes(), k) for k in keys], SIZE)


@pytest.fixture(scope="module", params=[0, pytest.param(1, marks=pytest.mark.slow),
                                        pytest.param(2, marks=pytest.mark.slow)])
def trained(request, tmp_path_factory):
    seed = request.param
    root = tmp_path_factory.mktemp(f"demo-v0-{seed}")
    info = make_demo_dataset(root / "dataset", seed)
    classes = sorted(info["classes"])  # the label config's order (importer.scan_dataset)
    store = CheckpointStore(root / "models", 1)
    meta = train_initial_version(store, ModelDefaults("tiny-cnn", SIZE, seed=seed), classes, root / "dataset")
    model, loaded = store.load("v0")
    return {"seed": seed, "root": root / "dataset", "info": info, "classes": classes, "store": store,
            "meta": meta, "model": model, "loaded": loaded}


def split_keys(t: dict, split: str) -> list[str]:
    return sorted(k for k in t["info"]["spurious_values"] if k.startswith(f"{split}/"))


def targets(t: dict, keys: list[str]) -> torch.Tensor:
    return torch.tensor([t["classes"].index(k.split("/")[1]) for k in keys])


def predict(t: dict, keys: list[str]) -> torch.Tensor:
    meta = t["loaded"]
    with torch.no_grad():
        return t["model"](normalize(load(t["root"], keys), meta.mean, meta.std)).argmax(1)


def patch_share(model, t: dict, keys: list[str], method: str = "gradcam") -> tuple[float, float]:
    """(mean share of each image's top-5% saliency pixels inside its true patch mask, mean patch area share)."""
    meta = t["loaded"]
    x = normalize(load(t["root"], keys), meta.mean, meta.std)
    sal = saliency_maps(model, x, targets(t, keys), method)
    shares, areas = [], []
    for key, s in zip(keys, sal):
        mask = np.asarray(Image.open(t["root"] / "masks" / key)) > 127
        top = top_q_mask(s.numpy(), TOP_Q)
        shares.append((top & mask).sum() / max(top.sum(), 1))
        areas.append(mask.mean())
    return float(np.mean(shares)), float(np.mean(areas))


def test_v0_is_written_published_and_says_where_it_came_from(trained):
    store, meta = trained["store"], trained["meta"]
    assert store.versions() == ["v0"] and store.published() == "v0"
    assert meta.version == "v0" and meta.arch == "tiny-cnn" and meta.image_size == SIZE
    assert meta.classes == trained["classes"] == trained["loaded"].classes
    assert meta.config["source"] == f"{SOURCE_PREFIX}, {bootstrap.DEFAULT_EPOCHS} epochs"
    assert trained["loaded"].config["source"] == meta.config["source"]
    assert meta.config["trained_on"]["n"] == 90 and meta.config["options"]["lam"] == 0.0


def test_v0_is_accurate_on_its_training_images(trained):
    keys = split_keys(trained, "train")
    acc = float((predict(trained, keys) == targets(trained, keys)).float().mean())
    print(f"\nseed {trained['seed']}: train accuracy {acc:.3f}")
    assert acc >= 0.9
    assert trained["meta"].metrics["train"]["accuracy"] == pytest.approx(acc)


def test_v0_attends_to_the_patch(trained):
    keys = split_keys(trained, "train")
    share, area = patch_share(trained["model"], trained, keys)
    print(f"\nseed {trained['seed']}: Grad-CAM top-{TOP_Q:g}% share in the patch {share:.3f} (patch area {area:.3f})")
    assert share >= 0.35
    assert share >= 10 * area


def test_v0_has_learned_the_shortcut(trained):
    """On test images whose patch says another class, v0 follows the patch."""
    values, names = trained["info"]["spurious_values"], trained["info"]["classes"]
    conflicting = [k for k in split_keys(trained, "test") if values[k] != names.index(k.split("/")[1])]
    assert len(conflicting) >= 20
    pred = predict(trained, conflicting)
    acc = float((pred == targets(trained, conflicting)).float().mean())
    patch_class = torch.tensor([trained["classes"].index(names[values[k]]) for k in conflicting])
    follows_patch = float((pred == patch_class).float().mean())
    train_acc = trained["meta"].metrics["train"]["accuracy"]
    print(f"\nseed {trained['seed']}: accuracy on {len(conflicting)} conflicting test images {acc:.3f} "
          f"(train {train_acc:.3f}); predicts the patch's class on {follows_patch:.3f}")
    assert acc <= 0.45 and acc <= train_acc - 0.5
    assert follows_patch >= 0.55


@pytest.mark.slow
def test_training_is_deterministic_and_never_repeated(tmp_path, monkeypatch):
    make_demo_dataset(tmp_path / "dataset", 0)
    classes = ["circle", "square", "triangle"]
    defaults = ModelDefaults("tiny-cnn", SIZE, seed=0)
    stores = [CheckpointStore(tmp_path / f"models-{i}", 1) for i in range(2)]
    for store in stores:
        train_initial_version(store, defaults, classes, tmp_path / "dataset")
    a, b = (s.load("v0")[0].state_dict() for s in stores)
    assert all(torch.equal(a[k], b[k]) for k in a)

    # a store that holds a version is left alone (a second demo start): nothing is trained or written
    before = stores[0].path("v0").stat().st_mtime_ns
    monkeypatch.setattr(bootstrap, "fit", lambda *a, **k: pytest.fail("v0 was trained again"))
    again = train_initial_version(stores[0], defaults, classes, tmp_path / "dataset")
    assert again.version == "v0" and again.config["source"].startswith(SOURCE_PREFIX)
    assert stores[0].versions() == ["v0"] and stores[0].path("v0").stat().st_mtime_ns == before


def test_demo_trains_v0_before_the_backend_serves_the_project(tmp_path, monkeypatch, capsys):
    """``robustar demo``'s step: the store of the project's id gets the trained v0 (the backend then serves
    it instead of creating a random one); a second start keeps it."""
    for var in ("MODEL_CHECKPOINT", "SEED"):
        monkeypatch.delenv(var, raising=False)
    make_demo_dataset(tmp_path / "dataset", 0)
    classes = ["circle", "square", "triangle"]
    env = {"MODEL_ARCH": "tiny-cnn", "IMAGE_SIZE": str(SIZE)}
    note = ensure_trained_v0(tmp_path / "models", 7, classes, tmp_path / "dataset", env)
    assert "training v0" in capsys.readouterr().out
    assert note.startswith("tiny-cnn, plain training on the shortcut set") and "train accuracy" in note

    served = ModelRegistry(Settings(model_dir=tmp_path / "models", device="cpu")).get(7, classes)
    assert served.version == "v0" and served.meta.config["source"].startswith(SOURCE_PREFIX)

    monkeypatch.setattr(bootstrap, "fit", lambda *a, **k: pytest.fail("v0 was trained again"))
    assert ensure_trained_v0(tmp_path / "models", 7, classes, tmp_path / "dataset", env) == note
    assert "training v0" not in capsys.readouterr().out
