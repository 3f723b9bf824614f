"""Real Label Studio, MODEL_WEIGHTS=imagenet, offline: the project's v0 is torchvision's ResNet-18 ImageNet
weights read from the torch hub cache (seeded here with a small stand-in under the file name torchvision
expects; every download goes to a closed port), at the weights' own 224 px and normalisation, and the first
job fine-tunes it with the slower backbone."""

from __future__ import annotations

import os
import subprocess

import pytest
import torch
from redis import Redis

from devkit.servers import free_port
from devkit.weights import plausible, seed_hub_cache
from ml_backend.labelstudio.importer import import_dataset
from tests.e2e.backend import BIN, BackendProcess
from training import pretrained
from training.checkpoints import IMAGENET_MEAN, CheckpointStore
from training.models import build_model
from training.synthetic import make_spurious_dataset

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
OFFLINE = {"HTTPS_PROXY": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9",
           "http_proxy": "http://127.0.0.1:9", "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}


def test_a_project_starts_from_imagenet_weights_by_name_offline(label_studio, redis_url, tmp_path, monkeypatch):
    torch_home = tmp_path / "torch"
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    weights = pretrained.for_arch("resnet-18", "imagenet")
    seed_hub_cache(weights, build_model("resnet-18", 1000).state_dict(), plausible("conv1.weight", 0.0123))

    dataset = tmp_path / "dataset"
    make_spurious_dataset(dataset, n_train=4, n_test=1, size=32, seed=2)
    port = free_port()
    env = {
        "LABEL_STUDIO_URL": label_studio.url, "LABEL_STUDIO_API_KEY": label_studio.token,
        "BACKEND_PUBLIC_URL": f"http://127.0.0.1:{port}", "MODEL_DIR": str(tmp_path / "models"),
        "MODEL_WEIGHTS": "imagenet", "TORCH_HOME": str(torch_home), **OFFLINE,
        "REDIS_URL": redis_url, "RQ_QUEUE": "e2e-pretrained", "PROPOSE_AFTER_PAINTED": "0", "PREDICT_PARTS": "saliency", "TRAIN_EPOCHS": "1",
        "TRAIN_PROPAGATED_MASKS": "off",
    }
    with BackendProcess(env, tmp_path / "backend.log", port=port) as backend:
        report = import_dataset(dataset, label_studio.url, label_studio.token, title="e2e pretrained",
                                backend_url=backend.url, progress=False)
        store = CheckpointStore(env["MODEL_DIR"], report.project_id)
        model, v0 = store.load("v0")  # made by the import's predictions, from the cache
        assert torch.all(model.conv1.weight == 0.0123), (tmp_path / "backend.log").read_text()[-2000:]
        assert "ResNet18_Weights.IMAGENET1K_V1" in v0.config["source"] and v0.arch == "resnet-18"
        # the weights' own resolution (the import measured 32 px images) and normalisation
        assert report.input_size.size == 32 and v0.image_size == 224 and v0.mean == IMAGENET_MEAN
        assert v0.config["input_size"]["source"] == "weights"

        client = label_studio.client()
        (ml,) = client.ml.list(project=report.project_id)
        client.ml.train(id=ml.id)
        worker = subprocess.run([str(BIN / "robustar"), "worker", "--burst"], env={**backend.env},
                                capture_output=True, text=True, timeout=600)
        assert worker.returncode == 0, worker.stdout[-3000:] + worker.stderr[-3000:]
        from rq import Queue
        from rq.registry import FinishedJobRegistry

        queue = Queue("e2e-pretrained", connection=Redis.from_url(redis_url))
        (job_id,) = FinishedJobRegistry(queue=queue).get_job_ids()
        result = queue.fetch_job(job_id).return_value()
        assert result["version"] == "v1" and result["arch"] == "resnet-18" and result["image_size"] == 224
        assert result["init"] == "fine-tuned from v0" and result["recipe"]["backbone_lr_scale"][0] == 0.1
        assert "Downloading" not in worker.stderr + (tmp_path / "backend.log").read_text()
    assert os.listdir(torch_home / "hub" / "checkpoints") == [weights.file.name]  # nothing else fetched
