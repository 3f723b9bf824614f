"""Issue 23: a trained version's report page in Chromium, served by a real ``robustar serve``: the fixed and
broken pictures (image, parent's heatmap, new heatmap) load, the attention-on-spurious table is there, and the
page logs no console error. No Label Studio: the version comes from ``training.pipeline.run_pipeline`` on a
small generated project (a few seconds), the page from the backend that serves its model folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from devkit.builders import synthetic_export
from label_config.export import parse_export
from label_config.render import parse_config, render_config
from ml_backend.labelstudio.fetch import FetchPolicy, ImageFetcher
from ml_backend.predict.registry import model_defaults
from ml_backend.settings import Settings
from tests.browser import ui
from tests.e2e.backend import BackendProcess
from training.checkpoints import CheckpointStore
from training.options import TrainOptions
from training.pipeline import run_pipeline
from training.synthetic import make_spurious_dataset

CLASSES = ["circle", "square", "triangle"]
PROJECT, SIZE = 4, 32


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, dict]:
    """A model folder with v0 (random init) and v1 (2 epochs, every 4th training image painted)."""
    root = tmp_path_factory.mktemp("report-page")
    make_spurious_dataset(root / "data", classes=tuple(CLASSES), n_train=12, n_test=6, size=SIZE, seed=1)
    tasks, _ = synthetic_export(root / "data", CLASSES, paint_every=4)
    settings = Settings(model_dir=root / "models", model_arch="tiny-cnn", image_size=SIZE, seed=0,
                        saliency_method="gradcam")
    opts = TrainOptions.resolve({}, {"epochs": 2, "batch_size": 16, "lr": 0.05, "device": "cpu", "num_workers": 2})
    summary = run_pipeline(CheckpointStore(settings.model_dir, PROJECT), CLASSES,
                           parse_export(tasks, parse_config(render_config(CLASSES))), opts,
                           ImageFetcher(None, None, FetchPolicy.from_settings(settings)).fetch,
                           model_defaults(settings), saliency_method=settings.saliency_method).summary
    changes = summary["changes"]
    assert changes["shown"]["fixed"] or changes["shown"]["broken"], f"v1 changed no test prediction: {changes}"
    return settings.model_dir, summary


def test_the_report_shows_what_changed_and_the_attention_on_spurious_pixels(page, trained, redis_url, tmp_path):
    model_dir, summary = trained
    env = {"MODEL_DIR": str(model_dir), "REDIS_URL": redis_url, "MODEL_ARCH": "tiny-cnn", "IMAGE_SIZE": str(SIZE),
           "PREDICT_PARTS": "saliency"}
    with BackendProcess(env, tmp_path / "backend.log", timeout=180) as backend:
        log = ui.page_log(page)
        page.goto(f"{backend.url}/report/{PROJECT}/{summary['version']}")
        page.locator("#attention").wait_for()
        page.wait_for_function("() => [...document.images].every(i => i.complete)", timeout=30_000)
        pictures = page.locator("figure img").evaluate_all(
            "els => els.map(e => ({src: e.getAttribute('src'), width: e.naturalWidth}))")
        curves = page.locator("img[src$='curves.png']").evaluate("e => e.naturalWidth")
        attention = page.locator("#attention").inner_text()
        text = page.inner_text("body")
        path = ui.shot(page, f"report-{summary['version']}")
    shown = summary["changes"]["shown"]
    assert len(pictures) == len(shown["fixed"]) + len(shown["broken"]), pictures
    assert all(p["width"] > 0 for p in pictures), f"a fixed/broken picture did not load: {pictures}\n{log.summary()}"
    assert curves > 0, "the training curves did not load"
    assert "What changed" in text and f"fixed {summary['changes']['fixed']}" in text
    assert "before (v0)" in attention and "after (v1)" in attention and "all" in attention, attention
    for name in CLASSES:
        assert name in attention, attention
    assert not log.errors() and not log.page_errors and not log.http_errors, log.summary()
    assert path.suffix == ".png"
