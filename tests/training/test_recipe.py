"""The training recipe: which defaults are chosen for which data, that explicit options win, that the
job records why; and joint augmentation (the painted mask moves with the image)."""

from __future__ import annotations

import pytest
import torch
from torchvision import tv_tensors
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from training.augment import augment_batch, crop_box
from training.checkpoints import CheckpointMeta, ModelDefaults
from training.dataset import PairedDataset
from training.engine import fit, make_optimizer, make_scheduler
from training.models import SMALL_CNN_ARCHS, SmallCNN, build_model, classifier_head, small_cnn_for, small_cnn_receptive_field
from training.options import AUTO, OptionsError, TrainOptions
from training.start_model import start_model
from training.recipe import EPOCH_BOUNDS, choose_arch, resolve_recipe


def job(env: dict | None = None, overrides: dict | None = None) -> TrainOptions:
    return TrainOptions.resolve(env or {}, overrides or {}, {"device": "cpu"})


# ---------------------------------------------------------------- options


def test_job_defaults_are_auto_and_the_same_in_code():
    o = job()
    assert (o.epochs, o.lr, o.optimizer, o.lr_schedule, o.weight_decay, o.augment, o.backbone_lr_scale,
            o.patience) == (AUTO,) * 8
    assert not o.is_resolved
    assert TrainOptions(device="cpu") == job()  # one set of defaults: built in code == what a job runs
    robustar = TrainOptions.preset("robustar", epochs=3)
    assert (robustar.noise_mode, robustar.align, robustar.painted_share, robustar.propagated_masks, robustar.epochs) \
        == ("noise", "l2", 0.0, "off", 3)
    with pytest.raises(OptionsError, match="preset"):
        TrainOptions.preset("nope")


def test_val_split_doubles_the_epoch_budget_and_stops_on_val():
    plain = resolve_recipe(job(), 300)
    with_val = resolve_recipe(job(), 300, n_val=30)
    assert (plain.opts.epochs, plain.opts.patience) == (30, 0) and "no val" in plain.reasons["patience"][1]
    assert (with_val.opts.epochs, with_val.opts.patience) == (60, 10)
    assert "val" in with_val.reasons["epochs"][1] and "best val epoch" in with_val.reasons["patience"][1]
    fixed = resolve_recipe(job({"TRAIN_EPOCHS": "7"}), 300, n_val=30)
    assert (fixed.opts.epochs, fixed.opts.patience) == (7, 0)
    assert resolve_recipe(job({"TRAIN_PATIENCE": "3"}), 300, n_val=30).opts.patience == 3


def test_env_and_job_options_win_over_auto():
    o = job({"TRAIN_EPOCHS": "7", "TRAIN_OPTIMIZER": "Adam", "TRAIN_AUGMENT": "flip", "TRAIN_BACKBONE_LR_SCALE": "0.5"},
            {"lr": 0.002, "weight_decay": 0})
    r = resolve_recipe(o, 1000, pretrained=True)
    assert (r.opts.epochs, r.opts.optimizer, r.opts.augment, r.opts.backbone_lr_scale, r.opts.lr, r.opts.weight_decay) \
        == (7, "adam", "flip", 0.5, 0.002, 0.0)
    assert all(r.reasons[k][1].startswith("set") for k in ("epochs", "optimizer", "augment", "lr", "backbone_lr_scale"))
    assert job({"TRAIN_EPOCHS": "auto"}).epochs == AUTO


@pytest.mark.parametrize("bad", [{"augment": "mixup"}, {"optimizer": "lbfgs"}, {"lr_schedule": "step"},
                                 {"epochs": 0}, {"lr": -1}, {"backbone_lr_scale": -0.1}, {"weight_decay": -1}])
def test_bad_values_are_refused(bad):
    with pytest.raises(OptionsError, match=next(iter(bad))):
        job(overrides=bad)


# ---------------------------------------------------------------- resolution from the data


def test_auto_recipe_small_dataset():
    r = resolve_recipe(job(), 300)
    o = r.opts
    assert o.is_resolved
    assert (o.optimizer, o.lr, o.weight_decay, o.lr_schedule, o.augment, o.backbone_lr_scale) == \
        ("adamw", 1e-3, 0.05, "warmup_cosine", "crop_flip", 1.0)
    assert o.epochs == EPOCH_BOUNDS[1]  # 10 steps per epoch: capped
    assert set(r.reasons) == {"optimizer", "lr", "weight_decay", "epochs", "lr_schedule", "augment", "backbone_lr_scale",
                              "patience"}
    assert all(isinstance(v, list) and len(v) == 2 and v[1] for v in r.reasons.values())


def test_epochs_scale_with_the_dataset_within_bounds():
    e = [resolve_recipe(job(), n).opts.epochs for n in (50, 300, 600, 1000, 3000, 100_000)]
    assert e == sorted(e, reverse=True) and e[0] == EPOCH_BOUNDS[1] and e[-1] == EPOCH_BOUNDS[0]
    assert EPOCH_BOUNDS[0] < resolve_recipe(job(), 1000).opts.epochs < EPOCH_BOUNDS[1]


def test_lr_scales_with_the_batch():
    assert resolve_recipe(job(overrides={"batch_size": 128}), 1000).opts.lr == pytest.approx(2e-3)
    sgd = resolve_recipe(job(overrides={"optimizer": "sgd", "batch_size": 256}), 1000).opts
    assert (sgd.lr, sgd.weight_decay) == (0.1, 5e-4)


def test_explicit_lr_alone_keeps_sgd():
    o = resolve_recipe(job(overrides={"lr": 0.05}), 100).opts
    assert (o.optimizer, o.lr, o.weight_decay) == ("sgd", 0.05, 5e-4)


def test_pretrained_weights_get_a_slower_backbone():
    assert resolve_recipe(job(), 100, pretrained=True).opts.backbone_lr_scale == 0.1
    assert resolve_recipe(job(), 100, pretrained=False).opts.backbone_lr_scale == 1.0


def test_arch_for_the_image_size():
    assert choose_arch(None, "resnet-18", 32)[0] == "small-cnn"
    assert choose_arch(None, "resnet-18", 64)[0] == "small-cnn-5"
    assert choose_arch(None, "resnet-18", 96)[0] == "small-cnn-6"
    assert "no weights to keep" in choose_arch(None, "resnet-18", 96)[1]
    assert choose_arch(None, "resnet-18", 128)[0] == "resnet-18"
    assert choose_arch("resnet-18", "resnet-18", 64)[0] == "resnet-18"  # TRAIN_ARCH set: kept
    assert choose_arch("resnet-18-32x32", "resnet-18", 64)[0] == "resnet-18-32x32"
    assert choose_arch(None, "resnet-18", 64, fresh=False)[0] == "resnet-18"  # given weights: their arch
    assert choose_arch(None, "tiny-cnn", 32)[0] == "tiny-cnn"  # any other MODEL_ARCH: as set
    assert choose_arch(None, "resnet-50", 32)[0] == "resnet-50"


@pytest.mark.parametrize("blocks", [4, 5, 6])
def test_small_cnn_receptive_field(blocks):
    """The receptive field the recipe counts on is the real one: one feature of the last block depends
    on exactly ``small_cnn_receptive_field(blocks)`` input pixels per side, and the recipe's rule takes
    the fewest blocks that span the image."""
    model = SmallCNN(2, blocks).eval()
    for i, m in enumerate(model.features):  # same connectivity, linear: every path carries a gradient
        if isinstance(m, torch.nn.MaxPool2d):
            model.features[i] = torch.nn.AvgPool2d(2)
        elif isinstance(m, torch.nn.ReLU):
            model.features[i] = torch.nn.Identity()
    x = torch.zeros(1, 3, 192, 192, requires_grad=True)
    f = model.features(x)
    f[0, :, f.shape[2] // 2, f.shape[3] // 2].sum().backward()
    rows = x.grad.abs().sum(dim=(0, 1, 3)).nonzero()
    assert int(rows.max() - rows.min() + 1) == small_cnn_receptive_field(blocks)
    rf = small_cnn_receptive_field(blocks)
    assert small_cnn_for(rf) == SMALL_CNN_ARCHS[blocks]
    assert small_cnn_for(rf + 1) == SMALL_CNN_ARCHS[min(blocks + 1, 6)]


def _v0(arch: str, source: str) -> tuple[torch.nn.Module, CheckpointMeta]:
    return build_model(arch, 2), CheckpointMeta(version="v0", arch=arch, classes=["a", "b"], image_size=64,
                                                config={"source": source})


def test_start_model_picks_the_small_image_model():
    d = ModelDefaults(arch="resnet-18", image_size=64)
    scratch = start_model(job(overrides={"mode": "scratch"}), d, ["a", "b"], None)
    assert scratch.arch == "small-cnn-5" and "no weights to keep" in scratch.arch_reason and not scratch.pretrained
    assert isinstance(scratch.model, SmallCNN) and scratch.model.fc.out_features == 2
    pinned = start_model(job(overrides={"mode": "scratch", "arch": "resnet-18"}), d, ["a", "b"], None)
    assert pinned.arch == "resnet-18"
    # the default mode finetunes v0; a random-init v0 has nothing to keep: the compact CNN too
    fresh = start_model(job(), d, ["a", "b"], _v0("resnet-18", "random init (seed 0)"))
    assert fresh.arch == "small-cnn-5" and "untrained" in fresh.arch_reason
    # v0 from MODEL_CHECKPOINT: weights trained elsewhere are kept, fine-tuned with a slower backbone
    given = start_model(job(), d, ["a", "b"], _v0("resnet-18", "/weights/r18.pth (not loaded: none)"))
    assert given.arch == "resnet-18" and given.pretrained
    # a v0 trained here (the demo's plain run) is fine-tuned at one lr, like any product version
    demo = start_model(job(), d, ["a", "b"], _v0("resnet-18", "demo: plain training on the shortcut set, 3 epochs"))
    assert demo.arch == "resnet-18" and not demo.pretrained


def test_pretrained_weights_keep_their_arch_new_head_slow_backbone(tmp_path):
    """TRAIN_MODE=pretrained:<path> on small images: the weights' architecture (not the compact CNN),
    every backbone tensor loaded, the head re-initialised for other classes, the backbone at 0.1 x lr."""
    torch.manual_seed(1)
    elsewhere = build_model("resnet-18", 5)  # trained elsewhere on 5 classes
    path = tmp_path / "r18.pth"
    torch.save(elsewhere.state_dict(), path)
    start = start_model(job(overrides={"mode": f"pretrained:{path}"}), ModelDefaults(arch="resnet-18", image_size=64),
                        ["a", "b"], None)
    assert start.arch == "resnet-18" and start.pretrained and "fc.weight" in start.init
    own, given = start.model.state_dict(), elsewhere.state_dict()
    assert all(torch.equal(own[k], given[k]) for k in given if not k.startswith("fc."))
    assert start.model.fc.out_features == 2
    opts = resolve_recipe(job(), 200, pretrained=start.pretrained).opts
    groups = {g["name"]: g for g in make_optimizer(start.model, opts).param_groups}
    assert opts.backbone_lr_scale == 0.1
    assert groups["backbone"]["lr"] == pytest.approx(0.1 * groups["head"]["lr"])
    assert {id(p) for p in groups["head"]["params"]} == {id(p) for p in start.model.fc.parameters()}


def test_optimizer_param_groups_and_warmup():
    model = build_model("tiny-cnn", 3)
    o = resolve_recipe(job(overrides={"backbone_lr_scale": 0.1}), 320).opts
    opt = make_optimizer(model, o)
    assert isinstance(opt, torch.optim.AdamW)
    by_name = {g["name"]: g for g in opt.param_groups}
    assert by_name["head"]["lr"] == pytest.approx(1e-3) and by_name["backbone"]["lr"] == pytest.approx(1e-4)
    assert {id(p) for p in by_name["head"]["params"]} == {id(p) for p in classifier_head(model).parameters()}
    sched = make_scheduler(opt, o, total=100)  # 5 warm-up steps, then cosine to 0
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[-1]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(2e-4) and lrs[4] == pytest.approx(1e-3) and lrs[:5] == sorted(lrs[:5])
    assert lrs[5:] == sorted(lrs[5:], reverse=True) and lrs[-1] < 1e-5
    with pytest.raises(ValueError, match="resolved"):
        make_optimizer(model, job())


def test_fit_resolves_auto_options():
    g = torch.Generator().manual_seed(0)
    ds = PairedDataset(torch.randint(0, 256, (20, 3, 16, 16), dtype=torch.uint8, generator=g),
                       torch.zeros(20, 1, 16, 16, dtype=torch.bool), torch.arange(20) % 2, list(range(20)))
    h = fit(build_model("tiny-cnn", 2), ds, job(overrides={"epochs": 1, "eval_every_epoch": False}),
            (0.5,) * 3, (0.25,) * 3, "cpu")
    assert h["options"]["optimizer"] == "adamw" and h["options"]["augment"] == "crop_flip" and h["total_steps"] == 1


# ---------------------------------------------------------------- joint augmentation


def _painted_batch(n: int = 16, s: int = 32):
    """Grey noise images, each with a red square somewhere; the mask is exactly the square."""
    g = torch.Generator().manual_seed(1)
    x = (torch.rand(n, 1, s, s, generator=g) * 0.2 + 0.4).repeat(1, 3, 1, 1)  # grey: red - green == 0
    m = torch.zeros(n, 1, s, s, dtype=torch.bool)
    for i in range(n):
        top, left = (int(v) for v in torch.randint(2, s - 12, (2,), generator=g))
        size = 8
        x[i, :, top:top + size, left:left + size] = torch.tensor([1.0, 0.0, 0.0])[:, None, None]
        m[i, 0, top:top + size, left:left + size] = True
    return x, m


def _red(x):
    return (x[:, 0] > 0.9) & (x[:, 1] < 0.1) & (x[:, 2] < 0.1)  # [B,H,W]


def test_flip_moves_the_mask_with_the_image():
    x, m = _painted_batch()
    ax, am = augment_batch(x, m, "flip", torch.Generator().manual_seed(0))
    assert ax.shape == x.shape and am.dtype == torch.bool and am.shape == m.shape
    assert torch.equal(_red(ax), am[:, 0])  # exact: a flip moves pixels, no interpolation
    flipped = [i for i in range(len(x)) if not torch.equal(ax[i], x[i])]
    assert 0 < len(flipped) < len(x)  # per-sample coin
    assert all(torch.equal(ax[i], x[i].flip(-1)) and torch.equal(am[i], m[i].flip(-1)) for i in flipped)


@pytest.mark.parametrize("seed", range(4))
def test_crop_flip_keeps_the_mask_on_the_painted_pixels(seed):
    x, m = _painted_batch()
    ax, am = augment_batch(x, m, "crop_flip", torch.Generator().manual_seed(seed))
    assert ax.shape == x.shape and am.shape == m.shape and am.dtype == torch.bool and ax.min() >= 0 and ax.max() <= 1
    assert not torch.equal(ax, x)
    red, mask = _red(ax), am[:, 0]
    # every clearly red pixel is painted, and every painted pixel has red in it (the border is blended)
    assert bool((red & ~mask).sum() == 0)
    reddish = ax[:, 0] - ax[:, 1] > 0.05
    assert bool((mask & ~reddish).sum() == 0)
    assert (red.sum((1, 2)) > 0).all() and (mask.sum((1, 2)) > 0).all()


@pytest.mark.parametrize("size", [16, 33, 64])
def test_batched_crop_flip_equals_torchvision_per_sample(size):
    """One grid_sample + one gather == v2 resized_crop (bilinear, antialiased) / crop + NEAREST_EXACT
    resize of the mask, then horizontal_flip, sample by sample with the same draws."""
    g = torch.Generator().manual_seed(size)
    x, m = torch.rand(12, 3, size, size, generator=g), torch.rand(12, 1, size, size, generator=g) > 0.6
    ax, am = augment_batch(x, m, "crop_flip", torch.Generator().manual_seed(7))
    draws = torch.Generator().manual_seed(7)  # the same draws, in augment_batch's order
    flip = torch.rand(12, generator=draws) < 0.5
    for i in range(12):
        top, left, ch, cw = crop_box(size, size, draws)
        img = TF.resized_crop(tv_tensors.Image(x[i]), top, left, ch, cw, [size, size], antialias=True)
        msk = TF.resize(TF.crop(tv_tensors.Mask(m[i].to(torch.uint8)), top, left, ch, cw), [size, size],
                        interpolation=InterpolationMode.NEAREST_EXACT)
        if flip[i]:
            img, msk = TF.horizontal_flip(img), TF.horizontal_flip(msk)
        assert torch.allclose(ax[i], img.as_subclass(torch.Tensor).clamp(0, 1), atol=1e-5)
        assert torch.equal(am[i], msk.as_subclass(torch.Tensor).bool())


def test_crop_box_is_mild_and_seeded():
    boxes = [crop_box(64, 64, torch.Generator().manual_seed(s)) for s in range(50)]
    for top, left, h, w in boxes:
        assert 0 <= top and 0 <= left and top + h <= 64 and left + w <= 64
        assert 0.7 * 64 * 64 <= h * w <= 64 * 64  # 80-100% of the area, up to rounding
    assert crop_box(64, 64, torch.Generator().manual_seed(3)) == boxes[3]
    assert len(set(boxes)) > 10


def test_augment_none_and_reproducible():
    x, m = _painted_batch(4)
    assert augment_batch(x, m, "none")[0] is x
    a = augment_batch(x, m, "crop_flip", torch.Generator().manual_seed(5))
    b = augment_batch(x, m, "crop_flip", torch.Generator().manual_seed(5))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    with pytest.raises(ValueError):
        augment_batch(x, m, "mixup")


def test_job_summary_records_the_recipe(tmp_path):
    from PIL import Image

    from label_config.export import ExportResult, TaskRecord
    from training.checkpoints import CheckpointStore
    from training.pipeline import run_pipeline

    colours = {"a": (200, 30, 30), "b": (30, 30, 200)}
    recs = [TaskRecord(i, f"img://{c}/{i}", split, c, c) for i, (c, split) in
            enumerate([(c, s) for c in colours for s in ("train",) * 6 + ("test",) * 2])]
    store = CheckpointStore(tmp_path, 1)
    opts = job(overrides={"epochs": 1, "eval_every_epoch": False, "push_predictions": False})
    s = run_pipeline(store, ["a", "b"], ExportResult(records=recs, n_tasks=len(recs)), opts,
                     lambda url: Image.new("RGB", (24, 24), colours[url.split("/")[2]]),
                     ModelDefaults(arch="tiny-cnn", image_size=16)).summary
    assert s["recipe"]["optimizer"] == ["adamw", s["recipe"]["optimizer"][1]] and s["recipe"]["epochs"][0] == 1
    assert s["recipe"]["arch"][0] == "tiny-cnn" and s["recipe"]["epochs"][1].startswith("set")
    assert s["options"]["lr"] == 1e-3 and s["options"]["augment"] == "crop_flip"  # as used, no "auto" left
    assert store.read_meta(s["version"]).config["recipe"]["lr"][0] == 1e-3
