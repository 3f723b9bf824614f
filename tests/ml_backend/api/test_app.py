"""The backend's HTTP protocol, driven with Label Studio 1.23's recorded request shapes."""

import json

import pytest
from fastapi.testclient import TestClient
from redis import Redis

from label_config import render_config
from ml_backend.api.app import create_app
from ml_backend.settings import Settings
from devkit.builders import data_uri, png_bytes
from devkit.servers import FileServer
from tests.fixtures import fixture_path

PROTOCOL = fixture_path("ls-protocol")  # recorded LS 1.23.2 traffic
CLASSES = ["cat", "dog", "bird"]
TOKEN = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def client(tmp_path, redis_url):
    settings = Settings(model_dir=tmp_path / "models", model_arch="tiny-cnn", image_size=32, redis_url=redis_url)
    with TestClient(create_app(settings)) as c:
        yield c


def setup_body(project="1.1795450542", hostname="http://127.0.0.1:9", classes=CLASSES):
    return {"project": project, "schema": render_config(classes), "hostname": hostname, "access_token": TOKEN, "extra_params": None}


def test_health_and_setup_answer_as_label_studio_expects(client):
    assert client.get("/health").json()["status"] == "UP"
    r = client.post("/setup", json=setup_body())
    assert r.status_code == 200 and r.json() == {"model_version": "v0"}


def test_recorded_setup_request_is_accepted(client):
    recorded = json.loads((PROTOCOL / "setup.json").read_text())["received"]["body"]
    r = client.post("/setup", json=recorded)
    assert r.status_code == 200 and r.json()["model_version"] == "v0"


def test_predict_fetches_images_with_the_api_key_and_keeps_task_order(tmp_path, redis_url):
    """LABEL_STUDIO_URL set, no key configured: the /setup access_token goes to LABEL_STUDIO_URL."""
    files = {"/data/upload/1/a.png": png_bytes((40, 30)), "/data/local-files/?d=b.png": png_bytes((24, 20), (0, 0, 255))}
    with FileServer(files, TOKEN) as ls, TestClient(create_app(Settings(
            model_dir=tmp_path / "models", model_arch="tiny-cnn", image_size=32, redis_url=redis_url,
            label_studio_url=ls.url))) as client:
        client.post("/setup", json=setup_body(hostname="http://127.0.0.1:9"))  # a hostname is ignored
        tasks = [
            {"id": 1, "data": {"image": "/data/upload/1/a.png"}},
            {"id": 2, "data": {"image": f"{ls.url}/data/local-files/?d=b.png"}},
            {"id": 3, "data": {"image": data_uri(png_bytes((16, 12)))}},
            {"id": 4, "data": {"image": "/data/upload/1/missing.png"}},
            {"id": 5, "data": {"image": data_uri(b"not an image")}},
        ]
        r = client.post("/predict", json={"tasks": tasks, "project": "1.1795450542", "label_config": render_config(CLASSES), "params": {"context": None}})
    assert r.status_code == 200
    results = r.json()["results"]
    assert len(results) == 5
    for res in results[:3]:
        (region,) = res["result"]
        assert region["from_name"] == "pred_class" and region["to_name"] == "image" and region["type"] == "choices"
        assert region["value"]["choices"][0] in CLASSES
        assert 1 / 3 <= res["score"] <= 1 and res["model_version"] == "v0"
    assert results[3]["result"] == [] and results[4]["result"] == []  # bad tasks degrade alone
    assert all(auth == f"Token {TOKEN}" for _, auth in ls.requests)


def test_new_published_version_is_served_without_restart(client):
    client.post("/setup", json=setup_body(project="4.1"))
    client.app.state.registry.current_version(4, CLASSES)  # v0 is written when first needed, not by /setup
    store = client.app.state.registry.store(4)
    model, meta = store.load("v0")
    meta.version, meta.parent_version = "v1", "v0"
    store.save(model, meta)
    store.publish("v1")
    assert client.post("/setup", json=setup_body(project="4.1")).json() == {"model_version": "v1"}
    body = {"tasks": [{"id": 1, "data": {"image": data_uri(png_bytes())}}], "project": "4.1", "label_config": render_config(CLASSES)}
    assert client.post("/predict", json=body).json()["results"][0]["model_version"] == "v1"


def test_class_mismatch_is_a_clear_conflict(client):
    client.post("/setup", json=setup_body(project="5.1"))
    body = {"tasks": [{"id": 1, "data": {"image": data_uri(png_bytes())}}], "project": "5.1", "label_config": render_config(CLASSES)}
    assert client.post("/predict", json=body).status_code == 200  # v0 is made for the classes of the first prediction
    body = {**body, "label_config": render_config(["x", "y"])}
    r = client.post("/predict", json=body)
    assert r.status_code == 409 and "classes" in r.json()["message"]


@pytest.mark.parametrize(
    "path, payload, fragment",
    [
        ("/predict", b"{not json", "not valid JSON"),
        ("/predict", b"[1, 2]", "JSON object"),
        ("/predict", json.dumps({"tasks": "x", "project": "1.1"}).encode(), "'tasks'"),
        ("/predict", json.dumps({"tasks": [], "project": "abc"}).encode(), "'project'"),
        ("/setup", json.dumps({"project": "1.1", "schema": "<View>"}).encode(), "not valid XML"),
        ("/webhook", json.dumps({"project": {"id": 1}}).encode(), "'action'"),
    ],
)
def test_bad_payloads_get_4xx_with_a_message(client, path, payload, fragment):
    r = client.post(path, content=payload, headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and fragment in r.json()["message"]


def test_start_training_webhook_queues_one_job(client, redis_url):
    recorded = json.loads((PROTOCOL / "webhook_start_training.json").read_text())["received"]["body"]
    assert client.post("/setup", json=setup_body(project="1.1")).status_code == 200  # Label Studio set it up
    first = client.post("/webhook", json=recorded).json()
    second = client.post("/webhook", json=recorded).json()
    assert first["status"] == "queued" and first["job"]
    assert second == {"job": first["job"], "status": "already queued"}
    from rq import Queue

    assert Queue("robustar", connection=Redis.from_url(redis_url)).count == 1


def recorded_webhooks():
    created = json.loads((PROTOCOL / "webhook_annotation_created.json").read_text())["received"]
    others = json.loads((PROTOCOL / "webhook_other_actions.json").read_text()).values()
    return [r["body"] for r in created] + [r["body"] for r in others]


def test_other_webhook_events_are_acknowledged(client):
    bodies = recorded_webhooks()
    assert {b["action"] for b in bodies} >= {"ANNOTATION_CREATED", "TASKS_CREATED", "ANNOTATIONS_DELETED"}
    for body in bodies:
        r = client.post("/webhook", json=body)
        assert r.status_code == 200 and r.json()["status"] in ("ignored", "counted")


def test_metrics_count_requests(client):
    client.get("/health")
    text = client.get("/metrics").text
    assert 'robustar_requests_total{path="/health",status="200"}' in text


def test_redis_down_webhook_503_and_predict_keeps_serving(tmp_path):
    import time

    settings = Settings(model_dir=tmp_path / "m", model_arch="tiny-cnn", image_size=32, redis_url="redis://127.0.0.1:1/0")
    with TestClient(create_app(settings)) as c:
        c.post("/setup", json=setup_body(project="1.1"))  # a project the backend knows (others are ignored)
        start = time.perf_counter()
        r = c.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 1}})
        assert r.status_code == 503 and "Redis" in r.json()["message"]
        assert time.perf_counter() - start < 2
        c.post("/setup", json=setup_body())
        body = {"tasks": [{"id": 1, "data": {"image": data_uri(png_bytes())}}], "project": "1.1", "label_config": render_config(CLASSES)}
        assert c.post("/predict", json=body).json()["results"][0]["result"]
