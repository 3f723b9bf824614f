"""Efficacy of what a job actually runs: the job's resolved defaults, through the job's pipeline.

    python -m benchmarks.job_efficacy                          # every kind, 1/2/5/10 %, dev + fresh seeds
    python -m benchmarks.job_efficacy --kinds natural --fractions 0.02 --seeds dev
    python -m benchmarks.job_efficacy --out benchmarks/results/job_efficacy.json   # the results file
    python -m benchmarks.tables                                # README / docs tables from the results file

Each run is a Label Studio project as the worker sees it: a JSON export (one ``Spurious`` brush
annotation per painted task, the true mask RLE-encoded; ``data.split`` train / val / test) parsed by
``label_config.export.parse_export`` and trained by ``training.pipeline.run_pipeline`` with the options
``ml_backend.jobs.train_job.job_options`` resolves from a default ``Settings`` (no ``TRAIN_*``): the
same ``TrainOptions()`` defaults, the same recipe (architecture from the image size, AdamW, warm-up +
cosine, crop + flip, counterfactual fill, KL, painted share, mask propagation), a fresh v0 as the
parent, and val deciding the kept epoch. Robustar's original method is ``TrainOptions.preset("robustar")``
run through the same path.

Data (``training.synthetic``): one shape per class; the shortcut (``--kinds``: ``patch``, ``background``,
``texture``, ``natural`` = procedural natural-like textures, ``training.natural_textures``) agrees with
the label on ``p`` of the training images and is random in val and test. Val and test are disjoint draws
of the same shortcut-free distribution: the user's curated val set. Methods: ``ERM`` (no task painted),
``oracle`` (a training set whose shortcut is random), ``job`` (the job's defaults, ``fraction`` of the
training images painted, chosen at random with the seed), ``robustar`` (the preset, same masks).

Seeds: ``dev`` seeds (0, 1, 2) are the ones any knob may be tuned on; ``fresh`` seeds (100, 101, 102)
are only reported (dataset, masks, init, order and noise all change with the seed). Reported: test
accuracy and worst-group test accuracy (label x shortcut value), mean ± sd over seeds, and the share of
the ERM -> oracle gap closed.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import random
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from benchmarks.efficacy import Item, dataset_items, export_json, export_task, group_accuracy, true_mask
from label_config import parse_config, render_config
from label_config.export import TEST_SPLIT, TRAIN_SPLIT, VAL_SPLIT, parse_export
from ml_backend.jobs.train_job import job_options
from ml_backend.predict.registry import model_defaults
from ml_backend.settings import Settings
from training.checkpoints import CheckpointStore
from training.images import decode_image
from training.options import TrainOptions
from training.pipeline import run_pipeline
from training.synthetic import KINDS, SHAPES, make_spurious_dataset

DEV_SEEDS, FRESH_SEEDS = (0, 1, 2), (100, 101, 102)
FRACTIONS = (0.01, 0.02, 0.05, 0.10)
RESULTS = Path(__file__).parent / "results" / "job_efficacy.json"


@dataclass(frozen=True)
class Size:
    n_classes: int
    n_train: int  # per class
    n_val: int  # per class
    n_test: int  # per class
    size: int  # px
    p: float  # share of training images whose shortcut agrees with the label


SIZES = {"ci": Size(3, 40, 10, 20, 24, 0.95), "default": Size(3, 100, 20, 50, 32, 0.95)}


@dataclass
class World:
    kind: str
    seed: int
    classes: list[str]
    items: list[Item]  # train + val + test
    oracle: list[Item]  # the oracle's training items + the same val + test
    roots: dict[str, Path]


def make_world(base: Path, kind: str, seed: int, size: Size) -> World:
    classes = list(SHAPES[: size.n_classes])
    root, oracle_root = base / f"{kind}-s{seed}", base / f"{kind}-s{seed}-oracle"
    info = make_spurious_dataset(root, tuple(classes), size.n_train, size.n_val + size.n_test, size.size, size.p,
                                 seed=seed, kind=kind)
    oracle = make_spurious_dataset(oracle_root, tuple(classes), size.n_train, 0, size.size, 0.0, seed=seed, kind=kind)
    items = dataset_items(root, classes, info["spurious_values"], 1, size.n_val, served=False)
    held_out = [it for it in items if it.split != TRAIN_SPLIT]
    oracle_items = [it for it in dataset_items(oracle_root, classes, oracle["spurious_values"], 100_000,
                                                 served=False)
                    if it.split == TRAIN_SPLIT] + held_out
    return World(kind, seed, classes, items, oracle_items, {"main": root, "oracle": oracle_root})


def painted_ids(world: World, fraction: float) -> list[int]:
    """``round(fraction * N)`` (at least 1) training task ids, drawn with the world's seed."""
    train = [it.task_id for it in world.items if it.split == TRAIN_SPLIT]
    return sorted(random.Random(1000 + world.seed).sample(train, max(1, round(fraction * len(train)))))


def _load_image(url: str):
    return decode_image(Path(url).read_bytes(), url)


def run_job(world: World, method: str, fraction: float, size: Size, device: str, work: Path,
            variant: dict[str, str] | None = None) -> dict[str, Any]:
    """One training job (``run_pipeline`` with the job's options, ``variant``: job options changed for a
    diagnosis, e.g. ``{"propagated_masks": "off"}``) and its scores."""
    items = world.oracle if method == "oracle" else world.items
    root = world.roots["oracle" if method == "oracle" else "main"]
    painted = set(painted_ids(world, fraction)) if method in ("job", "robustar") else set()
    tasks = [export_task(it, true_mask(root, it) if it.task_id in painted else None) for it in items]
    export = parse_export(export_json(tasks), parse_config(render_config(world.classes)))
    store_dir = Path(tempfile.mkdtemp(dir=work))
    settings = Settings(model_dir=store_dir, image_size=size.size, seed=world.seed, device=device)
    overrides = {"push_predictions": False, "num_workers": 2, "loader_workers": 0, **(variant or {})}
    opts = job_options(settings, overrides)
    if method == "robustar":
        opts = TrainOptions.preset("robustar", **{k: v for k, v in opts.to_dict().items() if v is not None and k not in
                                                  ("noise_mode", "align", "painted_share", "propagated_masks")})
    t0 = time.perf_counter()
    result = run_pipeline(CheckpointStore(store_dir, 1), world.classes, export, opts, _load_image,
                          model_defaults(settings))
    seconds = time.perf_counter() - t0
    s = result.summary
    spurious = {it.task_id: it.spurious for it in items if it.split == TEST_SPLIT}
    worst, _ = group_accuracy(result.model.to(result.device), result.splits[TEST_SPLIT], spurious, result.device)
    shutil.rmtree(store_dir, ignore_errors=True)
    if variant:
        method = f"{method}[{','.join(f'{k}={v}' for k, v in sorted(variant.items()))}]"
    return {"kind": world.kind, "seed": world.seed, "method": method, "fraction": fraction if painted else 0.0,
            "n_painted": len(painted), "test_acc": s["metrics"]["new"][TEST_SPLIT]["accuracy"],
            "worst_group_acc": worst, "val_acc": (s["metrics"]["new"].get(VAL_SPLIT) or {}).get("accuracy"),
            "arch": s["arch"], "epochs_budget": s["options"]["epochs"],
            "kept_epoch": (s["decisions"]["epoch"] or {}).get("kept_epoch"),
            "epochs_run": (s["decisions"]["epoch"] or {}).get("epochs_run"),
            "propagated_used": s["counts"].get("propagated_used", 0), "seconds": round(seconds, 1)}


def seed_set(name: str) -> tuple[int, ...]:
    return {"dev": DEV_SEEDS, "fresh": FRESH_SEEDS}[name]


def run(kinds: list[str], fractions: list[float], seed_sets: list[str], size: Size, device: str,
        methods: list[str], out: Path, log=print, max_seeds: int = 3,
        variant: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """Every (kind, seed set, seed, method, fraction) run, appended to ``out`` as it finishes (a re-run
    skips what the file already holds)."""
    rows = json.loads(out.read_text())["runs"] if out.is_file() else []
    done = {(r["kind"], r["seed"], r["method"], r["fraction"], r.get("size")) for r in rows}
    size_name = next(k for k, v in SIZES.items() if v == size)
    with tempfile.TemporaryDirectory(prefix="job-efficacy-") as tmp:
        work = Path(tmp)
        for kind in kinds:
            for seeds in seed_sets:
                for seed in seed_set(seeds)[:max_seeds]:
                    world = None
                    for method in methods:
                        for fraction in (fractions if method in ("job", "robustar") else [0.0]):
                            tag = f"{method}[{','.join(f'{k}={v}' for k, v in sorted(variant.items()))}]" \
                                if variant and method in ("job", "robustar") else method
                            if (kind, seed, tag, fraction, size_name) in done:
                                continue
                            world = world or make_world(work / "data", kind, seed, size)
                            row = {**run_job(world, method, fraction, size, device, work,
                                             variant if method in ("job", "robustar") else None),
                                   "seeds": seeds, "size": size_name}
                            rows.append(row)
                            log(json.dumps(row))
                            write(out, rows)
    return rows


def write(out: Path, rows: list[dict[str, Any]]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"machine": f"{platform.node()} {platform.processor() or platform.machine()}, torch {torch.__version__}, "
                       f"{torch.get_num_threads()} threads", "sizes": {k: v.__dict__ for k, v in SIZES.items()},
            "dev_seeds": DEV_SEEDS, "fresh_seeds": FRESH_SEEDS}
    out.write_text(json.dumps({"meta": meta, "runs": rows}, indent=1) + "\n")


def mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def gap_closed(acc: float, erm: float, oracle: float) -> float | None:
    return (acc - erm) / (oracle - erm) if oracle - erm >= 0.05 else None


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (size, kind, seed set, method, fraction): mean ± sd of test and worst-group accuracy over seeds,
    and the mean share of the ERM -> oracle gap closed (per seed, against that seed's ERM and oracle)."""
    ref = {(r["size"], r["kind"], r["seed"], r["method"]): r["test_acc"] for r in rows if r["method"] in ("ERM", "oracle")}
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["size"], r["kind"], r["seeds"], r["method"], r["fraction"]), []).append(r)
    out = []
    for (size, kind, seeds, method, fraction), rs in sorted(groups.items()):
        acc, acc_sd = mean_sd([r["test_acc"] for r in rs])
        worst, worst_sd = mean_sd([r["worst_group_acc"] for r in rs])
        gaps = [g for r in rs if (g := gap_closed(r["test_acc"], ref.get((size, kind, r["seed"], "ERM"), math.nan),
                                                  ref.get((size, kind, r["seed"], "oracle"), math.nan))) is not None]
        out.append({"size": size, "kind": kind, "seeds": seeds, "method": method, "fraction": fraction,
                    "n": len(rs), "test_acc": acc, "test_sd": acc_sd, "worst": worst, "worst_sd": worst_sd,
                    "gap_closed": statistics.fmean(gaps) if gaps else None,
                    "epochs": statistics.fmean(r["epochs_run"] or 0 for r in rs),
                    "seconds": statistics.fmean(r["seconds"] for r in rs)})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    ap.add_argument("--fractions", nargs="+", type=float, default=list(FRACTIONS))
    ap.add_argument("--seeds", nargs="+", default=["dev", "fresh"], choices=("dev", "fresh"))
    ap.add_argument("--methods", nargs="+", default=["ERM", "oracle", "job", "robustar"],
                    choices=("ERM", "oracle", "job", "robustar"))
    ap.add_argument("--size", default="default", choices=sorted(SIZES))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--set", nargs="*", default=[], metavar="OPTION=VALUE",
                    help="job options changed for a diagnosis (recorded in the method's name)")
    ap.add_argument("--max-seeds", type=int, default=3, help="the first N seeds of each set (a quick look)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    run(args.kinds, args.fractions, args.seeds, SIZES[args.size], args.device, args.methods, args.out,
        max_seeds=args.max_seeds, variant=dict(kv.split("=", 1) for kv in args.set) or None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
