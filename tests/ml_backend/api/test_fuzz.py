"""Bad input: named examples first (4xx with a message naming the field and task), then
property-based fuzzing with hypothesis: generated /predict, /setup and /webhook payloads against the
real app, and generated RLE streams, exports and image bytes against the decoders. Whatever comes in:
no 5xx, no exception escapes, no hang (a per-example deadline and an overall alarm)."""

from __future__ import annotations

import io
import json
import os
from collections import Counter
from datetime import timedelta

import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from label_config import parse_config, render_config
from label_config.export import parse_export
from label_config.regions import brush
from label_config.rle import RLEError, decode_rle, encode_mask
from ml_backend.api.app import create_app
from ml_backend.settings import Settings
from devkit.builders import annotation, data_uri, export_task, png_bytes
from devkit.servers import FileServer
from tests.faultkit import time_limit
from training.images import ImageError, decode_image

CLASSES = ["cat", "dog", "bird"]
CONFIG = render_config(CLASSES)
PARSED = parse_config(CONFIG)
TOKEN = "fuzz-token-0123456789abcdef"
FUZZED: Counter = Counter()  # examples run per target, printed by the last test
FUZZ = settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES", "250")), deadline=timedelta(seconds=10),
                database=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                       HealthCheck.data_too_large, HealthCheck.filter_too_much])


def _encode(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


GOOD_PNG = png_bytes((20, 16))
SAMPLE_IMAGES = [
    GOOD_PNG, _encode(Image.new("L", (9, 9), 77)), _encode(Image.new("RGBA", (7, 5), (1, 2, 3, 0))),
    _encode(Image.fromarray(np.full((6, 6), 40000, np.uint16))), _encode(Image.new("RGB", (12, 12)), "JPEG"),
    _encode(Image.new("P", (5, 5))), _encode(Image.new("1", (10_000, 7_000))),  # the last one: a 70 MP bomb
]


@pytest.fixture(scope="module")
def image_server():
    files = {"/data/upload/1/a.png": GOOD_PNG, "/data/upload/1/garbage.png": b"\x89PNG garbage"}
    with FileServer(files, TOKEN) as ls:
        yield ls


@pytest.fixture
def app_client(tmp_path, redis_url, image_server):
    s = Settings(model_dir=tmp_path / "models", model_arch="tiny-cnn", image_size=16, redis_url=redis_url,
                 queue_name="robustar-fuzz", label_studio_url=image_server.url, label_studio_api_key=TOKEN,
                 max_request_bytes=2_000_000, max_predict_tasks=50, fetch_workers=2)
    with TestClient(create_app(s)) as c:
        yield c


def check(r, where: str) -> None:
    assert r.status_code < 500, f"{where}: {r.status_code} {r.text[:500]}"
    body = r.json()
    if r.status_code >= 400:
        assert isinstance(body.get("message"), str) and body["message"], f"{where}: 4xx without a message: {body}"


# --------------------------------------------------------------------------------------------------
# named bad inputs: the message names the field and the task


def test_bad_input_examples(app_client):
    c = app_client
    ok_task = {"id": 1, "data": {"image": data_uri(GOOD_PNG)}}
    assert c.post("/setup", json={"project": "1.1", "schema": CONFIG}).json() == {"model_version": "v0"}

    def post(path, body=None, raw=None, status=400, match=""):
        r = c.post(path, content=raw if raw is not None else json.dumps(body), headers={"Content-Type": "application/json"})
        assert r.status_code == status, (path, body if raw is None else raw[:50], r.status_code, r.text)
        assert match in r.json()["message"], (match, r.json()["message"])
        return r

    for path in ("/setup", "/predict", "/webhook"):
        post(path, raw=b"{not json", match="not valid JSON")
        post(path, raw=b"", match="empty")
        post(path, raw=b"[1, 2]", match="must be a JSON object")
        post(path, raw=b"\xff\xfe\x00", match="not valid JSON")
        post(path, raw=b"[" * 100_000 + b"]" * 100_000, match="nested too deeply")
        post(path, raw=b'{"a": "' + b"x" * 2_100_000 + b'"}', status=413, match="MAX_REQUEST_BYTES")
    r = c.post("/predict", content=(b" " * 2_100_000 for _ in range(1)), headers={"Content-Type": "application/json"})
    assert r.status_code == 413  # no Content-Length (chunked): counted while reading

    post("/setup", {"schema": CONFIG}, match="'project' is missing")
    post("/setup", {"project": "abc", "schema": CONFIG}, match="'project'")
    post("/setup", {"project": "1.1", "schema": "<View><Image name='i' value='$image'/></View>"}, match="no <Choices>")
    post("/setup", {"project": "1.1", "schema": "<View><Choices name='c'/></View>"}, match="no <Image>")
    post("/setup", {"project": "1.1", "schema": "<View><unclosed"}, match="not valid XML")
    post("/setup", {"project": "1.1", "schema": 42}, match="'schema' must be a string")
    post("/setup", {"project": "1.1", "schema": CONFIG, "hostname": "ftp://x"}, match="'hostname'")
    laughs = ('<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaaaaaaaa">' + "".join(
        f'<!ENTITY {chr(98 + i)} "{("&" + chr(97 + i) + ";") * 10}">' for i in range(9)) + ']><View>&j;</View>')
    post("/setup", {"project": "1.1", "schema": laughs}, match="schema")  # billion laughs: refused by expat, fast

    post("/predict", {"project": "1.1", "label_config": CONFIG}, match="'tasks' is missing")
    post("/predict", {"tasks": {"id": 1}, "project": "1.1"}, match="'tasks' must be a list")
    post("/predict", {"tasks": [ok_task, 5], "project": "1.1", "label_config": CONFIG}, match="tasks[1] must be a task object")
    post("/predict", {"tasks": [ok_task, {"id": 17}], "project": "1.1", "label_config": CONFIG},
         match="tasks[1] (id 17): data missing")
    post("/predict", {"tasks": [ok_task, ok_task, ok_task, {"id": 17, "data": {"text": "x"}}], "project": "1.1",
                      "label_config": CONFIG}, match="tasks[3] (id 17): data.image missing")
    post("/predict", {"tasks": [{"id": 4, "data": {"image": ["x"]}}], "project": "1.1", "label_config": CONFIG},
         match="tasks[0] (id 4): data.image must be an image URL string")
    post("/predict", {"tasks": [ok_task] * 51, "project": "1.1", "label_config": CONFIG}, status=413, match="MAX_PREDICT_TASKS")
    post("/predict", {"tasks": [ok_task], "label_config": CONFIG}, match="'project' is missing")
    post("/predict", {"tasks": [ok_task], "project": "1.1", "label_config": CONFIG, "params": []}, match="'params'")
    post("/predict", {"tasks": [ok_task], "project": "1.1", "label_config": CONFIG, "params": {"context": 3}},
         match="'params.context'")
    post("/predict", {"tasks": [ok_task], "project": "9.1"}, match="no label config received yet")
    post("/predict", {"tasks": [ok_task], "project": "1.1", "label_config": "<View/>"}, match="'label_config' (project 1)")
    # v0 is written for the classes of the first prediction (not by /setup)
    assert c.post("/predict", json={"tasks": [ok_task], "project": "1.1", "label_config": CONFIG}).status_code == 200
    post("/predict", {"tasks": [ok_task], "project": "1.1", "label_config": render_config(["a", "b"])}, status=409,
         match="classes")  # the label config disagrees with the served model (v0 was made for 3 classes)

    # images that cannot be used: one per task, named; all bad -> 422, some bad -> 200 with per-task errors
    bad = {
        "corrupt": data_uri(b"\x89PNG\r\n\x1a\n" + b"\x00" * 50),
        "truncated": data_uri(GOOD_PNG[:60]),
        "bomb": data_uri(SAMPLE_IMAGES[-1]),
        "ssrf": "http://169.254.169.254/latest/meta-data/",
        "other-host": "http://127.0.0.1:6379/",
        "file": "file:///etc/passwd",
        "missing": "/data/upload/1/missing.png",
        "garbage": "/data/upload/1/garbage.png",
    }
    tasks = [{"id": 100 + i, "data": {"image": url}} for i, url in enumerate(bad.values())]
    r = post("/predict", {"tasks": tasks, "project": "1.1", "label_config": CONFIG}, status=422, match="tasks[0] (id 100): data.image")
    errors = r.json()["errors"]
    assert [e["task"] for e in errors] == [t["id"] for t in tasks] and all(e["field"] == "data.image" for e in errors)
    by_task = {e["task"]: e["message"] for e in errors}
    assert "not a readable image" in by_task[100] and "not a readable image" in by_task[101]
    assert "too large" in by_task[102] and "not allowed" in by_task[103] and "not allowed" in by_task[104]
    assert "IMAGE_ROOT" in by_task[105] and "HTTP 404" in by_task[106] and "not a readable image" in by_task[107]
    for mode_png in SAMPLE_IMAGES[:-1]:  # grayscale, RGBA, 16-bit, JPEG, palette: all predicted
        tasks.append({"id": 200 + len(tasks), "data": {"image": data_uri(mode_png)}})
    tasks.append({"id": 999, "data": {"image": "/data/upload/1/a.png"}})
    r = c.post("/predict", json={"tasks": tasks, "project": "1.1", "label_config": CONFIG})
    assert r.status_code == 200
    results = r.json()["results"]
    assert len(results) == len(tasks) and all(res["result"] == [] for res in results[:8])
    assert all(res["result"] for res in results[8:])
    assert [e["task"] for e in r.json()["errors"]] == list(range(100, 108))

    post("/webhook", {"project": {"id": 1}}, match="no 'action'")
    post("/webhook", {"action": 5, "project": {"id": 1}}, match="'action'")
    post("/webhook", {"action": "START_TRAINING"}, match="START_TRAINING: 'project' is missing")
    post("/webhook", {"action": "START_TRAINING", "project": {"title": "x"}}, match="'project.id'")
    r = c.post("/webhook", json={"action": "SOMETHING_NEW"})
    assert r.status_code == 200 and r.json() == {"status": "ignored", "action": "SOMETHING_NEW"}


def test_export_brush_regions_with_unknown_labels_or_huge_sizes(caplog):
    mask = np.zeros((4, 5), bool)
    mask[1:3, 1:3] = True
    typo = brush(mask, label="Spuriuos", region_id="typo")
    stranger = brush(mask, label="Foo", from_name="unknown_brush", region_id="stranger")
    attention = brush(mask, label="Model attention", from_name="attention", region_id="accepted-prediction")
    huge = brush(mask, region_id="huge")
    huge["original_width"] = huge["original_height"] = 100_000  # 10^10 pixels: refused before decoding
    tasks = [
        export_task(1, "/a.png", annotations=[annotation(1, 1, [brush(mask), typo, stranger, attention])]),
        export_task(2, "/b.png", annotations=[annotation(2, 2, [huge])]),
        export_task(3, "/c.png", annotations=[annotation(3, 3, [{"type": "brushlabels", "value": [1, 2]}])]),
    ]
    out = parse_export(tasks, PARSED)
    assert [r.task_id for r in out.records] == [1, 3] and out.records[0].mask.sum() == 4
    assert out.skipped == {"bad_mask": [2]} and out.ignored_regions == {"unknown_brush_label": [1, 1, 3]}
    assert out.counts()["ignored_regions"] == {"unknown_brush_label": 3}
    assert "'Spuriuos'" in caplog.text and "'unknown_brush'" in caplog.text and "more than 64000000 pixels" in caplog.text


# --------------------------------------------------------------------------------------------------
# generated payloads against the app

json_leaf = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=30)
json_value = st.recursive(json_leaf, lambda ch: st.lists(ch, max_size=4) | st.dictionaries(st.text(max_size=10), ch, max_size=4),
                          max_leaves=12)
projects = st.one_of(st.sampled_from(["1.1", "2.1795450542", "1", 1, 2.0, "0", "-3", "x.1", "", "1e9", "99999999999999999999",
                                       {"id": 1}, {"id": "2"}, {"id": None}, [], True]), json_value)
configs = st.one_of(st.sampled_from([CONFIG, CONFIG, render_config(["a", "b"]), "<View/>", "<View><Image name='x' value='$x'/></View>",
                                     "<View><unclosed", "", "not xml", CONFIG.replace("Choices", "Choicez")]),
                    json_value, st.text(max_size=60))


@st.composite
def mutated(draw, data: bytes):
    """``data`` with a few bytes flipped, cut short or extended."""
    b = bytearray(data)
    for _ in range(draw(st.integers(0, 4))):
        if b:
            b[draw(st.integers(0, len(b) - 1))] = draw(st.integers(0, 255))
    cut = draw(st.integers(0, len(b)))
    return bytes(b[:cut] if draw(st.booleans()) else b) + draw(st.binary(max_size=8))


image_urls = st.one_of(
    st.sampled_from(SAMPLE_IMAGES).map(data_uri),
    st.sampled_from(SAMPLE_IMAGES[:3]).flatmap(mutated).map(data_uri),
    st.binary(max_size=64).map(data_uri),
    st.sampled_from(["/data/upload/1/a.png", "/data/upload/1/garbage.png", "/data/upload/1/nope.png", "data:,", "data:",
                     "data:image/png;base64,@@@", "http://169.254.169.254/", "http://127.0.0.1:6379/", "file:///etc/passwd",
                     "file:///proc/self/environ", "gopher://x", "//evil.example/x.png", "/../../etc/passwd",
                     "http://[::1/", "http://a@b/", "\x00", " ", "\\\\server\\share"]),
    st.text(max_size=40),
    json_value,
)
tasks = st.one_of(
    st.fixed_dictionaries({"data": st.fixed_dictionaries({"image": image_urls}, optional={"key": st.text(max_size=12)})},
                          optional={"id": st.one_of(st.integers(-5, 10**6), json_value)}),
    json_value,
)
predict_bodies = st.one_of(
    st.fixed_dictionaries(
        {"tasks": st.one_of(st.lists(tasks, max_size=6), json_value)},
        optional={"project": projects, "label_config": configs,
                  "params": st.one_of(json_value, st.fixed_dictionaries({"context": json_value}))},
    ),
    json_value,
)
setup_bodies = st.one_of(
    st.fixed_dictionaries({}, optional={"project": projects, "schema": configs, "hostname": st.one_of(json_value, st.sampled_from(
        ["http://127.0.0.1:1", "https://ls.example", "ftp://x", "javascript:1"])), "access_token": json_value,
        "extra_params": json_value}),
    json_value,
)
webhook_bodies = st.one_of(
    st.fixed_dictionaries({}, optional={
        "action": st.one_of(st.sampled_from(["START_TRAINING", "ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED",
                                             "PROJECT_UPDATED", "TASKS_CREATED", "", " ", "start_training"]), json_value),
        "project": projects, "annotation": json_value, "task": json_value}),
    json_value,
)


def _post(client, path: str, body) -> None:
    try:
        raw = json.dumps(body)
    except (ValueError, TypeError):
        raw = str(body)
    r = client.post(path, content=raw.encode("utf-8", "surrogatepass"), headers={"Content-Type": "application/json"})
    check(r, f"{path} {raw[:300]}")


@FUZZ
@given(body=predict_bodies)
def test_fuzz_predict(app_client, body):
    FUZZED["/predict"] += 1
    with time_limit(60, "/predict"):
        _post(app_client, "/predict", body)


@FUZZ
@given(body=setup_bodies)
def test_fuzz_setup(app_client, body):
    FUZZED["/setup"] += 1
    with time_limit(60, "/setup"):
        _post(app_client, "/setup", body)


@FUZZ
@given(body=webhook_bodies)
def test_fuzz_webhook(app_client, body):
    FUZZED["/webhook"] += 1
    with time_limit(60, "/webhook"):
        _post(app_client, "/webhook", body)


@FUZZ
@given(raw=st.one_of(st.binary(max_size=300), st.text(max_size=100).map(lambda t: t.encode("utf-8", "surrogatepass"))))
def test_fuzz_raw_bodies(app_client, raw):
    FUZZED["raw bodies"] += 3  # one body, three endpoints
    with time_limit(60, "raw"):
        for path in ("/predict", "/setup", "/webhook"):
            check(app_client.post(path, content=raw, headers={"Content-Type": "application/json"}), f"{path} raw {raw[:80]!r}")


# --------------------------------------------------------------------------------------------------
# generated RLE streams, exports and image bytes against the decoders


@st.composite
def rle_cases(draw):
    h, w = draw(st.integers(0, 24)), draw(st.integers(0, 24))
    mask = draw(st.lists(st.booleans(), min_size=h * w, max_size=h * w))
    good = encode_mask(np.array(mask, dtype=bool).reshape(h, w)) if h * w else encode_mask(np.zeros((1, 1), bool))
    kind = draw(st.sampled_from(["good", "mutated", "random", "values", "wrong size"]))
    if kind == "mutated":
        rle = list(draw(mutated(bytes(good))))
    elif kind == "random":
        rle = list(draw(st.binary(max_size=120)))
    elif kind == "values":
        rle = draw(st.lists(st.one_of(st.integers(-300, 300), json_leaf), max_size=30))
    else:
        rle = good
    if kind == "wrong size":
        h, w = h + draw(st.integers(1, 3)), w
    return rle, h, w


@FUZZ
@given(case=rle_cases(), as_type=st.sampled_from(["list", "bytes", "array"]))
def test_fuzz_decode_rle(case, as_type):
    FUZZED["decode_rle"] += 1
    rle, h, w = case
    if as_type == "bytes" and all(isinstance(v, int) and 0 <= v < 256 for v in rle):
        rle = bytes(rle)
    elif as_type == "array" and all(isinstance(v, int) and not isinstance(v, bool) and abs(v) < 2**62 for v in rle):
        rle = np.array(rle, dtype=np.int64)
    with time_limit(30, "decode_rle"):
        try:
            mask = decode_rle(rle, h, w)
        except RLEError:
            return
    assert mask.shape == (h, w) and mask.dtype == bool


region_values = st.one_of(
    st.fixed_dictionaries({"format": st.sampled_from(["rle", "rle", "png"]), "rle": st.one_of(
        st.just(encode_mask(np.ones((4, 5), bool))), st.binary(max_size=40).map(list), json_value),
        "brushlabels": st.one_of(st.sampled_from([["Spurious"], ["Model attention"], ["Spuriouz"], [], ["Spurious", "x"]]), json_value)}),
    json_value,
)
regions = st.one_of(
    st.fixed_dictionaries({"type": st.sampled_from(["brushlabels", "choices", "rectanglelabels"]), "value": region_values},
                          optional={"from_name": st.sampled_from(["spurious", "attention", "pred_class", "other"]),
                                    "to_name": st.sampled_from(["image", "saliency", "x"]),
                                    "original_width": st.one_of(st.sampled_from([5, 4, 0, -1, 10**7, True]), json_value),
                                    "original_height": st.one_of(st.sampled_from([4, 5, 0, 10**7]), json_value),
                                    "id": json_value}),
    st.fixed_dictionaries({"type": st.just("choices"), "from_name": st.just("pred_class"),
                           "value": st.fixed_dictionaries({"choices": st.one_of(st.lists(st.sampled_from(CLASSES + ["zebra"])), json_value)})}),
    json_value,
)
export_tasks = st.one_of(
    st.fixed_dictionaries({"id": st.one_of(st.integers(1, 50), json_value), "data": st.one_of(st.fixed_dictionaries(
        {"image": st.one_of(st.just("/data/upload/1/a.png"), json_value)},
        optional={"split": st.one_of(st.sampled_from(["train", "test"]), json_value),
                  "label": st.one_of(st.sampled_from(CLASSES + ["zebra"]), json_value)}), json_value)},
        optional={"annotations": st.one_of(st.lists(st.one_of(st.fixed_dictionaries(
            {"id": st.integers(1, 9), "result": st.one_of(st.lists(regions, max_size=4), json_value)},
            optional={"was_cancelled": st.booleans(), "updated_at": st.one_of(st.text(max_size=5), json_value)}), json_value),
            max_size=3), json_value)}),
    json_value,
)


@FUZZ
@given(export=st.lists(export_tasks, max_size=6), merge=st.booleans(), source=st.sampled_from(["annotation", "data"]))
def test_fuzz_parse_export(export, merge, source):
    FUZZED["parse_export"] += 1
    with time_limit(30, "parse_export"):
        out = parse_export(export, PARSED, merge_annotations=merge, label_source=source)
    json.dumps(out.counts())
    assert len(out.records) + sum(len(v) for v in out.skipped.values()) == len(export)
    for rec in out.records:
        assert rec.target in CLASSES and (rec.mask is None or (rec.mask.dtype == bool and rec.mask.any()))


@FUZZ
@given(data=st.one_of(st.binary(max_size=200), st.sampled_from(SAMPLE_IMAGES[:-1]).flatmap(mutated)))
def test_fuzz_decode_image(data):
    FUZZED["decode_image"] += 1
    with time_limit(30, "decode_image"):
        try:
            img = decode_image(data, "fuzz")
        except ImageError:
            return
    assert img.mode == "RGB" and img.size[0] > 0 and img.size[1] > 0


def test_fuzz_total(capsys):
    """Runs last in this module: the number of generated inputs (README figure)."""
    total = sum(FUZZED.values())
    with capsys.disabled():
        print(f"\n[fuzz] {total} generated inputs, no 5xx and no escaped exception: {dict(FUZZED)}")
    if len(FUZZED) == 8:  # the whole module ran
        assert total >= 1000
