"""The val split of an import: a val/ folder as it is, else a stratified, key-stable part of test."""

from __future__ import annotations

from PIL import Image

from ml_backend.labelstudio.importer import DatasetItem, scan_dataset
from ml_backend.labelstudio.val_split import set_aside_val


def items(n_per_class: dict[str, int], split: str = "test") -> list[DatasetItem]:
    return [DatasetItem(f"{split}/{c}/{i}.png", None, split, c) for c, n in n_per_class.items() for i in range(n)]


def test_val_is_set_aside_from_test_per_class_and_said_so():
    its = items({"a": 10, "b": 4, "c": 1}) + items({"a": 5}, "train")
    n, how = set_aside_val(its, 0.3)
    val = [it for it in its if it.split == "val"]
    assert n == len(val) == 3 + 1 and {it.label for it in val} == {"a", "b"}  # c has one test image: kept as test
    assert all(it.key.startswith("test/") for it in val) and "set aside" in how and "test" in how
    again = items({"a": 10, "b": 4, "c": 1}) + items({"a": 5}, "train")
    set_aside_val(again, 0.3)
    assert [it.key for it in again if it.split == "val"] == [it.key for it in val]  # a re-run picks the same


def test_a_val_folder_is_used_as_it_is_and_zero_means_none(tmp_path):
    for split, n in (("train", 2), ("val", 2), ("test", 3)):
        for c in ("a", "b"):
            (tmp_path / split / c).mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (8, 8)).save(tmp_path / split / c / f"{i}.png")
    _, its, _ = scan_dataset(tmp_path)
    n, how = set_aside_val(its, 0.3)
    assert n == 4 and "val/ folder" in how and sum(it.split == "test" for it in its) == 6
    no_val = items({"a": 10})
    assert set_aside_val(no_val, 0.0)[0] == 0 and all(it.split == "test" for it in no_val)
