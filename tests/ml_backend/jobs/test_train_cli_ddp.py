"""``robustar train`` under ``torchrun --nproc_per_node=2`` (gloo, CPU) against the single-process command.

The same export file (a generated spurious-feature dataset, ``file://`` URLs under ``IMAGE_ROOT``), the
same seed and options: two processes train in DistributedDataParallel on their shards with half the
batch each (the optimizer takes as many steps of the same global batch as one process), rank 0 alone
publishes. Exactly one checkpoint (v1) appears, and the published metrics agree within TOLERANCE.

Why a tolerance and not equality: the two runs do not see the same batches. One process shuffles the
training split with its generator; two ranks split a DistributedSampler permutation (seed + epoch),
each with its own noise draws, and BatchNorm normalises each rank's half batch with its own statistics
(running statistics: rank 0's, DDP broadcasts them). The gradient per step is the same estimator, of the
same expectation, with another sample of batches: on this separable set both runs reach (nearly) the
same accuracy, so every split's accuracy must agree within 0.1 (3 of 30 test images, 4 of 48 training
images), the final epoch's training loss within 0.25 and the test loss within 0.15 (absolute). Measured
(seeds 0-2, 2-core CPU): accuracy 1.0 / 1.0 on both splits for both runs; final training loss 0.24-0.33
(one process) vs 0.28-0.35 (two); test loss 0.14-0.20 vs 0.12-0.19 (largest difference 0.07 and 0.05).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from label_config.render import render_config
from devkit.builders import synthetic_export
from training import distributed as dist
from training.checkpoints import CheckpointStore
from training.synthetic import make_spurious_dataset

ROOT = Path(__file__).resolve().parents[3]
CLASSES = ["circle", "square", "triangle"]
TOLERANCE = {"accuracy": 0.1, "train_loss": 0.25, "test_loss": 0.15}
OPTIONS = ["mode=scratch", "arch=tiny-cnn", "image_size=32", "epochs=15", "batch_size=12", "seed=0", "optimizer=adamw", "lr=0.005",
           "num_workers=2", "device=cpu"]


def write_export(root: Path, out: Path, paint_every: int = 2) -> Path:
    """A Label Studio JSON export of the synthetic ImageFolder (``file://`` URLs), every
    ``paint_every``-th training image painted with its spurious mask."""
    tasks, _ = synthetic_export(root, CLASSES, lambda split, cls, path: path.resolve().as_uri(), paint_every)
    out.write_text(json.dumps(tasks))
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("ddp")
    make_spurious_dataset(base / "images", classes=tuple(CLASSES), n_train=16, n_test=10, size=32, seed=1)
    config = base / "config.xml"
    config.write_text(render_config(CLASSES))
    return {"root": base / "images", "export": write_export(base / "images", base / "export.json"), "config": config}


def _env(data: dict[str, Path], model_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("TRAIN_", "MODEL_", "LABEL_STUDIO_")) and k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env.update(IMAGE_ROOT=str(data["root"].resolve()), MODEL_DIR=str(model_dir), MODEL_ARCH="tiny-cnn", IMAGE_SIZE="32",
               DEVICE="cpu", OMP_NUM_THREADS="1", PREDICT_PARTS="", PYTHONPATH=str(ROOT))
    return env


def _train(data, model_dir: Path, nproc: int) -> tuple[dict, float]:
    args = ["-m", "ml_backend.cli", "train", "--export", str(data["export"]), "--label-config", str(data["config"]),
            "--project-id", "7", *[a for o in OPTIONS for a in ("--set", o)]]
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]
    else:
        cmd = [sys.executable, *args]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=ROOT, env=_env(data, model_dir), capture_output=True, text=True, timeout=300, check=False)
    wall = time.perf_counter() - t0
    assert r.returncode == 0, r.stderr[-4000:]
    start = r.stdout.index("{\n")  # the summary, the only JSON on stdout (torchrun prints nothing there)
    return json.loads(r.stdout[start:]), wall


@pytest.mark.slow
def test_two_process_torchrun_matches_the_single_process_command(data, tmp_path, capsys):
    single, t1 = _train(data, tmp_path / "one", 1)
    ddp, t2 = _train(data, tmp_path / "two", 2)

    assert ddp["world_size"] == 2 and "world_size" not in single
    for summary, d in ((single, "one"), (ddp, "two")):
        store = CheckpointStore(tmp_path / d, 7)
        assert summary["version"] == "v1" and store.published() == "v1"
        assert sorted(p.name for p in store.versions_dir.glob("*.pt")) == ["v0.pt", "v1.pt"]  # exactly one new one
        assert not [p for p in store.versions_dir.iterdir() if p.name.startswith(".") or p.suffix == ".tmp"]
        assert sorted(p.name for p in (store.root / "runs").iterdir()) == ["v1"]
        assert store.read_meta("v1").metrics["train"]["n"] == 48
        assert summary["predictions"] == {"skipped": "no Label Studio project to push to (trained from an export file)"}
    # the same number of optimizer steps of the same global batch
    assert [e["step"] for e in ddp["history"]] == [e["step"] for e in single["history"]] == [4 * e for e in range(1, 16)]
    diffs = {s: abs(ddp["metrics"]["new"][s]["accuracy"] - single["metrics"]["new"][s]["accuracy"]) for s in ("train", "test")}
    loss_diff = abs(ddp["history"][-1]["train_loss"] - single["history"][-1]["train_loss"])
    acc = {n: {s: r["metrics"]["new"][s]["accuracy"] for s in diffs} for n, r in (("1p", single), ("2p", ddp))}
    with capsys.disabled():
        print(f"\n[robustar train, 48+30 images 32px tiny-cnn 15 epochs] 1 process {t1:.1f}s, torchrun 2 processes "
              f"{t2:.1f}s; accuracy {acc}; final train loss {single['history'][-1]['train_loss']:.4f} vs "
              f"{ddp['history'][-1]['train_loss']:.4f}; test loss {single['metrics']['new']['test']['loss']:.4f} vs "
              f"{ddp['metrics']['new']['test']['loss']:.4f}")
    assert single["metrics"]["new"]["test"]["accuracy"] >= 0.6  # it learned something worth comparing
    assert all(d <= TOLERANCE["accuracy"] for d in diffs.values()), diffs
    assert loss_diff <= TOLERANCE["train_loss"], loss_diff
    test_loss_diff = abs(ddp["metrics"]["new"]["test"]["loss"] - single["metrics"]["new"]["test"]["loss"])
    assert test_loss_diff <= TOLERANCE["test_loss"], test_loss_diff


def test_shards_are_a_distributed_sampler_split():
    from torch.utils.data import DistributedSampler

    for n, world in ((10, 2), (11, 2), (7, 3), (2, 4)):
        for epoch in (1, 2):
            shards = [dist.shard_indices(n, epoch, 5, r, world) for r in range(world)]
            assert {len(s) for s in shards} == {-(-n // world)}
            assert set(torch.cat(shards).tolist()) == set(range(n))
            for r in range(world):
                sampler = DistributedSampler(range(n), num_replicas=world, rank=r, shuffle=True, seed=5)
                sampler.set_epoch(0)  # shard_indices seeds with seed + epoch, the sampler with seed + its epoch
                sampler.seed = 5 + epoch
                assert shards[r].tolist() == list(sampler)
    assert dist.local_batch_size(32, 2) == 16 and dist.local_batch_size(5, 2) == 3 and not dist.active()
