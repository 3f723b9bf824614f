"""Influence index build time and query time, ours side by side with captum, for 1k and 10k training images.

    python -m benchmarks.bench_influence                 # resnet-18, 64 px, 1k and 10k training images
    python -m benchmarks.bench_influence --quick         # a seconds-long smoke run
    python -m benchmarks.bench_influence --size 224 --train 1000

All methods run on the same random-init ``--arch`` model (weights do not change the cost) and the
same generated training images (random pixels, random labels; uint8 in memory, normalised per
batch) and answer the same query: the top-``k`` proponents of a batch of ``--queries`` test images.

- ours: ``build_influence_index`` (one forward pass over the training set storing ``delta`` and
  ``h`` per image), then a query = forward of the test batch + ``(Dq @ D.T) * (Hq @ H.T)`` + top-k;
- captum ``TracInCPFast``: no index; every ``influence`` call walks the whole training set again
  (forward + last-layer jacobians per training batch), so its "query" includes that pass;
- captum ``TracInCPFastRandProj`` (no projection, exact torch nearest neighbours since ``annoy``
  is not installed): precomputes the flattened ``C*D`` per-example gradients (its "build"), then
  a query is a nearest-neighbour search over them.

The table reports median seconds (``--repeats`` queries, one build) and whether each captum
method returns the same top-k rows, in the same order, as ours with ``INFLUENCE_SCORE=tracin``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from ml_backend.predict.influence import build_influence_index, delta_for, embed_batch, rank
from ml_backend.predict.influence.suspicion import pair_scores
from training.checkpoints import IMAGENET_MEAN, IMAGENET_STD, CheckpointMeta
from training.models import build_model, classifier_head
from benchmarks import clock

NUM_CLASSES = 10


class _Images(Dataset):
    """uint8 images in memory, normalised per item (captum gets exactly what our index sees)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.labels = images, labels
        self.mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return (self.images[i].float() / 255.0 - self.mean) / self.std, self.labels[i]


class _Records:
    """The training job's ``PairedDataset`` shape: ``images`` uint8, ``targets``, ``task_ids``."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.targets, self.task_ids = images, labels, list(range(1, len(labels) + 1))


class _ExactNN:
    """captum ``NearestNeighbors`` by one exact inner-product search (annoy is not installed)."""

    def setup(self, data: torch.Tensor) -> None:
        self.data = data.flatten(1)

    def get_nearest_neighbors(self, query: torch.Tensor, k: int):
        scores = query.flatten(1) @ self.data.T
        vals, idx = scores.topk(k, dim=1)
        return idx, vals


def _norm(x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x.float() / 255.0 - mean) / std


def run(n_train: int, args, model, tmp: Path) -> dict:
    gen = torch.Generator().manual_seed(n_train)
    images = torch.randint(0, 256, (n_train, 3, args.size, args.size), dtype=torch.uint8, generator=gen)
    labels = torch.randint(0, NUM_CLASSES, (n_train,), generator=gen)
    q_images = torch.randint(0, 256, (args.queries, 3, args.size, args.size), dtype=torch.uint8, generator=gen)
    xq = _norm(q_images)
    meta = CheckpointMeta(version="v0", arch=args.arch, classes=[str(i) for i in range(NUM_CLASSES)],
                          image_size=args.size)
    out: dict = {"n": n_train}

    # ours
    t = clock.now()
    index = build_influence_index(None, "v0", _Records(images, labels), model=model, meta=meta,
                                  batch_size=args.batch, save=False, score="tracin")
    out["ours_build"] = clock.now() - t

    def ours_query():
        p, h = embed_batch(model, xq)
        pred = p.argmax(1)
        return rank(pair_scores(delta_for(p, pred), h, index.delta, index.feats, "tracin"), args.k, "proponents"), pred

    times = []
    for _ in range(args.repeats):
        t = clock.now()
        (ours_vals, ours_idx), pred = ours_query()
        times.append(clock.now() - t)
    out["ours_query"] = statistics.median(times)
    t = clock.now()
    for _ in range(20):
        pair_scores(index.delta[: args.queries], index.feats[: args.queries], index.delta, index.feats, "tracin")
    out["ours_product"] = (clock.now() - t) / 20

    # captum
    from captum.influence import TracInCPFast, TracInCPFastRandProj

    ckpt = tmp / "ckpt.pt"
    torch.save(model.state_dict(), ckpt)

    def load(m, path):
        m.load_state_dict(torch.load(path, weights_only=True))
        m.eval()
        return 1.0

    loader = DataLoader(_Images(images, labels), batch_size=args.batch, shuffle=False)
    loss = torch.nn.CrossEntropyLoss(reduction="sum")
    if n_train <= args.captum_fast_max:
        tracin = TracInCPFast(model, classifier_head(model), loader, [str(ckpt)], checkpoints_load_func=load,
                              loss_fn=loss)
        times = []
        for _ in range(args.captum_repeats):
            t = clock.now()
            c_idx, c_vals = tracin.influence((xq, pred), k=args.k, proponents=True)
            times.append(clock.now() - t)
        out["fast_query"] = statistics.median(times)
        out["fast_same"] = bool(torch.equal(c_idx, ours_idx))
        out["fast_maxdiff"] = float((c_vals - ours_vals).abs().max() / ours_vals.abs().max())
    if n_train <= args.randproj_max:
        t = clock.now()
        rp = TracInCPFastRandProj(model, classifier_head(model), loader, [str(ckpt)], checkpoints_load_func=load,
                                  loss_fn=loss, nearest_neighbors=_ExactNN(), projection_dim=None)
        out["rp_build"] = clock.now() - t
        times = []
        for _ in range(args.repeats):
            t = clock.now()
            r_idx, r_vals = rp.influence((xq, pred), k=args.k, proponents=True)
            times.append(clock.now() - t)
        out["rp_query"] = statistics.median(times)
        out["rp_same"] = bool(torch.equal(r_idx, ours_idx))
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command-line options (``--quick`` applied); also used by ``benchmarks.speed``."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="resnet-18")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--train", default="1000,10000", help="training set sizes")
    ap.add_argument("--queries", type=int, default=16, help="test images per query")
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--batch", type=int, default=128, help="batch size of the passes over the training set")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--captum-repeats", type=int, default=3)
    ap.add_argument("--captum-fast-max", type=int, default=10_000, help="skip TracInCPFast above this size")
    ap.add_argument("--randproj-max", type=int, default=10_000, help="skip TracInCPFastRandProj above this size")
    clock.add_argument(ap)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    if args.quick:
        args.arch, args.size, args.train, args.repeats, args.captum_repeats = "tiny-cnn", 32, "200,1000", 2, 1
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    clock.use(args.clock)
    torch.manual_seed(0)
    model = build_model(args.arch, NUM_CLASSES).eval()
    sizes = [int(s) for s in args.train.split(",") if s.strip()]
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-influence-") as tmp:
        for n in sizes:
            r = run(n, args, model, Path(tmp))
            results.append(r)
            print(f"  {n}: {r}", flush=True)

    def f(r, key, fmt="{:.3f}"):
        return fmt.format(r[key]) if key in r else "skipped"

    print(f"\nInfluence (last-layer TracIn): {args.arch}, {args.size}x{args.size} images, query = top-{args.k} "
          f"proponents of {args.queries} test images, CPU ({torch.get_num_threads()} threads); {args.clock} seconds\n")
    print("| train images | ours: build index | ours: query | ours: product only | captum TracInCPFast: query "
          "(no index) | same top-k | captum RandProj: build | RandProj: query | same top-k |")
    print("|---:|---:|---:|---:|---:|:-:|---:|---:|:-:|")
    for r in results:
        print(f"| {r['n']} | {f(r, 'ours_build')} | {f(r, 'ours_query')} | {f(r, 'ours_product', '{:.5f}')} | "
              f"{f(r, 'fast_query')} | {r.get('fast_same', '-')} | {f(r, 'rp_build')} | {f(r, 'rp_query')} | "
              f"{r.get('rp_same', '-')} |")


if __name__ == "__main__":
    main()
