"""Issue 21: secure by default on a shared network. Nobody but Label Studio (``LABEL_STUDIO_URL``, or a
/setup that passed basic auth or carries the configured key) steers what the backend shares; JSON endpoints
take only application/json; per-project state is bounded. Each test reproduces a finding of the attack
pass (numbered as in the issue) against the real app and real local servers.
"""

from __future__ import annotations

import json
import logging
import time

import pytest
from fastapi.testclient import TestClient

from devkit.attack_servers import ImpostorLabelStudio
from devkit.builders import data_uri, png_bytes
from devkit.servers import FileServer
from label_config import render_config
from ml_backend.api.app import create_app
from ml_backend.credentials import basic_auth_header
from ml_backend.jobs.versions import SELECTION_FILE, remember_selection
from ml_backend.settings import Settings
from training.checkpoints import CheckpointStore, ModelDefaults, create_initial_version

CLASSES = ["cat", "dog"]
CONFIG = render_config(CLASSES)
API_KEY = "configured-key-0123456789abcdef0123456789"
ATTACKER_TOKEN = "attacker-token-0123456789abcdef01234567"
USER, PASSWORD = "label-studio", "s3cret-pass-word-issue-21"
AUTH = {"Authorization": basic_auth_header(USER, PASSWORD)}


def make_client(tmp_path, redis_url, **kw) -> TestClient:
    settings = Settings(model_dir=tmp_path / "models", model_arch="tiny-cnn", image_size=16, redis_url=redis_url,
                        queue_name="robustar-issue21", predict_parts=(), **kw)
    return TestClient(create_app(settings), raise_server_exceptions=False)


def setup_body(pid: int, hostname: str | None = None, token: str | None = ATTACKER_TOKEN) -> dict:
    return {"project": f"{pid}.1", "schema": CONFIG, "hostname": hostname, "access_token": token}


def predict_body(pid: int, *images: str) -> dict:
    return {"project": f"{pid}.1", "label_config": CONFIG,
            "tasks": [{"id": i + 1, "data": {"image": im}} for i, im in enumerate(images)]}


def two_versions(model_dir, pid: int) -> CheckpointStore:
    """A project that could be rolled back: v0 and v1 saved, v1 published and known to Label Studio."""
    store = CheckpointStore(model_dir, pid)
    create_initial_version(store, ModelDefaults(arch="tiny-cnn", image_size=16), CLASSES)
    model, meta = store.load("v0")
    meta.version, meta.parent_version = "v1", "v0"
    store.save(model, meta)
    store.publish("v1")
    remember_selection(store, "v1")
    return store


# --------------------------------------------------------------------------------------------------
# 4. the first /setup hostname sticks: an attacker's origin and token for every later fetch


def test_unauthenticated_setup_names_no_fetch_origin(tmp_path, redis_url):
    """Before: after the attacker's /setup for project 77, /predict fetched /data/upload/77/a.png and s3://… from
    the attacker's host with the attacker's token."""
    with ImpostorLabelStudio(image=png_bytes((8, 8))) as attacker, make_client(tmp_path, redis_url) as c:
        assert c.post("/setup", json=setup_body(77, attacker.url)).status_code == 200
        r = c.post("/predict", json=predict_body(77, "/data/upload/77/a.png", "s3://bucket/a.png"))
    assert r.status_code == 422 and "LABEL_STUDIO_URL" in r.json()["message"], r.text
    assert attacker.requests == []


def test_with_label_studio_url_a_setup_never_moves_the_origin_and_label_studio_still_steers(tmp_path, redis_url):
    image = "/data/upload/77/a.png"
    with FileServer({image: png_bytes((8, 8))}, API_KEY) as ls, ImpostorLabelStudio(image=png_bytes((8, 8))) as attacker, \
            make_client(tmp_path, redis_url, label_studio_url=ls.url, label_studio_api_key=API_KEY) as c:
        assert c.post("/setup", json=setup_body(77, attacker.url)).status_code == 200  # the attacker first
        assert c.post("/setup", json=setup_body(77, ls.url, API_KEY)).status_code == 200  # then Label Studio
        assert c.post("/setup", json=setup_body(77, attacker.url)).status_code == 200  # and the attacker again
        r = c.post("/predict", json=predict_body(77, image))
    assert r.status_code == 200 and r.json()["results"][0]["result"], r.text
    assert attacker.requests == [] and {a for _, a in ls.requests} == {f"Token {API_KEY}"}


def test_a_setup_that_passed_basic_auth_names_the_origin(tmp_path, redis_url):
    """Without LABEL_STUDIO_URL the origin of a vouched /setup (basic auth) serves its project, as before."""
    image = "/data/upload/5/a.png"
    with FileServer({image: png_bytes((8, 8))}, "ls-token") as ls, \
            make_client(tmp_path, redis_url, basic_auth_user=USER, basic_auth_pass=PASSWORD) as c:
        assert c.post("/setup", json=setup_body(5, ls.url, "ls-token"), headers=AUTH).status_code == 200
        r = c.post("/predict", json=predict_body(5, image), headers=AUTH)
    assert r.status_code == 200 and r.json()["results"][0]["result"], r.text


# --------------------------------------------------------------------------------------------------
# 3. unauthenticated rollback; 6. outbound requests for every /setup


def test_unauthenticated_setup_cannot_roll_back(tmp_path, redis_url):
    """Before: /setup from any host whose "Label Studio" answered model_version v0 published v0 for everyone,
    and a 100,000-byte model_version was stored as the remembered selection."""
    store = two_versions(tmp_path / "models", 9)
    with ImpostorLabelStudio(model_version="v0") as attacker, make_client(tmp_path, redis_url) as c:
        assert c.post("/setup", json=setup_body(9, attacker.url)).json() == {"model_version": "v1"}
        time.sleep(1.0)  # the selection check ran in a background thread before
        assert c.post("/setup", json=setup_body(9, attacker.url)).json() == {"model_version": "v1"}
    assert store.published() == "v1" and attacker.requests == []
    assert (store.root / SELECTION_FILE).read_text() == "v1"


def test_rollback_follows_label_studio_url(tmp_path, redis_url):
    """The selection is read from LABEL_STUDIO_URL with the configured key, whoever sends /setup; a huge
    model_version there is not remembered."""
    store = two_versions(tmp_path / "models", 9)
    with ImpostorLabelStudio(model_version="x" * 100_000) as huge:
        with make_client(tmp_path, redis_url, label_studio_url=huge.url, label_studio_api_key=API_KEY) as c:
            c.post("/setup", json=setup_body(9, "http://127.0.0.1:9"))
            deadline = time.monotonic() + 10
            while not huge.requests and time.monotonic() < deadline:
                time.sleep(0.05)
        time.sleep(0.3)
    assert huge.requests and (store.root / SELECTION_FILE).read_text() == "v1"
    with ImpostorLabelStudio(model_version="v0") as ls:
        with make_client(tmp_path, redis_url, label_studio_url=ls.url, label_studio_api_key=API_KEY) as c:
            c.post("/setup", json=setup_body(9, "http://127.0.0.1:9"))  # an unauthenticated caller's /setup
            deadline = time.monotonic() + 10
            while store.published() != "v0" and time.monotonic() < deadline:
                time.sleep(0.05)
    assert store.published() == "v0"  # Label Studio (LABEL_STUDIO_URL) said v0: rolled back
    assert {a for _, _, a in ls.requests} == {f"Token {API_KEY}"}


def test_setup_for_new_projects_costs_no_outbound_request_and_no_state(tmp_path, redis_url):
    """Before: 2,000 /setup calls with new ids made 2,000 GET /api/projects/<id> to the caller's host and kept
    a model each (nothing evicted)."""
    with ImpostorLabelStudio() as attacker, make_client(tmp_path, redis_url) as c:
        for pid in range(1000, 1300):
            assert c.post("/setup", json=setup_body(pid, attacker.url)).status_code == 200
        backend = c.app.state.backend
        time.sleep(0.5)
        assert attacker.requests == []
        assert len(backend.models) == 0 and len(backend.creds) == 0
        assert not (tmp_path / "models").exists() or not any((tmp_path / "models").iterdir())


def test_per_project_models_are_bounded(tmp_path, redis_url):
    with make_client(tmp_path, redis_url, max_projects=3) as c:
        for pid in range(1, 8):
            r = c.post("/predict", json=predict_body(pid, data_uri(png_bytes((8, 8)))))
            assert r.status_code == 200, r.text
        backend = c.app.state.backend
        assert len(backend.models) == 3 and len(backend.registry._loaded) == 3
        assert sorted(backend.models) == [5, 6, 7]
        assert c.post("/predict", json=predict_body(1, data_uri(png_bytes((8, 8))))).status_code == 200  # rebuilt


# --------------------------------------------------------------------------------------------------
# 7. the CORS allow-list grows from unauthenticated /setup


def test_unauthenticated_setup_adds_no_cors_origin(tmp_path, redis_url):
    with make_client(tmp_path, redis_url) as c:
        c.post("/setup", json=setup_body(1, "http://evil.test"))
        r = c.get("/saliency/1/k", headers={"Origin": "http://evil.test"})
    assert "access-control-allow-origin" not in r.headers


# --------------------------------------------------------------------------------------------------
# 5. cross-site requests: JSON endpoints take only application/json


@pytest.mark.parametrize("path,body,ctype", [
    ("/predict", json.dumps(predict_body(1, data_uri(png_bytes((8, 8))))), "text/plain"),
    ("/webhook", json.dumps({"action": "START_TRAINING", "project": {"id": 1}}), "text/plain"),
    ("/setup", "project=1.1&schema=x", "application/x-www-form-urlencoded"),
    ("/job_status", json.dumps({"job": "x"}), "multipart/form-data; boundary=x"),
    ("/setup", json.dumps(setup_body(1)), None),
])
def test_json_endpoints_refuse_other_content_types(tmp_path, redis_url, path, body, ctype):
    """Before: text/plain /predict from Origin http://evil.test answered 200 (a page can send it without preflight)."""
    headers = {"Origin": "http://evil.test", **({"Content-Type": ctype} if ctype else {})}
    with make_client(tmp_path, redis_url) as c:
        r = c.post(path, content=body.encode(), headers=headers)
        ok = c.post("/setup", json=setup_body(1), headers={"Content-Type": "application/json; charset=utf-8"})
    assert r.status_code == 415 and "application/json" in r.json()["message"], r.text
    assert ok.status_code == 200


# --------------------------------------------------------------------------------------------------
# 12. /versions without a project; JSON 404s sniffable


def test_versions_answers_only_for_a_project_it_can_name(tmp_path, redis_url):
    """Before: /versions answered for whichever project the last (unauthenticated) /setup named."""
    two_versions(tmp_path / "models", 3)
    two_versions(tmp_path / "models", 4)
    with make_client(tmp_path, redis_url) as c:
        c.post("/setup", json=setup_body(4))
        r = c.get("/versions")
        assert r.status_code == 404 and "project=" in r.json()["message"]
        assert c.get("/versions", params={"project": "3"}).json() == {"versions": ["v1", "v0"], "project": 3}
    (tmp_path / "models" / "project-4").rename(tmp_path / "gone")
    with make_client(tmp_path, redis_url) as c:  # one project with versions: no ambiguity
        assert c.get("/versions").json() == {"versions": ["v1", "v0"], "project": 3}


def test_json_404_is_never_sniffed(tmp_path, redis_url):
    with make_client(tmp_path, redis_url) as c:
        r = c.get("/<script>alert(1)</script>")
        h = c.get("/saliency/1/%3Cb%3E")
    assert r.status_code == 404 and r.headers["x-content-type-options"] == "nosniff"
    assert h.status_code == 404 and h.headers["x-content-type-options"] == "nosniff"


# --------------------------------------------------------------------------------------------------
# 10. raw UTF-8 surrogate bytes


def test_raw_surrogate_bytes_are_refused_naming_the_field(tmp_path, redis_url, caplog):
    """Before: ``ED A0 80`` (a surrogate's UTF-8 bytes) passed the check (only ``\\uD8xx`` escapes were looked
    for); json.loads decodes it with surrogatepass, and the log lines that echoed it raised."""
    raw = b'{"project": "1.1", "label_config": ' + json.dumps(CONFIG).encode() + \
        b', "tasks": [{"id": 1, "data": {"image": "http://127.0.0.1:9/\xed\xa0\x80.png"}}]}'
    with caplog.at_level(logging.WARNING), make_client(tmp_path, redis_url) as c:
        r = c.post("/predict", content=raw, headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and "tasks[0].data.image" in r.json()["message"], r.text
    assert not [rec for rec in caplog.records if rec.exc_info]


# --------------------------------------------------------------------------------------------------
# the start-up line


def test_one_start_up_line_says_what_is_on_and_what_is_open(tmp_path, redis_url, caplog):
    with caplog.at_level(logging.INFO, logger="ml_backend.api.app"), make_client(tmp_path, redis_url):
        pass
    (line,) = [m for m in caplog.messages if m.startswith("protections:")]
    assert "basic auth off" in line and "no /setup hostname is trusted" in line and "| open:" in line
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="ml_backend.api.app"), \
            make_client(tmp_path, redis_url, label_studio_url="http://ls:8080", label_studio_api_key=API_KEY,
                        basic_auth_user=USER, basic_auth_pass=PASSWORD):
        pass
    (line,) = [m for m in caplog.messages if m.startswith("protections:")]
    assert "Label Studio is http://ls:8080" in line and line.split("| open: ")[1].startswith("nothing")
