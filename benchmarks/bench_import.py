"""Import at scale: tasks/s of ``robustar import`` by upload vs Local files storage vs S3 storage, one run.

    python -m benchmarks.bench_import              # 1000 generated images (32 px PNG), a few minutes here
    python -m benchmarks.bench_import --n 10000    # the issue's size

A real Label Studio 1.23 (fresh SQLite data dir, local-files serving on) and a real S3 server (moto in server
mode) are started; N generated images are written under Label Studio's LOCAL_FILES_DOCUMENT_ROOT and put in
a bucket (not timed). Each mode then imports the same dataset into its own project (``import_dataset``,
``--batch`` tasks per import call, no backend) and again (nothing new: the idempotent re-run). Prints a
Markdown table: wall time of the whole import (scan, project, storage, tasks), of creating the tasks (and
uploading the files), tasks/s, the ratio to upload, and the re-run's wall time.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import requests
from PIL import Image

from ml_backend.labelstudio.importer import import_dataset
from ml_backend.local.label_studio_server import LabelStudioServer, default_venv, ensure_label_studio
from ml_backend.labelstudio.storage import LocalFilesSource, S3Source
from devkit.servers import free_port

BIN = Path(sys.executable).parent
CLASSES = ("a", "b", "c")
BUCKET = "bench"
KEY, SECRET, REGION = "bench", "bench", "us-east-1"


@dataclass
class Row:
    mode: str
    tasks: int
    wall_s: float
    create_s: float
    rerun_s: float

    @property
    def rate(self) -> float:
        return self.tasks / self.wall_s


def make_images(root: Path, n: int, size: int, seed: int = 0) -> list[str]:
    """``n`` random PNGs as ``<split>/<class>/<i>.png`` (4 of 5 in train); returns their keys."""
    rng = np.random.default_rng(seed)
    keys = []
    for i in range(n):
        key = f"{'test' if i % 5 == 4 else 'train'}/{CLASSES[i % len(CLASSES)]}/{i:06d}.png"
        path = root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(path)
        keys.append(key)
    return keys


def start_moto(log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)], stdout=open(log, "wb"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            requests.get(url, timeout=1)
            return proc, url
        except requests.RequestException:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"moto_server did not start (log: {log})")


def fill_bucket(endpoint: str, root: Path, keys: list[str], prefix: str) -> None:
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=KEY, aws_secret_access_key=SECRET,
                      region_name=REGION)
    s3.create_bucket(Bucket=BUCKET)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda k: s3.upload_file(str(root / k), BUCKET, f"{prefix}/{k}"), keys))


def timed_import(mode: str, source, ls: LabelStudioServer, n: int, batch: int) -> Row:
    t = time.perf_counter()
    report = import_dataset(source, ls.url, ls.token, title=f"bench {mode}", progress=False, predict=False,
                            task_batch=batch)
    wall = time.perf_counter() - t
    assert report.imported == n, (mode, report)
    t = time.perf_counter()
    again = import_dataset(source, ls.url, ls.token, title=f"bench {mode}", progress=False, predict=False)
    assert again.imported == 0 and again.skipped_existing == n, (mode, again)
    return Row(mode, n, wall, report.seconds, time.perf_counter() - t)


def run(ls: LabelStudioServer, endpoint: str, n: int, size: int = 32, batch: int = 500,
        modes: tuple[str, ...] = ("upload", "local-files", "s3")) -> list[Row]:
    """Import the same ``n`` generated images once per mode into ``ls`` (whose document root is
    ``ls.data_dir/files``); the bucket under ``endpoint`` gets them too."""
    root = ls.data_dir / "files"
    folder = root / f"bench-{n}-{os.getpid()}-{time.monotonic_ns()}"
    keys = make_images(folder, n, size)
    prefix = folder.name
    if "s3" in modes:
        fill_bucket(endpoint, folder, keys, prefix)
    sources = {
        "upload": folder,
        "local-files": LocalFilesSource.create(folder, root),
        "s3": S3Source(BUCKET, prefix, endpoint=endpoint, region=REGION, access_key_id=KEY, secret_access_key=SECRET),
    }
    return [timed_import(mode, sources[mode], ls, n, batch) for mode in modes]


def table(rows: list[Row]) -> str:
    base = next((r.rate for r in rows if r.mode == "upload"), None)
    lines = ["| import | tasks | wall s | creating tasks s | tasks/s | × upload | re-run s (nothing new) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = f"{r.rate / base:.1f}×" if base else "–"
        lines.append(f"| {r.mode} | {r.tasks} | {r.wall_s:.1f} | {r.create_s:.1f} | {r.rate:.0f} | {ratio} | {r.rerun_s:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1000, help="images (default 1000; the issue's size: 10000)")
    parser.add_argument("--size", type=int, default=32, help="image side in pixels")
    parser.add_argument("--batch", type=int, default=500, help="tasks per import call")
    parser.add_argument("--modes", default="upload,local-files,s3")
    args = parser.parse_args(argv)
    venv = default_venv()
    ensure_label_studio(venv)
    with tempfile.TemporaryDirectory(prefix="bench-import-") as tmp:
        moto, endpoint = start_moto(Path(tmp) / "moto.log")
        try:
            with LabelStudioServer(Path(tmp) / "ls", venv=venv) as ls:
                rows = run(ls, endpoint, args.n, args.size, args.batch, tuple(args.modes.split(",")))
        finally:
            os.killpg(moto.pid, signal.SIGTERM)
            moto.wait(10)
    print(f"\nrobustar import of {args.n} images ({args.size} px PNG), {args.batch} tasks per import call, "
          "Label Studio 1.23.2 (SQLite) and moto S3 on this machine\n")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
