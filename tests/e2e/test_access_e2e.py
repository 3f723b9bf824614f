"""Real Label Studio 1.23 + our backend with BASIC_AUTH_USER/PASS and WEBHOOK_SECRET set: the import
connects the backend with basic auth and gives the auto-created webhook the secret, predictions and
START_TRAINING (basic auth) and annotation events (secret header) get through, anyone else gets 401,
and the signed heatmap URLs in the task data load without credentials (as a browser does)."""

from __future__ import annotations

import os
import subprocess

import numpy as np
import pytest
import requests

from label_config import regions
from tests.e2e.backend import BIN, BackendProcess
from training.synthetic import make_spurious_dataset

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

USER, PASSWORD, SECRET = "ls-robot", "basic-pass-0123456789", "webhook-secret-0123456789"
SECURITY_ENV = {"BASIC_AUTH_USER": USER, "BASIC_AUTH_PASS": PASSWORD, "WEBHOOK_SECRET": SECRET}


@pytest.fixture(scope="module")
def secured_backend(tmp_path_factory, redis_dbs):
    tmp = tmp_path_factory.mktemp("secured-backend")
    # a DB of its own, empty: a job queued by an earlier run would make START_TRAINING "already queued"
    with redis_dbs.lease() as redis_url:
        env = {"MODEL_DIR": str(tmp / "models"), "MODEL_ARCH": "tiny-cnn", "IMAGE_SIZE": "32", "PREDICT_PARTS": "saliency",
               "REDIS_URL": redis_url, "RQ_QUEUE": "robustar-e2e-access", **SECURITY_ENV}
        with BackendProcess(env, tmp / "backend.log", timeout=90) as proc:  # health is polled with basic auth
            yield proc


def test_basic_auth_and_webhook_secret_with_label_studio(label_studio, secured_backend, tmp_path):
    root = tmp_path / "dataset"
    make_spurious_dataset(root, n_train=2, n_test=1, size=32, seed=3)
    env = {**os.environ, **SECURITY_ENV}
    cmd = [str(BIN / "robustar"), "--log-level", "warning", "import", str(root), "--url", label_studio.url,
           "--api-key", label_studio.token, "--title", "e2e access", "--backend-url", secured_backend.url, "--quiet"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0 and "model version v0" in r.stdout, r.stdout + r.stderr

    url, backend = label_studio.url, secured_backend.url
    http = requests.Session()
    http.headers["Authorization"] = f"Token {label_studio.token}"
    (project,) = [p for p in http.get(f"{url}/api/projects", params={"title": "e2e access"}).json()["results"]
                  if p["title"] == "e2e access"]
    pid = project["id"]
    (ml,) = http.get(f"{url}/api/ml", params={"project": pid}).json()
    assert ml["auth_method"] == "BASIC_AUTH" and ml["basic_auth_user"] == USER
    (hook,) = [h for h in http.get(f"{url}/api/webhooks", params={"project": pid}).json() if h["url"] == backend + "/webhook"]
    assert hook["headers"]["X-Robustar-Secret"] == SECRET

    # predictions came through basic auth (LS stored them); the heatmap URLs are signed and load without auth
    tasks = http.get(f"{url}/api/tasks", params={"project": pid, "page_size": 100, "fields": "all"}).json()["tasks"]
    assert tasks and all(t["predictions"] for t in tasks)
    saliency = tasks[0]["data"]["saliency"]
    assert saliency.startswith(backend + "/saliency/") and "?sig=" in saliency
    img = requests.get(saliency, timeout=30)
    assert img.status_code == 200 and img.headers["content-type"] == "image/png"
    assert requests.get(saliency.split("?")[0], timeout=30).status_code == 401
    for path in ("/health", "/metrics"):
        assert requests.get(backend + path, timeout=10).status_code == 401
    assert requests.post(backend + "/webhook", json={"action": "START_TRAINING", "project": {"id": pid}},
                         timeout=10).status_code == 401

    # "Start Training": the ML connector sends START_TRAINING with basic auth (no custom header)
    r = http.post(f"{url}/api/ml/{ml['id']}/train", json={})
    assert r.status_code == 200, r.text
    # an annotation: the event webhook carries X-Robustar-Secret (and basic auth) from its headers
    mask = np.zeros((32, 32), bool)
    mask[:8, :8] = True
    r = http.post(f"{url}/api/tasks/{tasks[0]['id']}/annotations/",
                  json={"result": [regions.brush(mask)], "was_cancelled": False})
    assert r.status_code == 201, r.text
    metrics = requests.get(backend + "/metrics", auth=(USER, PASSWORD), timeout=10).text
    assert 'robustar_webhook_events_total{action="START_TRAINING",status="queued"} 1' in metrics, metrics
    assert 'robustar_webhook_events_total{action="ANNOTATION_CREATED"' in metrics, metrics
    assert 'path="/webhook",status="401"} 1' in metrics  # only our own probe above was refused
    assert 'path="/predict",status="200"' in metrics and 'path="/predict",status="401"' not in metrics
