"""Images where users keep them, end to end with real parts: a real Label Studio 1.23, a real S3 server
(moto in server mode), our backend and the worker's training path. ``robustar import`` registers a folder as
Local files storage and a bucket as S3 storage, predictions are retrieved through Label Studio for every
task, a training job fetches the images through Label Studio, and an interrupted import resumes."""

from __future__ import annotations

import os
import shutil
import signal
import re
import subprocess
import time
import uuid
from pathlib import Path

import boto3
import pytest
import requests

from ml_backend.labelstudio.client import fetch_export, make_client
from ml_backend.settings import Settings
from ml_backend.jobs.train_job import job_options, train_tasks
from tests.e2e.backend import BIN, BackendProcess
from devkit.servers import free_port
from training.checkpoints import CheckpointStore
from training.progress import Progress
from training.synthetic import make_spurious_dataset

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

BUCKET, PREFIX = "robustar-e2e", "sets/one"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def start_moto(log_path: Path) -> tuple[subprocess.Popen, str]:
    """``moto_server`` (a real S3 API over HTTP) on a free 127.0.0.1 port; returns the process and its URL."""
    port = free_port()
    proc = subprocess.Popen([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=open(log_path, "wb"), stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            requests.get(url, timeout=1)
            return proc, url
        except requests.RequestException:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"moto_server did not start: {log_path.read_text()[-2000:]}")
            time.sleep(0.2)


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory):
    proc, url = start_moto(tmp_path_factory.mktemp("moto") / "moto.log")
    yield url
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(10)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("storage-dataset")
    make_spurious_dataset(root, n_train=2, n_test=1, size=32, seed=5)
    return root


def image_keys(dataset: Path) -> list[str]:
    return sorted(p.relative_to(dataset).as_posix() for split in ("train", "test") for p in (dataset / split).rglob("*.png"))


@pytest.fixture(scope="module")
def bucket(s3_endpoint, dataset) -> str:
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, **{k.lower().replace("aws_default_region", "region_name"): v
                                                          for k, v in CREDENTIALS.items()})
    s3.create_bucket(Bucket=BUCKET)
    for key in image_keys(dataset):
        s3.upload_file(str(dataset / key), BUCKET, f"{PREFIX}/{key}")
    s3.put_object(Bucket=BUCKET, Key=f"{PREFIX}/README.txt", Body=b"not an image")
    return f"s3://{BUCKET}/{PREFIX}"


@pytest.fixture(scope="module")
def backend(tmp_path_factory, redis_dbs, label_studio, s3_endpoint):
    tmp = tmp_path_factory.mktemp("storage-backend")
    with redis_dbs.lease() as redis_url:
        env = {"LABEL_STUDIO_URL": label_studio.url, "LABEL_STUDIO_API_KEY": label_studio.token,
               "MODEL_DIR": str(tmp / "models"), "MODEL_ARCH": "tiny-cnn", "IMAGE_SIZE": "32", "REDIS_URL": redis_url,
               "PREDICT_PARTS": "saliency",
               # Label Studio redirects s3:// to presigned URLs on the endpoint: a private host here
               "ALLOWED_IMAGE_HOSTS": s3_endpoint, "ALLOW_PRIVATE_IMAGE_HOSTS": "true"}
        with BackendProcess(env, tmp / "backend.log") as proc:
            yield proc


def robustar_import(label_studio, dataset: str, title: str, *extra: str, env: dict | None = None,
                    backend=None) -> subprocess.CompletedProcess:
    cmd = [str(BIN / "robustar"), "--log-level", "warning", "import", dataset, "--url", label_studio.url,
           "--api-key", label_studio.token, "--title", title, *extra]
    if backend is not None:
        cmd += ["--backend-url", backend.url]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})})


def project_tasks(label_studio, title: str) -> tuple[int, list[dict]]:
    http = requests.Session()
    http.headers.update(label_studio.headers)
    (project,) = [p for p in http.get(f"{label_studio.url}/api/projects", params={"title": title}).json()["results"]
                  if p["title"] == title]
    export = http.get(f"{label_studio.url}/api/projects/{project['id']}/export",
                      params={"exportType": "JSON", "download_all_tasks": "true"}).json()
    return project["id"], export


def assert_predicted(label_studio, pid: int, n: int) -> None:
    http = requests.Session()
    http.headers.update(label_studio.headers)
    preds = http.get(f"{label_studio.url}/api/predictions", params={"project": pid}).json()
    assert len({p["task"] for p in preds if p["model_version"] == "v0" and p["result"]}) == n, preds[:2]


def storages(label_studio, kind: str, pid: int) -> list[dict]:
    return requests.get(f"{label_studio.url}/api/storages/{kind}/", params={"project": pid},
                        headers=label_studio.headers, timeout=30).json()


def train_from_label_studio(label_studio, backend, pid: int, tmp_path: Path) -> dict:
    """The worker's training path (``train_tasks``) on the project's export: images fetched through Label Studio."""
    settings = Settings(label_studio_url=label_studio.url, label_studio_api_key=label_studio.token,
                        model_dir=tmp_path / "models", model_arch="tiny-cnn", image_size=32, predict_parts=("saliency",),
                        allowed_image_hosts=tuple(backend.env["ALLOWED_IMAGE_HOSTS"].split(",")),
                        allow_private_image_hosts=True, fetch_workers=2)
    client = make_client(label_studio.url, label_studio.token)
    tasks = fetch_export(client, pid)
    label_config = client.projects.get(id=pid).label_config
    opts = job_options(settings, {"epochs": 1, "batch_size": 4, "push_predictions": False, "device": "cpu"})
    return train_tasks(settings, CheckpointStore(settings.model_dir, pid), pid, label_config, tasks, opts,
                       Progress(None, project_id=pid))


def test_local_files_storage(label_studio, backend, dataset, tmp_path):
    root = label_studio.data_dir / "files"  # the fixture's LOCAL_FILES_DOCUMENT_ROOT
    folder = root / f"local-{uuid.uuid4().hex[:6]}"
    shutil.copytree(dataset, folder)
    n = len(image_keys(dataset))
    first = robustar_import(label_studio, str(folder), "storage local", "--storage", "local-files",
                            "--document-root", str(root), "--batch", "4", backend=backend)
    assert first.returncode == 0, first.stdout + first.stderr
    assert f"{n} imported, 0 already there" in first.stdout and "localfiles storage" in first.stdout
    assert f"import: {n}/{n} tasks created" in first.stderr  # a progress line per batch
    pid, tasks = project_tasks(label_studio, "storage local")
    assert sorted(t["data"]["key"] for t in tasks) == image_keys(dataset)
    assert all(t["data"]["image"] == f"/data/local-files/?d={folder.name}/{t['data']['key']}" for t in tasks)
    assert {(t["data"]["split"], t["data"]["label"]) for t in tasks} >= {("train", "circle"), ("test", "square")}
    assert_predicted(label_studio, pid, n)  # Label Studio -> /predict -> the backend fetched every image from LS

    again = robustar_import(label_studio, str(folder), "storage local", "--storage", "local-files", "--no-predict",
                            env={"LOCAL_FILES_DOCUMENT_ROOT": str(root)})
    assert again.returncode == 0 and f"0 imported, {n} already there" in again.stdout, again.stdout + again.stderr
    assert len(storages(label_studio, "localfiles", pid)) == 1  # registered once

    summary = train_from_label_studio(label_studio, backend, pid, tmp_path)
    assert summary["published"] and summary["counts"]["records"] == n and not summary["counts"]["skipped"]


def test_s3_storage(label_studio, backend, dataset, bucket, s3_endpoint, tmp_path):
    n = len(image_keys(dataset))
    env = {**CREDENTIALS, "S3_ENDPOINT": s3_endpoint}
    first = robustar_import(label_studio, bucket, "storage s3", env=env, backend=backend)
    assert first.returncode == 0, first.stdout + first.stderr
    assert f"{n} imported, 0 already there" in first.stdout and "s3 storage" in first.stdout
    pid, tasks = project_tasks(label_studio, "storage s3")
    assert sorted(t["data"]["image"] for t in tasks) == [f"{bucket}/{k}" for k in image_keys(dataset)]
    (storage,) = storages(label_studio, "s3", pid)
    assert (storage["bucket"], storage["prefix"], storage["s3_endpoint"], storage["presign"]) == (
        BUCKET, PREFIX, s3_endpoint, True)
    # Label Studio sent s3:// tasks to /predict; the backend resolved them through LS to presigned moto URLs
    assert_predicted(label_studio, pid, n)

    again = robustar_import(label_studio, bucket, "storage s3", "--no-predict", env=env)
    assert f"0 imported, {n} already there" in again.stdout, again.stdout + again.stderr
    assert len(storages(label_studio, "s3", pid)) == 1

    summary = train_from_label_studio(label_studio, backend, pid, tmp_path)
    assert summary["published"] and summary["counts"]["records"] == n and not summary["counts"]["skipped"]

    # without the endpoint in ALLOWED_IMAGE_HOSTS the task's image is refused, and the error says what to do
    from ml_backend.labelstudio.fetch import FetchPolicy, ImageError, ImageFetcher

    policy = FetchPolicy.from_settings(Settings())
    with pytest.raises(ImageError, match="ALLOWED_IMAGE_HOSTS"):
        ImageFetcher(label_studio.url, label_studio.token, policy, project_id=pid).fetch(tasks[0]["data"]["image"])
    # ... unless the storage's presign is off: then Label Studio streams the bytes, and no other host is needed
    proxied = robustar_import(label_studio, bucket, "storage s3 proxied", "--no-presign", env=env)
    assert proxied.returncode == 0, proxied.stdout + proxied.stderr
    pid, tasks = project_tasks(label_studio, "storage s3 proxied")
    assert storages(label_studio, "s3", pid)[0]["presign"] is False
    image = ImageFetcher(label_studio.url, label_studio.token, policy, project_id=pid).fetch(tasks[0]["data"]["image"])
    assert image.size == (32, 32)


@pytest.mark.parametrize("storage", ["upload", "local-files"])
def test_interrupted_import_resumes(label_studio, storage):
    root = label_studio.data_dir / "files"
    folder = root / f"resume-{uuid.uuid4().hex[:6]}"
    make_spurious_dataset(folder, n_train=10, n_test=4, size=16, seed=9)
    n, title = len(image_keys(folder)), f"storage resume {storage}"  # 42 images
    cmd = [str(BIN / "robustar"), "import", str(folder), "--url", label_studio.url, "--api-key", label_studio.token,
           "--title", title, "--storage", storage, "--document-root", str(root), "--batch", "3"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    line = proc.stderr.readline()
    while line and not re.match(r"import: \d+/", line):  # what the importer says first (the val split it sets aside)
        line = proc.stderr.readline()
    # the first batch is in: kill it there, as Ctrl-C or a crash would
    proc.kill()
    proc.wait(30)
    assert line.startswith("import: 3/"), line + proc.stderr.read()
    pid, before = project_tasks(label_studio, title)
    assert 3 <= len(before) < n and len(before) % 3 == 0  # whole batches only

    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"{n - len(before)} imported, {len(before)} already there" in again.stdout
    _, after = project_tasks(label_studio, title)
    assert sorted(t["data"]["key"] for t in after) == image_keys(folder)  # each image once
    config = requests.get(f"{label_studio.url}/api/projects/{pid}", headers=label_studio.headers, timeout=30).json()
    assert '<Image name="saliency"' in config["label_config"]  # the full config, even after a kill mid-upload


def test_bench_import_smoke(label_studio, s3_endpoint):
    """benchmarks/bench_import.py at smoke size against the session's Label Studio: a row per mode."""
    from benchmarks.bench_import import run, table

    rows = run(label_studio, s3_endpoint, n=6, batch=4)
    assert [(r.mode, r.tasks) for r in rows] == [("upload", 6), ("local-files", 6), ("s3", 6)]
    assert table(rows).count("\n") == 4 and "× upload" in table(rows)
