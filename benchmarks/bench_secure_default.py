"""Issue 21's figures against a real ``robustar serve`` process (the README's defaults: no basic auth,
``LABEL_STUDIO_URL`` unset unless a case needs it), for this tree's code and, side by side, another tree's
(``--baseline DIR``: e.g. an export of the commit before issue 21; the server runs with ``PYTHONPATH=DIR``).

    python -m benchmarks.bench_secure_default [--baseline /tmp/old-tree] [--setups 1000] [--bombs 40]

Cases (one fresh server each):
- heatmaps: 45 concurrent ``GET /saliency/1/<key>`` of one recorded task whose image host drips a byte every
  2 s, then 20 valid ``/predict`` one after another: p50 / p99 latency (10 s client timeout), how often the
  image host was asked, seconds from SIGTERM to exit;
- setups: ``--setups`` unauthenticated ``/setup`` calls, each a new project id, naming an impostor host
  that answers as Label Studio (``model_version: v0``): RSS before/after, requests the impostor got, and
  whether the served version, the fetch origin and the CORS list moved (a project with v1 published);
- bombs: one ``/predict`` with ``--bombs`` 8000 x 8000 1-bit PNG data URIs (in budget each): peak RSS
  (VmHWM) over the idle server's, and seconds; again with the pixel budget before issue 21 (64 MP/request);
- mask: one interactive ``/predict`` whose brush region declares 8192 x 8192: status and RSS delta.
"""

from __future__ import annotations

import argparse
import io
import os
import signal
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import requests
from PIL import Image

from devkit.attack_servers import DripServer, ImpostorLabelStudio
from devkit.builders import data_uri, png_bytes
from label_config import render_config
from ml_backend.local.stack import BIN
from devkit.servers import free_port
from ml_backend.predict.lazy_views import TaskRecords
from training.checkpoints import CheckpointStore, ModelDefaults, create_initial_version

CLASSES = ["cat", "dog"]
CONFIG = render_config(CLASSES)


def rss_mib(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Server:
    """``robustar serve`` of ``code`` (a source tree; None: this one) on a free port."""

    def __init__(self, code: str | None, env: dict[str, str], log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        full = {**os.environ, "MODEL_ARCH": "tiny-cnn", "IMAGE_SIZE": "16", "DEVICE": "cpu", "PREDICT_PARTS": "saliency",
                "REDIS_URL": "redis://127.0.0.1:6379/15", **env}
        if code:
            full["PYTHONPATH"] = code
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            self.proc = subprocess.Popen([str(BIN / "robustar"), "serve", "--host", "127.0.0.1", "--port", str(self.port)],
                                         env=full, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                if requests.get(self.url + "/health", timeout=1).ok:
                    return
            except requests.RequestException:
                time.sleep(0.2)
        raise RuntimeError(f"server did not start; see {log}")

    def stop(self) -> float:
        """Seconds from SIGTERM to exit (SIGKILL after 30 s: then 30)."""
        t0 = time.perf_counter()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            return 30.0
        return time.perf_counter() - t0


def _predict_body(pid: int = 1, images: list[str] | None = None, context: dict | None = None) -> dict:
    images = images or [data_uri(png_bytes((16, 16)))]
    body = {"project": f"{pid}.1", "label_config": CONFIG,
            "tasks": [{"id": i + 1, "data": {"image": im}} for i, im in enumerate(images)]}
    if context is not None:
        body["params"] = {"context": context}
    return body


def case_heatmaps(code: str | None, tmp: Path) -> dict:
    model_dir = tmp / "heatmaps"
    create_initial_version(CheckpointStore(model_dir, 1), ModelDefaults(arch="tiny-cnn", image_size=16), CLASSES)
    TaskRecords(model_dir, 1).write([{"id": 0, "data": {"image": "/data/upload/1/0.png"}}], CONFIG)
    with DripServer(interval=2.0) as drip:
        server = Server(code, {"MODEL_DIR": str(model_dir), "LABEL_STUDIO_URL": drip.url, "LABEL_STUDIO_API_KEY": "k"},
                        tmp / "heatmaps.log")
        requests.post(server.url + "/predict", json=_predict_body(), timeout=60)  # warm
        threads = [threading.Thread(target=lambda: _quiet_get(server.url + "/saliency/1/0"), daemon=True) for _ in range(45)]
        for t in threads:
            t.start()
        time.sleep(1.0)
        latencies = []
        for _ in range(20):
            t0 = time.perf_counter()
            try:
                ok = requests.post(server.url + "/predict", json=_predict_body(), timeout=10).status_code == 200
            except requests.RequestException:
                ok = False
            latencies.append(time.perf_counter() - t0 if ok else 10.0)
        stop_s = server.stop()
        asked = len(drip.requests)
    lat = sorted(latencies)
    return {"predict p50 s": statistics.median(lat), "predict p99 s": lat[int(0.99 * (len(lat) - 1))],
            "image host asked": asked, "SIGTERM to exit s": stop_s}


def _quiet_get(url: str) -> None:
    try:
        requests.get(url, timeout=90)
    except requests.RequestException:
        pass


def case_setups(code: str | None, tmp: Path, n: int) -> dict:
    model_dir = tmp / "setups"
    store = CheckpointStore(model_dir, 1)
    create_initial_version(store, ModelDefaults(arch="tiny-cnn", image_size=16), CLASSES)
    model, meta = store.load("v0")
    meta.version, meta.parent_version = "v1", "v0"
    store.save(model, meta)
    store.publish("v1")
    (store.root / "label-studio-model-version").write_text("v1")
    with ImpostorLabelStudio(model_version="v0", image=png_bytes((8, 8))) as impostor:
        server = Server(code, {"MODEL_DIR": str(model_dir)}, tmp / "setups.log")
        http = requests.Session()
        http.post(server.url + "/setup", json={"project": "2.1", "schema": CONFIG}, timeout=30)
        before = rss_mib(server.proc.pid)
        t0 = time.perf_counter()
        for pid in [1] + list(range(1000, 1000 + n - 1)):
            http.post(server.url + "/setup", timeout=30, json={"project": f"{pid}.1", "schema": CONFIG, "hostname": impostor.url,
                                                                "access_token": "attacker"})
        took = time.perf_counter() - t0
        time.sleep(6)  # background checks (the selection sync) have run by now
        after = rss_mib(server.proc.pid)
        setup_requests = len(impostor.requests)
        version = http.post(server.url + "/setup", json={"project": "1.1", "schema": CONFIG}, timeout=30).json().get("model_version")
        cors = "access-control-allow-origin" in http.get(server.url + "/saliency/1/x", headers={"Origin": impostor.url},
                                                         timeout=30).headers
        http.post(server.url + "/predict", json=_predict_body(1000, ["/data/upload/1000/a.png"]), timeout=60)
        fetched_from_impostor = len(impostor.requests) - setup_requests
        server.stop()
    return {"setups": n, "seconds": took, "RSS before MiB": before, "RSS delta MiB": after - before,
            "requests to impostor": setup_requests, "served version after": version,
            "impostor origin in CORS": cors, "predict fetched from impostor": fetched_from_impostor}


def one_bit_bomb(side: int = 8000) -> str:
    buf = io.BytesIO()
    Image.new("1", (side, side - 1)).save(buf, "PNG", optimize=True)
    return data_uri(buf.getvalue())


def case_bombs(code: str | None, tmp: Path, n: int, env: dict[str, str] | None = None) -> dict:
    server = Server(code, {"MODEL_DIR": str(tmp / "bombs"), **(env or {})}, tmp / "bombs.log")
    requests.post(server.url + "/predict", json=_predict_body(), timeout=60)  # warm
    idle = rss_mib(server.proc.pid, "VmHWM")
    bomb = one_bit_bomb()
    t0 = time.perf_counter()
    r = requests.post(server.url + "/predict", json=_predict_body(images=[bomb] * n), timeout=600)
    took = time.perf_counter() - t0
    peak = rss_mib(server.proc.pid, "VmHWM")
    mask = {"result": [{"from_name": "spurious", "to_name": "image", "type": "brushlabels", "original_width": 8192,
                        "original_height": 8192, "value": {"format": "rle", "rle": [0] * 16, "brushlabels": ["Spurious"]}}]}
    m = requests.post(server.url + "/predict", json=_predict_body(context=mask), timeout=600)
    after_mask = rss_mib(server.proc.pid, "VmHWM")
    server.stop()
    return {"bombs": n, "status": r.status_code, "seconds": took, "peak RSS over idle MiB": peak - idle,
            "8192² mask status": m.status_code, "mask peak RSS delta MiB": after_mask - peak}


def run(code: str | None, args, tmp: Path) -> dict:
    out: dict = {}
    out.update({f"heatmaps: {k}": v for k, v in case_heatmaps(code, tmp).items()})
    out.update({f"setups: {k}": v for k, v in case_setups(code, tmp, args.setups).items()})
    out.update({f"bombs: {k}": v for k, v in case_bombs(code, tmp, args.bombs).items()})
    old_default = {"PREDICT_MAX_PIXELS_PER_REQUEST": "64000000"}  # the pixel budget before issue 21
    out.update({f"bombs, 64 MP/request: {k}": v for k, v in case_bombs(code, tmp / "b64", args.bombs, old_default).items()
                if k in ("status", "seconds", "peak RSS over idle MiB")})
    return out


def _fmt(v) -> str:
    return f"{v:.2f}" if isinstance(v, float) else str(v)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--baseline", help="another source tree to run side by side (e.g. the commit before issue 21)")
    p.add_argument("--setups", type=int, default=1000)
    p.add_argument("--bombs", type=int, default=40)
    args = p.parse_args()
    print(f"load: {os.getloadavg()}")
    with tempfile.TemporaryDirectory() as tmp:
        new = run(None, args, Path(tmp) / "new")
        old = run(args.baseline, args, Path(tmp) / "old") if args.baseline else {}
    width = max(len(k) for k in new)
    print(f"{'case':<{width}}  {'this tree':>14}  {'baseline':>14}")
    for k, v in new.items():
        print(f"{k:<{width}}  {_fmt(v):>14}  {_fmt(old.get(k, '')):>14}")


if __name__ == "__main__":
    main()
