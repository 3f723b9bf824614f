"""Click-to-propose latency: interactive ``/predict`` requests (one task, one ``Spurious`` keypoint) to a real
``robustar serve`` process that fetches the image with Token auth from a local file server, as Label Studio's
``interactive-annotating`` sends them — beside a stored-prediction ``/predict`` of the same task (classifier,
saliency, influence) for the ratio.

    python -m benchmarks.bench_interactive [--sizes 64,128,224] [--repeats 40]

Rows: image size, how the region is found (``colour``: no mask net yet; ``net``: the served version's mask
net), p50 / p95 / max milliseconds per request; the last column is the full prediction's p50 over the
interactive p50. Target: p95 <= 300 ms on CPU.
"""

from __future__ import annotations

import argparse
import io
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import requests
import torch
from PIL import Image

from label_config import render_config
from ml_backend.local.stack import backend_process, free_port
from devkit.servers import FileServer
from training import propagation
from training.checkpoints import CheckpointStore

TOKEN = "bench-token-0123456789"
PROJECT = 1


def patched_png(size: int) -> bytes:
    rng = np.random.default_rng(size)
    a = rng.integers(90, 140, size=(size, size, 3), dtype=np.uint8)
    p = max(4, size // 6)
    a[:p, :p] = (220, 20, 20)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "PNG")
    return buf.getvalue()


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def timed(url: str, body: dict, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        r = requests.post(url + "/predict", json=body, timeout=300)
        out.append(time.perf_counter() - t)
        r.raise_for_status()
    return out


def measure(size: int, repeats: int) -> dict[str, list[float]]:
    files = {"/data/upload/1/patched.png": patched_png(size)}
    with tempfile.TemporaryDirectory() as tmp, FileServer(files, TOKEN) as ls:
        env = {"MODEL_DIR": tmp, "MODEL_ARCH": "tiny-cnn", "IMAGE_SIZE": str(size),
               "PREDICT_PARTS": "saliency,influence,propagation", "LABEL_STUDIO_URL": ls.url,
               "LABEL_STUDIO_API_KEY": TOKEN, "REDIS_URL": "redis://127.0.0.1:6379/9"}
        port = free_port()
        proc = backend_process(port, env, Path(tmp) / "backend.log").start()
        try:
            url = f"http://127.0.0.1:{port}"
            proc.wait_http(url + "/health")
            config = render_config(["a", "b", "c"])
            task = {"id": 1, "data": {"image": next(iter(files)), "split": "train"}}
            mark = {"type": "keypointlabels", "from_name": "spurious_point", "to_name": "image",
                    "original_width": size, "original_height": size,
                    "value": {"x": 5.0, "y": 5.0, "width": 1, "keypointlabels": ["Spurious"]}}
            click = {"tasks": [task], "project": f"{PROJECT}.1", "label_config": config,
                     "params": {"context": {"result": [mark]}}}
            full = {**click, "params": {"context": None}}
            # warm-up (makes v0); the full prediction comes last: its influence index builds in the background
            requests.post(url + "/predict", json=click, timeout=300).raise_for_status()
            out = {"colour": timed(url, click, repeats)}
            answer = requests.post(url + "/predict", json=click, timeout=60).json()["results"][0]["result"]
            assert [r["type"] for r in answer] == ["brushlabels"], answer
            root = CheckpointStore(Path(tmp), PROJECT).root
            torch.manual_seed(0)
            propagation.save(propagation.MaskNet(), propagation.net_path(root, "v0"), {"bench": True})
            requests.post(url + "/predict", json=click, timeout=60).raise_for_status()  # loads the net
            out["net"] = timed(url, click, repeats)
            requests.post(url + "/predict", json=full, timeout=300).raise_for_status()
            time.sleep(2)
            out["full"] = timed(url, full, max(5, repeats // 4))
            return out
        finally:
            proc.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="64,128,224")
    parser.add_argument("--repeats", type=int, default=40)
    args = parser.parse_args()
    print(f"{'size':>5} {'region':>7} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8} {'full p50 ms':>12} {'full/click':>10}")
    for size in (int(s) for s in args.sizes.split(",")):
        times = measure(size, args.repeats)
        full = statistics.median(times["full"]) * 1000
        for kind in ("colour", "net"):
            t = times[kind]
            p50 = statistics.median(t) * 1000
            print(f"{size:>5} {kind:>7} {p50:8.1f} {percentile(t, 0.95) * 1000:8.1f} {max(t) * 1000:8.1f} "
                  f"{full:12.1f} {full / p50:10.1f}")


if __name__ == "__main__":
    main()
