"""The model input size from the data (training.input_size): measured, bounded, kept, and recorded with its reason."""

from __future__ import annotations

import pytest
from PIL import Image

from label_config.export import ExportResult, TaskRecord
from training import input_size
from training.checkpoints import CheckpointStore, ModelDefaults, create_initial_version
from training.input_size import DEFAULT_IMAGE_SIZE, InputSize, file_sizes, for_initial_version, from_image_sizes
from training.options import TrainOptions


@pytest.mark.parametrize("sides, size", [([64] * 5, 64), ([61, 62, 66], 64), ([20, 24], 32), ([2048, 3000], 224),
                                         ([100, 300, 150], 152)])
def test_the_median_short_side_rounded_and_bounded(sides, size):
    chosen = from_image_sizes([(s + 10, s) for s in sides], "images")
    assert chosen.size == size and chosen.source == "measured"
    assert f"{len(sides)} images" in chosen.reason and "IMAGE_SIZE" in chosen.reason
    assert from_image_sizes([], "images") is None


def test_file_sizes_read_headers_and_follow_exif_rotation(tmp_path):
    Image.new("RGB", (40, 20)).save(tmp_path / "plain.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated 90 degrees: 20 wide, 40 high
    Image.new("RGB", (40, 20)).save(tmp_path / "rotated.jpg", exif=exif)
    (tmp_path / "broken.png").write_bytes(b"not an image")
    assert file_sizes([tmp_path / "plain.png", tmp_path / "rotated.jpg", tmp_path / "broken.png"]) == [(40, 20), (20, 40)]


def test_v0_size_priority_image_size_then_weights_then_measured_then_default():
    measured = InputSize(64, "median", "measured")
    assert for_initial_version(96, 224, "W", measured).source == "IMAGE_SIZE"
    assert for_initial_version(None, 224, "W", measured).size == 224
    assert for_initial_version(None, None, None, measured) == measured
    assert for_initial_version(None, None, None, None).size == DEFAULT_IMAGE_SIZE


def test_v0_records_the_importers_measurement(tmp_path):
    store = CheckpointStore(tmp_path, 1)
    measured = InputSize(64, "median short side 64 px", "measured")
    create_initial_version(store, ModelDefaults(arch="tiny-cnn", image_size=None, measured=measured), ["a", "b"])
    meta = store.read_meta("v0")
    assert meta.image_size == 64 and meta.config["input_size"] == measured.to_dict()


def _export(side: int, n: int = 6) -> ExportResult:
    recs = [TaskRecord(i, f"img://{c}/{i}", split, c, c) for i, (c, split) in
            enumerate([(c, s) for c in "ab" for s in ("train",) * n + ("test",) * 2])]
    return ExportResult(records=recs, n_tasks=len(recs))


def _colour(side: int):
    colours = {"a": (200, 30, 30), "b": (30, 30, 200)}
    seen = []

    def load(url: str) -> Image.Image:
        seen.append(url)
        return Image.new("RGB", (side + 20, side), colours[url.split("/")[2]])

    return load, seen


@pytest.mark.slow
def test_the_first_job_measures_a_project_imported_otherwise(tmp_path):
    """v0 made without a measurement (IMAGE_SIZE unset, 224 px default, untrained resnet-18): the first
    job measures the training images (64 px) and trains the small CNN the data calls for, saying why."""
    from training.pipeline import run_pipeline

    store = CheckpointStore(tmp_path, 1)
    defaults = ModelDefaults(arch="resnet-18", image_size=None)
    create_initial_version(store, defaults, ["a", "b"])
    assert store.read_meta("v0").config["input_size"]["source"] == "default"
    load, seen = _colour(64)
    opts = TrainOptions.resolve({}, {"epochs": 1, "eval_every_epoch": False, "propagated_masks": "off"})
    s = run_pipeline(store, ["a", "b"], _export(64), opts, load, defaults).summary
    assert s["image_size"] == 64 and s["arch"] == "small-cnn-5"
    assert s["input_size"]["source"] == "measured" and "median short side 64 px of 12 training images" in s["input_size"]["reason"]
    assert s["recipe"]["image_size"][0] == 64 and "small-cnn-5" in s["recipe"]["arch"][0]
    assert store.read_meta(s["version"]).config["input_size"]["size"] == 64
    # the next job keeps the size its parent was trained at, without measuring again
    n = len(seen)
    s2 = run_pipeline(store, ["a", "b"], _export(64), opts, load, defaults).summary
    assert s2["image_size"] == 64 and s2["input_size"]["reason"].startswith("the parent's") and s2["arch"] == "small-cnn-5"
    assert len(seen) - n == 16  # the split's images only, no measuring pass


def test_a_configured_size_is_kept_and_never_measured():
    def never():
        raise AssertionError("measured")

    assert input_size.for_job(48, True, (64, {}, True), None, never).size == 48
    assert input_size.for_job(None, False, None, 96, never) == InputSize(96, "IMAGE_SIZE=96", "IMAGE_SIZE")
    kept = input_size.for_job(None, True, (64, {"input_size": {"size": 64, "reason": "r", "source": "measured"}}, True),
                              None, never)
    assert kept.size == 64 and kept.source == "measured"
    old = input_size.for_job(None, True, (224, {"source": "random init (seed 0)"}, True), None, never)
    assert old.size == 224 and old.source == "IMAGE_SIZE"  # a v0 from before: it was configured
