"""Issue 21 (12): the report page writes every number of ``summary.json`` escaped (a summary is a file on
disk, but its numbers were written into the HTML as they were: a string there became markup)."""

from __future__ import annotations

import json

from fastapi.testclient import TestClient

from ml_backend.api.app import create_app
from ml_backend.settings import Settings
from training.checkpoints import CheckpointStore

EVIL = "<script>alert(1)</script>"


def test_report_page_escapes_the_numbers_it_writes(tmp_path):
    store = CheckpointStore(tmp_path / "models", 3)
    run = store.root / "runs" / "v1"
    run.mkdir(parents=True)
    summary = {"version": "v1", "parent": "v0", "arch": "tiny-cnn",
               "metrics": {"new": {"train": {"accuracy": EVIL, "n": EVIL, "n_painted": EVIL}},
                           "parent": {"train": {"accuracy": 0.5}}, "delta_accuracy": {"train": EVIL}},
               "counts": {"train_images": EVIL, "train_painted": EVIL, "propagated_used": EVIL, "propagated": EVIL,
                          "corrected": EVIL, "skipped": {"bad rle": EVIL}},
               # issue 23: what changed and the attention share, written by the job from class names and numbers
               "changes": {"split": EVIL, "method": EVIL, "fixed": EVIL, "broken": EVIL,
                           "shown": {"fixed": [{"task": EVIL, "true": EVIL, "parent": EVIL, "new": EVIL,
                                                "image": "changes/fixed-00.png"}]}},
               "attention": {"method": EVIL, "split": EVIL, "measured": EVIL, "masked": EVIL, "painted": EVIL,
                             "classes": {EVIL: {"before": EVIL, "after": 0.1, "images": EVIL}},
                             "overall": {"before": 0.2, "after": 0.1, "images": 3}},
               "options": {EVIL: EVIL}, "recipe": {EVIL: [EVIL, EVIL]}}
    (run / "summary.json").write_text(json.dumps(summary))
    settings = Settings(model_dir=tmp_path / "models", redis_url="redis://127.0.0.1:1/0", predict_parts=())
    with TestClient(create_app(settings)) as c:
        r = c.get("/report/3/v1")
    assert r.status_code == 200, r.text[:300]
    assert "<script>" not in r.text and r.text.count("&lt;script&gt;") >= 25
    assert r.headers["x-content-type-options"] == "nosniff"
