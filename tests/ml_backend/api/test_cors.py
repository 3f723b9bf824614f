"""CORS: Label Studio's pages may read the heatmaps and pages the browser loads from the backend; other
origins may not; access control (basic auth, signed URLs) is unchanged."""

from __future__ import annotations

import base64

import pytest
from fastapi.testclient import TestClient

from label_config import render_config
from ml_backend.credentials import signed_page_url
from ml_backend.api.server import build_app
from ml_backend.settings import Settings
from training.checkpoints import CheckpointStore, ModelDefaults, create_initial_version
from training.synthetic import SHAPES

LS = "http://127.0.0.1:8080"
CLASSES = list(SHAPES[:3])


def app_settings(tmp_path, **kw) -> Settings:
    return Settings(model_dir=tmp_path, model_arch="tiny-cnn", image_size=16, redis_url="redis://127.0.0.1:1/0",
                    predict_parts=(), **kw)


def heatmap(client: TestClient, origin: str | None, path: str = "/saliency/1/k", **headers):
    return client.get(path, headers={**({"Origin": origin} if origin else {}), **headers})


def test_label_studio_url_origin_is_allowed_others_are_not(tmp_path):
    with TestClient(build_app(app_settings(tmp_path, label_studio_url=LS + "/"))) as client:
        r = heatmap(client, LS)
        assert r.status_code == 404  # not computed yet, but readable by Label Studio's page
        assert r.headers["access-control-allow-origin"] == LS and "Origin" in r.headers["vary"]
        assert heatmap(client, "http://localhost:8080").headers["access-control-allow-origin"] == "http://localhost:8080"
        assert "access-control-allow-origin" not in heatmap(client, "http://evil.example").headers
        assert "access-control-allow-origin" not in heatmap(client, "http://127.0.0.1:8081").headers


def test_without_label_studio_url_only_a_vouched_setup_hostname_is_learned(tmp_path):
    """Issue 21 (7): an unauthenticated /setup adds no CORS origin; one that passed basic auth does."""
    settings = app_settings(tmp_path, basic_auth_user="u", basic_auth_pass="p" * 12)
    auth = {"Authorization": "Basic " + base64.b64encode(b"u:" + b"p" * 12).decode()}
    body = {"project": "1.1", "schema": render_config(CLASSES), "hostname": "http://ls.internal:8080", "access_token": "t" * 40}
    with TestClient(build_app(app_settings(tmp_path))) as client:  # no basic auth: nobody is vouched for
        assert client.post("/setup", json=body).status_code == 200
        assert "access-control-allow-origin" not in heatmap(client, "http://ls.internal:8080").headers
    with TestClient(build_app(settings)) as client:
        assert client.post("/setup", json=body).status_code == 401
        assert "access-control-allow-origin" not in heatmap(client, "http://ls.internal:8080", **auth).headers
        assert client.post("/setup", json=body, headers=auth).status_code == 200
        assert heatmap(client, "http://ls.internal:8080", **auth).headers["access-control-allow-origin"] == "http://ls.internal:8080"
        assert "access-control-allow-origin" not in heatmap(client, "http://evil.example", **auth).headers


def test_cors_origins_setting(tmp_path):
    with TestClient(build_app(app_settings(tmp_path, cors_origins=("https://ls.example.org",)))) as client:
        assert heatmap(client, "https://ls.example.org").headers["access-control-allow-origin"] == "https://ls.example.org"
        assert "access-control-allow-origin" not in heatmap(client, "https://other.example.org").headers
    with TestClient(build_app(app_settings(tmp_path, cors_origins=("*",)))) as client:
        assert heatmap(client, "https://any.example").headers["access-control-allow-origin"] == "https://any.example"


def test_basic_auth_and_signed_urls_still_apply(tmp_path):
    settings = app_settings(tmp_path, label_studio_url=LS, basic_auth_user="u", basic_auth_pass="p" * 12)
    store = CheckpointStore(tmp_path, 1)
    create_initial_version(store, ModelDefaults("tiny-cnn", 16), CLASSES)
    with TestClient(build_app(settings)) as client:
        refused = heatmap(client, LS)
        assert refused.status_code == 401
        # a preflight never needs credentials (browsers send none); it grants nothing by itself
        pre = client.options("/influence/1/k", headers={"Origin": LS, "Access-Control-Request-Method": "GET"})
        assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == LS
        evil = client.options("/influence/1/k", headers={"Origin": "http://evil.example",
                                                          "Access-Control-Request-Method": "GET"})
        assert "access-control-allow-origin" not in evil.headers
        signed = signed_page_url("http://testserver", "influence", 1, "k", "u", "p" * 12)
        page = client.get(signed, headers={"Origin": LS})
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert page.headers["access-control-allow-origin"] == LS
        auth = "Basic " + base64.b64encode(b"u:" + b"p" * 12).decode()
        assert heatmap(client, LS, Authorization=auth).status_code == 404


@pytest.mark.parametrize("origin", ["null", "file://", "http://", "javascript:alert(1)", "http://[::1"])
def test_odd_origins_are_refused_not_crashing(tmp_path, origin):
    with TestClient(build_app(app_settings(tmp_path, label_studio_url=LS))) as client:
        r = heatmap(client, origin)
        assert r.status_code == 404 and "access-control-allow-origin" not in r.headers
