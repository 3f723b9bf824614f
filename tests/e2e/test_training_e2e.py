"""Real Label Studio: paint a mask through the SDK, press "train", a worker publishes v1, LS shows v1
(its model card, versions, job status and report), and selecting v0 in Label Studio rolls back."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image
from redis import Redis

from label_config import regions
from ml_backend.labelstudio.importer import import_dataset
from tests.e2e.backend import BIN, BackendProcess
from devkit.servers import free_port
from training.synthetic import make_spurious_dataset

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_paint_train_and_serve_new_version(label_studio, redis_url, tmp_path):
    dataset = tmp_path / "dataset"
    make_spurious_dataset(dataset, n_train=6, n_test=3, size=32, seed=3)
    port = free_port()
    env = {
        "LABEL_STUDIO_URL": label_studio.url, "LABEL_STUDIO_API_KEY": label_studio.token,
        "BACKEND_PUBLIC_URL": f"http://127.0.0.1:{port}",
        "MODEL_DIR": str(tmp_path / "models"), "MODEL_ARCH": "tiny-cnn", "IMAGE_SIZE": "32",
        "REDIS_URL": redis_url, "RQ_QUEUE": "e2e-train", "PROPOSE_AFTER_PAINTED": "0", "TRAIN_EPOCHS": "2", "TRAIN_BATCH_SIZE": "8",
        "PREDICT_PARTS": "saliency,influence",
    }
    with BackendProcess(env, tmp_path / "backend.log", port=port) as backend:
        report = import_dataset(dataset, label_studio.url, label_studio.token, title="e2e training",
                                backend_url=backend.url, progress=False)
        pid = report.project_id
        client = label_studio.client()

        # an expert paints the spurious patch of two training images (Label Studio RLE via the SDK)
        painted = []
        for task in client.tasks.list(project=pid, fields="all"):
            data = task.data
            if data["split"] == "train" and len(painted) < 2:
                mask = np.asarray(Image.open(dataset / "masks" / data["key"])) > 127
                client.annotations.create(id=task.id, result=[regions.brush(mask, region_id="spurious"), regions.choices(data["label"], region_id="class")])
                painted.append(task.id)
        stored = client.annotations.list(id=painted[0])
        assert stored[0].result[0]["value"]["rle"], "the brush mask was stored"

        # Label Studio's own "train" call sends START_TRAINING to our /webhook
        (ml,) = client.ml.list(project=pid)
        client.ml.train(id=ml.id)
        worker = subprocess.run([str(BIN / "robustar"), "worker", "--burst"], env={**backend.env},
                                capture_output=True, text=True, timeout=600)
        assert worker.returncode == 0, worker.stdout[-3000:] + worker.stderr[-3000:]

        from rq import Queue
        from rq.registry import FailedJobRegistry, FinishedJobRegistry

        queue = Queue("e2e-train", connection=Redis.from_url(redis_url))
        assert len(FailedJobRegistry(queue=queue)) == 0, worker.stderr[-3000:]
        (job_id,) = FinishedJobRegistry(queue=queue).get_job_ids()
        result = queue.fetch_job(job_id).return_value()
        assert result["version"] == "v1" and result["parent"] == "v0"
        assert result["counts"]["painted"] == 2
        assert {"train", "test"} <= set(result["metrics"]["new"])

        # the backend serves v1 without a restart; Label Studio shows v1's predictions
        http = requests.Session()
        http.headers["Authorization"] = f"Token {label_studio.token}"
        deadline = time.monotonic() + 30
        while http.get(f"{label_studio.url}/api/projects/{pid}").json()["model_version"] != "v1":
            assert time.monotonic() < deadline, "project model_version never became v1"
            time.sleep(0.5)
        assert client.ml.get(id=ml.id).model_version == "v1"
        preds = http.get(f"{label_studio.url}/api/predictions", params={"project": pid}).json()
        v1 = [p for p in preds if p["model_version"] == "v1"]
        assert len(v1) == 27 and all(any(r["from_name"] == "pred_class" for r in p["result"]) for p in v1)
        assert Path(env["MODEL_DIR"], f"project-{pid}", "versions", "v1.pt").is_file()
        # the worker built v1's influence index: a test task's page names the training tasks behind its prediction
        assert result["influence_index"] == "built"
        tasks = list(client.tasks.list(project=pid, fields="all"))
        test_task = next(t for t in tasks if t.data["split"] == "test")
        requests.get(f"{label_studio.url}/api/tasks/{test_task.id}", headers=http.headers, timeout=60)
        page = requests.get(test_task.data["influence"], timeout=30)
        assert page.status_code == 200 and "supports it" in page.text and f"/projects/{pid}/data?task=" in page.text

        # training is visible in Label Studio: the model card, its versions, the job's status, the report
        card = client.ml.get(id=ml.id)
        assert card.title == "Robustar · serving v1", [line for line in worker.stderr.splitlines() if "card" in line][-5:]
        assert card.description.startswith(f"v1: report {backend.url}/report/{pid}/v1 · decided on val (gate, epoch")
        assert http.get(f"{label_studio.url}/api/ml/{ml.id}/versions").json()["versions"] == ["v1", "v0"]
        status = requests.post(backend.url + "/job_status", json={"job": job_id}, timeout=10).json()
        assert status["job_status"] == "finished" and status["version"] == "v1"
        assert requests.post(backend.url + "/job_status", json={"job": "nope"}, timeout=10).status_code == 410
        report_page = requests.get(result["report"], timeout=10)
        assert report_page.status_code == 200 and "Δ accuracy" in report_page.text and "curves.png" in report_page.text
        assert requests.get(result["report"] + "/curves.png", timeout=10).headers["content-type"] == "image/png"

        # selecting v0 as the project's model version in Label Studio rolls the served version back
        from training.checkpoints import CheckpointStore

        store = CheckpointStore(env["MODEL_DIR"], pid)
        http.patch(f"{label_studio.url}/api/projects/{pid}", json={"model_version": "v0"}).raise_for_status()
        deadline = time.monotonic() + 60
        while store.published() != "v0":
            assert time.monotonic() < deadline, "selecting v0 in Label Studio did not roll back"
            http.get(f"{label_studio.url}/api/ml/{ml.id}")  # Label Studio calls /setup
            time.sleep(1)
        setup = requests.post(backend.url + "/setup", json={"project": f"{pid}.1", "schema": client.projects.get(id=pid).label_config},
                              timeout=10).json()
        assert setup["model_version"] == "v0"


def test_start_training_with_readme_defaults_trains_the_small_image_model(label_studio, redis_url, tmp_path):
    """No MODEL_ARCH, no TRAIN_*: the README's defaults on 64 px images. Label Studio's "train" call
    yields a v1 of the small CNN whose receptive field spans 64 px, the job result says why, and v1
    is served: its predictions reach Label Studio."""
    dataset = tmp_path / "dataset"
    make_spurious_dataset(dataset, n_train=4, n_test=2, size=64, seed=5, kind="background")
    port = free_port()
    env = {
        "LABEL_STUDIO_URL": label_studio.url, "LABEL_STUDIO_API_KEY": label_studio.token,
        "BACKEND_PUBLIC_URL": f"http://127.0.0.1:{port}", "MODEL_DIR": str(tmp_path / "models"), "IMAGE_SIZE": "64",
        "REDIS_URL": redis_url, "RQ_QUEUE": "e2e-defaults", "PROPOSE_AFTER_PAINTED": "0", "PREDICT_PARTS": "saliency",
    }
    with BackendProcess(env, tmp_path / "backend.log", port=port) as backend:
        report = import_dataset(dataset, label_studio.url, label_studio.token, title="e2e defaults",
                                backend_url=backend.url, progress=False)
        client = label_studio.client()
        (ml,) = client.ml.list(project=report.project_id)
        client.ml.train(id=ml.id)
        worker = subprocess.run([str(BIN / "robustar"), "worker", "--burst"], env={**backend.env},
                                capture_output=True, text=True, timeout=600)
        assert worker.returncode == 0, worker.stdout[-3000:] + worker.stderr[-3000:]

        from rq import Queue
        from rq.registry import FinishedJobRegistry

        queue = Queue("e2e-defaults", connection=Redis.from_url(redis_url))
        (job_id,) = FinishedJobRegistry(queue=queue).get_job_ids()
        result = queue.fetch_job(job_id).return_value()
        assert result["version"] == "v1" and result["arch"] == "small-cnn-5", worker.stderr[-3000:]
        arch, why = result["recipe"]["arch"]
        assert arch == "small-cnn-5" and "78 px receptive field" in why and "resnet-18" in why
        # the importer set one test image per class aside as val: up to 2 x 30 epochs, stopped on val
        assert result["recipe"]["optimizer"][0] == "adamw" and result["recipe"]["epochs"][0] == 60
        assert result["decisions"]["epoch"]["split"] == "val"
        http = requests.Session()
        http.headers["Authorization"] = f"Token {label_studio.token}"
        preds = http.get(f"{label_studio.url}/api/predictions", params={"project": report.project_id}).json()
        assert len([p for p in preds if p["model_version"] == "v1"]) == report.imported
