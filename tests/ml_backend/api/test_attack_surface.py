"""The attack surface: each attack of an independent pass, reproduced, and the fix proved.

1. the configured API key goes to the configured Label Studio origin only;
3. strings that cannot be encoded (lone surrogates) are refused at validation, naming the field, and
   no answer can fail to encode;
4. /metrics is labelled by route template (bounded, escaped), whatever unauthenticated clients send;
5. log redaction never breaks a log record, and only configuration registers secrets;
6. /saliency refuses ids /setup would refuse (no 500), HEAD where GET is;
7. FETCH_TIMEOUT bounds the whole download of an image (a drip server is cut off).
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from http.server import BaseHTTPRequestHandler

import pytest
import requests
from fastapi.testclient import TestClient

from label_config import render_config
from ml_backend.api.app import SafeJSONResponse, create_app
from ml_backend.labelstudio.fetch import FetchPolicy, ImageError, ImageFetcher
from ml_backend.predict.heatmaps import HeatmapCache
from ml_backend.api.metrics import label_value
from ml_backend.credentials import basic_auth_header, signed_page_url
from ml_backend.settings import Settings
from devkit.builders import data_uri, png_bytes
from tests.e2e.backend import BackendProcess
from devkit.attack_servers import DripServer
from devkit.servers import FileServer, LocalServer

CLASSES = ["cat", "dog"]
CONFIG = render_config(CLASSES)
API_KEY = "configured-key-0123456789abcdef0123456789"
TOKEN = "setup-token-fedcba9876543210fedcba98765"
USER, PASSWORD = "label-studio", "s3cret-pass-word-hardening"
AUTH = {"Authorization": basic_auth_header(USER, PASSWORD)}
IMAGE = "/data/upload/9/a.png"


def make_client(tmp_path, redis_url, **kw) -> TestClient:
    settings = Settings(model_dir=tmp_path / "models", model_arch="tiny-cnn", image_size=16, redis_url=redis_url,
                        queue_name="robustar-hardening-test", **kw)
    app = create_app(settings)
    return TestClient(app, raise_server_exceptions=False)


def predict_body(image: str, pid: str = "9.1") -> dict:
    return {"tasks": [{"id": 1, "data": {"image": image}}], "project": pid, "label_config": CONFIG}


# --------------------------------------------------------------------------------------------------
# 1. the API key goes to the configured Label Studio origin only


def _keys_seen(server: FileServer) -> list[str | None]:
    return [auth for _, auth in server.requests]


def test_configured_key_never_goes_to_a_setup_hostname(tmp_path, redis_url, caplog):
    """LABEL_STUDIO_URL unset, LABEL_STUDIO_API_KEY set: /setup names a host without access_token, a relative
    image URL follows. Before: ``Authorization: Token <configured key>`` reached that host (200)."""
    with FileServer({IMAGE: png_bytes((8, 8))}, API_KEY) as attacker:
        with caplog.at_level(logging.INFO, logger="ml_backend.api.app"), \
                make_client(tmp_path, redis_url, label_studio_api_key=API_KEY) as c:
            assert c.post("/setup", json={"project": "9.1", "schema": CONFIG, "hostname": attacker.url}).status_code == 200
            r = c.post("/predict", json=predict_body(IMAGE))
            # a second /setup with a config differing by one space re-pointed an existing project before
            c.post("/setup", json={"project": "9.1", "schema": CONFIG + " ", "hostname": attacker.url})
            r2 = c.post("/predict", json={**predict_body(IMAGE), "label_config": CONFIG + " "})
    # issue 21: an unauthenticated /setup names no origin at all (before: fetched there without our key)
    assert r.status_code == 422 and "Label Studio URL is unknown" in r.json()["message"], r.text
    assert r2.status_code == 422, r2.text
    assert attacker.requests == []
    # the start-up line says where the key goes (here: nowhere)
    assert any("LABEL_STUDIO_API_KEY is set but LABEL_STUDIO_URL is not" in m and "sent to no host" in m
               for m in caplog.messages), caplog.messages


def test_setup_hostname_gets_only_the_token_that_came_with_it(tmp_path, redis_url):
    """A /setup that passed basic auth (vouched for) names the origin; the key is still not sent there."""
    with FileServer({IMAGE: png_bytes((8, 8))}, TOKEN) as ls:
        with make_client(tmp_path, redis_url, label_studio_api_key=API_KEY, basic_auth_user=USER,
                         basic_auth_pass=PASSWORD) as c:
            c.post("/setup", json={"project": "9.1", "schema": CONFIG, "hostname": ls.url, "access_token": TOKEN},
                   headers=AUTH)
            r = c.post("/predict", json=predict_body(IMAGE), headers=AUTH)
    assert r.status_code == 200 and r.json()["results"][0]["result"], r.text
    assert set(_keys_seen(ls)) == {f"Token {TOKEN}"}


def test_with_label_studio_url_the_key_goes_there_and_nowhere_else(tmp_path, redis_url, caplog):
    with FileServer({IMAGE: png_bytes((8, 8))}, API_KEY) as ls, FileServer({IMAGE: png_bytes((8, 8))}, API_KEY) as attacker:
        with caplog.at_level(logging.INFO, logger="ml_backend.api.app"), \
                make_client(tmp_path, redis_url, label_studio_api_key=API_KEY, label_studio_url=ls.url) as c:
            c.post("/setup", json={"project": "9.1", "schema": CONFIG, "hostname": attacker.url})
            r = c.post("/predict", json=predict_body(IMAGE))
            r_abs = c.post("/predict", json=predict_body(attacker.url + IMAGE))  # not an allowed host
    assert r.status_code == 200, r.text
    assert set(_keys_seen(ls)) == {f"Token {API_KEY}"}
    assert r_abs.status_code == 422 and "not allowed" in r_abs.json()["message"]
    assert attacker.requests == []
    port = ls.url.rsplit(":", 1)[1]
    assert any(f"LABEL_STUDIO_API_KEY is sent only to http://127.0.0.1:{port}" in m for m in caplog.messages)


# --------------------------------------------------------------------------------------------------
# 3. lone surrogates

SURROGATE_BODIES = [
    # (path, raw JSON body, the field the 400 must name)
    ("/webhook", '{"action": "\\ud800", "project": {"id": 1}}', "action"),
    ("/webhook", '{"action": "START_TRAINING", "project": {"id": 1, "title": "\\udfff"}}', "project.title"),
    ("/predict", '{"project": "1.1", "tasks": [{"id": "\\ud800", "data": {"image": "data:,x"}}]}', "tasks[0].id"),
    ("/predict", '{"project": "1.1", "tasks": [{"id": 1, "data": {"image": "http://127.0.0.1:9/\\ud800.png"}}]}',
     "tasks[0].data.image"),
    ("/predict", '{"project": "1.1", "tasks": [{"id": 1, "data": {"image": "data:,x", "\\ud83d": 1}}]}', "tasks[0].data."),
    ("/setup", '{"project": "1.1", "hostname": "http://h/\\udc80"}', "hostname"),
]


@pytest.mark.parametrize("path,raw,field", SURROGATE_BODIES)
def test_lone_surrogates_are_refused_naming_the_field(tmp_path, redis_url, path, raw, field):
    """Before: 500 (the answer or an error message echoed the string and the JSON encoder raised)."""
    with make_client(tmp_path, redis_url) as c:
        c.post("/setup", json={"project": "1.1", "schema": CONFIG})
        body = json.loads(raw)
        if path == "/predict":
            body["label_config"] = CONFIG
        r = c.post(path, content=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    assert r.status_code == 400, (r.status_code, r.text)
    answer = r.json()
    assert answer["status"] == "error" and answer["message"].startswith(field), answer
    assert "not valid UTF-8" in answer["message"]


def test_a_batch_with_a_surrogate_in_a_failing_task_is_a_400_not_a_lost_batch(tmp_path, redis_url):
    tasks = [{"id": 1, "data": {"image": data_uri(png_bytes((8, 8)))}},
             {"id": "\ud800", "data": {"image": data_uri(b"not an image")}}]
    raw = json.dumps({"project": "1.1", "tasks": tasks, "label_config": CONFIG}).encode()
    with make_client(tmp_path, redis_url) as c:
        r = c.post("/predict", content=raw, headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["message"].startswith("tasks[1].id: not valid UTF-8"), r.text


def test_json_answers_cannot_fail_to_encode():
    content = {"message": "bad \ud800 here", "\udfffkey": [float("nan"), float("inf"), 1.5], "ok": "é"}
    body = SafeJSONResponse(content).body
    back = json.loads(body)
    assert back["message"] == "bad \ud800 here"  # written as the JSON escape \ud800
    assert back["\udfffkey"] == [None, None, 1.5] and back["ok"] == "é"


# --------------------------------------------------------------------------------------------------
# 4. metrics

_SAMPLE = re.compile(r'^[a-z_]+(\{([a-z_]+="([^"\\\n]|\\.)*")(,[a-z_]+="([^"\\\n]|\\.)*")*\})? [0-9.e+-]+$')


def parse_metrics(text: str) -> dict[str, float]:
    """Every line a Prometheus text-format sample or comment (raises on anything else)."""
    samples = {}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        assert _SAMPLE.match(line), f"not a Prometheus sample: {line!r}"
        name, value = line.rsplit(" ", 1)
        samples[name] = float(value)
    return samples


def test_unauthenticated_paths_do_not_poison_metrics(tmp_path, redis_url):
    """Before: ``GET /x%22%7D%201`` (401) was counted under its raw path, unescaped: /metrics unparseable,
    and every unique path one more series, without bound."""
    with make_client(tmp_path, redis_url, basic_auth_user=USER, basic_auth_pass=PASSWORD) as c:
        assert c.get("/x%22%7D%201").status_code == 401
        assert c.get("/a\\b%0Ac").status_code == 401
        size_before = len(c.get("/metrics", headers=AUTH).text)
        for i in range(300):
            assert c.get(f"/unique-{i}-{'z' * 50}").status_code == 401
            assert c.get(f"/saliency/{i + 1}/k{i}").status_code == 401
        assert c.post("/predict", json={}).status_code == 401
        text = c.get("/metrics", headers=AUTH).text
    samples = parse_metrics(text)
    assert samples['robustar_requests_total{path="other",status="401"}'] == 302
    assert samples['robustar_requests_total{path="/saliency/{project_id}/{key:path}",status="401"}'] == 300
    assert samples['robustar_requests_total{path="/predict",status="401"}'] == 1
    assert "unique-" not in text and "%22" not in text
    assert len(text) < size_before + 500  # bounded: a few new series, not 600


def test_label_values_are_escaped():
    assert label_value('a"} 1\nb\\') == 'a\\"} 1\\nb\\\\'
    assert label_value("\ud800x") == "\\\\ud800x"
    assert len(label_value("x" * 10_000)) == 200


# --------------------------------------------------------------------------------------------------
# 5. log redaction (a real `robustar serve` process and its own log)


def _serve_env(tmp_path, **extra) -> dict[str, str]:
    return {"MODEL_DIR": str(tmp_path / "models"), "MODEL_ARCH": "tiny-cnn", "IMAGE_SIZE": "16", "DEVICE": "cpu",
            "PREDICT_PARTS": "", "REDIS_URL": "redis://127.0.0.1:1/0", "LOG_LEVEL": "info", **extra}


def test_redaction_never_breaks_access_log_lines(tmp_path):
    """Before: a redacted access record got ``args=None`` and uvicorn's formatter raised (a traceback for the
    line); /setup's ``access_token`` was registered as a secret, so ``"HTTP/1.1"`` blanked every later line."""
    log = tmp_path / "backend.log"
    env = _serve_env(tmp_path, BASIC_AUTH_USER=USER, BASIC_AUTH_PASS=PASSWORD, LABEL_STUDIO_API_KEY=API_KEY)
    with BackendProcess(env, log) as backend:
        s = requests.Session()
        r = s.post(backend.url + "/setup", json={"project": "5.1", "schema": CONFIG, "access_token": "HTTP/1.1"},
                   headers=AUTH, timeout=30)
        assert r.status_code == 200
        assert s.get(backend.url + "/health", headers=AUTH, timeout=10).status_code == 200
        # configured secrets in the request line: redacted inside the access line, which stays a line
        assert s.get(backend.url + f"/leak/{PASSWORD}", headers=AUTH, timeout=10).status_code == 404
        assert s.get(backend.url + f"/q?auth=Token%20{API_KEY}", timeout=10).status_code == 401
        assert s.get(backend.url + "/Token", timeout=10).status_code == 401  # "Token HTTP/1.1" in the line
        assert s.get(backend.url + "/metrics", headers=AUTH, timeout=10).status_code == 200
        time.sleep(0.5)
    text = log.read_text(errors="replace")
    assert "Traceback" not in text and "Logging error" not in text, text[-3000:]
    access = [ln for ln in text.splitlines() if '" 200' in ln or '" 401' in ln or '" 404' in ln]
    assert any('"GET /health HTTP/1.1" 200' in ln for ln in access), text[-3000:]  # not blanked by the token
    assert any('"GET /leak/*** HTTP/1.1" 404' in ln for ln in access), text[-3000:]
    assert any('"GET /Token HTTP/1.1" 401' in ln for ln in access), text[-3000:]
    assert PASSWORD not in text and API_KEY not in text


def test_redaction_keeps_records_valid_in_process():
    from uvicorn.logging import AccessFormatter

    from ml_backend.credentials import install_log_redaction

    install_log_redaction("configured-secret-xyz")
    logger = logging.getLogger("uvicorn.access")
    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record)

    handler = Keep()
    logger.addHandler(handler)
    old_level, old_propagate = logger.level, logger.propagate
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        logger.info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:1", "GET", "/a/configured-secret-xyz", "1.1", 200)
        logger.info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:1", "GET", "/Token", "1.1", 401)
        other = logging.getLogger("robustar.hardening")
        other.addHandler(handler)
        other.warning("split %s%s", "configured-", "secret-xyz")  # a secret across two arguments
        other.warning("%(a)s and %(b)d", {"a": "configured-secret-xyz", "b": 3})
    finally:
        logger.removeHandler(handler)
        logging.getLogger("robustar.hardening").removeHandler(handler)
        logger.setLevel(old_level)
        logger.propagate = old_propagate
    fmt = AccessFormatter('%(client_addr)s - "%(request_line)s" %(status_code)s', use_colors=False)
    assert fmt.format(records[0]) == '127.0.0.1:1 - "GET /a/*** HTTP/1.1" 200 OK'
    assert fmt.format(records[1]) == '127.0.0.1:1 - "GET /Token HTTP/1.1" 401 Unauthorized'
    assert records[2].getMessage() == "split ***" and records[3].getMessage() == "*** and 3"


# --------------------------------------------------------------------------------------------------
# 6. /saliency ids and HEAD


def test_saliency_ids_out_of_range_are_404_not_500(tmp_path, redis_url):
    """Before: ``GET /saliency/<248 digits>/x`` -> 500 (File name too long); with basic auth a signed-looking
    URL with > 4300 digits -> 500 in the middleware (int() limit)."""
    with make_client(tmp_path, redis_url) as c:
        for pid in ("9" * 248, "9" * 5000, "0", "-1", "1000000000000", "1e3", "٣"):
            r = c.get(f"/saliency/{pid}/x")
            assert r.status_code == 404, (pid[:20], r.status_code, r.text[:200])
            assert r.json()["status"] == "error"
    with make_client(tmp_path, redis_url, basic_auth_user=USER, basic_auth_pass=PASSWORD) as c:
        r = c.get(f"/saliency/{'9' * 5000}/x?sig=00")
        assert r.status_code == 401, r.status_code


def test_head_where_get_is(tmp_path, redis_url):
    """Before: HEAD on a signed heatmap URL (allowed by the auth layer) and on /health -> 405."""
    key = "train/cat/a.png"
    with make_client(tmp_path, redis_url, basic_auth_user=USER, basic_auth_pass=PASSWORD) as c:
        c.post("/setup", json={"project": "7.1", "schema": CONFIG}, headers=AUTH)
        png = png_bytes((4, 4))
        HeatmapCache(tmp_path / "models", 7).write("v0", key, png)
        url = signed_page_url("http://testserver", "saliency", 7, key, USER, PASSWORD)
        r = c.head(url)
        assert r.status_code == 200 and r.headers["content-type"] == "image/png" and r.content == b""
        assert int(r.headers["content-length"]) == len(png)
        assert c.get(url).content == png
        assert c.head("/health", headers=AUTH).status_code == 200
        assert c.head("/", headers=AUTH).status_code == 200
        assert c.head("/metrics", headers=AUTH).status_code == 200
        assert c.head("/health").status_code == 401


# --------------------------------------------------------------------------------------------------
# 7. one deadline per download


@pytest.mark.parametrize("chunked", [False, True])
def test_fetch_timeout_bounds_the_whole_download(chunked):
    """Before: each read waited at most FETCH_TIMEOUT, so a host dripping a byte every 0.1 s held the fetch
    for the whole body (6 s here; 60 s in the attack). After: cut off at FETCH_TIMEOUT (1 s)."""
    policy = FetchPolicy(allowed_hosts=("127.0.0.1",), image_root=None, max_bytes=1_000_000, max_pixels=10**6,
                         timeout=1.0, allow_private=True)  # the drip server is on loopback: opt in
    with DripServer(size=60, interval=0.1, chunked=chunked) as drip:
        fetcher = ImageFetcher(None, None, policy)
        start = time.monotonic()
        with pytest.raises(ImageError, match="FETCH_TIMEOUT"):
            fetcher.fetch_bytes(drip.url + "/a.png")
        elapsed = time.monotonic() - start
    assert elapsed < 2.0, elapsed


def test_fetch_timeout_still_allows_normal_downloads():
    policy = FetchPolicy(allowed_hosts=("127.0.0.1",), image_root=None, max_bytes=1_000_000, max_pixels=10**6,
                         timeout=2.0, allow_private=True)  # loopback: opt in
    with DripServer(size=5, interval=0.05) as slow_but_fine, DripServer(size=5, interval=0.05, chunked=True) as ch:
        fetcher = ImageFetcher(None, None, policy)
        assert fetcher.fetch_bytes(slow_but_fine.url + "/a.png") == b"xxxxx"
        assert fetcher.fetch_bytes(ch.url + "/a.png") == b"xxxxx"


# --------------------------------------------------------------------------------------------------
# 12 (INFO). unknown projects cost nothing at /setup


def test_setup_of_a_new_project_writes_nothing_until_a_prediction_needs_it(tmp_path, redis_url):
    """Before: every new project id sent to /setup wrote and published a v0 checkpoint (~45 MB for resnet-18)."""
    with make_client(tmp_path, redis_url) as c:
        for pid in range(100, 120):
            r = c.post("/setup", json={"project": f"{pid}.1", "schema": CONFIG})
            assert r.status_code == 200 and r.json() == {"model_version": "v0"}
        assert not (tmp_path / "models").exists() or not any((tmp_path / "models").iterdir())
        r = c.post("/predict", json=predict_body(data_uri(png_bytes((8, 8))), pid="100.1"))
        assert r.status_code == 200 and r.json()["model_version"] == "v0"
        assert (tmp_path / "models" / "project-100" / "PUBLISHED").read_text() == "v0"
        assert c.post("/setup", json={"project": "100.1", "schema": CONFIG}).json() == {"model_version": "v0"}
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["project-100"]


def test_route_answers_are_encoded_by_the_safe_response(tmp_path, redis_url):
    """Every JSON route answers through SafeJSONResponse (explicitly: FastAPI's pydantic fast path, taken
    for a ``-> dict`` route with only a default response class, raises on a lone surrogate)."""
    from fastapi.routing import APIRoute

    with make_client(tmp_path, redis_url) as c:
        routes = {r.path: r.response_class for r in c.app.routes if isinstance(r, APIRoute)}
        for path in ("/health", "/", "/setup", "/predict", "/webhook"):
            assert routes[path] is SafeJSONResponse, path

        async def odd() -> dict:  # an answer echoing something validation did not see
            return {"status": "UP \ud800", "nan": float("nan")}

        c.app.add_api_route("/odd", odd, methods=["GET"], response_class=SafeJSONResponse)
        r = c.get("/odd")
    assert r.status_code == 200 and r.json() == {"status": "UP \ud800", "nan": None}


def test_one_error_shape_for_unknown_routes_and_methods(tmp_path, redis_url):
    """Before: 404/405 came in FastAPI's ``{"detail": ...}`` shape."""
    with make_client(tmp_path, redis_url) as c:
        r = c.get("/no-such-route")
        assert r.status_code == 404 and r.json()["status"] == "error" and "/no-such-route" in r.json()["message"]
        r = c.get("/predict")
        assert r.status_code == 405 and r.json()["status"] == "error" and "POST" in r.headers["allow"]
        r = c.put("/saliency/1/x")
        assert r.status_code == 405 and r.json()["status"] == "error"


def test_lone_surrogates_in_a_utf16_body_are_refused_too(tmp_path, redis_url):
    """json.loads accepts UTF-16 bodies (decoded with surrogatepass): a raw lone surrogate, no escape needed."""
    raw = '{"action": "\ud800x", "project": {"id": 1}}'.encode("utf-16", "surrogatepass")
    with make_client(tmp_path, redis_url) as c:
        r = c.post("/webhook", content=raw, headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["message"].startswith("action: not valid UTF-8"), r.text
