"""Proposal quality: median IoU of the mask net's proposals against the true spurious masks, fitted to 3–10
painted images, on the efficacy benchmark's kinds (``training.synthetic``: ``patch`` is the demo's corner
patch) — and the seconds the fit takes (it dominates small jobs).

    python -m benchmarks.bench_proposals [--size 64] [--n 300] [--painted 3,5,10] [--seeds 2] [--steps 100 400]

Rows: kind, painted images, fit steps (``--steps``: several side by side; default the product's), augmentation (``flip``: mirrored images and masks, ``none``), median IoU over
the unpainted images (mean over seeds), fit seconds. Targets: >= 0.7 on the demo's patch, >= 0.8 per kind.

    python -m benchmarks.bench_proposals --strokes [--painted 5] [--seeds 2]

Rough-stroke rows (issue 23): the painted masks are simulated rough strokes (``devkit.rough_strokes``:
31-64 % of the region covered, a 3-6 px spill outside it), as painted (``rough``), snapped to the region
they cover (``snapped``, ``training.stroke_snap``) or exact (``exact``). Columns: median IoU of those masks
against the true ones (over ``STROKE_SAMPLE`` images), median IoU of the mask net's proposals fitted to
them (over the unpainted images), fit seconds; each the mean over seeds.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import numpy as np
import torch

from devkit.rough_strokes import rough_strokes
from training import propagation
from training.stroke_snap import snap_masks
from training.synthetic import KINDS, render_sample

CLASSES = ("circle", "square", "triangle")
STROKE_SAMPLE = 60  # images whose simulated strokes are scored against the true masks


def dataset(kind: str, n: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` training-like images (uint8 [n, 3, H, W]) and their true masks (bool [n, 1, H, W]), 95 % with the
    class's own spurious value, as the efficacy benchmark and the demo draw them."""
    rng = random.Random(seed)
    xs, ms = [], []
    for i in range(n):
        ci = i % len(CLASSES)
        value = ci if rng.random() < 0.95 else rng.randrange(len(CLASSES))
        img, mask = render_sample(CLASSES[ci], value, size, rng, kind=kind)
        xs.append(torch.from_numpy(np.asarray(img)).permute(2, 0, 1))
        ms.append(torch.from_numpy(mask > 127)[None])
    return torch.stack(xs), torch.stack(ms)


def median_iou(kind: str, n: int, size: int, painted: int, seed: int, flip: bool,
               steps: int | None = None) -> tuple[float, float]:
    x, m = dataset(kind, n, size, seed)
    t = time.perf_counter()
    net = propagation.train_mask_net(x[:painted], m[:painted], seed=seed, flip=flip, steps=steps)
    fit_s = time.perf_counter() - t
    proposal = propagation.predict_masks(net, x[painted:])
    return float(propagation.iou(proposal.masks, m[painted:]).median()), fit_s


def stroke_rows(kind: str, n: int, size: int, painted: int, seed: int) -> dict[str, tuple[float, float, float]]:
    """Per painted-mask source (``exact``, ``rough``, ``snapped``): (median IoU of those masks vs the true ones,
    median IoU of the proposals fitted to them, fit seconds)."""
    x, m = dataset(kind, n, size, seed)
    k = max(painted, min(STROKE_SAMPLE, n))
    rough = rough_strokes(m[:k], seed)
    sources = {"exact": m[:k], "rough": rough, "snapped": snap_masks(x[:k], rough)}
    out = {}
    for name, masks in sources.items():
        t = time.perf_counter()
        net = propagation.train_mask_net(x[:painted], masks[:painted], seed=seed)
        fit_s = time.perf_counter() - t
        proposal = propagation.predict_masks(net, x[painted:])
        out[name] = (float(propagation.iou(masks, m[:k]).median()),
                     float(propagation.iou(proposal.masks, m[painted:]).median()), fit_s)
    return out


def print_stroke_rows(kinds: list[str], n: int, size: int, painted_counts: list[int], seeds: int) -> None:
    print(f"{'kind':>10} {'painted':>7} {'masks':>7} {'mask IoU':>8} {'proposal IoU':>12} {'fit s':>6}")
    for kind in kinds:
        for painted in painted_counts:
            runs = [stroke_rows(kind, n, size, painted, seed) for seed in range(seeds)]
            for name in runs[0]:
                print(f"{kind:>10} {painted:>7} {name:>7} {statistics.mean(r[name][0] for r in runs):8.3f} "
                      f"{statistics.mean(r[name][1] for r in runs):12.3f} "
                      f"{statistics.mean(r[name][2] for r in runs):6.1f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--painted", default="3,5,10")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--steps", type=int, nargs="+", default=[None],
                        help="mask-net fit steps to compare (default: the product's, propagation.MIN_STEPS..MAX_STEPS)")
    parser.add_argument("--strokes", action="store_true", help="rough-stroke rows: exact, rough and snapped masks")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    if args.strokes:  # one thread, as the job fits the net: on shared cores more threads only wait on each other
        torch.set_num_threads(1)
        print_stroke_rows(args.kinds.split(","), args.n, args.size, [int(p) for p in args.painted.split(",")],
                          args.seeds)
        return
    print(f"{'kind':>10} {'painted':>7} {'steps':>7} {'augment':>7} {'median IoU':>10} {'fit s':>6}")
    for kind in args.kinds.split(","):
        for painted in (int(p) for p in args.painted.split(",")):
            for steps, flip in ((s, f) for s in args.steps for f in (True, False)):
                runs = [median_iou(kind, args.n, args.size, painted, seed, flip, steps) for seed in range(args.seeds)]
                print(f"{kind:>10} {painted:>7} {steps or 'default':>7} {'flip' if flip else 'none':>7} "
                      f"{statistics.mean(r[0] for r in runs):10.3f} {statistics.mean(r[1] for r in runs):6.1f}",
                      flush=True)


if __name__ == "__main__":
    main()
