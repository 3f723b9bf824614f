"""Access: basic auth on every endpoint, the webhook secret, signed heatmap URLs, files served only
from the heatmap cache, secrets kept out of logs, and what ``robustar import`` tells Label Studio."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient

from label_config import render_config
from ml_backend.api.app import create_app
from ml_backend.predict.heatmaps import HeatmapCache
from ml_backend.credentials import (
    basic_auth_header,
    redact,
    signed_page_url,
    task_signature,
)
from ml_backend.settings import Settings
from devkit.builders import data_uri, png_bytes
from devkit.servers import FileServer

CLASSES = ["cat", "dog"]
CONFIG = render_config(CLASSES)
USER, PASSWORD, SECRET = "label-studio", "s3cret-pass-word", "hook-secret-0123456789"
API_KEY = "apikey-0123456789abcdef0123456789abcdef"
TOKEN = "setup-token-9876543210fedcba9876543210"
AUTH = {"Authorization": basic_auth_header(USER, PASSWORD)}


def make_client(tmp_path, redis_url, **kw) -> TestClient:
    settings = Settings(model_dir=tmp_path / "models", model_arch="tiny-cnn", image_size=16, redis_url=redis_url,
                        queue_name="robustar-access-test", **kw)
    app = create_app(settings)
    return TestClient(app)


def predict_body(pid: str = "1.1") -> dict:
    return {"tasks": [{"id": 1, "data": {"image": data_uri(png_bytes((8, 8)))}}], "project": pid, "label_config": CONFIG}


def test_basic_auth_guards_every_endpoint(tmp_path, redis_url):
    with make_client(tmp_path, redis_url, basic_auth_user=USER, basic_auth_pass=PASSWORD) as c:
        calls = [("get", "/health", None), ("get", "/", None), ("get", "/metrics", None),
                 ("post", "/setup", {"project": "1.1", "schema": CONFIG}), ("post", "/predict", predict_body()),
                 ("post", "/webhook", {"action": "PROJECT_UPDATED", "project": {"id": 1}}),
                 ("get", "/saliency/1/train/cat/a.png", None), ("get", "/docs", None), ("get", "/openapi.json", None)]
        wrong = [{}, {"Authorization": basic_auth_header(USER, "nope")}, {"Authorization": basic_auth_header("x", PASSWORD)},
                 {"Authorization": "Basic !!!notbase64"}, {"Authorization": f"Token {PASSWORD}"},
                 {"Authorization": basic_auth_header(USER, PASSWORD + "x")}, {"Authorization": "Basic " + "QQ=="}]
        for method, path, body in calls:
            for headers in wrong:
                r = getattr(c, method)(path, headers=headers, **({"json": body} if body is not None else {}))
                assert r.status_code == 401, (path, headers, r.status_code)
                assert r.headers["WWW-Authenticate"].startswith('Basic realm="robustar"')
                assert "authentication required" in r.json()["message"]
        assert c.get("/health", headers=AUTH).json()["status"] == "UP"
        assert c.post("/setup", json={"project": "1.1", "schema": CONFIG}, headers=AUTH).json() == {"model_version": "v0"}
        r = c.post("/predict", json=predict_body(), headers=AUTH)
        assert r.status_code == 200 and r.json()["results"][0]["result"]
        assert c.post("/webhook", json={"action": "PROJECT_UPDATED", "project": {"id": 1}}, headers=AUTH).status_code == 200
        assert 'path="/predict",status="401"' in c.get("/metrics", headers=AUTH).text  # refusals are counted


def test_webhook_secret(tmp_path, redis_url):
    with make_client(tmp_path, redis_url, webhook_secret=SECRET) as c:
        body = {"action": "START_TRAINING", "project": {"id": 3}}
        assert c.post("/setup", json={"project": "3.1", "schema": CONFIG}).status_code == 200  # a known project
        r = c.post("/webhook", json=body)
        assert r.status_code == 401 and "X-Robustar-Secret" in r.json()["message"]
        r = c.post("/webhook", json=body, headers={"X-Robustar-Secret": SECRET[:-1]})
        assert r.status_code == 403 and "wrong" in r.json()["message"]
        r = c.post("/webhook", json=body, headers={"X-Robustar-Secret": SECRET})
        assert r.status_code == 200 and r.json()["status"] == "queued"
        assert c.post("/setup", json={"project": "3.1", "schema": CONFIG}).status_code == 200  # other endpoints open
    # with basic auth too: Label Studio's START_TRAINING (basic auth, no custom header) is accepted
    with make_client(tmp_path, redis_url, webhook_secret=SECRET, basic_auth_user=USER, basic_auth_pass=PASSWORD) as c:
        assert c.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 4}}, headers=AUTH).status_code == 200
        assert c.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 4}},
                      headers={"X-Robustar-Secret": SECRET}).status_code == 401  # the secret does not replace basic auth


def test_heatmaps_signed_urls_and_no_path_escape(tmp_path, redis_url):
    key = "train/cat/a b#1.png"
    with make_client(tmp_path, redis_url, basic_auth_user=USER, basic_auth_pass=PASSWORD) as c:
        c.post("/setup", json={"project": "7.1", "schema": CONFIG}, headers=AUTH)
        assert c.post("/predict", json=predict_body("7.1"), headers=AUTH).status_code == 200  # writes v0
        png = png_bytes((4, 4))
        HeatmapCache(tmp_path / "models", 7).write("v0", key, png)
        url = signed_page_url("http://testserver", "saliency", 7, key, USER, PASSWORD)
        assert "?sig=" in url and "%23" in url
        r = c.get(url)  # no credentials: the signature is the capability
        assert r.status_code == 200 and r.content == png
        assert c.get(url.split("?")[0]).status_code == 401
        assert c.get(url[:-1] + ("0" if url[-1] != "0" else "1")).status_code == 401
        other = signed_page_url("http://testserver", "saliency", 8, key, USER, PASSWORD)
        assert c.get(other.replace("/8/", "/7/")).status_code == 401  # a signature is bound to project and key
        assert c.post(url).status_code in (401, 405)
        # whatever the key, only files of the heatmap cache can be served: the file name is a hash of it
        assert (tmp_path / "models" / "project-7" / "PUBLISHED").read_text() == "v0"
        for probe in ("../PUBLISHED", "../../project-7/PUBLISHED", "..%2F..%2FPUBLISHED", "%2e%2e/%2e%2e/etc/passwd",
                      "/etc/passwd", "v0/../../versions/v0.pt", "....//....//PUBLISHED"):
            r = c.get(f"/saliency/7/{probe}", headers=AUTH)
            # 404 (no such heatmap), or 422 when the client normalised the dots away and no project id is left
            assert r.status_code in (404, 422) and r.headers["content-type"].startswith("application/json"), probe
        r = c.get("/saliency/../../etc/passwd", headers=AUTH)
        assert r.status_code == 404 and b"root:" not in r.content
    assert task_signature(7, key, USER, PASSWORD) != task_signature(7, key, USER, PASSWORD + "x")


def test_secrets_never_reach_logs_or_answers(tmp_path, redis_url, caplog):
    with FileServer({}, "some-other-token") as ls:  # answers 401 to our token: image errors get logged
        url = "redis://:redis-pass-123456@127.0.0.1:1/0"  # Redis down, with a password in its URL
        with caplog.at_level(logging.DEBUG), make_client(
            tmp_path, url, label_studio_api_key=API_KEY, basic_auth_user=USER, basic_auth_pass=PASSWORD,
            webhook_secret=SECRET,
        ) as c:
            texts = []
            r = c.post("/setup", json={"project": "2.1", "schema": CONFIG, "hostname": ls.url, "access_token": TOKEN},
                       headers=AUTH)
            texts.append(r.text)
            body = {"tasks": [{"id": i, "data": {"image": f"/data/upload/2/{i}.png"}} for i in range(3)],
                    "project": "2.1", "label_config": CONFIG}
            r = c.post("/predict", json=body, headers=AUTH)
            assert r.status_code == 422 and "HTTP 401" in r.json()["message"]
            texts.append(r.text)
            r = c.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 2}}, headers=AUTH)
            assert r.status_code == 503
            texts.append(r.text)
            texts.append(c.get("/metrics", headers=AUTH).text)
            logging.getLogger("robustar.test").warning("client sent Token %s and %s", TOKEN, PASSWORD)
            try:
                raise RuntimeError(f"failed with key {API_KEY}")
            except RuntimeError:
                logging.getLogger("robustar.test").exception("boom")
    assert any(auth == f"Token {TOKEN}" for _, auth in ls.requests)  # the token was used...
    logged = caplog.text + "\n".join(logging.Formatter().format(r) for r in caplog.records)
    assert "client sent Token ***" in logged and "failed with key ***" in logged
    for secret in (API_KEY, TOKEN, PASSWORD, SECRET, "redis-pass-123456"):
        assert secret not in logged, secret  # ...but never logged
        assert all(secret not in t for t in texts), secret


def test_redact_patterns():
    assert redact("Authorization: Basic dXNlcjpwYXNz") == "Authorization: Basic ***"
    assert redact("Bearer eyJhbGciOiJIUzI1NiJ9.abc.def rest") == "Bearer *** rest"
    assert redact("nothing secret here") == "nothing secret here"


class FakeSDK:
    """Just enough of ``label_studio_sdk.LabelStudio`` for ``connect_backend``: records every call."""

    def __init__(self, backend_url: str, existing: bool = False):
        self.calls = []
        hook = SimpleNamespace(id=11, url=backend_url + "/webhook", headers={"X-Other": "1"})
        backend = SimpleNamespace(id=5, url=backend_url, model_version="v0")
        sdk = self

        class ML:
            def list(self, project):
                return [backend] if existing else []

            def create(self, **kw):
                sdk.calls.append(("ml.create", kw))
                return backend

            def update(self, id, **kw):
                sdk.calls.append(("ml.update", id, kw))

            def get(self, id):
                return backend

        class Webhooks:
            def list(self, project):
                return [hook, SimpleNamespace(id=12, url="http://elsewhere/webhook", headers={})]

            def update(self, id, **kw):
                sdk.calls.append(("webhooks.update", id, kw))

        self.ml, self.webhooks = ML(), Webhooks()


@pytest.mark.parametrize("existing", [False, True])
def test_importer_passes_basic_auth_and_secures_the_webhook(monkeypatch, existing):
    from ml_backend.labelstudio.importer import LabelStudioImporter

    monkeypatch.setenv("BASIC_AUTH_USER", USER)
    monkeypatch.setenv("BASIC_AUTH_PASS", PASSWORD)
    monkeypatch.setenv("WEBHOOK_SECRET", SECRET)
    imp = LabelStudioImporter.__new__(LabelStudioImporter)
    imp.client = FakeSDK("http://backend:9090", existing)
    assert imp.connect_backend(1, "http://backend:9090/") == (5, "v0")
    auth = {"auth_method": "BASIC_AUTH", "basic_auth_user": USER, "basic_auth_pass": PASSWORD}
    first = imp.client.calls[0]
    if existing:
        assert first == ("ml.update", 5, {"url": "http://backend:9090/", "project": 1, **auth})  # LS 1.23 needs both
    else:
        assert first[0] == "ml.create" and auth.items() <= first[1].items() and first[1]["url"] == "http://backend:9090/"
    assert imp.client.calls[1] == ("webhooks.update", 11, {"headers": {
        "X-Other": "1", "X-Robustar-Secret": SECRET, "Authorization": basic_auth_header(USER, PASSWORD)}})
    assert len(imp.client.calls) == 2

    monkeypatch.delenv("BASIC_AUTH_USER")
    monkeypatch.delenv("WEBHOOK_SECRET")
    imp.client = FakeSDK("http://backend:9090", existing)
    imp.connect_backend(1, "http://backend:9090")
    assert [c[0] for c in imp.client.calls] == ([] if existing else ["ml.create"])
    assert "auth_method" not in (imp.client.calls[0][1] if imp.client.calls else {})
