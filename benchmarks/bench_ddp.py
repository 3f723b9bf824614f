"""The worker's ``TRAIN_GPUS`` job path with 1 vs 2 processes under torchrun (here: CPU, gloo; on a GPU node
one process per GPU, nccl), side by side in one run.

    python -m benchmarks.bench_ddp [--per-class 40] [--size 32] [--arch resnet-18] [--epochs 3] [--nprocs 1,2]

The same export (a generated spurious-feature set, ``file://`` URLs under ``IMAGE_ROOT``), seed and options
through ``ml_backend.jobs.launch.train_distributed`` (what ``worker_job.train_project`` calls when ``TRAIN_GPUS`` >
1), each run in a fresh model folder. Per run: wall (torchrun start to exit: start-up, imports, rendezvous,
the job), the job's training seconds, training images/s (images x epochs / training seconds, every
process together) and the published test accuracy. Each process has one torch thread (OMP_NUM_THREADS=1),
so on a CPU two processes use two cores.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from label_config.render import render_config
from ml_backend.jobs.launch import train_distributed
from devkit.builders import synthetic_export
from training.synthetic import make_spurious_dataset

CLASSES = ["circle", "square", "triangle"]


def run(nproc: int, work: Path, tasks: list[dict], args: argparse.Namespace) -> dict:
    env = {"IMAGE_ROOT": str((work / "data").resolve()), "MODEL_DIR": str(work / f"models-{nproc}"),
           "MODEL_ARCH": args.arch, "IMAGE_SIZE": str(args.size), "DEVICE": args.device, "PREDICT_PARTS": "",
           "OMP_NUM_THREADS": "1", "LABEL_STUDIO_URL": "", "LABEL_STUDIO_API_KEY": "", "TRAIN_GPUS": "0"}
    options = {"mode": "scratch", "arch": args.arch, "image_size": args.size, "epochs": args.epochs,
               "batch_size": args.batch_size, "seed": 0, "augment": "none", "push_predictions": False}
    phases: list[str] = []
    t0 = time.perf_counter()
    summary = train_distributed(nproc, 1, render_config(CLASSES), tasks, options,
                                lambda state: phases.append(state.get("phase", "")), env=env)
    wall = time.perf_counter() - t0
    images = summary["counts"]["train_images"] * args.epochs
    return {"wall": wall, "train": summary["timings"]["train"], "images_s": images / summary["timings"]["train"],
            "test_acc": summary["metrics"]["new"]["test"]["accuracy"], "world": summary.get("world_size", 1),
            "progress_states": len(phases)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-class", type=int, default=40, help="training images per class (test: a third)")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--arch", default="resnet-18")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32, help="the global batch (each process: batch / N)")
    parser.add_argument("--device", default="cpu", help="cpu (gloo) or auto (cuda + nccl when present)")
    parser.add_argument("--nprocs", default="1,2", help="process counts to compare")
    args = parser.parse_args()
    counts = [int(n) for n in args.nprocs.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        make_spurious_dataset(work / "data", classes=tuple(CLASSES), n_train=args.per_class,
                              n_test=max(1, args.per_class // 3), size=args.size, seed=0)
        tasks, _ = synthetic_export(work / "data", CLASSES, lambda split, cls, p: p.resolve().as_uri())
        rows = {n: run(n, work, tasks, args) for n in counts}
    n_train = sum(t["data"]["split"] == "train" for t in tasks)
    print(f"\n{n_train} training images, {args.arch} {args.size} px, {args.epochs} epochs, global batch "
          f"{args.batch_size}, device {args.device}, 1 torch thread per process\n")
    print("| processes | wall (s) | training (s) | training images/s | vs 1 process | test accuracy | progress states |")
    print("|---|---|---|---|---|---|---|")
    base = rows[counts[0]]["images_s"]
    for n, r in rows.items():
        print(f"| {n} (world {r['world']}) | {r['wall']:.1f} | {r['train']:.1f} | {r['images_s']:.0f} | "
              f"{r['images_s'] / base:.2f}x | {r['test_acc']:.3f} | {r['progress_states']} |")


if __name__ == "__main__":
    main()
