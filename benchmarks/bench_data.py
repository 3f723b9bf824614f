"""The training data path: the product's job loop against a plain torchvision-references loop, and a
second job with a warm image cache against a cold one.

    python -m benchmarks.bench_data                 # CPU, 1 torch thread (the numbers in docs/training.md)
    python -m benchmarks.bench_data --quick         # a smoke run of every row
    python -m benchmarks.bench_data --arch resnet-18-32x32 --size 32 --images 512 --rounds 5   # a larger model

Throughput (images/s) is measured on one generated set (``training.synthetic``, ``--images`` images at
``--size`` px, loaded through the image cache) with the same model, initial weights, optimizer (SGD,
constant lr), batch and device for every loop:

- reference: torchvision's ``references/classification/train.py`` loop — a ``DataLoader`` over the
  uint8 tensors (shuffled), ``model(normalize(x))``, cross-entropy, ``zero_grad`` / ``backward`` /
  ``step``;
- product, plain: ``training.engine.fit`` (the job's loop: paired steps, progress, per-step history)
  with nothing painted, from memory and streamed from the cache (``DataLoader`` workers, ``training.loader``);
- product, paired: ``fit`` with every image painted (a random square), so each step runs the model on
  twice the batch; its time is compared with the reference's (goal <= 2.1x) and with the reference at
  batch 2B over every image twice (what the hardware charges for doubling the batch: the floor).

Each round times every loop once, one after the other, so other processes' load hits them alike;
figures are medians over ``--rounds`` (ratios: medians of the per-round ratios).

The cache rows run the job's pipeline (``training.pipeline.run_pipeline``) twice on one project whose
images Label Studio serves as uploads (a local HTTP server with the token check, ``/data/upload/...``):
the first with an empty cache (every image downloaded, decoded, resized), the second with the cache
the first left (no request at all). ``images`` is the job's images phase, ``job`` its whole wall time.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from label_config.export import parse_export
from label_config.render import parse_config, render_config
from ml_backend.labelstudio.fetch import FetchPolicy, ImageFetcher
from ml_backend.predict.registry import model_defaults
from ml_backend.settings import Settings
from devkit.builders import synthetic_export
from devkit.servers import LS_TOKEN, FileServer
from training.checkpoints import CheckpointStore
from training.dataset import PairedDataset, load_splits
from training.engine import fit
from training.image_cache import ImageCache
from training.images import make_normalizer
from training.models import build_model
from training.options import TrainOptions
from training.pipeline import run_pipeline
from training.synthetic import make_spurious_dataset

CLASSES = ["circle", "square", "triangle"]
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def make_data(root: Path, n: int, size: int) -> tuple[list[dict], dict[str, bytes]]:
    """A generated set of ``n`` training images (+ a few test images) as Label Studio upload URLs."""
    make_spurious_dataset(root, classes=tuple(CLASSES), n_train=-(-n // len(CLASSES)), n_test=2, size=size, seed=0)
    return synthetic_export(root, CLASSES, lambda split, cls, path: f"/data/upload/1/{split}-{cls}-{path.name}",
                            paint_every=10**9)


def load(tasks: list[dict], files: dict[str, bytes], size: int, cache: Path, budget: int | None) -> PairedDataset:
    """The training split through the image cache (``budget`` 0: streamed)."""
    with FileServer(files, LS_TOKEN) as ls:
        fetcher = ImageFetcher(ls.url, LS_TOKEN, FetchPolicy.from_settings(Settings()))
        splits = load_splits(parse_export(tasks, parse_config(render_config(CLASSES))), fetcher.fetch, size, CLASSES,
                             4, cache=ImageCache(cache), source=fetcher.fetch_versioned, memory_budget=budget)
    return splits["train"]


def painted(ds: PairedDataset, every: bool, seed: int = 0) -> PairedDataset:
    """``ds`` with no image painted, or every image painted with a random square (a quarter of the side)."""
    n, s = len(ds), ds.image_size
    masks = torch.zeros(n, 1, s, s, dtype=torch.bool)
    if every:
        g = torch.Generator().manual_seed(seed)
        k = max(1, s // 4)
        for i, (y, x) in enumerate(torch.randint(0, s - k + 1, (n, 2), generator=g).tolist()):
            masks[i, 0, y:y + k, x:x + k] = True
    return PairedDataset(ds.images, masks, ds.targets, ds.task_ids)


def reference_epoch(model: torch.nn.Module, optimizer: torch.optim.Optimizer, loader: DataLoader, norm) -> None:
    """torchvision references/classification ``train_one_epoch``: forward, cross-entropy, backward, step."""
    model.train()
    for image, target in loader:
        output = model(norm(image.float().div_(255.0)))
        loss = F.cross_entropy(output, target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def throughput(mem: PairedDataset, streamed: PairedDataset, arch: str, batch: int, epochs: int, rounds: int,
               workers: int) -> dict[str, list[float]]:
    """Seconds per run of each loop, per round."""
    torch.manual_seed(0)
    init = build_model(arch, len(CLASSES)).state_dict()
    norm = make_normalizer(MEAN, STD)
    opts = TrainOptions(epochs=epochs, batch_size=batch, optimizer="sgd", lr=0.01, lr_schedule="constant",
                        device="cpu", eval_every_epoch=False, noise_mode="noise", loader_workers=workers)
    plain, paired = painted(mem, False), painted(mem, True)
    streamed_plain = PairedDataset(streamed.images, streamed.masks, streamed.targets, streamed.task_ids)
    loader = DataLoader(TensorDataset(mem.images, mem.targets), batch_size=batch, shuffle=True, num_workers=0)
    twice = DataLoader(TensorDataset(mem.images.repeat(2, 1, 1, 1), mem.targets.repeat(2)), batch_size=2 * batch,
                       shuffle=True, num_workers=0)

    def model() -> torch.nn.Module:
        m = build_model(arch, len(CLASSES))
        m.load_state_dict(init)
        return m

    def reference(data: DataLoader) -> None:
        m = model()
        opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
        for _ in range(epochs):
            reference_epoch(m, opt, data, norm)

    runs = {"reference": lambda: reference(loader),
            "reference at batch 2B": lambda: reference(twice),
            "product plain (memory)": lambda: fit(model(), plain, opts, MEAN, STD, "cpu"),
            "product plain (streamed)": lambda: fit(model(), streamed_plain, opts, MEAN, STD, "cpu"),
            "product paired (memory)": lambda: fit(model(), paired, opts, MEAN, STD, "cpu")}
    runs["reference"]()  # warm-up (allocator, kernels)
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            times[name].append(_timed(run))
    return times


def cache_jobs(tasks: list[dict], files: dict[str, bytes], arch: str, size: int, rounds: int) -> dict[str, list[float]]:
    """Per round: a job with an empty cache, then a second job on the same project with the cache it left."""
    out: dict[str, list[float]] = {"cold images": [], "warm images": [], "cold job": [], "warm job": [], "requests": []}
    opts = TrainOptions(epochs=1, batch_size=32, device="cpu", num_workers=4, eval_every_epoch=False)
    defaults = model_defaults(Settings(model_arch=arch, image_size=size))
    config = parse_config(render_config(CLASSES))
    for _ in range(rounds):
        with tempfile.TemporaryDirectory() as tmp, FileServer(files, LS_TOKEN) as ls:
            fetcher = ImageFetcher(ls.url, LS_TOKEN, FetchPolicy.from_settings(Settings()))
            store, cache = CheckpointStore(Path(tmp) / "models", 1), ImageCache(Path(tmp) / "cache")
            for kind in ("cold", "warm"):
                before = len(ls.requests)
                t = time.perf_counter()
                summary = run_pipeline(store, CLASSES, parse_export(tasks, config), opts, fetcher.fetch, defaults,
                                       cache=cache, source=fetcher.fetch_versioned).summary
                out[f"{kind} job"].append(time.perf_counter() - t)
                out[f"{kind} images"].append(summary["timings"]["images"])
                if kind == "warm":
                    out["requests"].append(len(ls.requests) - before)
    return out


def table(times: dict[str, list[float]], jobs: dict[str, list[float]], n: int, n_files: int, epochs: int,
          args) -> str:
    med = {k: statistics.median(v) for k, v in times.items()}
    ips = {k: n * epochs / v for k, v in med.items()}

    def ratio(a: str, b: str) -> float:
        return statistics.median(x / y for x, y in zip(times[a], times[b]))

    rows = [
        "| loop | images/s | time vs reference | goal |",
        "|---|---:|---:|---|",
        f"| reference (DataLoader + model + CE + SGD) | {ips['reference']:.0f} | 1.00x | |",
    ]
    for name, goal in (("reference at batch 2B", "the floor of a paired step: every image twice, in steps of 2B"),
                       ("product plain (memory)", "throughput >= 0.9x reference"),
                       ("product plain (streamed)", ""),
                       ("product paired (memory)", "time <= 2.1x reference")):
        t = ratio(name, "reference")
        rows.append(f"| {name} | {ips[name]:.0f} | {t:.2f}x (throughput {1 / t:.2f}x) | {goal} |")
    cold_i, warm_i = statistics.median(jobs["cold images"]), statistics.median(jobs["warm images"])
    cold_j, warm_j = statistics.median(jobs["cold job"]), statistics.median(jobs["warm job"])
    rows += [
        "",
        "| second job on the same project | cold cache | warm cache | warm / cold |",
        "|---|---:|---:|---:|",
        f"| images phase (s) | {cold_i:.2f} | {warm_i:.2f} | {warm_i / cold_i:.2f}x |",
        f"| whole job (s) | {cold_j:.2f} | {warm_j:.2f} | {warm_j / cold_j:.2f}x |",
        f"| image requests | {n_files} | {int(max(jobs['requests']))} | |",
    ]
    head = (f"{args.arch} at {args.size} px, {n} training images, batch {args.batch}, {epochs} epoch(s) per run, "
            f"CPU, {torch.get_num_threads()} torch thread(s), {args.workers} DataLoader worker(s) when streamed, "
            f"medians of {args.rounds} rounds")
    return head + "\n\n" + "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", default="small-cnn")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="tiny-cnn, 64 images, 1 round")
    args = ap.parse_args()
    if args.quick:
        args.arch, args.images, args.rounds = "tiny-cnn", 64, 1
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        tasks, files = make_data(Path(tmp) / "images", args.images, args.size)
        train_tasks = [t for t in tasks if t["data"]["split"] == "train"]
        mem = load(tasks, files, args.size, Path(tmp) / "cache", None)
        streamed = load(tasks, files, args.size, Path(tmp) / "cache", 0)
        times = throughput(mem, streamed, args.arch, args.batch, args.epochs, args.rounds, args.workers)
        jobs = cache_jobs(tasks, files, args.arch, args.size, max(1, args.rounds // 2))
        print(table(times, jobs, len(train_tasks), len(files), args.epochs, args))


if __name__ == "__main__":
    main()
