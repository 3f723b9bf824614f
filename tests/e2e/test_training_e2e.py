"""Real Label Studio: paint a mask through the SDK, press "train", a worker publishes v1, LS shows v1."""

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
from ml_backend.importer import import_dataset
from tests.e2e.backend import BIN, BackendProcess
from training.synthetic import make_spurious_dataset

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_paint_train_and_serve_new_version(label_studio, redis_url, tmp_path):
    dataset = tmp_path / "dataset"
    make_spurious_dataset(dataset, n_train=6, n_test=3, size=32, seed=3)
    env = {
        "LABEL_STUDIO_URL": label_studio.url, "LABEL_STUDIO_API_KEY": label_studio.token,
        "MODEL_DIR": str(tmp_path / "models"), "MODEL_ARCH": "tiny-cnn", "IMAGE_SIZE": "32",
        "REDIS_URL": redis_url, "RQ_QUEUE": "e2e-train", "TRAIN_EPOCHS": "2", "TRAIN_BATCH_SIZE": "8",
        "PREDICT_PARTS": "saliency,influence",
    }
    with BackendProcess(env, tmp_path / "backend.log") as backend:
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
        # the worker built v1's influence index: test tasks name the training tasks behind their prediction
        assert result["influence_index"] == "built"
        test_ids = {t.id for t in client.tasks.list(project=pid, fields="all") if t.data["split"] == "test"}
        lines = [line for p in v1 if p["task"] in test_ids for r in p["result"] if r["from_name"] == "influence"
                 for line in r["value"]["text"]]
        assert lines and any(line.startswith("#") for line in lines), lines[:5]
