"""The streaming data path (training.loader): a split larger than the job's memory budget is read from the
image cache by a DataLoader and gives the same batches, the same training and the same evaluation as
the in-memory split; a job over a set several times its memory budget stays within it (peak RSS of
the job's process, measured)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from label_config.export import parse_export
from label_config.render import parse_config, render_config
from ml_backend.labelstudio.fetch import FetchPolicy, ImageFetcher
from ml_backend.settings import Settings
from devkit.builders import synthetic_export
from training import distributed as dist
from training.dataset import PairedDataset, load_splits
from training.engine import evaluate, fit, make_optimizer, train_one_epoch
from training.image_cache import ImageCache
from training.images import make_normalizer
from training import accel
from training.loader import CachedImages, PackedMasks
from training.models import build_model
from training.options import TrainOptions
from training.progress import Progress
from training.synthetic import make_spurious_dataset

ROOT = Path(__file__).resolve().parents[2]
CLASSES = ["circle", "square", "triangle"]
CONFIG = parse_config(render_config(CLASSES))
SIZE = 32


def file_export(root: Path, paint_every: int = 2) -> list[dict]:
    tasks, _ = synthetic_export(root, CLASSES, lambda split, cls, path: path.resolve().as_uri(), paint_every)
    return tasks


@pytest.fixture(scope="module")
def both(tmp_path_factory) -> dict[str, dict[str, PairedDataset]]:
    """The same export loaded twice through one cache: all in memory, and streamed (budget 0)."""
    base = tmp_path_factory.mktemp("streaming")
    make_spurious_dataset(base / "images", classes=tuple(CLASSES), n_train=9, n_test=4, size=40, seed=3)
    tasks = file_export(base / "images")
    fetcher = ImageFetcher(None, None, dataclasses.replace(FetchPolicy.from_settings(Settings()), image_root=base))
    cache = ImageCache(base / "cache")
    out, stats = {}, {}
    for name, budget in (("memory", None), ("stream", 0)):
        out[name] = load_splits(parse_export(tasks, CONFIG), fetcher.fetch, SIZE, CLASSES, 2, cache=cache,
                                source=fetcher.fetch_versioned, memory_budget=budget, stats=stats.setdefault(name, {}))
    assert stats["memory"]["train"] == "memory" and stats["stream"]["train"] == stats["stream"]["test"] == "stream"
    assert stats["stream"]["cache"]["fetched"] == 0  # the second load came from the cache
    return out


def test_a_streamed_split_indexes_like_the_in_memory_one(both):
    mem, st = both["memory"]["train"], both["stream"]["train"]
    assert not mem.streaming and st.streaming
    assert isinstance(st.images, CachedImages) and isinstance(st.masks, PackedMasks)
    assert len(st) == len(mem) == 27 and st.task_ids == mem.task_ids and st.image_size == SIZE
    assert torch.equal(st.targets, mem.targets) and torch.equal(st.painted, mem.painted) and st.n_painted == 13
    assert torch.equal(st.images[:], mem.images) and torch.equal(st.masks[:], mem.masks)
    idx = torch.tensor([5, 0, 26, 5])
    assert torch.equal(st.images[idx], mem.images[idx]) and torch.equal(st.masks[idx], mem.masks[idx])
    assert torch.equal(st.images[3:9], mem.images[3:9]) and st.images.shape == mem.images.shape
    for i in (0, 1, 26):
        a, b = st[i], mem[i]
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a[2:] == b[2:]
    assert st.nbytes() < mem.nbytes() / 10  # only packed masks and targets are in memory
    assert st.to("cpu") is st


@pytest.mark.parametrize("workers", [0, 2])
def test_streamed_batches_equal_in_memory_batches_for_the_same_order(both, workers):
    mem, st = both["memory"]["train"], both["stream"]["train"]
    order = torch.randperm(len(mem), generator=torch.Generator().manual_seed(7))
    a = list(mem.batches(5, "cpu", order=order, weights=True))
    b = list(st.batches(5, "cpu", order=order, weights=True, workers=workers))
    assert len(a) == len(b) == 6
    for xa, xb in zip(a, b):
        assert len(xa) == len(xb) == 4
        for ta, tb in zip(xa, xb):
            assert ta.dtype == tb.dtype and torch.equal(ta, tb)
    x, m, y, w = b[0]
    assert x.dtype == torch.float32 and m.dtype == torch.bool and y.dtype == torch.long and w.dtype == torch.float32
    assert torch.equal(w, st.painted[order[:5]].float())  # default weight: 1 where painted
    # without weights, batches stay (x, m, y), in memory and streamed
    assert len(next(st.batches(4, "cpu", workers=workers))) == 3 and len(next(mem.batches(4, "cpu"))) == 3


def test_mask_weight_defaults_to_painted_and_can_be_given(both):
    mem = both["memory"]["train"]
    assert torch.equal(mem.mask_weight, mem.painted.float()) and mem.mask_weight.dtype == torch.float32
    w = torch.linspace(0, 1, len(mem))
    ds = PairedDataset(mem.images, mem.masks, mem.targets, mem.task_ids, mask_weight=w)
    got = torch.cat([b[3] for b in ds.batches(8, "cpu", weights=True)])
    assert torch.equal(got, w)
    with pytest.raises(ValueError, match="mask_weight"):
        PairedDataset(mem.images, mem.masks, mem.targets, mem.task_ids, mask_weight=torch.ones(3))


def _fit(ds: PairedDataset, evalset: PairedDataset) -> tuple[dict, torch.nn.Module]:
    torch.manual_seed(0)
    model = build_model("tiny-cnn", len(CLASSES))
    opts = TrainOptions(epochs=2, batch_size=8, device="cpu", loader_workers=0, seed=1)
    history = fit(model, ds, opts, (0.5,) * 3, (0.25,) * 3, "cpu", {"test": evalset})
    return history, model


def test_training_and_evaluation_from_the_stream_equal_in_memory(both):
    """``fit`` (paired steps: every other training image painted) over the streamed split trains exactly the
    model the in-memory split does, and evaluation agrees."""
    h_mem, m_mem = _fit(both["memory"]["train"], both["memory"]["test"])
    h_st, m_st = _fit(both["stream"]["train"], both["stream"]["test"])
    assert [s["loss"] for s in h_mem["steps"]] == [s["loss"] for s in h_st["steps"]]
    assert h_mem["epochs"][-1]["test_accuracy"] == h_st["epochs"][-1]["test_accuracy"]
    for (name, a), (_, b) in zip(m_mem.state_dict().items(), m_st.state_dict().items()):
        assert torch.equal(a, b), name
    assert evaluate(m_st, both["stream"]["test"], (0.5,) * 3, (0.25,) * 3) == \
        evaluate(m_mem, both["memory"]["test"], (0.5,) * 3, (0.25,) * 3)


def test_a_torchrun_shard_streams_in_its_order(both):
    """``train_one_epoch(shard=...)`` (the distributed path; without a process group the reductions are
    the identity) trains the shard's samples in the shard's order, from memory or the stream alike."""
    losses = {}
    for name in ("memory", "stream"):
        torch.manual_seed(0)
        model = build_model("tiny-cnn", len(CLASSES))
        opts = TrainOptions(epochs=1, batch_size=4, device="cpu", loader_workers=0, noise_mode="noise", optimizer="sgd",
                            lr=0.01, lr_schedule="cosine", weight_decay=5e-4, augment="none", backbone_lr_scale=1.0,
                            patience=0)
        shard = dist.shard_indices(27, epoch=1, seed=0, rank_=1, world=2)
        state = {"step": 0, "total": 4, "t0": 0.0, "steps": [], "shuffle_gen": torch.Generator().manual_seed(0),
                 "noise_gen": torch.Generator().manual_seed(1)}
        means = train_one_epoch(model, make_optimizer(model, opts), None, both[name]["train"], opts,
                                make_normalizer((0.5,) * 3, (0.25,) * 3), "cpu", 1, state, Progress(), shard=shard)
        assert state["step"] == 4 and len(shard) == 14  # ceil(14 / 4) batches of the shard
        losses[name] = (means["train_loss"], [s["loss"] for s in state["steps"]])
    assert losses["memory"] == losses["stream"]


def test_the_influence_index_reads_a_streamed_split(both):
    from ml_backend.predict.influence.embedding import _batches
    from training.checkpoints import CheckpointMeta

    meta = CheckpointMeta(version="v1", arch="tiny-cnn", classes=CLASSES, image_size=SIZE, mean=(0.5,) * 3,
                          std=(0.25,) * 3)
    a = list(_batches(both["memory"]["train"], meta, 10))
    b = list(_batches(both["stream"]["train"], meta, 10))
    assert len(a) == len(b) == 3
    for (ia, xa, ya), (ib, xb, yb) in zip(a, b):
        assert ia == ib and ya == yb and torch.equal(xa, xb)


# --------------------------------------------------------------------------------------------------
# memory: a job over a set several times its budget

JOB = r"""
import dataclasses, json, re, resource, sys, time
import torch
torch.set_num_threads(1)
from label_config.export import parse_export
from label_config.render import parse_config, render_config
from ml_backend.labelstudio.fetch import FetchPolicy, ImageFetcher
from ml_backend.settings import Settings
from training.dataset import load_splits
from training.engine import fit
from training.image_cache import ImageCache
from training.models import TinyCNN
from training.options import TrainOptions

export_file, image_root, cache_dir, budget, size, train = sys.argv[1:7]
classes = ["circle", "square", "triangle"]
fetcher = ImageFetcher(None, None, dataclasses.replace(FetchPolicy.from_settings(Settings()), image_root=image_root))
opts = TrainOptions(epochs=1, batch_size=8, device="cpu", loader_workers=2, memory_budget=int(budget), noise_mode="noise")
model = TinyCNN(len(classes), width=4)  # the data path is under test: the narrowest net keeps the epoch short
export = parse_export(json.loads(open(export_file).read()), parse_config(render_config(classes)))
baseline = int(re.search(r"VmRSS:\s+(\d+)", open("/proc/self/status").read()).group(1)) * 1024
t = time.perf_counter()
stats = {}
splits = load_splits(export, fetcher.fetch, int(size), classes, 2, cache=ImageCache(cache_dir), source=fetcher.fetch_versioned,
                     memory_budget=opts.memory_budget, stats=stats)
if train == "1":  # "0": only fill the image cache
    fit(model, splits["train"], opts, (0.5,) * 3, (0.25,) * 3, "cpu", {"test": splits["test"]})
# VmHWM, not ru_maxrss: Linux keeps ru_maxrss across exec, so it would report pytest's RSS at the fork
peak = int(re.search(r"VmHWM:\s+(\d+)", open("/proc/self/status").read()).group(1)) * 1024
print(json.dumps({"peak_rss": peak, "baseline_rss": baseline,
                  "children_peak_rss": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024,
                  "data": stats, "train_images": len(splits["train"]), "seconds": round(time.perf_counter() - t, 1)}))
"""

MEMORY_SIZE = 128  # px: 64 KB per image (uint8 RGB + bool mask) in memory
MEMORY_BUDGET = 16 << 20
# run-to-run spread of the streamed job's peak RSS (allocator, DataLoader start-up): up to ~40 MB measured
RSS_NOISE = 48 << 20
N_TRAIN = 1000  # per class: 3060 images, 191 MB in memory, ~3x budget + noise


def _job(export: Path, root: Path, cache: Path, budget: int, train: bool = True) -> dict:
    # one malloc arena: per-thread arenas (the fetch threads, torch's) make peak RSS vary by tens of MB between runs
    env = {**os.environ, "MALLOC_ARENA_MAX": "1"}
    r = subprocess.run([sys.executable, "-c", JOB, str(export), str(root), str(cache), str(budget), str(MEMORY_SIZE),
                        "1" if train else "0"],
                       cwd=ROOT, capture_output=True, text=True, timeout=900, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_a_job_over_a_set_several_times_its_memory_budget_stays_within_it(tmp_path):
    """The job's data path (``load_splits`` through the image cache, then ``fit``: one epoch of paired steps,
    every 10th image painted, with the per-epoch evaluation), in a subprocess, over ~3000 images at 128 px
    (~190 MB in memory, 12x the 16 MB budget): once streaming, once holding the set in memory. Everything
    but the data — Python, torch, the export, the model, the training and evaluation batches — is the same
    in both, so the streaming job's data costs ``streamed peak RSS - (held peak RSS - set size)``, which
    must stay within the budget. (The job's evaluation of the parent and the new model, left out here, only
    adds batches of 128 images: the same for both paths.) Measured figures: docs/training.md."""
    make_spurious_dataset(tmp_path / "images", classes=tuple(CLASSES), n_train=N_TRAIN, n_test=20, size=MEMORY_SIZE,
                          seed=5)
    export = tmp_path / "export.json"
    tasks = file_export(tmp_path / "images", paint_every=10)
    export.write_text(json.dumps(tasks))
    data_bytes = len(tasks) * 4 * MEMORY_SIZE * MEMORY_SIZE
    assert data_bytes > 2.5 * (MEMORY_BUDGET + RSS_NOISE)  # holding the set in memory would fail the check below

    cold = _job(export, tmp_path / "images", tmp_path / "cache", MEMORY_BUDGET, train=False)  # fills the cache
    # measured on the warm cache, both: the first job's fetch and decode churn (threads, PIL buffers, malloc
    # arenas) is not part of the training data path and would count on one side only
    streamed = _job(export, tmp_path / "images", tmp_path / "cache", MEMORY_BUDGET)
    held = _job(export, tmp_path / "images", tmp_path / "cache", 1 << 40)
    mb = 1 << 20
    cost = streamed["peak_rss"] - (held["peak_rss"] - data_bytes)
    print(f"\n[memory] {len(tasks)} images at {MEMORY_SIZE}px = {data_bytes / mb:.1f} MB in memory, budget "
          f"{MEMORY_BUDGET / mb:.0f} MB. Peak RSS (after imports: {streamed['baseline_rss'] / mb:.0f} MB): streamed "
          f"{streamed['peak_rss'] / mb:.0f} MB (largest DataLoader worker {streamed['children_peak_rss'] / mb:.0f} MB, "
          f"{streamed['seconds']} s), held in memory {held['peak_rss'] / mb:.0f} MB ({held['seconds']} s): "
          f"the streamed job's data cost {cost / mb:.1f} MB; filling the cache (no training) peaked at {cold['peak_rss'] / mb:.0f} MB")
    assert streamed["data"]["train"] == "stream" and held["data"]["train"] == held["data"]["test"] == "memory"
    assert cold["data"]["cache"]["fetched"] == len(tasks)
    assert streamed["data"]["cache"]["fetched"] == held["data"]["cache"]["fetched"] == 0
    assert streamed["train_images"] == held["train_images"] == N_TRAIN * 3
    assert cost <= MEMORY_BUDGET + RSS_NOISE


def test_persistent_workers_keep_their_processes_across_epochs_and_give_the_same_batches(both):
    """What CUDA gets (``training.accel.persistent_workers``), forced on the CPU: the split's loader and its
    worker processes outlive an epoch, and each epoch's order is honoured."""
    from training.loader import release_persistent_loaders, stream_batches

    mem, st = both["memory"]["train"], both["stream"]["train"]
    iterators = []
    try:
        for seed in (1, 2):
            order = torch.randperm(len(mem), generator=torch.Generator().manual_seed(seed))
            got = list(stream_batches(st.images, st.masks, st.targets, st.mask_weight, order, 5,
                                      torch.device("cpu"), workers=1, persistent=True))
            want = list(mem.batches(5, "cpu", order=order, weights=True))
            assert all(torch.equal(a, b) for xa, xb in zip(got, want) for a, b in zip(xa, xb)) and len(got) == len(want)
            ((_, loader),) = st.images._persistent_loaders.values()
            iterators.append(loader._iterator)
        assert iterators[0] is not None and iterators[0] is iterators[1]  # the same workers served both epochs
        workers = [w for w in iterators[0]._workers]
    finally:
        release_persistent_loaders(st.images)  # else the worker outlives the test (and holds the run's pipes)
    assert not st.images.__dict__.get("_persistent_loaders") and not any(w.is_alive() for w in workers)
    assert not accel.persistent_workers("cpu", 4) and accel.persistent_workers("cuda", 4)
    assert not accel.persistent_workers("cuda", 0)


def test_the_gpu_settings_are_no_ops_on_the_cpu():
    model = build_model("tiny-cnn", 2)
    x = torch.rand(2, 3, 8, 8)
    assert accel.prepare_model(model, "cpu") is model and model.features[0].weight.is_contiguous()
    assert accel.prepare_batch(x) is x
    with accel.autocast("cpu"):
        assert model(x).dtype == torch.float32
