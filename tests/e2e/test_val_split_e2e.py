"""Real Label Studio: a project with val tasks gates, keeps an epoch and ranks suspicion on val, and the
job result, the model card and the report page say so; a project without val says it did not gate."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest
import requests
from PIL import Image
from redis import Redis

from label_config import regions
from ml_backend.labelstudio.importer import import_dataset
from ml_backend.predict.influence import load_influence_index
from tests.e2e.backend import BIN, BackendProcess
from devkit.servers import free_port
from training.checkpoints import CheckpointStore
from training.synthetic import make_spurious_dataset

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _paint_two(client, pid: int, dataset) -> None:
    """An expert paints the spurious patch of two training images (Label Studio RLE via the SDK)."""
    painted = 0
    for task in client.tasks.list(project=pid, fields="all"):
        data = task.data
        if data["split"] == "train" and painted < 2:
            mask = np.asarray(Image.open(dataset / "masks" / data["key"])) > 127
            client.annotations.create(id=task.id, result=[regions.brush(mask, region_id="spurious"),
                                                           regions.choices(data["label"], region_id="class")])
            painted += 1


def _train(client, pid: int, backend: BackendProcess, redis_url: str, queue_name: str) -> dict:
    (ml,) = client.ml.list(project=pid)
    client.ml.train(id=ml.id)
    worker = subprocess.run([str(BIN / "robustar"), "worker", "--burst"], env={**backend.env},
                            capture_output=True, text=True, timeout=600)
    assert worker.returncode == 0, worker.stdout[-3000:] + worker.stderr[-3000:]
    from rq import Queue
    from rq.registry import FinishedJobRegistry

    queue = Queue(queue_name, connection=Redis.from_url(redis_url))
    results = [queue.fetch_job(i).return_value() for i in FinishedJobRegistry(queue=queue).get_job_ids()]
    (result,) = [r for r in results if r["project"] == pid]
    return result


def test_val_split_decides_and_no_val_says_it_did_not_gate(label_studio, redis_url, tmp_path):
    dataset = tmp_path / "dataset"
    make_spurious_dataset(dataset, n_train=6, n_test=4, size=32, seed=3)
    port = free_port()
    env = {
        "LABEL_STUDIO_URL": label_studio.url, "LABEL_STUDIO_API_KEY": label_studio.token,
        "BACKEND_PUBLIC_URL": f"http://127.0.0.1:{port}", "MODEL_DIR": str(tmp_path / "models"),
        "MODEL_ARCH": "tiny-cnn", "IMAGE_SIZE": "32", "REDIS_URL": redis_url, "RQ_QUEUE": "e2e-val",
        "TRAIN_EPOCHS": "3", "PROPOSE_AFTER_PAINTED": "0", "TRAIN_BATCH_SIZE": "8", "TRAIN_PROPAGATED_MASKS": "off", "PREDICT_PARTS": "influence",
    }
    client = label_studio.client()
    with BackendProcess(env, tmp_path / "backend.log", port=port) as backend:
        # no val/ folder: the importer sets a stratified part of test aside as val and says so
        with_val = import_dataset(dataset, label_studio.url, label_studio.token, title="e2e val",
                                  backend_url=backend.url, progress=False)
        assert with_val.n_val == 3 and "set aside" in with_val.val  # 30% of 4 test images per class: 1 of each of 3
        tasks = list(client.tasks.list(project=with_val.project_id, fields="all"))
        assert sum(t.data["split"] == "val" for t in tasks) == 3 and sum(t.data["split"] == "test" for t in tasks) == 9
        _paint_two(client, with_val.project_id, dataset)
        result = _train(client, with_val.project_id, backend, redis_url, "e2e-val")
        assert result["version"] == "v1" and result["metrics"]["new"]["val"]["n"] == 3, result
        decisions = result["decisions"]
        assert decisions["gate"]["split"] == "val" and "gated on val (3 images)" in decisions["gate"]["note"]
        assert decisions["epoch"]["split"] == "val" and 1 <= decisions["epoch"]["kept_epoch"] <= 3
        assert decisions["suspicion"]["split"] == "val" and decisions["reported"] == "test"
        index = load_influence_index(CheckpointStore(env["MODEL_DIR"], with_val.project_id), "v1")
        assert index.info["ranked_on"] == "val" and index.info["n_test"] == 3  # the 3 val tasks, not the 9 test
        (ml,) = client.ml.list(project=with_val.project_id)
        assert "decided on val (gate, epoch" in client.ml.get(id=ml.id).description
        page = requests.get(result["report"], timeout=10).text
        assert "publish gate" in page and "kept epoch" in page and "suspicion ranking" in page
        assert "split is reported only" in page

        # --val-fraction 0 and no val/ folder: no val split; the job trains, publishes and says it did not gate
        no_val = import_dataset(dataset, label_studio.url, label_studio.token, title="e2e no val",
                                backend_url=backend.url, progress=False, val_fraction=0)
        assert no_val.n_val == 0 and "none" in no_val.val
        result = _train(client, no_val.project_id, backend, redis_url, "e2e-val")
        assert result["published"] and "val" not in result["metrics"]["new"]
        decisions = result["decisions"]
        assert decisions["gate"]["split"] is None and decisions["gate"]["note"].startswith("not gated: the project has no val")
        assert decisions["epoch"]["split"] is None and decisions["suspicion"]["split"] is None
        (ml,) = client.ml.list(project=no_val.project_id)
        assert "not gated" in client.ml.get(id=ml.id).description
        page = requests.get(result["report"], timeout=10).text
        assert "nothing (no val split)" in page and "not gated" in page
