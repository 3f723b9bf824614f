"""Efficacy: does paired training remove a spurious feature?  Test accuracy per method, over seeds.

A pinned recipe (tiny-cnn, SGD, fixed epochs, no augmentation) for every method: what a job actually
runs is measured by ``benchmarks.job_efficacy``. As in the product, a val split (``Preset.n_val``
images per class, drawn apart from test from the same shortcut-free distribution) guides the
suspicion-ranked rows: the ranking is built from the model's errors on val, and every method is
scored on test only.

    python -m benchmarks.efficacy              # CPU-sized default: every kind x 3 seeds, the job's paired settings
                                               # at 1-100 % masks on a pinned recipe, ablations at 10 %, ranked
                                               # painting; no fills side by side (--full runs those, 5 seeds)
    python -m benchmarks.efficacy --smoke      # seconds: CI's smoke size
    python -m benchmarks.efficacy --full       # bigger (a GPU): more data, masks on 1-100%, aug only, λ sweep
    python -m benchmarks.efficacy --out DIR    # where efficacy.md / .json / .png go
    python -m benchmarks.efficacy --only ranked --kinds background,natural   # ranked vs random painting only

Data (``training.synthetic``, nothing downloaded): one shape per class on a noisy background; a
spurious feature (``--kinds``: a class-coloured corner patch, a class-coloured background, a class
texture, a natural-like texture) agrees with the label for a fraction ``p`` of the training images and
is random in val and test.
The generator writes each training image's true spurious-pixel mask (the expert's painting) and its
spurious value (for the group baseline).

Every run goes through the product: the images are served over HTTP as Label Studio serves uploads
(``Authorization: Token``), a Label Studio JSON export is built with one annotation per painted
task (a ``Spurious`` brush region whose RLE is ``label_config.rle.encode_mask`` of the true mask, plus
the class choice), and ``label_config.export.parse_export`` (which decodes the RLE with
``label_config.rle.decode_rle``) + ``training.dataset.load_splits`` + ``training.engine.fit``
(``training.paired.paired_step``, ``training.noise``) train a fresh model, which
``training.engine.evaluate`` scores on the test split.  Methods, all with the same architecture, epochs,
batch size, optimizer and schedule:

- ``ERM``: plain training on the spurious training set (no task painted);
- ``oracle``: plain training on a training set where the feature is present but random (uncorrelated
  with the label, as in test): the upper bound, and the reference of "gap closed";
- ``no feature``: plain training on a training set drawn without the spurious feature at all (for the
  background and texture kinds this is also a distribution shift: neutral backgrounds in train only);
- ``paired``: masks on a fraction of the training images (chosen at random per seed), λ and the fill:
  Robustar's noise modes, or the counterfactual fills (``training.counterfactual``: the painted pixels
  take another painted image's painted pixels, noise where the donor has none); ``... (batch only)``
  is a counterfactual fill without the job's donor bank (donors from the same batch only);
- ``aug only``: the same with λ = 0: the loss is ``CE(x) + CE(x̃)`` without the alignment term;
- ``groups``: the cluster-balanced worst-group training of the spurious-MNIST report
  (``benchmarks.groups``): groups = label × spurious value, needs group labels instead of masks.

Reported per method: mean ± sample standard deviation over seeds (dataset, mask subset, init,
shuffling and noise all change with the seed) of the test accuracy, the worst-group test accuracy
(over label × spurious-value groups) and the share of the ERM→oracle gap that the method closes.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import random
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from PIL import Image

from benchmarks.groups import group_ids, train_group_balanced
from label_config import parse_config, regions, render_config
from label_config.export import TEST_SPLIT, TRAIN_SPLIT, VAL_SPLIT, ExportResult, parse_export
from ml_backend.labelstudio.fetch import FetchPolicy, ImageFetcher
from ml_backend.predict.influence import build_influence_index
from ml_backend.settings import Settings
from devkit.servers import FileServer
from training import counterfactual, propagation
from training.checkpoints import IMAGENET_MEAN, IMAGENET_STD, CheckpointMeta
from training.counterfactual import COUNTERFACTUAL_MODES, FILL_MODES
from training.dataset import PairedDataset, load_splits
from training.engine import evaluate, fit, predict_logits
from training.models import build_model
from training.noise import NOISE_MODES
from training.options import JOB_NOISE_MODE, JOB_PAIRED, TrainOptions
from training.options import PRESETS as OPTION_PRESETS
from training.synthetic import KINDS, SHAPES, make_spurious_dataset

TOKEN = "bench-efficacy-token"
MIN_GAP = 0.05  # "gap closed" is shown only for seeds where the oracle beats ERM by at least this much
URL_PREFIX = "/data/upload/1/"

# --------------------------------------------------------------------------------------------------
# sizes


# the paired-training recipes compared (TrainOptions fields); JOB is what a job does by default
# (training.options.JOB_PAIRED with the job's fill)
JOB = "job default"
RECIPES: dict[str, dict[str, Any]] = {
    "Robustar (noise, l2)": dict(noise_mode="noise", align="l2", painted_share=0.0, propagated_masks="off"),
    "counterfactual, l2": dict(noise_mode=JOB_NOISE_MODE, align="l2", painted_share=0.0, propagated_masks="off"),
    "counterfactual, kl, share": dict(noise_mode=JOB_NOISE_MODE, **{**JOB_PAIRED, "propagated_masks": "off"}),
    JOB: dict(noise_mode=JOB_NOISE_MODE, **JOB_PAIRED),
}
ABLATIONS = tuple(r for r in RECIPES if r != JOB)
# the recipe this benchmark pins for every method (TrainOptions() itself is the job's auto recipe)
PINNED = dict(optimizer="sgd", lr_schedule="cosine", weight_decay=5e-4, augment="none", backbone_lr_scale=1.0,
              patience=0)


@dataclass(frozen=True)
class Preset:
    kinds: tuple[str, ...]
    n_classes: int
    n_train: int  # per class
    n_test: int  # per class
    n_val: int  # per class: extra test-distribution draws (``VAL_SPLIT``) whose errors guide the ranked rows
    size: int
    p: float
    epochs: int
    batch_size: int
    lr: float
    seeds: int
    arch: str
    fractions: tuple[float, ...]  # mask fractions for paired (λ = --lam) with every fill of ``fills``
    fills: tuple[str, ...]  # fills compared at every fraction besides --noise (the counterfactual ones)
    aug_fractions: tuple[float, ...]  # mask fractions for aug only (λ = 0, --noise)
    sweep_fraction: float  # fraction at which λ, the other noise modes and the donor bank are swept
    lams: tuple[float, ...]  # extra λ values at sweep_fraction
    noises: tuple[str, ...]  # extra noise modes at sweep_fraction (λ = --lam)
    no_bank: tuple[str, ...] = ()  # counterfactual fills also run without the donor bank at sweep_fraction
    ranked: tuple[float, ...] = ()  # also paint these fractions the Data Manager ranks first (suspicion), job recipe
    job_fractions: tuple[float, ...] = ()  # mask fractions of the job's default recipe (kl, painted share, propagation)
    ablations: tuple[str, ...] = ()  # recipes (RECIPES) also run at sweep_fraction


PRESETS: dict[str, Preset] = {
    "smoke": Preset(kinds=("patch", "background"), n_classes=3, n_train=16, n_test=8, n_val=4, size=16, p=0.95,
                    epochs=1, batch_size=32, lr=0.05, seeds=2, arch="tiny-cnn", fractions=(0.25,),
                    fills=("counterfactual_mixture",), aug_fractions=(0.25,), sweep_fraction=0.25, lams=(),
                    noises=(), no_bank=("counterfactual",), ranked=(0.25,), job_fractions=(0.25,),
                    ablations=ABLATIONS),
    "default": Preset(kinds=KINDS, n_classes=3, n_train=100, n_test=50, n_val=20, size=24, p=0.95, epochs=10,
                      batch_size=32, lr=0.05, seeds=3, arch="tiny-cnn", fractions=(), fills=(), aug_fractions=(),
                      sweep_fraction=0.1, lams=(), noises=(), ranked=(0.01, 0.05, 0.1),
                      job_fractions=(0.01, 0.05, 0.1, 0.25, 1.0), ablations=ABLATIONS),
    "full": Preset(kinds=KINDS, n_classes=4, n_train=250, n_test=100, n_val=40, size=32, p=0.95, epochs=12,
                   batch_size=32, lr=0.05, seeds=5, arch="tiny-cnn", fractions=(0.01, 0.05, 0.1, 0.25, 1.0),
                   fills=COUNTERFACTUAL_MODES, aug_fractions=(0.01, 0.05, 0.1, 0.25, 1.0), sweep_fraction=0.1,
                   lams=(0.1, 10.0, 100.0), noises=tuple(m for m in NOISE_MODES if m != "noise"),
                   no_bank=COUNTERFACTUAL_MODES, ranked=(0.01, 0.05, 0.1), job_fractions=(0.01, 0.05, 0.1, 0.25, 1.0),
                   ablations=ABLATIONS),
}

NO_BANK = " (batch only)"  # suffix of a fill run without the donor bank (donors from the batch only)
RANKED = "paired, suspicion-ranked"  # the images to paint: the top of the Data Manager's suspicion ranking
PAIRED_METHODS = ("paired", "aug only", RANKED)


@dataclass(frozen=True)
class Condition:
    method: str  # ERM | oracle | no feature | paired | aug only | groups
    fraction: float = 0.0
    noise: str = ""  # the fill mode; a counterfactual one may end in NO_BANK
    lam: float = 0.0
    recipe: str = ""  # a RECIPES name (its fill, alignment, painted share, propagation); "": Robustar's loss

    @property
    def key(self) -> tuple:
        return (self.method, self.fraction, self.noise, self.lam, self.recipe)


def conditions(preset: Preset, lam: float, noise: str) -> list[Condition]:
    out = [Condition("ERM"), Condition("oracle"), Condition("no feature"), Condition("groups")]
    for f in preset.job_fractions:
        out.append(Condition("paired", f, RECIPES[JOB]["noise_mode"], lam, JOB))
    for name in preset.ablations:
        out.append(Condition("paired", preset.sweep_fraction, RECIPES[name]["noise_mode"], lam, name))
    for f in preset.ranked:
        out.append(Condition(RANKED, f, RECIPES[JOB]["noise_mode"], lam, JOB))
    for f in preset.fractions:
        for mode in (noise, *preset.fills):
            out.append(Condition("paired", f, mode, lam))
    for f in preset.aug_fractions:
        out.append(Condition("aug only", f, noise, 0.0))
    f = preset.sweep_fraction
    for mode in preset.no_bank:
        out.append(Condition("paired", f, mode + NO_BANK, lam))
    for extra_lam in preset.lams:
        if extra_lam != lam:
            out.append(Condition("paired", f, noise, extra_lam))
    for mode in preset.noises:
        if mode != noise:
            out.append(Condition("paired", f, mode, lam))
    seen, unique = set(), []
    for c in out:
        if c.key not in seen:
            seen.add(c.key)
            unique.append(c)
    return unique


def ranked_conditions(conds: list[Condition], preset: Preset) -> list[Condition]:
    """``--only ranked``: the ranked rows, random painting at their fractions with their recipe, and ERM +
    oracle (for the gap closed)."""
    return [c for c in conds if c.method in ("ERM", "oracle", RANKED)
            or (c.method == "paired" and c.recipe == JOB and c.fraction in preset.ranked)]


# --------------------------------------------------------------------------------------------------
# Label Studio side: files served like uploads (devkit.servers.FileServer), and a JSON export with painted tasks


class CachingFetcher(ImageFetcher):
    """The product's ``ImageFetcher`` (HTTP + Token auth); each URL is downloaded once per benchmark
    (every run still decodes and resizes its images through ``load_splits``)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._cache: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def fetch_bytes(self, url: str, deadline: float | None = None) -> bytes:
        data = self._cache.get(url)
        if data is None:
            data = super().fetch_bytes(url, deadline)
            with self._lock:
                self._cache[url] = data
        return data


@dataclass
class Item:
    """One generated image as a Label Studio task."""

    task_id: int
    rel: str  # path relative to the dataset root, e.g. train/circle/circle_0003.png
    split: str
    label: str
    spurious: int  # spurious value (-1: none)
    url: str


def dataset_items(root: Path, classes: list[str], values: dict[str, int], first_id: int = 1,
                  n_val: int = 0, served: bool = True) -> list[Item]:
    """Items of a generated dataset; the first ``n_val`` test images of each class become val. ``served``:
    image URLs as Label Studio serves uploads (``URL_PREFIX``), else the files' local paths."""
    items, tid = [], first_id
    for split in (TRAIN_SPLIT, TEST_SPLIT):
        for cls in classes:
            for i, path in enumerate(sorted((root / split / cls).glob("*.png"))):
                rel = path.relative_to(root).as_posix()
                s = VAL_SPLIT if split == TEST_SPLIT and i < n_val else split
                url = URL_PREFIX + f"{root.name}/{rel}" if served else str(path)
                items.append(Item(tid, rel, s, cls, int(values.get(rel, -1)), url))
                tid += 1
    return items


def export_task(item: Item, mask: np.ndarray | None) -> dict:
    """One task of a Label Studio JSON export; painted tasks carry one annotation (brush + class)."""
    annotations = []
    if mask is not None:
        result = [regions.brush(mask, region_id=f"b{item.task_id}"),
                  regions.choices(item.label, region_id=f"c{item.task_id}")]
        annotations.append({"id": item.task_id, "completed_by": 1, "result": result, "was_cancelled": False,
                            "ground_truth": False, "created_at": "2026-11-23T16:15:48.529678Z",
                            "updated_at": "2026-11-23T16:15:48.529678Z", "lead_time": 4.2, "task": item.task_id,
                            "project": 1, "result_count": len(result)})
    return {"id": item.task_id, "data": {"image": item.url, "split": item.split, "label": item.label},
            "annotations": annotations, "predictions": [], "drafts": [], "meta": {}, "project": 1,
            "total_annotations": len(annotations), "cancelled_annotations": 0, "inner_id": item.task_id}


def true_mask(root: Path, item: Item) -> np.ndarray:
    return np.asarray(Image.open(root / "masks" / item.rel)) > 127


def build_export(root: Path, items: list[Item], painted: Iterable[int] = ()) -> list[dict]:
    """The JSON export of a project whose tasks ``painted`` (task ids) carry their true mask."""
    painted = set(painted)
    return [export_task(it, true_mask(root, it) if it.task_id in painted else None) for it in items]


def export_json(tasks: list[dict]) -> list[dict]:
    """Round-trip through JSON text, as the export arrives from Label Studio."""
    return json.loads(json.dumps(tasks))


# --------------------------------------------------------------------------------------------------
# one benchmark world (per feature kind and seed)


@dataclass
class World:
    kind: str
    seed: int
    classes: list[str]
    root: Path
    items: list[Item]  # train + val + test
    # reference training sets ("oracle", "no feature"): (root, items); their test items are ``items``'
    refs: dict[str, tuple[Path, list[Item]]] = field(default_factory=dict)


REFERENCES = {"oracle": dict(p_spurious=0.0), "no feature": dict(spurious=False)}


def make_world(base: Path, preset: Preset, kind: str, seed: int) -> World:
    classes = list(SHAPES[: preset.n_classes])
    root = base / f"{kind}-s{seed}"
    info = make_spurious_dataset(root, tuple(classes), preset.n_train, preset.n_val + preset.n_test, preset.size,
                                 preset.p, seed=seed, kind=kind)
    items = dataset_items(root, classes, info["spurious_values"], n_val=preset.n_val)
    test = [it for it in items if it.split == TEST_SPLIT]
    world = World(kind, seed, classes, root, items)
    for i, (name, kw) in enumerate(REFERENCES.items()):
        ref_root = base / f"{kind}-s{seed}-{name.replace(' ', '-')}"
        kw = {"p_spurious": preset.p, **kw}
        ref = make_spurious_dataset(ref_root, tuple(classes), preset.n_train, 0, preset.size, seed=seed, kind=kind,
                                    **kw)
        ref_items = dataset_items(ref_root, classes, ref["spurious_values"], first_id=100_000 * (i + 1))
        # every reference is evaluated on the same test set as everyone else
        world.refs[name] = (ref_root, [it for it in ref_items if it.split == TRAIN_SPLIT] + test)
    return world


def served_files(worlds: list[World]) -> dict[str, bytes]:
    files = {}
    for w in worlds:
        for r, its in [(w.root, w.items), *w.refs.values()]:
            for it in its:
                if it.url not in files and it.url.startswith(URL_PREFIX + r.name + "/"):
                    files[it.url] = (r / it.rel).read_bytes()
    return files


def load_project(tasks: list[dict], classes: list[str], fetcher: ImageFetcher, size: int) -> tuple[ExportResult, dict]:
    """Export JSON -> records (RLE decoded) -> cached images + masks, as the training job does."""
    config = parse_config(render_config(classes))
    export = parse_export(export_json(tasks), config)
    splits = load_splits(export, fetcher.fetch, size, classes, num_workers=4)
    return export, splits


def painted_subset(world: World, fraction: float) -> list[int]:
    """Task ids of ``round(fraction * N)`` (at least 1) training images, drawn with the world's seed."""
    train = [it.task_id for it in world.items if it.split == TRAIN_SPLIT]
    if fraction >= 1.0:
        return train
    k = max(1, round(fraction * len(train)))
    return sorted(random.Random(1000 + world.seed).sample(train, k))


def ranked_subset(world: World, fraction: float, preset: Preset, fetcher: ImageFetcher, device: str,
                  cache: dict) -> tuple[list[int], dict[str, Any]]:
    """Task ids of the ``round(fraction * N)`` training images the product ranks most suspicious, and the
    index's ``info``: the influence index (``ml_backend.predict.influence``, as the worker builds it) of a
    model trained plainly on the unpainted project, its suspicion guided by the model's errors on the
    **val** split (never test), in the order of the training tasks' prediction score
    (``SUSPICION_RANKING``), i.e. what the Data Manager's *Prediction score* sorts first."""
    key = ("ranking",)
    if key not in cache:
        if ("none",) not in cache:
            cache[("none",)] = load_project(build_export(world.root, world.items, []), world.classes, fetcher, preset.size)
        _, splits = cache[("none",)]
        train, val = splits[TRAIN_SPLIT], splits[VAL_SPLIT]
        opts = TrainOptions(mode="scratch", arch=preset.arch, epochs=preset.epochs, batch_size=preset.batch_size,
                            lr=preset.lr, lam=0.0, seed=world.seed, device=device, eval_every_epoch=False,
                            push_predictions=False, **PINNED, **OPTION_PRESETS["robustar"])
        torch.manual_seed(opts.seed)
        model = build_model(preset.arch, len(world.classes))
        fit(model, train, opts, IMAGENET_MEAN, IMAGENET_STD, device)
        meta = CheckpointMeta(version="v0", arch=preset.arch, classes=list(world.classes), image_size=preset.size)
        index = build_influence_index(None, "v0", train, val, device=device, model=model.eval(), meta=meta,
                                      save=False, ranked_on=VAL_SPLIT)
        cache[key] = (index.ranking(balanced=Settings().suspicion_ranking == "class_balanced"), index.info)
    ranking, info = cache[key]
    k = len(ranking) if fraction >= 1.0 else max(1, round(fraction * len(ranking)))
    return sorted(ranking[:k]), info


def group_accuracy(model, test: PairedDataset, spurious: dict[int, int], device: str) -> tuple[float, dict]:
    """Worst accuracy over the (label, spurious value) groups of the test split, and all of them."""
    logits = predict_logits(model, test, IMAGENET_MEAN, IMAGENET_STD, device)
    right = (logits.argmax(1) == test.targets).tolist()
    per: dict[str, list[bool]] = {}
    for tid, y, ok in zip(test.task_ids, test.targets.tolist(), right):
        per.setdefault(f"{y},{spurious.get(tid, -1)}", []).append(ok)
    accs = {g: sum(v) / len(v) for g, v in per.items()}
    return min(accs.values()), accs


def propagated(world: World, key: tuple, train: PairedDataset, opts: TrainOptions, device: str,
               cache: dict) -> tuple[PairedDataset, dict[str, Any]]:
    """The job's mask propagation (``training.propagation.propagation_step``) on this painted subset
    (once per subset and policy), and the proposals' IoU against the true masks of the unpainted images."""
    pkey = ("propagated", key, opts.propagated_masks, opts.propagation_confidence)
    if pkey not in cache:
        painted_before = train.painted.clone()
        new, net, counts = propagation.propagation_step(train, opts.propagated_masks, opts.propagation_confidence,
                                                        seed=world.seed, device=device)
        info: dict[str, Any] = {"propagated_used": counts.get("propagated_used", 0),
                                "propagation_s": counts.get("propagation_s", 0.0)}
        if net is not None:
            by_id = {it.task_id: it for it in world.items}
            rest = (~painted_before).nonzero().squeeze(1)
            truth = torch.stack([torch.from_numpy(true_mask(world.root, by_id[train.task_ids[i]])) for i in rest.tolist()])
            proposal = propagation.predict_masks(net, train.images[rest])
            info["mask_iou"] = float(propagation.iou(proposal.masks, truth.unsqueeze(1)).mean())
        cache[pkey] = (new, info)
    return cache[pkey]


def run_condition(world: World, cond: Condition, preset: Preset, fetcher: ImageFetcher, device: str,
                  cache: dict) -> dict[str, Any]:
    t0 = time.perf_counter()
    guide: dict[str, Any] = {}  # ranked rows: the split whose errors ranked the images, and its size
    if cond.method in world.refs:
        (root, items), key, painted = world.refs[cond.method], (cond.method,), []
    elif cond.method == RANKED:
        painted, info = ranked_subset(world, cond.fraction, preset, fetcher, device, cache)
        guide = {"ranked_on": info["ranked_on"], "n_ranked_on": info["n_test"]}
        key, items, root = ("painted", tuple(painted)), world.items, world.root
    elif cond.method in ("paired", "aug only"):
        painted = painted_subset(world, cond.fraction)
        key, items, root = ("painted", tuple(painted)), world.items, world.root
    else:
        key, items, root, painted = ("none",), world.items, world.root, []
    if key not in cache:
        tasks = build_export(root, items, painted)
        cache[key] = load_project(tasks, world.classes, fetcher, preset.size)
    export, splits = cache[key]
    train, test = splits[TRAIN_SPLIT], splits[TEST_SPLIT]
    if cond.method in PAIRED_METHODS:
        assert train.n_painted == len(painted), (train.n_painted, len(painted))
    t_data = time.perf_counter() - t0

    fill = cond.noise or "noise"
    bank_size = counterfactual.BANK_SIZE
    if fill.endswith(NO_BANK):  # the job's donor bank off: donors from the batch only
        fill, bank_size = fill[: -len(NO_BANK)], 0
    recipe = {**OPTION_PRESETS["robustar"], **RECIPES.get(cond.recipe, {}), "noise_mode": fill}  # "": Robustar's loss
    opts = TrainOptions(mode="scratch", arch=preset.arch, epochs=preset.epochs, batch_size=preset.batch_size,
                        lr=preset.lr, lam=cond.lam, seed=world.seed, device=device, eval_every_epoch=False,
                        push_predictions=False, **PINNED, **recipe)
    prop: dict[str, Any] = {}
    if opts.propagated_masks != "off":
        train, prop = propagated(world, key, train, opts, device, cache)
    torch.manual_seed(opts.seed)  # as build_start_model does for mode scratch
    model = build_model(preset.arch, len(world.classes))
    t1 = time.perf_counter()
    diverged = None
    try:
        if cond.method == "groups":
            spurious = {it.task_id: it.spurious for it in items}
            s = torch.tensor([spurious[t] for t in train.task_ids])
            groups = group_ids(train.targets, s, len(world.classes))
            train_group_balanced(model, train, groups, opts, IMAGENET_MEAN, IMAGENET_STD, device)
        else:
            default_bank, counterfactual.BANK_SIZE = counterfactual.BANK_SIZE, bank_size
            try:
                fit(model, train, opts, IMAGENET_MEAN, IMAGENET_STD, device)
            finally:
                counterfactual.BANK_SIZE = default_bank
    except FloatingPointError as e:  # the product's divergence check (loss NaN/inf): a result, not a crash
        diverged = str(e)
    t_train = time.perf_counter() - t1
    acc = worst = None
    if diverged is None:
        acc = evaluate(model, test, IMAGENET_MEAN, IMAGENET_STD, device)["accuracy"]
        spurious_test = {it.task_id: it.spurious for it in world.items if it.split == TEST_SPLIT}
        worst, _ = group_accuracy(model, test, spurious_test, device)
    return {"kind": world.kind, "seed": world.seed, **asdict(cond), "test_acc": acc, "worst_group_acc": worst,
            "diverged": diverged,
            "n_train": len(train), "n_painted": len(painted), "n_test": len(test), **guide, **prop,
            "data_s": round(t_data, 3), "train_s": round(t_train, 3)}


# --------------------------------------------------------------------------------------------------
# aggregation and output


def _mean_sd(values: list[float | None]) -> tuple[float | None, float | None]:
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    m = statistics.fmean(values)
    return m, (statistics.stdev(values) if len(values) > 1 else 0.0)


def aggregate(rows: list[dict]) -> list[dict]:
    """One row per (kind, condition): mean/sd over seeds, plus the share of the ERM -> oracle gap closed."""
    by: dict[tuple, list[dict]] = {}
    for r in rows:
        by.setdefault((r["kind"], r["method"], r["fraction"], r["noise"], r["lam"], r.get("recipe", "")), []).append(r)
    base = {}
    for (kind, method, *_), rs in by.items():
        if method in ("ERM", "oracle"):
            base[(kind, method)] = {r["seed"]: r["test_acc"] for r in rs if r["test_acc"] is not None}
    out = []
    for (kind, method, fraction, noise, lam, recipe), rs in by.items():
        acc = _mean_sd([r["test_acc"] for r in rs])
        worst = _mean_sd([r["worst_group_acc"] for r in rs])
        gaps = []
        for r in rs:
            e, o = base.get((kind, "ERM"), {}).get(r["seed"]), base.get((kind, "oracle"), {}).get(r["seed"])
            if e is not None and o is not None and r["test_acc"] is not None and o - e >= MIN_GAP:
                gaps.append((r["test_acc"] - e) / (o - e))
        ious = [r["mask_iou"] for r in rs if r.get("mask_iou") is not None]
        out.append({"kind": kind, "method": method, "fraction": fraction, "noise": noise, "lam": lam, "recipe": recipe,
                    "mask_iou": statistics.fmean(ious) if ious else None,
                    "propagated_used": statistics.fmean(r.get("propagated_used", 0) for r in rs),
                    "n": len(rs), "diverged": sum(r.get("diverged") is not None for r in rs), "acc": acc[0], "acc_sd": acc[1], "worst": worst[0], "worst_sd": worst[1],
                    "gap": statistics.fmean(gaps) if gaps else None,
                    "train_s": statistics.fmean(r["train_s"] for r in rs)})
    return out


def _method_label(r: dict) -> tuple[str, str, str, str]:
    if r["method"] in PAIRED_METHODS:
        f = r["fraction"] * 100
        frac = f"{f:.0f}%" if f >= 1 else f"{f:.1f}%"
        return r["method"], frac, r["noise"], f"{r['lam']:g}"
    if r["method"] == "groups":
        return "groups (worst-group)", "– (group labels)", "–", "–"
    return r["method"], "–", "–", "–"


def markdown_table(agg: list[dict]) -> str:
    lines = ["| kind | method | recipe | masks | fill | λ | test acc | worst-group acc | ERM→oracle gap closed "
             "| mask IoU (propagated) | train s/run |",
             "|---|---|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in agg:
        m, frac, noise, lam = _method_label(r)
        iou = "–" if r.get("mask_iou") is None else f"{r['mask_iou']:.3f} ({r['propagated_used']:.0f} used)"
        gap = f"{100 * r['gap']:.0f}%" if r["gap"] is not None else "–"
        div = f" (diverged in {r['diverged']}/{r['n']} seeds)" if r.get("diverged") else ""
        acc = "–" if r["acc"] is None else f"{r['acc']:.3f} ± {r['acc_sd']:.3f}"
        worst = "–" if r["worst"] is None else f"{r['worst']:.3f} ± {r['worst_sd']:.3f}"
        lines.append(f"| {r['kind']} | {m} | {r.get('recipe') or '–'} | {frac} | {noise} | {lam} | {acc}{div} | {worst} "
                     f"| {gap} | {iou} | {r['train_s']:.1f} |")
    return "\n".join(lines)


def gap_table(agg: list[dict], preset: Preset, lam: float, noise: str) -> str:
    """Fills side by side: per mask fraction and fill, each kind's test accuracy and gap closed, and the
    smallest gap over the kinds (a fill is only as good as its worst kind)."""
    kinds = list(dict.fromkeys(r["kind"] for r in agg))
    fills = list(dict.fromkeys((noise, *preset.fills, *(m + NO_BANK for m in preset.no_bank), *preset.noises)))
    lines = ["| masks | fill | " + " | ".join(kinds) + " | smallest gap closed |",
             "|---:|---|" + "---:|" * (len(kinds) + 1)]
    for f in sorted({r["fraction"] for r in agg if r["method"] == "paired" and not r["recipe"]}):
        for mode in fills:
            cells, gaps = [], []
            for kind in kinds:
                r = next((r for r in agg if (r["kind"], r["method"], r["fraction"], r["noise"], r["lam"], r["recipe"])
                          == (kind, "paired", f, mode, lam, "")), None)
                if r is None or r["acc"] is None:
                    cells.append("–")
                    continue
                gap = "–" if r["gap"] is None else f"{100 * r['gap']:.0f}%"
                cells.append(f"{r['acc']:.3f} ± {r['acc_sd']:.3f} ({gap})")
                gaps.append(r["gap"])
            if all(c == "–" for c in cells):
                continue
            worst = f"{100 * min(gaps):.0f}%" if gaps and None not in gaps else "–"
            lines.append(f"| {100 * f:g}% | {mode} | " + " | ".join(cells) + f" | {worst} |")
    return "\n".join(lines)


def _find(agg: list[dict], kind: str, method: str, fraction: float, recipe: str) -> dict | None:
    return next((r for r in agg if (r["kind"], r["method"], r["fraction"], r["recipe"]) == (kind, method, fraction, recipe)
                 and r["acc"] is not None), None)


def _cell(r: dict | None) -> str:
    if r is None:
        return "–"
    gap = "–" if r["gap"] is None else f"{100 * r['gap']:.0f}%"
    return f"{r['acc']:.3f} ± {r['acc_sd']:.3f} ({gap})"


def recipe_table(agg: list[dict], preset: Preset) -> str:
    """The job's recipe per mask fraction, then each ablation at the sweep fraction: test accuracy (gap
    closed) per kind and the smallest gap over the kinds (a recipe is only as good as its worst kind)."""
    kinds = list(dict.fromkeys(r["kind"] for r in agg))
    lines = ["| masks | recipe | " + " | ".join(kinds) + " | smallest gap closed | mask IoU |",
             "|---:|---|" + "---:|" * (len(kinds) + 2)]
    rows = [(f, JOB) for f in preset.job_fractions] + [(preset.sweep_fraction, name) for name in preset.ablations]
    for f, name in rows:
        found = [_find(agg, kind, "paired", f, name) for kind in kinds]
        if not any(found):
            continue
        gaps = [r["gap"] for r in found if r is not None and r["gap"] is not None]
        ious = [r["mask_iou"] for r in found if r is not None and r.get("mask_iou") is not None]
        worst = f"{100 * min(gaps):.0f}%" if len(gaps) == len(kinds) else "–"
        iou = " / ".join(f"{v:.2f}" for v in ious) if ious else "–"
        lines.append(f"| {100 * f:g}% | {name} | " + " | ".join(_cell(r) for r in found) + f" | {worst} | {iou} |")
    return "\n".join(lines)


def ranking_table(agg: list[dict], preset: Preset) -> str:
    """Which images to paint, at the same budget and recipe: random vs the top of the suspicion ranking."""
    if not preset.ranked:
        return ""
    lines = ["| kind | masks | random painting | suspicion-ranked painting | ranked − random |", "|---|---:|---:|---:|---:|"]
    for kind in dict.fromkeys(r["kind"] for r in agg):
        for f in preset.ranked:
            pair = [_find(agg, kind, method, f, JOB) for method in ("paired", RANKED)]
            if None in pair:
                continue
            lines.append(f"| {kind} | {100 * f:g}% | {_cell(pair[0])} | {_cell(pair[1])} | "
                         f"{pair[1]['acc'] - pair[0]['acc']:+.3f} |")
    return f"Which images to paint (recipe: {JOB}):\n\n" + "\n".join(lines)


def plot(agg: list[dict], path: Path, preset: Preset, lam: float, noise: str) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except Exception as e:  # pragma: no cover
        print(f"no PNG: matplotlib unavailable: {e}", file=sys.stderr)
        return None
    nan = float("nan")
    agg = [{**r, **{k: nan if r[k] is None else r[k] for k in ("acc", "acc_sd", "worst", "worst_sd")}} for r in agg]
    kinds = list(dict.fromkeys(r["kind"] for r in agg))
    fig, axes = plt.subplots(len(kinds), 2, figsize=(12, 3.8 * len(kinds)), squeeze=False)
    for row, kind in zip(axes, kinds):
        rs = [r for r in agg if r["kind"] == kind]
        ax = row[0]
        fracs = sorted(set(preset.fractions) | set(preset.job_fractions))
        xs = list(range(len(fracs)))
        lines = [("paired", lam, RECIPES[JOB]["noise_mode"], JOB), (RANKED, lam, RECIPES[JOB]["noise_mode"], JOB)]
        lines += [("paired", lam, mode, "") for mode in dict.fromkeys((noise, *preset.fills))]
        lines += [("aug only", 0.0, noise, "")]
        colours = ["tab:blue", "tab:purple", "tab:cyan", "tab:brown", "tab:pink", "tab:gray", "tab:orange"]
        for i, (method, l, mode, recipe) in enumerate(lines):
            pts = {r["fraction"]: r for r in rs
                   if (r["method"], r["lam"], r["noise"], r["recipe"]) == (method, l, mode, recipe)}
            if not pts:
                continue
            ys = [pts[f]["acc"] if f in pts else np.nan for f in fracs]
            es = [pts[f]["acc_sd"] if f in pts else 0 for f in fracs]
            ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, color=colours[i % len(colours)],
                        label=f"{method} ({recipe})" if recipe else f"{method} (λ={l:g}, {mode})")
        for method, colour in (("ERM", "tab:red"), ("oracle", "tab:green"), ("no feature", "tab:olive"),
                               ("groups", "tab:purple")):
            r = next((r for r in rs if r["method"] == method), None)
            if r and not math.isnan(r["acc"]):
                ax.axhline(r["acc"], color=colour, ls="--", lw=1, label=f"{method} {r['acc']:.2f}")
                ax.axhspan(r["acc"] - r["acc_sd"], r["acc"] + r["acc_sd"], color=colour, alpha=0.08)
        ax.axhline(1 / preset.n_classes, color="grey", ls=":", lw=1, label="chance")
        ax.set_xticks(xs, [f"{100 * f:g}%" for f in fracs])
        ax.set_xlabel("training images with a painted mask")
        ax.set_ylabel("test accuracy (spurious feature random)")
        ax.set_ylim(0, 1.02)
        ax.set_title(f"{kind}: mask fraction (mean ± sd over {rs[0]['n']} seeds)", fontsize=10)
        ax.legend(fontsize=7, loc="lower right")
        ax = row[1]
        sweep = [r for r in rs if r["method"] in ("paired", "aug only") and r["fraction"] == preset.sweep_fraction]
        sweep.sort(key=lambda r: (r["noise"] != noise, r["noise"], r["lam"]))
        labels = [r["recipe"].replace(", ", "\n") if r["recipe"] else f"{r['noise']}\nλ={r['lam']:g}" for r in sweep]
        ax.bar(range(len(sweep)), [r["acc"] for r in sweep], yerr=[r["acc_sd"] for r in sweep], capsize=3,
               color=["tab:orange" if r["lam"] == 0 else "tab:blue" for r in sweep])
        for method, colour in (("ERM", "tab:red"), ("oracle", "tab:green")):
            r = next((r for r in rs if r["method"] == method), None)
            if r and not math.isnan(r["acc"]):
                ax.axhline(r["acc"], color=colour, ls="--", lw=1, label=method)
        ax.set_xticks(range(len(sweep)), labels, fontsize=7)
        ax.set_ylim(0, 1.02)
        ax.set_title(f"{kind}: noise mode and λ at {100 * preset.sweep_fraction:g}% masks", fontsize=10)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def machine() -> str:
    if torch.cuda.is_available():
        dev = torch.cuda.get_device_name(0)
    else:
        dev = "CPU"
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{dev}; {cpu}, {os.cpu_count()} cores, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), Python {platform.python_version()}")


# --------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    size = ap.add_mutually_exclusive_group()
    size.add_argument("--smoke", action="store_true", help="seconds-long run (CI)")
    size.add_argument("--full", action="store_true", help="bigger run: all feature kinds, more data, 5 seeds")
    ap.add_argument("--out", default=".robustar/benchmarks", help="folder for efficacy.md/.json/.png")
    ap.add_argument("--kinds", default=None, help=f"comma-separated feature kinds ({', '.join(KINDS)})")
    ap.add_argument("--seeds", type=int, default=None, help="seeds (>= 3 for a spread)")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--lam", type=float, default=1.0, help="λ of the mask-fraction sweep (default 1)")
    ap.add_argument("--noise", default="noise", choices=FILL_MODES,
                    help="fill of the mask-fraction sweep and of aug only (the preset's counterfactual fills run beside it)")
    ap.add_argument("--only", choices=("ranked",), default=None,
                    help="ranked: only suspicion-ranked vs random painting at the preset's ranked fractions "
                         "(+ ERM, oracle)")
    ap.add_argument("--device", default=None, help="cpu / cuda (default: cuda when available)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads on CPU (default 1: these tiny models gain nothing from more, and on a "
                         "shared machine intra-op threads that wait for each other cost up to 20x; 0: torch's default)")
    ap.add_argument("-v", "--verbose", action="store_true", help="log the training job's lines")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    preset = PRESETS["smoke" if args.smoke else "full" if args.full else "default"]
    if args.kinds:
        kinds = tuple(k.strip() for k in args.kinds.split(",") if k.strip())
        bad = [k for k in kinds if k not in KINDS]
        if bad:
            ap.error(f"unknown kind(s) {bad}; choose from {', '.join(KINDS)}")
        preset = replace(preset, kinds=kinds)
    if args.seeds:
        preset = replace(preset, seeds=args.seeds)
    if args.epochs:
        preset = replace(preset, epochs=args.epochs)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.threads and device == "cpu":
        torch.set_num_threads(args.threads)
    conds = conditions(preset, args.lam, args.noise)
    if args.only == "ranked":
        conds = ranked_conditions(conds, preset)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = "smoke" if args.smoke else "full" if args.full else "default"
    print(f"efficacy ({name}): {len(preset.kinds)} kind(s) x {preset.seeds} seeds x {len(conds)} conditions; "
          f"{preset.arch}, {preset.size}px, {preset.n_classes} classes, "
          f"{preset.n_train}/{preset.n_val}/{preset.n_test} train/val/test images per class (val ranks the suspicion), "
          f"p={preset.p}, {preset.epochs} epochs, batch {preset.batch_size}, SGD lr {preset.lr} cosine; "
          f"device {device}", flush=True)
    t_start = time.perf_counter()
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="robustar-efficacy-") as tmp:
        worlds = [make_world(Path(tmp), preset, kind, seed) for kind in preset.kinds for seed in range(preset.seeds)]
        with FileServer(served_files(worlds), TOKEN) as server:
            fetcher = CachingFetcher(server.url, TOKEN, FetchPolicy.from_settings(Settings()))
            for w in worlds:
                cache: dict = {}
                for c in conds:
                    r = run_condition(w, c, preset, fetcher, device, cache)
                    rows.append(r)
                    m, frac, noise, lam = _method_label(r)
                    res = (f"diverged: {r['diverged']}" if r["diverged"] else
                           f"test acc {r['test_acc']:.3f}  worst group {r['worst_group_acc']:.3f}")
                    print(f"  {w.kind} seed {w.seed}: {m:<20} {c.recipe or '–':<26} masks {frac:>6} {noise:<12} "
                          f"λ {lam:<5} {res}  "
                          f"({r['train_s']:.1f}s)", flush=True)
    wall = time.perf_counter() - t_start
    agg = aggregate(rows)
    table = markdown_table(agg)
    header = (f"Efficacy ({name} size): {preset.arch}, {preset.size}×{preset.size} px, {preset.n_classes} classes, "
              f"{preset.n_train * preset.n_classes} training / {preset.n_val * preset.n_classes} val (ranks the "
              f"suspicion) / {preset.n_test * preset.n_classes} test images, "
              f"spurious feature agrees with the label for p = {preset.p} of training images (random in test), "
              f"{preset.epochs} epochs, batch {preset.batch_size}, SGD lr {preset.lr} cosine; "
              f"mean ± sd over {preset.seeds} seeds. Machine: {machine()}. Wall time {wall:.0f} s.")
    fills = gap_table(agg, preset, args.lam, args.noise)
    recipes = recipe_table(agg, preset)
    print()
    print(header)
    print()
    print(table)
    print()
    print("Recipes side by side: test accuracy, mean ± sd (gap closed)")
    print()
    print(recipes)
    if fills.count("\n") > 1:
        print()
        print("Fills side by side (paired, Robustar's loss, λ = %g): test accuracy, mean ± sd (gap closed)" % args.lam)
        print()
        print(fills)
    ranking = ranking_table(agg, preset)
    if ranking:
        print()
        print(ranking)
    (out / "efficacy.md").write_text(header + "\n\n" + table + "\n\nRecipes side by side (test accuracy, mean ± sd "
                                     "(gap closed)):\n\n" + recipes
                                     + ("\n\nFills side by side:\n\n" + fills if fills.count("\n") > 1 else "")
                                     + "\n\n" + ranking + "\n")
    (out / "efficacy.json").write_text(json.dumps({"preset": asdict(preset), "lam": args.lam, "noise": args.noise,
                                                   "device": device, "machine": machine(), "wall_s": wall,
                                                   "runs": rows, "summary": agg}, indent=1))
    png = plot(agg, out / "efficacy.png", preset, args.lam, args.noise)
    print(f"\nwrote {out / 'efficacy.md'}, {out / 'efficacy.json'}" + (f", {png}" if png else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
