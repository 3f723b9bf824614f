"""Issue 23: the report page shows what changed (fixed/broken test images with both versions' heatmaps) and the
attention-on-spurious share before/after; its pictures are served next to curves.png under the same access
rules, and only by the names the training job writes."""

from __future__ import annotations

import json

from fastapi.testclient import TestClient

from devkit.builders import png_bytes
from ml_backend.api.app import create_app
from ml_backend.credentials import basic_auth_header
from ml_backend.predict.report_page import report_page
from ml_backend.settings import Settings
from training.checkpoints import CheckpointStore

USER, PASSWORD = "label-studio", "s3cret-pass-word"
AUTH = {"Authorization": basic_auth_header(USER, PASSWORD)}
ROW = {"task": 41, "true": "circle", "parent": "square", "new": "circle", "image": "changes/fixed-00.png"}
SUMMARY = {
    "version": "v1", "parent": "v0", "arch": "tiny-cnn", "init": "v0 (fine-tuned)",
    "metrics": {"new": {"test": {"accuracy": 0.9, "n": 32}}, "parent": {"test": {"accuracy": 0.4}},
                "delta_accuracy": {"test": 0.5}},
    "changes": {"split": "test", "method": "gradcam", "fixed": 17, "broken": 1,
                "shown": {"fixed": [ROW], "broken": [{**ROW, "task": 42, "parent": "circle", "new": "square",
                                                      "image": "changes/broken-00.png"}]}},
    "attention": {"method": "gradcam", "target": "predicted class", "split": "train", "masked": 90, "measured": 90,
                  "painted": 3, "classes": {"circle": {"before": 0.61, "after": 0.05, "area": 0.03, "images": 30}},
                  "overall": {"before": 0.5, "after": 0.04, "area": 0.03, "images": 90}},
    "options": {"mode": "finetune", "epochs": 20, "lr": 0.001, "align": "kl", "noise_mode": "counterfactual_mixture"},
    "recipe": {"epochs": [20, "about 600 steps"]},
}


def test_the_page_shows_what_changed_and_the_attention_before_and_after():
    html = report_page(SUMMARY, ["v0", "v1"], curves=True)
    assert "What changed" in html and "fixed 17" in html and "broke 1" in html and "the 1 largest changes" in html
    assert '<img src="v1/changes/fixed-00.png"' in html and '<img src="v1/changes/broken-00.png"' in html
    assert "true <b>circle</b> · v0: <span class=\"neg\">square</span> → v1: <span class=\"pos\">circle</span>" in html
    assert "Attention on spurious pixels" in html and '<table id="attention">' in html
    assert "<td>circle</td><td>61.0%</td><td>5.0%</td><td>3.0%</td><td>30</td>" in html
    assert "<td><b>all</b></td><td>50.0%</td><td>4.0%</td>" in html
    # a short recipe line; every option, with the recipe's reason, folded away (not a raw dump)
    assert "Recipe: tiny-cnn · mode finetune, epochs 20, lr 0.001, align kl" in html
    assert "<details><summary>all options</summary>" in html and "<td class=text>about 600 steps</td>" in html
    assert "curves.png" in html and '<a href="v0">v0</a>' in html


def test_a_picture_name_the_job_never_writes_gets_no_img():
    rows = [{**ROW, "image": name} for name in ("../summary.json", "changes/../summary.json", "changes/fixed-0.png",
                                                "/etc/passwd", "changes/fixed-00.png/x", "fixed-00.png")]
    summary = {**SUMMARY, "changes": {**SUMMARY["changes"], "shown": {"fixed": rows, "broken": []}}}
    assert "<img src" not in report_page(summary, ["v1"], curves=False)


def test_without_a_parent_to_compare_or_masks_the_page_says_so():
    summary = {**SUMMARY, "changes": None, "attention": {"note": "no training image has a painted or proposed "
                                                                 "spurious mask", "overall": None}}
    html = report_page(summary, ["v1"], curves=False)
    assert "Not compared with v0" in html and "no training image has a painted" in html


def write_run(tmp_path) -> tuple[Settings, bytes]:
    store = CheckpointStore(tmp_path / "models", 3)
    run = store.root / "runs" / "v1"
    (run / "changes").mkdir(parents=True)
    (run / "summary.json").write_text(json.dumps(SUMMARY))
    picture = png_bytes((30, 10))
    (run / "changes" / "fixed-00.png").write_bytes(picture)
    (store.root / "secret.png").write_bytes(b"not for you")
    settings = Settings(model_dir=tmp_path / "models", redis_url="redis://127.0.0.1:1/0", predict_parts=(),
                        basic_auth_user=USER, basic_auth_pass=PASSWORD)
    return settings, picture


def test_pictures_are_served_beside_curves_with_the_same_auth_and_no_path_escape(tmp_path):
    settings, picture = write_run(tmp_path)
    with TestClient(create_app(settings)) as c:
        page = c.get("/report/3/v1", headers=AUTH)
        assert page.status_code == 200 and "What changed" in page.text
        r = c.get("/report/3/v1/changes/fixed-00.png", headers=AUTH)
        assert r.status_code == 200 and r.content == picture and r.headers["content-type"] == "image/png"
        for path in ("/report/3/v1", "/report/3/v1/changes/fixed-00.png", "/report/3/v1/curves.png"):
            assert c.get(path).status_code == 401, path  # as curves.png: basic auth, no signed exception
        assert c.get("/report/3/v1/changes/broken-00.png", headers=AUTH).status_code == 404  # not written
        for probe in ("/report/3/v1/changes/..%2F..%2Fsecret.png", "/report/3/v1/changes/..%2Fsummary.json",
                      "/report/3/v1/changes/%2e%2e%2f%2e%2e%2fsecret.png", "/report/3/v1/changes/fixed-00.png%00",
                      "/report/3/..%2Fv1/changes/fixed-00.png", "/report/3/v1%2F..%2F..%2F/changes/fixed-00.png",
                      "/report/3/v01x/changes/fixed-00.png", "/report/0/v1/changes/fixed-00.png",
                      "/report/3/v1/changes/FIXED-00.PNG", "/report/3/v1/changes/summary.json"):
            r = c.get(probe, headers=AUTH)
            assert r.status_code in (404, 422) and b"not for you" not in r.content and b"tiny-cnn" not in r.content, probe
