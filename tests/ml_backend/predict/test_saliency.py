"""Saliency part: on a tiny model whose class is decided by one image region, attention lands there."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from label_config import render_config
from label_config.render import parse_config
from label_config.rle import decode_rle
from ml_backend.predict.heatmaps import HeatmapCache, overlay_png, task_key
from ml_backend.predict.parts import PredictContext
from ml_backend.predict.saliency import METHODS, SaliencyPart, saliency_maps, top_q_mask
from ml_backend.api.server import build_app
from ml_backend.predict.registry import ServedModel
from ml_backend.settings import Settings
from training.checkpoints import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    CheckpointMeta,
    CheckpointStore,
)
from training.images import normalize, to_batch
from training.models import build_model

CLASSES = ["red", "blue"]
CONFIG = parse_config(render_config(CLASSES))  # one paint tool: attention only as the heatmap view
# configs of earlier versions had a second BrushLabels for the model's attention
LEGACY_XML = render_config(CLASSES).replace('<MagicWand name="magicwand" toName="image"/>', (
    '<MagicWand name="magicwand" toName="image"/><BrushLabels name="attention" toName="image">'
    '<Label value="Model attention" background="#ffaa00"/></BrushLabels>'))
LEGACY_CONFIG = parse_config(LEGACY_XML)
S = 32
ROWS, COLS = slice(18, 30), slice(16, 28)  # the region that decides the class (14% of the image)


def _images(n: int, rng: np.random.Generator) -> tuple[list[Image.Image], torch.Tensor]:
    """Uniform noise everywhere except one square whose colour is the class."""
    x = rng.integers(0, 256, (n, S, S, 3)).astype(np.uint8)
    y = rng.integers(0, 2, n)
    for i in range(n):
        x[i, ROWS, COLS] = (200, 40, 40) if y[i] == 0 else (40, 40, 200)
    return [Image.fromarray(a) for a in x], torch.from_numpy(y)


@pytest.fixture(scope="module")
def trained():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny model: threads only add contention on a shared CPU
    try:
        yield _train()
    finally:
        torch.set_num_threads(threads)


def _train():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    imgs, y = _images(256, rng)
    x = normalize(to_batch(imgs, S), IMAGENET_MEAN, IMAGENET_STD)
    model = build_model("tiny-cnn", 2)
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    for _ in range(200):
        idx = torch.randint(0, len(y), (32,))
        loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    test_imgs, test_y = _images(16, rng)
    meta = CheckpointMeta(version="v0", arch="tiny-cnn", classes=CLASSES, image_size=S)
    xt = normalize(to_batch(test_imgs, S), IMAGENET_MEAN, IMAGENET_STD)
    with torch.no_grad():
        probs = torch.softmax(model(xt), 1)
    assert (probs.argmax(1) == test_y).float().mean() >= 0.9  # the model did learn the region
    return model, meta, test_imgs, probs


def _region() -> np.ndarray:
    r = np.zeros((S, S), bool)
    r[ROWS, COLS] = True
    return r


@pytest.mark.parametrize("method", METHODS)
def test_top_q_pixels_fall_in_the_deciding_region(trained, method):
    model, meta, imgs, probs = trained
    x = normalize(to_batch(imgs, S), meta.mean, meta.std)
    maps = saliency_maps(model, x, probs.argmax(1), method)
    assert maps.shape == (len(imgs), S, S) and (maps >= 0).all()
    inside = [(top_q_mask(m.numpy(), 5) & _region()).sum() / top_q_mask(m.numpy(), 5).sum() for m in maps]
    chance = _region().mean()
    assert np.mean(inside) >= (0.8 if method == "gradcam" else 0.5), inside  # chance would be 0.14
    assert np.mean(inside) > 3 * chance


def test_top_q_mask_takes_exactly_q_percent():
    sal = np.arange(200, dtype=np.float32).reshape(10, 20)
    m = top_q_mask(sal, 5)
    assert m.sum() == 10 and m.ravel()[-10:].all()
    assert top_q_mask(np.zeros((4, 4)), 50).sum() == 0  # no attention, no region


def _ctx(trained, images, settings, tasks=None, config=LEGACY_CONFIG) -> PredictContext:
    model, meta, _, _ = trained
    served = ServedModel(model, meta, "cpu")
    tasks = tasks or [{"id": 100 + i, "data": {"key": f"test/red/{i}.png", "split": "test"}} for i in range(len(images))]
    with torch.no_grad():
        probs = torch.softmax(model(normalize(to_batch(images, S), meta.mean, meta.std)), 1)
    return PredictContext(3, settings, config, served, tasks, images, probs)


def test_part_gives_attention_rle_and_png_at_original_size(trained, tmp_path):
    _, _, imgs, _ = trained
    # the task images are bigger and not square: the model sees them resized, the outputs must not be
    images = [imgs[0].resize((80, 60)), imgs[1].resize((45, 70))]
    settings = Settings(model_dir=tmp_path)
    part = SaliencyPart("gradcam", top_q=5)
    ctx = _ctx(trained, images, settings)
    out = part(ctx)
    cache = HeatmapCache(tmp_path, 3)
    for img, task, regions in zip(images, ctx.tasks, out.regions):
        (r,) = regions
        assert r["from_name"] == "attention" and r["to_name"] == "image" and r["type"] == "brushlabels"
        assert r["value"]["brushlabels"] == ["Model attention"] and r["value"]["format"] == "rle"
        assert (r["original_width"], r["original_height"]) == img.size
        mask = decode_rle(r["value"]["rle"], img.height, img.width)
        assert abs(mask.sum() - 0.05 * img.width * img.height) <= 1
        # the attention sits on the deciding region, scaled to the original size
        region = np.asarray(Image.fromarray(_region()).resize(img.size, Image.NEAREST))
        assert (mask & region).sum() / mask.sum() > 0.8
        png = cache.path("v0", task_key(task))
        assert png.is_file()
        with Image.open(png) as heat:
            assert heat.size == img.size and heat.mode == "RGB"


def test_our_config_gets_the_heatmap_and_no_second_paint_tool(trained, tmp_path):
    _, _, imgs, _ = trained
    ctx = _ctx(trained, imgs[:2], Settings(model_dir=tmp_path), config=CONFIG)
    out = SaliencyPart("gradcam", top_q=5)(ctx)
    assert out.regions == [[], []]
    assert all(HeatmapCache(tmp_path, 3).path("v0", task_key(t)).is_file() for t in ctx.tasks)


def test_other_methods_run_through_the_part(trained, tmp_path):
    _, _, imgs, _ = trained
    for method in ("grad", "max_grad", "ig"):
        out = SaliencyPart(method, top_q=10, ig_steps=4, write_png=False)(_ctx(trained, imgs[:3], Settings(model_dir=tmp_path)))
        assert all(len(r) == 1 for r in out.regions)
        assert not (tmp_path / "project-3").exists()


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="SALIENCY_METHOD"):
        SaliencyPart("lime")
    with pytest.raises(ValueError, match="SALIENCY_TOP_Q"):
        SaliencyPart("grad", top_q=0)


def test_heatmap_route_serves_the_cached_png(trained, tmp_path):
    model, meta, imgs, _ = trained
    settings = Settings(model_dir=tmp_path, model_arch="tiny-cnn", image_size=S, redis_url="redis://127.0.0.1:1/0",
                        predict_parts=())
    store = CheckpointStore(tmp_path, 3)
    store.save(model, meta)
    store.publish("v0")
    key = "train/red/with space#1.png"
    with TestClient(build_app(settings)) as client:
        quoted = "train/red/with%20space%231.png"  # what the importer writes: urllib.parse.quote(key)
        r = client.get(f"/saliency/3/{quoted}")
        assert r.status_code == 404 and "not computed" not in r.text and "no saliency heatmap" in r.json()["message"]
        png = overlay_png(imgs[0], np.random.default_rng(0).random((S, S)))
        HeatmapCache(tmp_path, 3).write("v0", key, png)
        r = client.get(f"/saliency/3/{quoted}")
        assert r.status_code == 200 and r.headers["content-type"] == "image/png" and r.content == png
        assert r.headers["x-robustar-model-version"] == "v0"
        # a newer version without its own heatmap yet still shows the newest older one
        meta1 = CheckpointMeta(version="v1", arch="tiny-cnn", classes=CLASSES, image_size=S)
        store.save(model, meta1)
        store.publish("v1")
        r = client.get(f"/saliency/3/{quoted}")
        assert r.status_code == 200 and r.headers["x-robustar-model-version"] == "v0"
        # keys are hashed: nothing outside the cache folder can be named
        for evil in ("..%2F..%2FPUBLISHED", "../../versions/v0.pt", "%2Fetc%2Fpasswd"):
            r = client.get(f"/saliency/3/{evil}")
            assert r.status_code == 404 and r.headers["content-type"].startswith("application/json")
        assert client.get("/saliency/99/x.png").status_code == 404  # unknown project


def test_overlay_png_is_a_heatmap_over_the_image():
    img = Image.new("RGB", (20, 10), (0, 0, 0))
    sal = np.zeros((10, 20), np.float32)
    sal[:, 10:] = 1.0
    with Image.open(io.BytesIO(overlay_png(img, sal, alpha=1.0))) as out:
        a = np.asarray(out)
    assert a.shape == (10, 20, 3)
    assert a[0, 15, 0] > 100 and a[0, 15, 1] < 50 and a[0, 15, 2] < 50  # hot = (dark) red
    assert a[0, 5, 2] > 100 and a[0, 5, 0] < 50  # cold = blue


def test_predict_over_http_carries_attention_and_serves_its_heatmap(tmp_path):
    """The production app (``build_app``): /predict adds the attention region (older configs with an
    attention brush; ours shows it as the heatmap only), /saliency serves the PNG."""
    import base64
    from urllib.parse import quote

    settings = Settings(model_dir=tmp_path, model_arch="tiny-cnn", image_size=S, redis_url="redis://127.0.0.1:1/0",
                        predict_parts=("saliency",), saliency_method="gradcam")
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(buf, "PNG")
    uri = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    key = "test/red/a b.png"
    tasks = [{"id": 5, "data": {"image": uri, "key": key, "split": "test"}}, {"id": 6, "data": {"image": uri, "split": "test"}}]
    with TestClient(build_app(settings)) as client:
        assert client.get("/health").json()["parts"] == ["saliency"]
        assert client.get(f"/saliency/4/{quote(key)}").status_code == 404
        ours = client.post("/predict", json={"tasks": tasks, "project": "4.1795450542",
                                             "label_config": render_config(CLASSES), "params": {"context": None}})
        assert ours.status_code == 200
        assert [[x["from_name"] for x in res["result"]] for res in ours.json()["results"]] == [["pred_class"]] * 2
        r = client.post("/predict", json={"tasks": tasks, "project": "4.1795450542",
                                          "label_config": LEGACY_XML, "params": {"context": None}})
        assert r.status_code == 200
        for res in r.json()["results"]:
            kinds = sorted(x["from_name"] for x in res["result"])
            assert kinds == ["attention", "pred_class"]
            (brush,) = [x for x in res["result"] if x["from_name"] == "attention"]
            assert (brush["original_width"], brush["original_height"]) == (40, 30)
        for k in (quote(key), "6"):  # a task without data.key is cached under its id
            png = client.get(f"/saliency/4/{k}")
            assert png.status_code == 200 and png.headers["content-type"] == "image/png"
            with Image.open(io.BytesIO(png.content)) as im:
                assert im.size == (40, 30)
