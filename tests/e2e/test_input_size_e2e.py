"""Real Label Studio, IMAGE_SIZE unset: `robustar import` measures the 64 px images, the backend makes v0
at that size (the measurement reaches it in /setup's extra_params), and Start Training trains the small CNN
the data calls for; the job result and the report page say why."""

from __future__ import annotations

import subprocess

import pytest
import requests
from redis import Redis

from devkit.servers import free_port
from ml_backend.labelstudio.importer import import_dataset
from tests.e2e.backend import BIN, BackendProcess
from training.checkpoints import CheckpointStore
from training.synthetic import make_spurious_dataset

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_import_measures_the_images_and_the_job_trains_the_model_they_call_for(label_studio, redis_url, tmp_path):
    dataset = tmp_path / "dataset"
    make_spurious_dataset(dataset, n_train=4, n_test=2, size=64, seed=5, kind="background")
    port = free_port()
    env = {  # no IMAGE_SIZE, no MODEL_ARCH: the README's defaults
        "LABEL_STUDIO_URL": label_studio.url, "LABEL_STUDIO_API_KEY": label_studio.token,
        "BACKEND_PUBLIC_URL": f"http://127.0.0.1:{port}", "MODEL_DIR": str(tmp_path / "models"),
        "REDIS_URL": redis_url, "RQ_QUEUE": "e2e-input-size", "PREDICT_PARTS": "saliency", "TRAIN_EPOCHS": "2",
    }
    with BackendProcess(env, tmp_path / "backend.log", port=port) as backend:
        report = import_dataset(dataset, label_studio.url, label_studio.token, title="e2e input size",
                                backend_url=backend.url, progress=False)
        assert report.input_size.size == 64 and "robustar import" in report.input_size.reason
        v0 = CheckpointStore(env["MODEL_DIR"], report.project_id).read_meta("v0")  # made by the import's predictions
        assert v0.image_size == 64 and v0.config["input_size"]["source"] == "measured", v0.config

        client = label_studio.client()
        (ml,) = client.ml.list(project=report.project_id)
        assert ml.extra_params["robustar_input_size"]["size"] == 64
        client.ml.train(id=ml.id)
        worker = subprocess.run([str(BIN / "robustar"), "worker", "--burst"], env={**backend.env},
                                capture_output=True, text=True, timeout=600)
        assert worker.returncode == 0, worker.stdout[-3000:] + worker.stderr[-3000:]

        from rq import Queue
        from rq.registry import FinishedJobRegistry

        queue = Queue("e2e-input-size", connection=Redis.from_url(redis_url))
        (job_id,) = FinishedJobRegistry(queue=queue).get_job_ids()
        result = queue.fetch_job(job_id).return_value()
        assert result["version"] == "v1" and result["image_size"] == 64 and result["arch"] == "small-cnn-5"
        assert result["input_size"]["source"] == "measured"
        size, why = result["recipe"]["image_size"]
        assert size == 64 and "median short side 64 px" in why and "robustar import" in why
        page = requests.get(result["report"], timeout=10).text
        assert "Model input: <b>64 px</b>" in page and "median short side 64 px" in page
