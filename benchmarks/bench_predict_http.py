"""End-to-end ``/predict`` latency over HTTP: a real ``robustar serve`` process fetching 16 images
with Token auth from a local file server (as it fetches them from Label Studio).

    python -m benchmarks.bench_predict_http [--quick] [--arch resnet-18] [--size 224] [--parts ""]

Prints a table: batch, parts, median / min / max of N requests (seconds), ms per task.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import requests

from label_config import render_config
from ml_backend.local.stack import backend_process, free_port
from devkit.builders import png_bytes
from devkit.servers import FileServer

TOKEN = "bench-token-0123456789"


def measure(arch: str, size: int, parts: str, batch: int, repeats: int) -> list[float]:
    """Seconds per /predict request of ``batch`` tasks (after one warm-up request)."""
    files = {f"/data/upload/1/img{i}.png": png_bytes((size, size), (i * 7 % 255, 80, 160)) for i in range(batch)}
    with tempfile.TemporaryDirectory() as tmp, FileServer(files, TOKEN) as ls:
        env = {"MODEL_DIR": tmp, "MODEL_ARCH": arch, "IMAGE_SIZE": str(size), "PREDICT_PARTS": parts,
               "LABEL_STUDIO_URL": ls.url, "LABEL_STUDIO_API_KEY": TOKEN, "REDIS_URL": "redis://127.0.0.1:6379/9"}
        port = free_port()
        proc = backend_process(port, env, Path(tmp) / "backend.log").start()
        try:
            url = f"http://127.0.0.1:{port}"
            proc.wait_http(url + "/health")
            config = render_config(["a", "b", "c"])
            body = {"tasks": [{"id": i + 1, "data": {"image": p, "key": f"k{i}"}} for i, p in enumerate(files)],
                    "project": "1.1", "label_config": config, "params": {"context": None}}
            requests.post(url + "/setup", json={"project": "1.1", "schema": config}, timeout=60).raise_for_status()
            requests.post(url + "/predict", json=body, timeout=300).raise_for_status()  # warm-up: loads the model
            times = []
            for _ in range(repeats):
                t = time.perf_counter()
                r = requests.post(url + "/predict", json=body, timeout=300)
                times.append(time.perf_counter() - t)
                r.raise_for_status()
                assert all(res["result"] for res in r.json()["results"])
            return times
        finally:
            proc.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="resnet-18")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--parts", default="", help="PREDICT_PARTS for the backend ('' = classifier only)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="tiny-cnn, 32 px, 2 repeats (smoke run)")
    args = parser.parse_args()
    if args.quick:
        args.arch, args.size, args.repeats = "tiny-cnn", 32, 2
    times = measure(args.arch, args.size, args.parts, args.batch, args.repeats)
    med = statistics.median(times)
    print("| arch | image | batch | parts | median s | min s | max s | ms/task |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| {args.arch} | {args.size}² | {args.batch} | {args.parts or 'classifier'} | {med:.3f} | {min(times):.3f} | "
          f"{max(times):.3f} | {1000 * med / args.batch:.1f} |")


if __name__ == "__main__":
    main()
