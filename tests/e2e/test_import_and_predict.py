"""Real Label Studio 1.23 + our backend: import a generated dataset, retrieve predictions, sort by score."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
import requests

from label_config import parse_config
from tests.e2e.backend import BIN, BackendProcess
from training.synthetic import make_spurious_dataset

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dataset")
    make_spurious_dataset(root, n_train=4, n_test=2, size=48, seed=1)
    (root / "train" / "circle" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return root


@pytest.fixture(scope="module")
def backend(tmp_path_factory, redis_dbs, label_studio):
    """The README's `robustar serve`: Label Studio's address configured (issue 21: without it, and without basic
    auth, no /setup hostname is trusted and Label Studio's relative image URLs cannot be fetched)."""
    tmp = tmp_path_factory.mktemp("backend")
    with redis_dbs.lease() as redis_url:
        env = {"MODEL_DIR": str(tmp / "models"), "MODEL_ARCH": "tiny-cnn", "IMAGE_SIZE": "48", "REDIS_URL": redis_url,
               "LABEL_STUDIO_URL": label_studio.url, "LABEL_STUDIO_API_KEY": label_studio.token}
        with BackendProcess(env, tmp / "backend.log") as proc:
            yield proc


def run_import(dataset: Path, label_studio, backend, *extra: str) -> subprocess.CompletedProcess:
    cmd = [str(BIN / "robustar"), "--log-level", "warning", "import", str(dataset), "--url", label_studio.url,
           "--api-key", label_studio.token, "--title", "e2e import", "--backend-url", backend.url, "--quiet", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def test_import_connect_predict(label_studio, backend, dataset):
    http = requests.Session()
    http.headers["Authorization"] = f"Token {label_studio.token}"
    t0 = time.perf_counter()
    first = run_import(dataset, label_studio, backend, "--no-predict")
    print(f"import took {time.perf_counter() - t0:.1f}s")
    # the broken file is reported by name, the rest is imported
    assert first.returncode == 1, first.stderr
    assert "broken.png" in first.stderr and "18 imported" in first.stdout, first.stdout + first.stderr

    projects = http.get(f"{label_studio.url}/api/projects", params={"title": "e2e import"}).json()["results"]
    (project,) = [p for p in projects if p["title"] == "e2e import"]
    pid = project["id"]
    classes = parse_config(project["label_config"]).classes
    assert classes == ["circle", "square", "triangle"]
    assert "<Image name=\"saliency\"" in project["label_config"]  # the full config is back after the upload

    tasks = http.get(f"{label_studio.url}/api/tasks", params={"project": pid, "page_size": 100}).json()["tasks"]
    assert len(tasks) == 18
    assert {t["data"]["split"] for t in tasks} == {"train", "val", "test"}  # val: set aside from test by the importer
    assert all(t["data"]["label"] in classes and t["data"]["image"].startswith("/data/upload/") for t in tasks)

    # one ML backend, and exactly one webhook to it (Label Studio's own)
    (ml,) = http.get(f"{label_studio.url}/api/ml", params={"project": pid}).json()
    assert ml["url"] == backend.url and ml["model_version"] == "v0"
    hooks = [h for h in http.get(f"{label_studio.url}/api/webhooks", params={"project": pid}).json() if h["url"].startswith(backend.url)]
    assert len(hooks) == 1 and hooks[0]["url"] == backend.url + "/webhook"

    # re-running imports nothing twice
    again = run_import(dataset, label_studio, backend, "--no-predict")
    assert "0 imported, 18 already there" in again.stdout, again.stdout + again.stderr

    # "Retrieve predictions" exactly as the Data Manager's action does it
    r = http.post(f"{label_studio.url}/api/dm/actions", params={"id": "retrieve_tasks_predictions", "project": pid},
                  json={"selectedItems": {"all": True, "excluded": []}})
    assert r.status_code == 200, r.text
    for task in tasks:
        stored = http.get(f"{label_studio.url}/api/predictions", params={"task": task["id"]}).json()
        assert len(stored) == 1, (task["id"], stored)
        (pred,) = stored
        assert pred["model_version"] == "v0"
        (region,) = [r for r in pred["result"] if r["from_name"] == "pred_class"]
        assert region["type"] == "choices" and region["value"]["choices"][0] in classes
        assert 0 < pred["score"] <= 1
        # one paint tool: the model's attention is the heatmap view, not a second brush region
        assert not [r for r in pred["result"] if r["type"] == "brushlabels"]
        # the heatmap PNG is served, readable by Label Studio's pages (CORS for its origin)
        png = requests.get(task["data"]["saliency"], headers={"Origin": label_studio.url}, timeout=30)
        assert png.status_code == 200 and png.headers["content-type"] == "image/png" and png.content[:4] == b"\x89PNG"
        assert png.headers["access-control-allow-origin"] == label_studio.url
        # influence (test tasks) / suspicion (training tasks): a read-only page with links to tasks
        page = requests.get(task["data"]["influence"], headers={"Origin": label_studio.url}, timeout=30)
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert page.headers["access-control-allow-origin"] == label_studio.url
        assert ("Suspicion" if task["data"]["split"] == "train" else "supports it") in page.text
    health = requests.get(backend.url + "/health", timeout=5).json()
    assert "SEGMENTATION_WEIGHTS" in health["disabled_parts"]["segmentation"]

    # the full import (with predictions) sets the project's model version: the score column fills and sorts
    full = run_import(dataset, label_studio, backend)
    assert full.returncode == 1 and "model version v0" in full.stdout, full.stdout + full.stderr
    assert http.get(f"{label_studio.url}/api/projects/{pid}").json()["model_version"] == "v0"
    listed = http.get(f"{label_studio.url}/api/tasks", params={"project": pid, "fields": "all", "page_size": 100,
                      "query": '{"ordering": ["-tasks:predictions_score"]}'}).json()["tasks"]
    scores = [t["predictions_score"] for t in listed]
    assert None not in scores and scores == sorted(scores, reverse=True)


def test_import_reports_bad_input_clearly(label_studio, dataset, tmp_path):
    def run(folder, url=label_studio.url):
        cmd = [str(BIN / "robustar"), "import", str(folder), "--url", url, "--api-key", label_studio.token, "--quiet"]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60)

    r = run(tmp_path / "nope")
    assert r.returncode == 1 and "does not exist" in r.stderr
    (tmp_path / "empty" / "train" / "cat").mkdir(parents=True)
    r = run(tmp_path / "empty")
    assert r.returncode == 1 and "no readable images" in r.stderr
    r = run(dataset, url="http://127.0.0.1:9")
    assert r.returncode == 1 and "cannot reach Label Studio" in r.stderr
