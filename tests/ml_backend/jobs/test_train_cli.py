"""``robustar train`` in one process: from an export file (data: URIs) and from a Label Studio project
(a local stand-in), through the same ``worker_job.train_tasks`` as the RQ job."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from label_config.render import render_config
from ml_backend.cli import main
from devkit.builders import data_uri, synthetic_export
from devkit.servers import LS_TOKEN, FakeLabelStudio
from training.checkpoints import CheckpointStore
from training.synthetic import make_spurious_dataset

CLASSES = ["circle", "square", "triangle"]
FAST = ["--set", "epochs=2", "--set", "batch_size=16", "--set", "device=cpu", "--set", "num_workers=2"]


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cli-synthetic")
    make_spurious_dataset(root, classes=tuple(CLASSES), n_train=6, n_test=3, size=32, seed=2)
    return root


def tasks_and_files(root: Path, url) -> tuple[list[dict], dict[str, bytes]]:
    return synthetic_export(root, CLASSES, lambda split, cls, path: url(split, path))


@pytest.fixture
def env(monkeypatch, tmp_path):
    for k, v in {"MODEL_DIR": str(tmp_path / "models"), "MODEL_ARCH": "tiny-cnn", "IMAGE_SIZE": "32", "DEVICE": "cpu",
                 "PREDICT_PARTS": ""}.items():
        monkeypatch.setenv(k, v)
    for k in ("MODEL_VERSION", "MODEL_CHECKPOINT", "TRAIN_MODE", "TRAIN_ARCH", "LABEL_STUDIO_URL", "LABEL_STUDIO_API_KEY",
              "WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    return tmp_path


def test_train_from_an_export_file(env, synthetic, capsys):
    tasks, _ = tasks_and_files(synthetic, lambda split, p: data_uri(p.read_bytes()))
    export = env / "export.json"
    export.write_text(json.dumps(tasks))
    config = env / "config.xml"
    config.write_text(render_config(CLASSES))
    out_dir = env / "elsewhere"
    rc = main(["train", "--export", str(export), "--label-config", str(config), "--model-dir", str(out_dir),
               "--output", str(env / "summary.json"), *FAST])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary == json.loads((env / "summary.json").read_text())
    assert (summary["version"], summary["parent"], summary["project"], summary["published"]) == ("v1", "v0", 0, True)
    assert summary["counts"]["by_split"] == {"train": 18, "test": 9} and len(summary["history"]) == 2
    assert summary["predictions"] == {"skipped": "no Label Studio project to push to (trained from an export file)"}
    assert set(summary["timings"]) >= {"decode", "images", "train", "eval", "save", "index", "total"}
    store = CheckpointStore(out_dir, 0)  # --model-dir wins over MODEL_DIR
    assert store.published() == "v1" and not (env / "models").exists()
    assert json.loads((Path(summary["run_dir"]) / "summary.json").read_text())["timings"] == summary["timings"]


def test_train_a_label_studio_project_pushes_predictions(env, synthetic, monkeypatch, capsys):
    tasks, files = tasks_and_files(synthetic, lambda split, p: f"/data/upload/1/{split}-{p.name}")
    with FakeLabelStudio(tasks, files, render_config(CLASSES)) as ls:
        monkeypatch.setenv("LABEL_STUDIO_URL", ls.url)
        monkeypatch.setenv("LABEL_STUDIO_API_KEY", LS_TOKEN)
        assert main(["train", "--project-id", "1", *FAST]) == 0
        summary = json.loads(capsys.readouterr().out)
        assert summary["predictions"]["pushed"] == 27 and ls.patches == [{"model_version": "v1"}]
    assert summary["project"] == 1 and CheckpointStore(env / "models", 1).published() == "v1"


@pytest.mark.parametrize("argv, message", [
    ([], "give --export FILE"),
    (["--export", "x.json"], "--export needs --label-config"),
    (["--project-id", "1"], "needs LABEL_STUDIO_URL"),
    (["--project-id", "1", "--set", "epochs"], "expected OPTION=VALUE"),
])
def test_bad_arguments_are_errors(env, argv, message, capsys):
    assert main(["train", *argv]) == 1
    assert message in capsys.readouterr().err
