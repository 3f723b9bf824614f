"""Resource limits under attack: pixel bombs, slow clients, the schema, resolved-address checks, unknown projects.

2. pixel bombs: images are downscaled once at decode (PREDICT_MAX_SIDE), a request holds at most
   PREDICT_MAX_PIXELS_PER_REQUEST decoded pixels (413 per task past it), full-size decodes share a
   process-wide byte budget (PREDICT_MAX_DECODE_BYTES); brush regions keep the stored image size;
8. slow clients: a dripped header or body is cut off at its deadline;
10. the OpenAPI schema documents request bodies, the error shape and /metrics as text (schemathesis
    runs against it in tests/ml_backend/api/test_schemathesis.py);
11. allowed hosts are checked by resolved address (no loopback/private/link-local unless opted in),
    the connection goes to the address checked; ``*.domain`` means the default ports only;
12. START_TRAINING for a project the backend was never set up for queues nothing.
"""

from __future__ import annotations

import base64
import io
import threading
import time
from http.server import BaseHTTPRequestHandler

import numpy as np
import pytest
import requests
from fastapi.testclient import TestClient
from PIL import Image

from label_config import render_config
from label_config.rle import (
    decode_rle,
    decode_rle_values,
    encode_mask,
    encode_mask_resized,
)
from ml_backend.api.app import create_app
from ml_backend.labelstudio.fetch import (
    DecodeMemory,
    FetchPolicy,
    ImageBudgetError,
    ImageError,
    ImageFetcher,
    RequestBudget,
)
from ml_backend.predict.saliency import SaliencyPart
from ml_backend.settings import Settings
from tests.e2e.backend import BackendProcess
from devkit.servers import LocalServer
from training.images import decode_image, original_size

CLASSES = ["cat", "dog"]
CONFIG = render_config(CLASSES)
# a config with the attention brush (earlier versions' second BrushLabels), so saliency answers a region
ATTENTION_CONFIG = CONFIG.replace('<MagicWand name="magicwand" toName="image"/>', (
    '<MagicWand name="magicwand" toName="image"/><BrushLabels name="attention" toName="image">'
    '<Label value="Model attention" background="#ffaa00"/></BrushLabels>'))


def _png(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG", **kw)
    return buf.getvalue()


def _jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=85)
    return buf.getvalue()


def _uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def bomb_png(side: int = 8000) -> bytes:
    """The attack's image: a 1-bit ``side x side`` PNG of a few KB (8000: ~8 KB, inside the 64 MP cap)."""
    return _png(Image.new("1", (side, side)), optimize=True)


def noise(size: tuple[int, int], seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB")


def make_client(tmp_path, redis_url, parts=None, **kw) -> TestClient:
    settings = Settings(model_dir=tmp_path / "models", model_arch="tiny-cnn", image_size=16, redis_url=redis_url,
                        queue_name="robustar-hardening-more-test", **kw)
    return TestClient(create_app(settings, parts), raise_server_exceptions=False)


def predict_body(images: list[str], pid: str = "9.1", config: str = CONFIG) -> dict:
    return {"tasks": [{"id": 100 + i, "data": {"image": u}} for i, u in enumerate(images)], "project": pid,
            "label_config": config}


# --------------------------------------------------------------------------------------------------
# 2. pixel bombs


def test_decode_downscales_once_and_keeps_the_stored_size():
    """Before: the 8 KB bomb decoded to a 64 MP RGB image (256 MB in PIL), kept for the whole request."""
    data = bomb_png()
    assert len(data) < 12_000
    full = decode_image(data, "bomb")  # the training path (max_side None): unchanged, full size
    assert full.size == (8000, 8000) and original_size(full) == (8000, 8000)
    del full
    small = decode_image(data, "bomb", max_side=1024)
    assert small.size == (1024, 1024) and small.mode == "RGB" and original_size(small) == (8000, 8000)
    # not square, JPEG (libjpeg's reduced-scale decode), palette and 16-bit all come out bounded and RGB
    photo = noise((3000, 1000))
    for data, kind in ((_jpeg(photo), "jpeg"), (_png(photo.convert("P")), "P"), (_png(photo.convert("L")), "L"),
                       (_png(Image.new("I;16", (2500, 900), 40000)), "I;16")):
        img = decode_image(data, kind, max_side=512)
        assert max(img.size) == 512 and img.mode == "RGB", kind
        assert original_size(img) == ((2500, 900) if kind == "I;16" else (3000, 1000)), kind
    img = decode_image(_png(Image.new("I;16", (2500, 900), 40000)), "16", max_side=512)
    assert np.asarray(img)[0, 0].tolist() == [156, 156, 156]  # 40000 / 256, as at full size
    # small images are untouched (no info key, identical pixels)
    tiny = noise((40, 30))
    out = decode_image(_png(tiny), "tiny", max_side=512)
    assert out.size == (40, 30) and "robustar.original_size" not in out.info
    assert np.array_equal(np.asarray(out), np.asarray(tiny))


def test_decode_admission_runs_before_any_pixel_is_decoded():
    seen = []

    class Refuse:
        def __call__(self, source, nbytes, out_size):
            seen.append((source, nbytes, out_size))
            raise ImageBudgetError(f"{source}: no room", 413)

    with pytest.raises(ImageBudgetError, match="no room"):
        decode_image(bomb_png(), "bomb", max_side=1024, admit=Refuse())
    # peak = the 1-bit pixels (1 byte each in PIL) + one converted copy (4 bytes each)
    assert seen == [("bomb", 8000 * 8000 * 5, (1024, 1024))]


def test_upscaled_brush_rle_is_exactly_the_full_size_encoding():
    rng = np.random.default_rng(1)
    for (h, w), (width, height) in (((5, 7), (29, 13)), ((30, 40), (777, 1000)), ((64, 64), (64, 64)),
                                    ((10, 10), (5, 7)), ((224, 224), (3000, 2000))):
        mask = rng.random((h, w)) > 0.8
        rows = np.minimum(((np.arange(height) + 0.5) * h / height).astype(int), h - 1)
        cols = np.minimum(((np.arange(width) + 0.5) * w / width).astype(int), w - 1)
        full = mask[rows][:, cols]
        rle = encode_mask_resized(mask, width, height)
        assert rle == encode_mask(full), (h, w, width, height)
        assert decode_rle_values(rle).size == width * height * 4
        pil = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((width, height), Image.NEAREST)) > 127
        assert (pil == full).mean() > 0.99  # PIL's nearest (fixed point) differs at a few rounding boundaries
    assert encode_mask_resized(np.ones((3, 3), bool), 9, 4) == encode_mask(np.ones((4, 9), bool))


def test_bomb_regions_carry_the_stored_size_and_heatmap_is_decoded_size(tmp_path, redis_url):
    """A 3000x2000 task image: the attention brush must be at 3000x2000 (Label Studio decodes a brush RLE into
    a canvas of the image's natural size: exactly 3000*2000*4 values); the heatmap PNG is at the decoded size."""
    img = noise((3000, 2000), seed=3)
    part = SaliencyPart("grad", top_q=5)
    with make_client(tmp_path, redis_url, [part], predict_max_side=256) as c:
        r = c.post("/predict", json=predict_body([_uri(_png(img))], config=ATTENTION_CONFIG))
    assert r.status_code == 200, r.text
    (result,) = r.json()["results"]
    brush = [x for x in result["result"] if x["type"] == "brushlabels"]
    assert brush, result
    (b,) = brush
    assert (b["original_width"], b["original_height"]) == (3000, 2000)
    assert decode_rle_values(b["value"]["rle"]).size == 3000 * 2000 * 4
    mask = decode_rle(b["value"]["rle"], 2000, 3000)
    assert 0.03 < mask.mean() < 0.07  # ~ SALIENCY_TOP_Q of the pixels, upscaled
    pngs = list((tmp_path / "models").rglob("*.png"))
    assert len(pngs) == 1, pngs
    with Image.open(pngs[0]) as heat:
        assert heat.size == (256, 171)


def test_request_pixel_budget_answers_413_per_task_naming_it(tmp_path, redis_url):
    """Before: no per-request budget (any number of 64 MP images decoded and held at full size)."""
    images = [_uri(_png(noise((400, 300), seed=i))) for i in range(3)]
    # budget for two 400x300 images: the third one (whichever decodes last) is refused, the others predicted
    with make_client(tmp_path, redis_url, predict_parts=(), predict_max_pixels_per_request=2 * 400 * 300) as c:
        r = c.post("/predict", json=predict_body(images))
        assert r.status_code == 200, r.text
        body = r.json()
        (err,) = body["errors"]
        assert err["status"] == 413 and err["field"] == "data.image"
        assert f"tasks[{err['index']}] (id {100 + err['index']})" in err["message"]
        assert "PREDICT_MAX_PIXELS_PER_REQUEST" in err["message"]
        assert sum(bool(x["result"]) for x in body["results"]) == 2
        # every task over budget: the answer is a 413 naming them
        r = c.post("/predict", json=predict_body([_uri(bomb_png(2000))]))
    with make_client(tmp_path, redis_url, predict_parts=(), predict_max_pixels_per_request=1000,
                     predict_max_side=64) as c:
        r = c.post("/predict", json=predict_body([_uri(bomb_png(2000)), _uri(bomb_png(3000))]))
    assert r.status_code == 413, r.text
    assert {e["task"] for e in r.json()["errors"]} == {100, 101}
    assert "tasks[0] (id 100)" in r.json()["message"] or "tasks[1] (id 101)" in r.json()["message"]


def test_request_budget_refunds_images_that_fail():
    budget = RequestBudget(100)
    budget.charge("a", 60)
    with pytest.raises(ImageBudgetError) as e:
        budget.charge("b", 60)
    assert e.value.status == 413
    fetcher = ImageFetcher(None, None, FetchPolicy((), None, 1_000_000, 64_000_000, 5.0))
    with pytest.raises(ImageError):
        fetcher.fetch(_uri(b"\x89PNG\r\n\x1a\nbroken"), max_side=10, budget=budget)
    assert budget.used == 60


def test_process_decode_memory_bounds_concurrent_full_size_decodes():
    """Before: four concurrent bomb requests decoded four 64 MP images at once (~16 GiB)."""
    mem = DecodeMemory(8000 * 8000 * 5)  # room for one bomb decode at a time
    policy = FetchPolicy((), None, 1_000_000, 64_000_000, 20.0, max_decode_bytes=mem.limit)
    import ml_backend.labelstudio.fetch as fetch_mod

    fetch_mod._decode_memories[mem.limit] = mem
    try:
        fetcher = ImageFetcher(None, None, policy)
        uri = _uri(bomb_png())
        out = []
        threads = [threading.Thread(target=lambda: out.append(fetcher.fetch(uri, max_side=512))) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert len(out) == 3 and all(o.size == (512, 512) for o in out)
        assert mem.peak <= mem.limit and mem.used == 0
        # a decode that finds no room within FETCH_TIMEOUT: 503 for its task
        with mem.hold("other", mem.limit, 1):
            quick = ImageFetcher(None, None, FetchPolicy((), None, 1_000_000, 64_000_000, 0.2,
                                                         max_decode_bytes=mem.limit))
            with pytest.raises(ImageBudgetError) as e:
                quick.fetch(uri, max_side=512)
        assert e.value.status == 503 and "PREDICT_MAX_DECODE_BYTES" in str(e.value)
    finally:
        fetch_mod._decode_memories.pop(mem.limit, None)


def _vm(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) // 1024
    raise KeyError(key)


@pytest.mark.slow
def test_pixel_bomb_peak_rss_of_a_real_serve(tmp_path):
    """The attack against a real ``robustar serve``: one /predict with the 10 KB 1-bit 8000x8000 PNG data URI.
    Before: peak RSS +4,082 MiB and 19.6 s (saliency part on, tiny-cnn). After: ~+130 MiB, ~1 s."""
    env = {"MODEL_DIR": str(tmp_path / "models"), "MODEL_ARCH": "tiny-cnn", "IMAGE_SIZE": "32", "DEVICE": "cpu",
           "PREDICT_PARTS": "saliency", "REDIS_URL": "redis://127.0.0.1:1/0", "LOG_LEVEL": "warning"}
    uri = _uri(bomb_png())
    assert len(uri) < 12_000
    with BackendProcess(env, tmp_path / "backend.log") as backend:
        warm = requests.post(backend.url + "/predict", json=predict_body([_uri(_png(noise((8, 8))))]), timeout=120)
        assert warm.status_code == 200, warm.text
        before = _vm(backend.pid, "VmHWM")
        start = time.monotonic()
        r = requests.post(backend.url + "/predict", json=predict_body([uri]), timeout=300)
        took = time.monotonic() - start
        grew = _vm(backend.pid, "VmHWM") - before
    assert r.status_code == 200, r.text
    print(f"pixel bomb: peak RSS +{grew} MiB, {took:.1f} s")
    assert grew < 400, f"peak RSS grew by {grew} MiB"


# --------------------------------------------------------------------------------------------------
# 12. unknown projects queue nothing


def test_start_training_for_an_unknown_project_queues_nothing(tmp_path, redis_url):
    """Before: every START_TRAINING (and counted annotation event) for any project id queued a job."""
    from redis import Redis
    from rq import Queue

    queue = Queue("robustar-hardening-more-test", connection=Redis.from_url(redis_url))
    with make_client(tmp_path, redis_url, train_every_n_annotations=1) as c:
        for pid in (424242, 424243, 999_999_999):
            for action in ("START_TRAINING", "ANNOTATION_CREATED"):
                r = c.post("/webhook", json={"action": action, "project": {"id": pid}})
                assert r.status_code == 200, r.text
                assert r.json()["status"] == "ignored" and r.json()["reason"] == "unknown project", r.json()
        assert queue.count == 0
        assert not (tmp_path / "models").exists() or not any((tmp_path / "models").iterdir())
        assert 'action="START_TRAINING",status="ignored"' in c.get("/metrics").text
        # once Label Studio set the project up, the same event queues a job
        assert c.post("/setup", json={"project": "424242.1", "schema": CONFIG}).status_code == 200
        r = c.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 424242}})
        assert r.json()["status"] == "queued", r.json()
    assert queue.count == 1
    # a project with a model folder (trained before a restart) is known without a /setup
    (tmp_path / "models" / "project-77").mkdir(parents=True)
    with make_client(tmp_path, redis_url) as c:
        assert c.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 77}}).json()["status"] == "queued"


# --------------------------------------------------------------------------------------------------
# 11. allowed hosts are checked by the address they resolve to


class _HostServer(LocalServer):
    """A 127.0.0.1 HTTP server that records (path, Host header) and answers a small PNG."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str | None]] = []
        outer, body = self, _png(noise((8, 8)))

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                outer.requests.append((self.path, self.headers.get("Host")))
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self._serve(Handler)
        self.port = self.httpd.server_address[1]


def _policy(hosts, allow_private=False, timeout=5.0) -> FetchPolicy:
    return FetchPolicy(tuple(hosts), None, 1_000_000, 64_000_000, timeout, allow_private=allow_private)


def _fake_dns(monkeypatch, table: dict[str, list[str]], calls: list[str]) -> None:
    """Names in ``table`` resolve to the given addresses, one list per lookup (the last one repeats)."""
    import socket

    real = socket.getaddrinfo

    def getaddrinfo(host, port, *args, **kw):
        if host in table:
            calls.append(host)
            answers = table[host]
            address = answers.pop(0) if len(answers) > 1 else answers[0]
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))]
        return real(host, port, *args, **kw)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


def test_allowed_host_resolving_to_private_addresses_is_refused(monkeypatch):
    """Before: an ALLOWED_IMAGE_HOSTS name resolving to 169.254.169.254 (cloud metadata) or 127.0.0.1 was
    fetched: only the name was checked."""
    calls: list[str] = []
    _fake_dns(monkeypatch, {"images.example.org": ["127.0.0.1"], "meta.example.org": ["169.254.169.254"],
                            "nat.example.org": ["100.64.1.2"], "v6.example.org": ["::ffff:10.0.0.1"]}, calls)
    with _HostServer() as srv:
        fetcher = ImageFetcher(None, None, _policy(["images.example.org", "meta.example.org", "nat.example.org",
                                                    "v6.example.org"], timeout=2.0))
        for host, kind in (("images.example.org", "loopback"), ("meta.example.org", "link-local"),
                           ("nat.example.org", "non-global"), ("v6.example.org", "private")):
            with pytest.raises(ImageError, match=f"a {kind} address: refused"):
                fetcher.fetch_bytes(f"http://{host}:{srv.port}/a.png")
        assert srv.requests == []  # refused before any connection
        # explicitly allowed: resolved once and connected to that address, the name kept in the Host header
        calls.clear()
        opted = ImageFetcher(None, None, _policy(["images.example.org"], allow_private=True))
        assert opted.fetch_bytes(f"http://images.example.org:{srv.port}/a.png").startswith(b"\x89PNG")
        assert srv.requests == [("/a.png", f"images.example.org:{srv.port}")]
        assert calls == ["images.example.org"]


def test_the_connection_goes_to_the_address_checked(monkeypatch):
    """DNS rebinding: the name answers a public address to the check and loopback right after. The fetch
    resolves once and connects to the address it checked, so the loopback server is never reached."""
    calls: list[str] = []
    with _HostServer() as srv:
        _fake_dns(monkeypatch, {"rebind.example.org": ["192.88.99.1", "127.0.0.1"]}, calls)
        fetcher = ImageFetcher(None, None, _policy(["rebind.example.org"], timeout=1.0))
        with pytest.raises(ImageError) as e:
            fetcher.fetch_bytes(f"http://rebind.example.org:{srv.port}/a.png")
        assert "refused" not in str(e.value)  # it passed the check, then connected to 192.88.99.1 (unreachable here)
        assert srv.requests == [] and calls == ["rebind.example.org"]


def test_wildcard_entries_mean_default_ports_unless_they_name_one(monkeypatch):
    """Before: ``*.example.org`` allowed every port of every subdomain."""
    f = ImageFetcher(None, None, _policy(["*.example.org", "*.cdn.example.net:8443", "plain.example.com"]))
    assert f.check_url("https://a.example.org/x.png") and f.check_url("http://a.example.org/x.png")
    assert f.check_url("https://a.cdn.example.net:8443/x.png")
    assert f.check_url("http://plain.example.com:8080/x.png")  # a named host: any port, as documented
    for url in ("http://a.example.org:6379/x.png", "https://a.example.org:8443/x.png",
                "https://a.cdn.example.net/x.png", "http://example.org.evil.net/x.png"):
        with pytest.raises(ImageError, match="not allowed"):
            f.check_url(url)


def test_label_studio_origin_is_allowed_as_configured():
    """The Label Studio origin (here on loopback) needs no opt-in."""
    with _HostServer() as ls:
        f = ImageFetcher(f"http://127.0.0.1:{ls.port}", None, _policy([]))
        assert f.fetch_bytes("/data/upload/1/a.png").startswith(b"\x89PNG")
        f2 = ImageFetcher(f"http://localhost:{ls.port}", None, _policy([]))
        assert f2.fetch_bytes("/data/upload/1/a.png").startswith(b"\x89PNG")


# --------------------------------------------------------------------------------------------------
# 8. slow clients: header and body deadlines (a real `robustar serve`, raw sockets)


def _drip(sock, data: bytes, interval: float, until: float) -> float:
    """Send ``data`` a byte at a time every ``interval`` s; return when the server closed the connection
    (seconds since the start), or ``until`` when it never did."""
    import socket as socket_mod

    start = time.monotonic()
    for i in range(len(data)):
        try:
            sock.sendall(data[i : i + 1])
        except OSError:  # reset or broken pipe: the server closed it
            return time.monotonic() - start
        sock.settimeout(interval)
        try:
            got = sock.recv(4096)
            if got == b"":
                return time.monotonic() - start
            if got:  # an answer (408): read until closed
                sock.settimeout(5)
                while sock.recv(4096):
                    pass
                return time.monotonic() - start
        except socket_mod.timeout:
            pass
        except OSError:
            return time.monotonic() - start
        if time.monotonic() - start > until:
            return until
    return until


@pytest.mark.slow
def test_slow_header_and_slow_body_are_cut_off(tmp_path):
    """Before: a client sending a header byte every 0.5 s, or the body a byte every 0.5 s, kept its
    connection (and, for the body, its request) open as long as it liked. After: closed at
    HTTP_HEADER_TIMEOUT (2 s here) / answered 408 and closed at HTTP_BODY_TIMEOUT (2 s here)."""
    import socket as socket_mod

    env = {"MODEL_DIR": str(tmp_path / "models"), "MODEL_ARCH": "tiny-cnn", "IMAGE_SIZE": "16", "DEVICE": "cpu",
           "PREDICT_PARTS": "", "REDIS_URL": "redis://127.0.0.1:1/0", "LOG_LEVEL": "warning",
           "HTTP_HEADER_TIMEOUT": "2", "HTTP_BODY_TIMEOUT": "2"}
    with BackendProcess(env, tmp_path / "backend.log") as backend:
        port = backend.port
        head = (b"POST /setup HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                b"X-Padding: " + b"a" * 200 + b"\r\n\r\n")
        with socket_mod.create_connection(("127.0.0.1", port)) as s:
            took = _drip(s, head, 0.5, until=15)
        assert took < 4, f"a dripped header held the connection {took:.1f} s"
        with socket_mod.create_connection(("127.0.0.1", port)) as s:  # a silent connection too
            s.settimeout(6)
            start = time.monotonic()
            assert s.recv(10) == b""
            assert time.monotonic() - start < 4
        body = b'{"project": "1.1", "schema": "' + b"x" * 200 + b'"}'
        with socket_mod.create_connection(("127.0.0.1", port)) as s:
            s.sendall(b"POST /setup HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                      b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n")
            took = _drip(s, body, 0.5, until=15)
        assert took < 4, f"a dripped body held the request {took:.1f} s"
        with socket_mod.create_connection(("127.0.0.1", port)) as s:  # what the client got: a 408, then EOF
            s.sendall(b"POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
            s.settimeout(6)
            answer = b""
            while chunk := s.recv(4096):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 408") and b"HTTP_BODY_TIMEOUT" in answer, answer[:300]
        # normal requests are unaffected, keep-alive included
        with requests.Session() as http:
            for _ in range(3):
                assert http.get(backend.url + "/health", timeout=5).status_code == 200


# --------------------------------------------------------------------------------------------------
# 10. the OpenAPI schema documents bodies, the one error shape, and /metrics as text


def test_openapi_documents_bodies_errors_and_media_types(tmp_path, redis_url):
    """Before: no request bodies (the routes read raw JSON), no 4xx but FastAPI's ``{"detail"}`` 422 on the views,
    and heatmaps/pages/reports declared as JSON; schemathesis could generate nothing but empty bodies."""
    with make_client(tmp_path, redis_url) as c:
        spec = c.get("/openapi.json").json()
    paths, schemas = spec["paths"], spec["components"]["schemas"]
    for path, name in (("/setup", "SetupRequest"), ("/predict", "PredictRequest"), ("/webhook", "WebhookRequest"),
                       ("/job_status", "JobStatusRequest")):
        body = paths[path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert body == {"$ref": f"#/components/schemas/{name}"} and name in schemas
        for code in ("400", "413", "408"):
            err = paths[path]["post"]["responses"][code]["content"]["application/json"]["schema"]
            assert err == {"$ref": "#/components/schemas/Error"}
    assert schemas["Error"]["required"] == ["status", "message"]
    assert set(schemas["PredictRequest"]["required"]) == {"tasks", "project"}
    assert "413" in paths["/predict"]["post"]["responses"] and "422" in paths["/predict"]["post"]["responses"]
    assert list(paths["/metrics"]["get"]["responses"]["200"]["content"]) == ["text/plain"]
    assert list(paths["/saliency/{project_id}/{key}"]["get"]["responses"]["200"]["content"]) == ["image/png"]
    assert list(paths["/report/{project_id}/{version}"]["get"]["responses"]["200"]["content"]) == ["text/html"]
    assert "HTTPValidationError" not in schemas and "detail" not in str(spec["paths"])
    ids = [op["operationId"] for ops in paths.values() for op in ops.values()]
    assert len(ids) == len(set(ids))  # GET and HEAD of one route no longer share an id
