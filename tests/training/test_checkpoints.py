import threading

import pytest
import torch

from training.checkpoints import CheckpointMeta, CheckpointStore
from training.models import ARCHS, build_model


def test_save_publish_load(tmp_path):
    store = CheckpointStore(tmp_path, 7)
    assert store.published() is None and store.next_version() == "v0"
    model = build_model("tiny-cnn", 3)
    store.save(model, CheckpointMeta("v0", "tiny-cnn", ["a", "b", "c"], 32))
    assert store.published() is None  # saved is not served until published
    store.publish("v0")
    loaded, meta = store.load("v0")
    assert meta.classes == ["a", "b", "c"] and store.next_version() == "v1"
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k])
    assert not list(store.versions_dir.glob(".*tmp"))  # no temp files left behind


def test_a_version_is_never_overwritten(tmp_path):
    store = CheckpointStore(tmp_path, 1)
    store.save(build_model("tiny-cnn", 2), CheckpointMeta("v0", "tiny-cnn", ["a", "b"], 32))
    with pytest.raises(FileExistsError):
        store.save(build_model("tiny-cnn", 2), CheckpointMeta("v0", "tiny-cnn", ["a", "b"], 32))


def test_publishing_a_missing_version_fails(tmp_path):
    with pytest.raises(FileNotFoundError):
        CheckpointStore(tmp_path, 1).publish("v3")


def test_concurrent_writers_of_one_version_leave_one_complete_file(tmp_path):
    store = CheckpointStore(tmp_path, 1)
    errors = []

    def write():
        try:
            store.save(build_model("tiny-cnn", 2), CheckpointMeta("v0", "tiny-cnn", ["a", "b"], 32))
        except FileExistsError as e:
            errors.append(e)

    threads = [threading.Thread(target=write) for _ in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert len(errors) == 3 and store.versions() == ["v0"]
    store.load("v0")


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_every_zoo_model_runs(arch):
    size = 32 if arch in ("tiny-cnn", "resnet-18-32x32") else 64
    model = build_model(arch, 5).eval()
    with torch.no_grad():
        assert model(torch.rand(2, 3, size, size)).shape == (2, 5)
