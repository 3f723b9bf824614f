"""Concurrent ``/predict`` load on a real ``robustar serve`` process.

    python -m benchmarks.bench_load                       # 200 concurrent requests x 16 tasks, tiny-cnn 32 px
    python -m benchmarks.bench_load --requests 1000 --concurrency 200 --arch resnet-18 --size 224
    python -m benchmarks.bench_load --images http          # images from a local Label Studio stand-in (Token auth)

All requests are fired at once from a thread pool (``--concurrency`` in flight). Each carries
``--tasks`` tasks with distinct images (data URIs, or URLs on a local file server). Prints a table:
errors, wall time, throughput, latency p50 / p90 / p99 / max, backend RSS before/after/peak, how
often the model was loaded ("serving vN" lines in the backend log) and the /metrics request count.
``tests/ml_backend/api/test_load.py`` runs the default configuration and asserts on it.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import requests

from label_config import render_config
from devkit.builders import data_uri, png_bytes
from devkit.servers import FileServer

CLASSES = ["a", "b", "c"]
TOKEN = "load-token-0123456789abcdef"


@dataclass
class LoadResult:
    latencies: list[float]
    errors: list[str]
    wall: float
    rss_before: float
    rss_after: float
    rss_peak: float
    loads: int
    metrics_200: int
    tasks_per_request: int
    extra: dict = field(default_factory=dict)

    def pct(self, q: float) -> float:
        return float(np.percentile(self.latencies, q)) if self.latencies else float("nan")

    def row(self, label: str) -> str:
        n = len(self.latencies) + len(self.errors)
        return (f"| {label} | {n} | {len(self.errors)} | {self.wall:.1f} | {n * self.tasks_per_request / self.wall:.0f} | "
                f"{self.pct(50):.2f} | {self.pct(90):.2f} | {self.pct(99):.2f} | {max(self.latencies, default=0):.2f} | "
                f"{self.rss_before:.0f} / {self.rss_after:.0f} / {self.rss_peak:.0f} | {self.loads} | "
                f"{self.extra.get('health_max_s', float('nan')):.2f} |")


HEADER = ("| config | requests | errors | wall s | tasks/s | p50 s | p90 s | p99 s | max s | RSS MiB before / after / peak "
          "| model loads | /health max s |\n|---|---|---|---|---|---|---|---|---|---|---|---|")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _images(n: int, size: int) -> list[bytes]:
    return [png_bytes((size, size), (i * 37 % 256, i * 91 % 256, i * 13 % 256)) for i in range(n)]


def fire(url: str, bodies: list[dict], concurrency: int, timeout: float = 600) -> tuple[list[float], list[str], float]:
    """POST every body to ``url/predict`` with ``concurrency`` threads; latencies (s) and error strings."""
    latencies, errors, lock = [], [], threading.Lock()
    start_gate = threading.Barrier(min(concurrency, len(bodies)))
    session_local = threading.local()

    def one(i_body):
        i, body = i_body
        s = getattr(session_local, "s", None) or requests.Session()
        session_local.s = s
        if i < concurrency:
            try:
                start_gate.wait(60)  # the first wave leaves together: really concurrent
            except threading.BrokenBarrierError:
                pass
        t = time.perf_counter()
        try:
            r = s.post(url + "/predict", json=body, timeout=timeout)
            took = time.perf_counter() - t
            ok = r.status_code == 200 and len(r.json()["results"]) == len(body["tasks"]) and \
                all(res["result"] for res in r.json()["results"])
            with lock:
                (latencies.append(took) if ok else errors.append(f"HTTP {r.status_code}: {r.text[:200]}"))
        except Exception as e:  # noqa: BLE001 (counted, reported)
            with lock:
                errors.append(f"{type(e).__name__}: {e}")

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, enumerate(bodies)))
    return latencies, errors, time.perf_counter() - t0


def run_load(url: str, pid: int, log_path: Path, n_requests: int = 200, concurrency: int = 200, tasks: int = 16,
             size: int = 32, image_urls: list[str] | None = None, project: str = "1.1") -> LoadResult:
    """Warm up (one request), then fire ``n_requests`` concurrent requests; sample the backend's RSS meanwhile."""
    config = render_config(CLASSES)
    requests.post(url + "/setup", json={"project": project, "schema": config}, timeout=60).raise_for_status()
    urls = image_urls or [data_uri(b) for b in _images(64, size)]
    bodies = [{"tasks": [{"id": r * tasks + k + 1, "data": {"image": urls[(r * tasks + k) % len(urls)]}} for k in range(tasks)],
               "project": project, "label_config": config, "params": {"context": None}} for r in range(n_requests)]
    warm = requests.post(url + "/predict", json=bodies[0], timeout=300)
    warm.raise_for_status()
    rss_before = rss_mib(pid)
    peak, health, stop = [rss_before], [], threading.Event()

    def sample():  # RSS, and how fast /health answers meanwhile (Label Studio allows it 1 s)
        while not stop.wait(0.2):
            try:
                peak.append(rss_mib(pid))
                t = time.perf_counter()
                requests.get(url + "/health", timeout=10)
                health.append(time.perf_counter() - t)
            except (OSError, requests.RequestException):
                health.append(10.0)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    latencies, errors, wall = fire(url, bodies, concurrency)
    stop.set()
    sampler.join()
    rss_after = rss_mib(pid)
    metrics = requests.get(url + "/metrics", timeout=30).text
    line = next((ln for ln in metrics.splitlines() if ln.startswith('robustar_requests_total{path="/predict",status="200"}')), "")
    loads = log_path.read_text(errors="replace").count(": serving v")
    return LoadResult(latencies, errors, wall, rss_before, rss_after, max(peak), loads,
                      int(line.rsplit(" ", 1)[1]) if line else 0, tasks, {"health_max_s": max(health, default=0.0)})


def main() -> None:
    from ml_backend.local.stack import backend_process, free_port

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--tasks", type=int, default=16)
    parser.add_argument("--arch", default="tiny-cnn")
    parser.add_argument("--size", type=int, default=32, help="image and model input size")
    parser.add_argument("--parts", default="", help="PREDICT_PARTS ('' = classifier only)")
    parser.add_argument("--images", choices=("data", "http"), default="data")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        server = None
        env = {"MODEL_DIR": tmp, "MODEL_ARCH": args.arch, "IMAGE_SIZE": str(args.size), "PREDICT_PARTS": args.parts,
               "REDIS_URL": "redis://127.0.0.1:1/0", "DEVICE": "cpu"}
        image_urls = None
        if args.images == "http":
            files = {f"/data/upload/1/{i}.png": b for i, b in enumerate(_images(64, args.size))}
            server = FileServer(files, TOKEN).__enter__()
            env.update(LABEL_STUDIO_URL=server.url, LABEL_STUDIO_API_KEY=TOKEN)
            image_urls = list(files)
        port = free_port()
        log = Path(tmp) / "backend.log"
        proc = backend_process(port, env, log).start()
        try:
            proc.wait_http(f"http://127.0.0.1:{port}/health")
            res = run_load(f"http://127.0.0.1:{port}", proc.proc.pid, log, args.requests, args.concurrency, args.tasks,
                           args.size, image_urls)
        finally:
            proc.stop()
            if server:
                server.__exit__(None, None, None)
    print(HEADER)
    print(res.row(f"{args.arch} {args.size}px, {args.tasks} tasks, {args.images} images, parts={args.parts or 'none'}"))
    if res.errors:
        print(f"{len(res.errors)} errors, first: {res.errors[0]}")
    print(f"median {statistics.median(res.latencies):.2f} s; /predict 200s counted by /metrics: {res.metrics_200}")


if __name__ == "__main__":
    main()
