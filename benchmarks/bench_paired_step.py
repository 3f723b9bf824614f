"""Time one paired training step against one plain step.

    python -m benchmarks.bench_paired_step            # CPU (or CUDA when available)
    python -m benchmarks.bench_paired_step --quick    # a seconds-long smoke run
    python -m benchmarks.bench_paired_step --device cpu --noise mixture --repeats 20

Every sample of the paired batch is painted (a random square mask), so the paired step runs the
model on 2B images: the goal is ``paired / plain <= 2.1``.  The table also shows a plain step at 2B
(the floor for a fused paired step: what the hardware charges for doubling the batch) and the
two-pass variant ``paired_step(fused=False)``.  Timings are medians over
``--repeats`` rounds (each round times one step of every kind, so the load of other processes hits
them alike) after ``--warmup`` steps; ratios are medians of the per-round ratios.  On CUDA each
step ends with ``torch.cuda.synchronize``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from training.images import make_normalizer
from training.models import build_model
from training.paired import paired_step, plain_step

CONFIGS = [  # (arch, image size, batch)
    ("tiny-cnn", 32, 64),
    ("resnet-18", 64, 16),
    ("resnet-18", 64, 32),
    ("resnet-18-32x32", 32, 16),
    ("resnet-18-32x32", 32, 32),
]
QUICK_CONFIGS = [("tiny-cnn", 32, 16), ("resnet-18", 64, 4), ("resnet-18-32x32", 32, 4)]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _masks(b: int, size: int, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    """One random square per sample (side 1/8 .. 1/2 of the image), so every sample is painted."""
    yy = torch.arange(size).view(1, size, 1)
    xx = torch.arange(size).view(1, 1, size)
    y0 = torch.randint(0, size // 2, (b, 1, 1), generator=gen)
    x0 = torch.randint(0, size // 2, (b, 1, 1), generator=gen)
    side = torch.randint(size // 8 + 1, size // 2 + 1, (b, 1, 1), generator=gen)
    m = (yy >= y0) & (yy < y0 + side) & (xx >= x0) & (xx < x0 + side)
    return m.unsqueeze(1).to(device)


def bench(arch: str, size: int, batch: int, device: torch.device, noise: str, warmup: int, repeats: int,
          num_classes: int = 10, clock=time.perf_counter) -> dict[str, float]:
    """Median ms of: plain step (B), paired step fused and split (B, all painted), plain step (2B),
    plus the medians of the per-round ratios (each round times one step of every kind)."""
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(2 * batch, 3, size, size, generator=gen).to(device)
    targets = torch.randint(0, num_classes, (2 * batch,), generator=gen).to(device)
    masks = _masks(batch, size, gen, device)
    norm = make_normalizer((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    dev_gen = torch.Generator(device=device).manual_seed(1)
    x, y = images[:batch], targets[:batch]

    def make_step(kind: str):
        torch.manual_seed(0)
        model = build_model(arch, num_classes).to(device).train()
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        if kind == "plain":
            return lambda: plain_step(model, opt, norm, x, y)
        if kind == "plain2x":
            return lambda: plain_step(model, opt, norm, images, targets)
        fused = kind == "fused"
        return lambda: paired_step(model, opt, norm, x, masks, y, 1.0, noise, dev_gen, fused=fused)

    kinds = ("plain", "fused", "split", "plain2x")
    steps = {k: make_step(k) for k in kinds}
    for k in kinds:
        for _ in range(warmup):
            steps[k]()
    _sync(device)
    # one step of each kind per round, so load changes on a shared machine hit all of them alike
    times: dict[str, list[float]] = {k: [] for k in kinds}
    for _ in range(repeats):
        for k in kinds:
            t0 = clock()
            steps[k]()
            _sync(device)
            times[k].append((clock() - t0) * 1e3)
    out = {k: statistics.median(v) for k, v in times.items()}
    # median over rounds of the per-round ratio: robust to other processes' load
    out["ratio"] = statistics.median(f / p for f, p in zip(times["fused"], times["plain"]))
    out["ratio_split"] = statistics.median(f / p for f, p in zip(times["split"], times["plain"]))
    out["floor"] = statistics.median(f / p for f, p in zip(times["plain2x"], times["plain"]))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny batches, few repeats (smoke run)")
    ap.add_argument("--device", default=None, help="cpu / cuda (default: cuda when available)")
    ap.add_argument("--noise", default="noise", help="noise mode for the paired step (default: noise)")
    ap.add_argument("--repeats", type=int, default=None, help="timed steps per measurement")
    ap.add_argument("--warmup", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads for CPU runs")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="wall: perf_counter (default); cpu: process CPU time, for CPU runs on a machine shared "
                         "with other jobs (use with --threads 1: waiting for a core then does not count)")
    args = ap.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.threads:
        torch.set_num_threads(args.threads)
    configs = QUICK_CONFIGS if args.quick else CONFIGS
    if args.clock == "cpu" and device.type != "cpu":
        ap.error("--clock cpu only makes sense for --device cpu")
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    repeats = args.repeats or (3 if args.quick else (30 if device.type == "cuda" else 10))
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 3)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu x{torch.get_num_threads()} threads"
    print(f"device: {name}   noise: {args.noise}   clock: {args.clock}   "
          f"medians over {repeats} rounds of one step of each kind")
    print(f"{'model':<17}{'px':>4}{'batch':>6}{'plain':>9}{'paired':>9}{'ratio':>7}"
          f"{'plain@2B':>10}{'floor':>7}{'ovh':>7}{'split':>9}{'ratio':>7}")
    worst = 0.0
    for arch, size, batch in configs:
        r = bench(arch, size, batch, device, args.noise, warmup, repeats, clock=clock)
        ratio = r["ratio"]
        worst = max(worst, ratio)
        print(f"{arch:<17}{size:>4}{batch:>6}{r['plain']:>9.2f}{r['fused']:>9.2f}{ratio:>7.2f}"
              f"{r['plain2x']:>10.2f}{r['floor']:>7.2f}{r['fused'] / r['plain2x']:>7.2f}"
              f"{r['split']:>9.2f}{r['ratio_split']:>7.2f}")
    print(f"worst paired/plain ratio {worst:.2f} (goal <= 2.1).  ms = median step time; ratios = median of")
    print("per-round ratios.")
    print("paired: paired_step, one forward on [x; x~], every sample painted.  floor: plain step at 2B over")
    print("plain step at B (what the hardware charges for doubling the batch).  ovh: paired over plain@2B")
    print("(noise fill + paired loss overhead).  split: paired_step(fused=False), two forward passes.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
