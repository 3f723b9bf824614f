"""Formats a lab has (tests/fixtures/formats, written by its make_formats.py): what the model sees of each,
and, for an EXIF-rotated photo, the painted mask, the attention region and the heatmap lining up with the
image as Label Studio shows it (upright, as browsers show EXIF-rotated photos)."""

from __future__ import annotations

import base64
import io
import logging

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from devkit.builders import export_task, annotation
from label_config import regions, render_config
from label_config.export import parse_export
from label_config.render import parse_config
from tests.fixtures import fixture_path
from training.images import PAGES_KEY, decode_image, original_size, resize_rgb

FORMATS = fixture_path("formats")
S = 16  # the model input size of these tests


def seen(name: str, **kw) -> np.ndarray:
    """What the model sees of a fixture: decoded, resized to S x S (H x W x 3 uint8)."""
    return resize_rgb(decode_image((FORMATS / name).read_bytes(), name, **kw), S)


def left_right(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean colour of the left and right quarter columns (away from the blurred middle)."""
    return a[:, : S // 4].reshape(-1, 3).mean(0), a[:, -S // 4:].reshape(-1, 3).mean(0)


def test_8bit_grayscale_is_kept_as_it_is():
    left, right = left_right(seen("gray8.png"))
    assert np.allclose(left, 40, atol=1) and np.allclose(right, 200, atol=1)


def test_a_12bit_image_in_a_16bit_file_is_stretched_by_its_own_range_not_divided_by_256():
    left, right = left_right(seen("gray12_in16.png"))
    assert left.max() <= 5 and right.min() >= 250  # value / 256 gave 0.8 and 14.8: black
    assert np.allclose(left, left[0]) and np.allclose(right, right[0])  # gray: R = G = B


def test_16bit_tiff_ramp_spans_the_range_and_one_hot_pixel_does_not_darken_it():
    img = decode_image((FORMATS / "gray16.tif").read_bytes(), "gray16.tif")
    row = np.asarray(img)[5, :, 0].astype(int)
    assert row[0] <= 3 and row[-1] >= 252 and (np.diff(row) >= 0).all()  # 1000..60000 -> 0..255, monotone


def test_float_tiff_is_stretched_too():
    left, right = left_right(seen("float32.tif"))
    assert left.max() <= 5 and right.min() >= 250


def test_multipage_tiff_gives_its_first_page_and_says_so(caplog):
    with caplog.at_level(logging.INFO, logger="training.images"):
        img = decode_image((FORMATS / "multipage.tif").read_bytes(), "stack.tif")
    assert img.info[PAGES_KEY] == 2 and "stack.tif: 2 pages; the first is used" in caplog.text
    assert np.asarray(img).reshape(-1, 3).mean(0).round().tolist() == [255, 0, 0]  # page 1 red, not page 2 blue


def test_rgba_drops_the_alpha_as_torchvision_does():
    left, right = left_right(seen("rgba.png"))
    assert left.round().tolist() == [255, 0, 0] and right.round().tolist() == [0, 255, 0]


def test_palette_colours_come_through():
    left, right = left_right(seen("palette.png"))
    assert left.round().tolist() == [255, 128, 0] and right.round().tolist() == [0, 0, 128]


def test_cmyk_jpeg_becomes_the_rgb_it_prints_as():
    left, right = left_right(seen("cmyk.jpg"))
    assert left[0] < 30 and left[1] > 225 and left[2] > 225  # cyan
    assert right[0] > 225 and right[1] > 225 and right[2] < 30  # yellow


def test_exif_rotated_photo_is_seen_upright_at_its_shown_size():
    img = decode_image((FORMATS / "exif_rotated.jpg").read_bytes(), "photo.jpg")
    assert img.size == (32, 48)  # stored 48 x 32, shown rotated
    a = np.asarray(img).astype(int)
    assert a[:20, :, 0].mean() > 200 and a[:20, :, 2].mean() < 60  # the red half is on top
    assert a[-20:, :, 2].mean() > 200 and a[-20:, :, 0].mean() < 60
    small = decode_image((FORMATS / "exif_rotated.jpg").read_bytes(), "photo.jpg", max_side=24)
    assert small.size == (16, 24) and original_size(small) == (32, 48)  # downscaled upright, stored size upright


def _exif_uri() -> str:
    return "data:image/jpeg;base64," + base64.b64encode((FORMATS / "exif_rotated.jpg").read_bytes()).decode()


def test_a_mask_painted_on_the_upright_photo_lines_up_with_what_the_model_sees():
    """The expert paints the red (top) half in Label Studio: the RLE is at the upright 32 x 48 size."""
    from training.dataset import load_splits

    painted = np.zeros((48, 32), dtype=bool)
    painted[:24] = True
    classes = ["red", "blue"]
    config = parse_config(render_config(classes))
    result = [regions.brush(painted, region_id="s"), regions.choices("red", region_id="c")]
    tasks = [export_task(1, _exif_uri(), "train", "red", [annotation(1, 1, result)])]
    export = parse_export(tasks, config)
    (rec,) = export.records
    assert rec.mask.shape == (48, 32)
    splits = load_splits(export, lambda url: decode_image(base64.b64decode(url.split(",", 1)[1]), url[:30]), S, classes)
    x, m = splits["train"].images[0].numpy(), splits["train"].masks[0, 0].numpy()
    red = (x[0].astype(int) > 150) & (x[2].astype(int) < 100)
    assert m.sum() > 0 and (red == m).mean() > 0.9  # the mask covers the red pixels the model sees


def test_attention_region_and_heatmap_are_upright_at_the_shown_size(tmp_path):
    from tests.ml_backend.predict.test_saliency import LEGACY_XML

    from ml_backend.api.server import build_app
    from ml_backend.settings import Settings

    settings = Settings(model_dir=tmp_path, model_arch="tiny-cnn", image_size=S, redis_url="redis://127.0.0.1:1/0",
                        predict_parts=("saliency",), saliency_method="gradcam", saliency_alpha=0.3)
    tasks = [{"id": 5, "data": {"image": _exif_uri(), "split": "test"}}]
    with TestClient(build_app(settings)) as client:
        r = client.post("/predict", json={"tasks": tasks, "project": "4.1", "label_config": LEGACY_XML,
                                          "params": {"context": None}})
        assert r.status_code == 200, r.text
        (brush,) = [x for x in r.json()["results"][0]["result"] if x["from_name"] == "attention"]
        assert (brush["original_width"], brush["original_height"]) == (32, 48)
        png = client.get("/saliency/4/5")
        assert png.status_code == 200
        with Image.open(io.BytesIO(png.content)) as heat:
            assert heat.size == (32, 48)
            a = np.asarray(heat.convert("RGB")).astype(int)
    # the photo under the heatmap (70% of each pixel) is upright: more red on top than below, more blue below
    assert a[:20, :, 0].mean() - a[:20, :, 2].mean() > 60 and a[-20:, :, 2].mean() - a[-20:, :, 0].mean() > 60


@pytest.mark.parametrize("name", ["gray12_in16.png", "gray16.tif", "float32.tif", "multipage.tif", "rgba.png",
                                  "palette.png", "cmyk.jpg", "exif_rotated.jpg"])
def test_every_format_decodes_to_rgb_within_max_side(name):
    img = decode_image((FORMATS / name).read_bytes(), name, max_side=20)
    assert img.mode == "RGB" and max(img.size) == 20
