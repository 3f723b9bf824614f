"""Pretrained weights by name (training.pretrained): resolved through torchvision's weights API, read
from a seeded torch hub cache, never from a network; a clear error when neither is there."""

from __future__ import annotations

import pytest
import torch

from devkit.weights import go_offline, plausible, seed_hub_cache
from training import pretrained
from training.checkpoints import IMAGENET_MEAN, CheckpointStore, ModelDefaults, create_initial_version
from training.models import build_model


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """An empty torch hub cache, and every download sent to a closed port (no network is ever reached)."""
    return go_offline(monkeypatch, tmp_path / "torch")


@pytest.mark.parametrize("arch, spec, name", [
    ("resnet-18", "imagenet", "ResNet18_Weights.IMAGENET1K_V1"),
    ("resnet-18", "ResNet18_Weights.IMAGENET1K_V1", "ResNet18_Weights.IMAGENET1K_V1"),
    ("resnet-50", "IMAGENET1K_V2", "ResNet50_Weights.IMAGENET1K_V2"),
    ("mobilenet-v2", "default", "MobileNet_V2_Weights.IMAGENET1K_V2"),
])
def test_names_resolve_through_torchvisions_weights_api(offline_hub, arch, spec, name):
    w = pretrained.for_arch(arch, spec)
    assert w.name == name and w.image_size == 224 and w.mean == IMAGENET_MEAN
    assert w.file.parent == offline_hub / "hub" / "checkpoints" and w.file.name == w.url.rsplit("/", 1)[1]


@pytest.mark.parametrize("arch, spec, why", [
    ("small-cnn", "imagenet", "no pretrained weights for MODEL_ARCH=small-cnn"),
    ("resnet-18", "ResNet50_Weights.IMAGENET1K_V1", "are not weights of resnet18"),
    ("resnet-18", "IMAGENET9K", "ResNet18_Weights.IMAGENET1K_V1"),
])
def test_unknown_names_are_refused_with_the_choices(arch, spec, why):
    with pytest.raises(ValueError, match=why):
        pretrained.for_arch(arch, spec)


def test_names_and_paths_are_told_apart():
    assert all(map(pretrained.looks_like_name, ["imagenet", "coco", "IMAGENET1K_V1", "ResNet18_Weights.IMAGENET1K_V1"]))
    assert not any(map(pretrained.looks_like_name, ["/w/r18.pth", "weights.pt", "models/x"]))


def test_not_cached_and_no_network_says_what_to_do(offline_hub, tmp_path):
    store = CheckpointStore(tmp_path / "models", 1)
    with pytest.raises(pretrained.WeightsUnavailableError) as e:
        create_initial_version(store, ModelDefaults("resnet-18", None, weights="imagenet"), ["a", "b"])
    msg = str(e.value)
    assert "ResNet18_Weights.IMAGENET1K_V1 is not in the torch hub cache" in msg and "resnet18-f37072fd.pth" in msg
    assert str(offline_hub / "hub" / "checkpoints") in msg and "robustar fetch-weights" in msg
    assert store.published() is None  # nothing half-made


def test_v0_starts_from_the_cached_weights_at_their_resolution(offline_hub, tmp_path):
    w = pretrained.for_arch("resnet-18", "imagenet")
    seed_hub_cache(w, build_model("resnet-18", 1000).state_dict(), plausible("conv1.weight", 0.0123))
    assert w.file.stat().st_size < 200_000  # a stand-in, not the 45 MB file
    store = CheckpointStore(tmp_path / "models", 1)
    create_initial_version(store, ModelDefaults("resnet-18", None, weights="imagenet"), ["a", "b"])
    model, meta = store.load("v0")
    assert torch.all(model.conv1.weight == 0.0123) and meta.image_size == 224 and meta.mean == IMAGENET_MEAN
    assert meta.config["input_size"]["source"] == "weights"
    assert "ResNet18_Weights.IMAGENET1K_V1" in meta.config["source"] and "not loaded: ['fc.bias', 'fc.weight']" in meta.config["source"]
    # IMAGE_SIZE set explicitly wins over the weights' resolution
    other = CheckpointStore(tmp_path / "models", 2)
    create_initial_version(other, ModelDefaults("resnet-18", 128, weights="ResNet18_Weights.IMAGENET1K_V1"), ["a"])
    assert other.read_meta("v0").image_size == 128


def test_fetch_weights_command_reads_the_cache_and_says_what_to_do_offline(offline_hub, capsys):
    from ml_backend.cli import main

    assert pretrained.by_full_name("ResNet50_Weights.IMAGENET1K_V2").file.name == "resnet50-11ad3fa6.pth"
    w = pretrained.for_arch("resnet-18", "imagenet")
    seed_hub_cache(w, build_model("resnet-18", 1000).state_dict(), plausible("conv1.weight", 0.5))
    assert main(["fetch-weights", "ResNet18_Weights.IMAGENET1K_V1"]) == 0  # cached: nothing to download
    assert str(w.file) in capsys.readouterr().out
    assert main(["fetch-weights", "ResNet50_Weights.IMAGENET1K_V2"]) == 1
    assert "resnet50-11ad3fa6.pth" in capsys.readouterr().err
