"""Speed: every stage side by side in one run, with ratios where a peer exists.

    python -m benchmarks.speed                 # CPU-sized default (a few minutes), GPU when present
    python -m benchmarks.speed --smoke         # seconds: CI's smoke size
    python -m benchmarks.speed --only rle,job  # some sections: paired, rle, predict, influence, job
    python -m benchmarks.speed --out DIR       # where speed.md goes (default .robustar/benchmarks)

Sections (each drives the product code; the per-stage modules can also be run alone):

1. ``paired``: ``training.paired.paired_step`` vs ``plain_step``, same model, batch and device, every
   sample painted (``benchmarks.bench_paired_step``); goal paired/plain <= 2.1.
2. ``rle``: Label Studio brush RLE decode and encode of 256², 1024², 4096² brush-like masks:
   ``label_config.rle`` vs ``label_studio_sdk.converter.brush`` vs the Rust ``label-studio-brush-rle-rs``
   (PyPI; ``pip install '.[bench]'``) (``benchmarks.bench_rle``).
3. ``predict``: each ``/predict`` part (classifier, saliency per method, Mask R-CNN v1, influence) on
   a batch of 1 and of 16 (``benchmarks.bench_predict_parts``).
4. ``influence``: index build and query for 1k / 10k / 50k training images, ours vs captum's
   ``TracInCPFast`` (and ``TracInCPFastRandProj``) (``benchmarks.bench_influence``); CPU only.
5. ``job``: one full training job on the efficacy benchmark's dataset, wall time by phase: export
   (JSON of the generated Label Studio export), decode (``parse_export``: records + RLE masks),
   images (``load_splits``: HTTP download with Token auth + decode + resize), eval of the parent,
   train, eval of the new version, save + publish, report (``training.pipeline.run_pipeline``), and
   the influence index of the new version (``ml_backend.predict.influence.build_influence_index``).

On CUDA every timed GPU stage ends with ``torch.cuda.synchronize``. On CPU torch runs with
``--threads`` (default 1: on a machine shared with other jobs, intra-op threads waiting for each other
make timings swing by up to 20x; pass 0 for torch's default).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

from benchmarks import (
    bench_influence,
    bench_paired_step,
    bench_predict_parts,
    bench_rle,
)
from benchmarks.efficacy import (
    TOKEN,
    World,
    build_export,
    dataset_items,
    machine,
    painted_subset,
)
from devkit.servers import FileServer

SECTIONS = ("paired", "rle", "predict", "influence", "job")
# CPU-sized: one config per architecture (bench_paired_step.CONFIGS, the GPU set, adds batch 32 rows)
CPU_PAIRED_CONFIGS = [("tiny-cnn", 32, 64), ("resnet-18", 64, 16), ("resnet-18-32x32", 32, 16)]


def _fmt(v, spec="{:.2f}", none="–") -> str:
    return none if v is None else spec.format(v)


def _ratio(peer, ours) -> str:
    if peer is None or ours in (None, 0):
        return "–"
    r = peer / ours
    return f"{r:.2f}×" if r < 10 else f"{r:.0f}×"


def table(head: list[str], rows: list[list[str]], align: str | None = None) -> str:
    align = align or ("---|" + "---:|" * (len(head) - 1))
    lines = ["| " + " | ".join(head) + " |", "|" + align]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# sections


def section_paired(smoke: bool, device: str) -> str:
    if smoke:
        configs, repeats, warmup = [("tiny-cnn", 32, 16)], 2, 1
    elif device == "cuda":
        configs, repeats, warmup = bench_paired_step.CONFIGS, 30, 3
    else:
        configs, repeats, warmup = CPU_PAIRED_CONFIGS, 7, 2
    rows = []
    for arch, size, batch in configs:
        r = bench_paired_step.bench(arch, size, batch, torch.device(device), "noise", warmup, repeats)
        rows.append([arch, size, batch, f"{r['plain']:.2f}", f"{r['fused']:.2f}", f"**{r['ratio']:.2f}×**",
                     f"{r['plain2x']:.2f}", f"{r['floor']:.2f}×", f"{r['split']:.2f}", f"{r['ratio_split']:.2f}×"])
        print(f"  paired {arch} {size}px b{batch}: ratio {r['ratio']:.2f}", flush=True)
    return (f"**Paired step vs plain step** ({device}; median of {repeats} rounds, every sample painted, noise "
            f"`noise`; goal paired/plain ≤ 2.1)\n\n" + table(
                ["model", "px", "batch", "plain ms", "paired ms", "paired / plain", "plain@2B ms",
                 "floor: plain@2B / plain", "paired 2-pass ms", "2-pass / plain"], rows, "---|---:|---:|" + "---:|" * 7))


def section_rle(smoke: bool) -> str:
    sizes = [256] if smoke else [256, 1024, 4096]
    repeats = 1 if smoke else 5
    rust_note = None if bench_rle.rle_rs else f"n/a ({bench_rle.RUST_MISSING})"
    rows = []
    for n in sizes:
        r = bench_rle.time_codecs(bench_rle.blob_mask(n), repeats)
        for op in ("decode", "encode"):
            t = r[op]
            rust = rust_note or f"{t['rust']:.2f}"
            rows.append([f"{n}²", r["rle_bytes"], op, f"{t['ours']:.2f}", f"{t['sdk']:.2f}",
                         f"**{_ratio(t['sdk'], t['ours'])}**", rust,
                         rust_note or f"**{_ratio(t['rust'], t['ours'])}**"])
        print(f"  rle {n}^2 done", flush=True)
    return (f"**Brush RLE** (CPU; best of {repeats}, SDK capped at 2 repeats from 1024²; brush-like blob masks; "
            f"outputs checked equal; ratio = peer time / our time, > 1 means ours is faster)\n\n" + table(
                ["mask", "RLE bytes", "op", "ours ms", "label-studio-sdk ms", "sdk / ours",
                 "label-studio-brush-rle-rs ms", "rust / ours"], rows, "---|---:|---|" + "---:|" * 5))


def section_predict(smoke: bool, device: str, tmp: Path) -> str:
    if smoke:
        base = ["--quick", "--parts", "classifier,saliency:grad,influence"]  # Mask R-CNN alone takes seconds
        batches = (1, 4)
    elif device == "cuda":
        base = ["--repeats", "5"]
        batches = (1, 16)
    else:  # CPU-sized: a smaller input and Mask R-CNN resize than the GPU defaults
        base = ["--size", "128", "--repeats", "2", "--ig-steps", "8", "--seg-min-size", "224", "--seg-max-size", "384",
                "--parts", "classifier,saliency:grad,saliency:max_grad,saliency:ig,saliency:gradcam,segmentation:v1,"
                           "influence"]
        batches = (1, 16)
    results = {}
    for b in batches:
        args = bench_predict_parts.parse_args(base + ["--device", device])
        args.batch = b
        sub = tmp / f"predict-b{b}"
        sub.mkdir(parents=True, exist_ok=True)
        results[b] = bench_predict_parts.measure(args, sub)
    b1, bn = batches
    rows = []
    for (spec, t1, note), (_, tn, _) in zip(results[b1], results[bn]):
        m1, mn = statistics.median(t1), statistics.median(tn)
        rows.append([spec, f"{m1:.1f}", f"{mn:.1f}", f"{mn / bn:.1f}", f"{m1 / (mn / bn):.1f}×", note])
    return (f"**/predict parts** ({args.arch}, {args.size}×{args.size} images, {device}; median of {args.repeats} "
            f"after {args.warmup} warm-up; random-init weights, which do not change the cost)\n\n" + table(
                ["part", f"batch {b1}: ms", f"batch {bn}: ms", f"batch {bn}: ms / image",
                 f"per-image speed-up of batch {bn}", "note"], rows, "---|---:|---:|---:|---:|---|"))


def section_influence(smoke: bool, device: str, tmp: Path) -> str:
    if smoke:
        argv = ["--arch", "tiny-cnn", "--size", "16", "--train", "100,300", "--repeats", "1", "--captum-repeats", "1",
                "--batch", "100"]
    else:  # the index is built on the CPU here, even with a GPU: 32 px; captum's RandProj (a full pass
        # + C*D floats per image) up to 10k
        argv = ["--size", "32", "--train", "1000,10000,50000", "--repeats", "3", "--captum-repeats", "1",
                "--captum-fast-max", "50000", "--randproj-max", "10000", "--batch", "256"]
    args = bench_influence.parse_args(argv)
    torch.manual_seed(0)
    model = bench_influence.build_model(args.arch, bench_influence.NUM_CLASSES).eval()
    rows = []
    for n in [int(s) for s in args.train.split(",")]:
        r = bench_influence.run(n, args, model, tmp)
        skipped = f"skipped (> {args.captum_fast_max})"
        rows.append([n, f"{r['ours_build']:.2f}", f"{r['ours_query'] * 1e3:.1f}",
                     f"{r['fast_query'] * 1e3:.0f}" if "fast_query" in r else skipped,
                     f"**{_ratio(r.get('fast_query'), r['ours_query'])}**" if "fast_query" in r else "–",
                     str(r.get("fast_same", "–")),
                     f"{r['rp_build']:.2f}" if "rp_build" in r else f"skipped (> {args.randproj_max})",
                     f"{r['rp_query'] * 1e3:.1f}" if "rp_query" in r else "–", str(r.get("rp_same", "–"))])
        print(f"  influence {n}: build {r['ours_build']:.2f}s", flush=True)
    return (f"**Influence** (last-layer TracIn; {args.arch}, {args.size}×{args.size} images, CPU "
            f"({torch.get_num_threads()} threads); query = top-{args.k} proponents of {args.queries} test images; "
            f"captum's TracInCPFast has no index: each query walks the training set)\n\n" + table(
                ["train images", "ours: build index s", "ours: query ms", "captum TracInCPFast: query ms",
                 "captum / ours (query)", "same top-k", "captum RandProj: build s", "RandProj: query ms",
                 "same top-k"], rows, "---:|---:|---:|---:|---:|:-:|---:|---:|:-:|"))


def section_job(smoke: bool, device: str, tmp: Path) -> str:
    from label_config import parse_config, render_config
    from label_config.export import TRAIN_SPLIT, parse_export
    from ml_backend.labelstudio.fetch import FetchPolicy, ImageFetcher
    from ml_backend.predict.influence import build_influence_index
    from ml_backend.predict.registry import model_defaults
    from ml_backend.settings import Settings
    from training.checkpoints import CheckpointStore
    from training.options import TrainOptions
    from training.pipeline import run_pipeline
    from training.synthetic import SHAPES, make_spurious_dataset

    if smoke:
        n_train, n_test, src, size, arch, epochs = 10, 5, 32, 32, "tiny-cnn", 1
    elif device == "cuda":
        n_train, n_test, src, size, arch, epochs = 1000, 200, 128, 64, "resnet-18", 5
    else:
        n_train, n_test, src, size, arch, epochs = 200, 50, 64, 32, "tiny-cnn", 3
    classes = list(SHAPES[:3])
    root = tmp / "job-data"
    info = make_spurious_dataset(root, tuple(classes), n_train, n_test, src, 0.95, seed=0, kind="patch")
    items = dataset_items(root, classes, info["spurious_values"])
    world = World("patch", 0, classes, root, items)
    painted = painted_subset(world, 0.25)
    files = {it.url: (root / it.rel).read_bytes() for it in items}
    export_text = json.dumps(build_export(root, items, painted)).encode()
    timings: dict[str, float] = {}
    with FileServer(files, TOKEN) as server:
        t = time.perf_counter()
        tasks = json.loads(export_text)
        timings["export"] = time.perf_counter() - t
        t = time.perf_counter()
        config = parse_config(render_config(classes))
        export = parse_export(tasks, config)
        timings["decode"] = time.perf_counter() - t
        settings = Settings(label_studio_url=server.url, label_studio_api_key=TOKEN, model_dir=tmp / "job-models",
                            model_arch=arch, image_size=size, device=device, fetch_workers=8)
        store = CheckpointStore(settings.model_dir, 1)
        opts = TrainOptions(mode="finetune", epochs=epochs, batch_size=32, lr=0.05, device=device, num_workers=8,
                            push_predictions=False, eval_every_epoch=True)
        fetcher = ImageFetcher(server.url, TOKEN, FetchPolicy.from_settings(settings))
        t = time.perf_counter()
        summary = run_pipeline(store, classes, export, opts, fetcher.fetch, model_defaults(settings)).summary
        pipeline_wall = time.perf_counter() - t
        for k in ("setup", "images", "eval_parent", "train", "eval_new", "save", "report"):
            timings[k] = summary["timings"].get(k, 0.0)
        timings["other (run_pipeline)"] = max(0.0, pipeline_wall - sum(timings[k] for k in
                                                  ("setup", "images", "eval_parent", "train", "eval_new", "save", "report")))
        train_recs = [r for r in export.records if r.split == TRAIN_SPLIT]
        test_recs = [r for r in export.records if r.split != TRAIN_SPLIT]
        t = time.perf_counter()
        build_influence_index(store, summary["version"], train_recs, test_recs, fetcher=fetcher, device=device)
        if device == "cuda":
            torch.cuda.synchronize()
        timings["index"] = time.perf_counter() - t
    total = sum(timings.values())
    what = {
        "export": f"JSON parse of the export ({len(tasks)} tasks, {len(export_text) / 1e6:.2f} MB; the HTTP download "
                  f"from Label Studio is not included)",
        "decode": f"parse_export: records + RLE decode of {len(painted)} painted masks ({src}×{src})",
        "setup": "create/load the parent version (v0), build the start model",
        "images": f"load_splits: {len(items)} images over HTTP (Token auth), decode, resize to {size}px",
        "eval_parent": "parent accuracy on train + test",
        "train": f"{epochs} epoch(s) of paired training ({arch}, batch 32), test accuracy after each epoch",
        "eval_new": "new version's accuracy on train + test",
        "save": "checkpoint written (temp file + rename) and published",
        "report": "curves.png + summary.json",
        "other (run_pipeline)": "TensorBoard writer and the rest of run_pipeline",
        "index": f"influence index of {summary['version']} ({len(train_recs)} train, {len(test_recs)} test tasks)",
    }
    rows = [[k, f"{v:.2f}", f"{100 * v / total:.0f}%", what[k]] for k, v in timings.items()]
    rows.append(["**total**", f"**{total:.2f}**", "100%", f"new version {summary['version']}: test accuracy "
                 f"{_fmt(summary['metrics']['new'].get('test', {}).get('accuracy'), '{:.3f}')}"])
    return (f"**Full training job by phase** ({device}; the efficacy benchmark's patch dataset: "
            f"{len(train_recs)} train / {len(test_recs)} test images, 25% painted)\n\n" +
            table(["phase", "s", "share", "what"], rows, "---|---:|---:|---|"))


# --------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="seconds-long run (CI)")
    ap.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated sections ({', '.join(SECTIONS)})")
    ap.add_argument("--device", default=None, help="cpu / cuda (default: cuda when available)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads when the device is the CPU (default 1; 0: torch's default)")
    ap.add_argument("--out", default=".robustar/benchmarks", help="folder for speed.md")
    args = ap.parse_args(argv)
    sections = [s.strip() for s in args.only.split(",") if s.strip()]
    bad = [s for s in sections if s not in SECTIONS]
    if bad:
        ap.error(f"unknown section(s) {bad}; choose from {', '.join(SECTIONS)}")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.threads and device == "cpu":
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    print(f"speed ({'smoke' if args.smoke else 'default'}): {', '.join(sections)} on {device}", flush=True)
    parts: list[str] = []
    failed: list[str] = []
    tmp = Path(tempfile.mkdtemp(prefix="robustar-speed-"))
    try:
        for s in sections:
            t = time.perf_counter()
            try:
                if s == "paired":
                    parts.append(section_paired(args.smoke, device))
                elif s == "rle":
                    parts.append(section_rle(args.smoke))
                elif s == "predict":
                    parts.append(section_predict(args.smoke, device, tmp))
                elif s == "influence":
                    parts.append(section_influence(args.smoke, device, tmp))
                elif s == "job":
                    parts.append(section_job(args.smoke, device, tmp))
            except Exception as e:  # report the other sections anyway, then exit 1
                traceback.print_exc()
                failed.append(s)
                parts.append(f"**{s}**: FAILED: {type(e).__name__}: {e}")
            print(f"  section {s}: {time.perf_counter() - t:.0f}s", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    wall = time.perf_counter() - t0
    header = (f"Speed ({'smoke' if args.smoke else 'default'} size). Machine: {machine()}. "
              f"Wall time {wall:.0f} s.")
    report = header + "\n\n" + "\n\n".join(parts) + "\n"
    print()
    print(report)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "speed.md").write_text(report)
    print(f"wrote {out / 'speed.md'}")
    if failed:
        print(f"FAILED sections: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
