"""Smoke runs of the two benchmark commands from the README (seconds each; no timing assertions)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # the benchmark commands as subprocesses

ROOT = Path(__file__).resolve().parents[2]


COMMANDS = {"efficacy": ["benchmarks.efficacy", "--smoke"], "speed": ["benchmarks.speed", "--smoke"]}


@pytest.fixture(scope="module")
def smoke_runs(tmp_path_factory):
    """Both README commands at smoke size, started together (each mostly uses one core)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = {}
    for name, args in COMMANDS.items():
        out = tmp_path_factory.mktemp(name)
        procs[name] = (subprocess.Popen([sys.executable, "-m", *args, "--out", str(out)], cwd=ROOT, env=env,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True), out)
    yield procs
    for proc, _ in procs.values():
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def _result(smoke_runs, name: str) -> tuple[str, Path]:
    proc, out = smoke_runs[name]
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, f"{COMMANDS[name]} exited {proc.returncode}\n{stdout[-4000:]}\n{stderr[-4000:]}"
    return stdout, out


def test_efficacy_smoke(smoke_runs):
    out, tmp_path = _result(smoke_runs, "efficacy")
    header = "| kind | method | recipe | masks | fill | λ | test acc | worst-group acc |"
    assert header in out
    for method in ("| ERM |", "| oracle |", "| no feature |", "| groups (worst-group) |", "| paired |", "| aug only |"):
        assert method in out, method
    md = (tmp_path / "efficacy.md").read_text()
    assert header in md and "seeds" in md
    assert "| job default |" in out and "Which images to paint" in out
    assert (tmp_path / "efficacy.png").stat().st_size > 1000

    data = json.loads((tmp_path / "efficacy.json").read_text())
    assert data["runs"] and all(r["diverged"] or 0.0 <= r["test_acc"] <= 1.0 for r in data["runs"])
    # painted runs really carried masks through the export (RLE) into the dataset
    painted = [r for r in data["runs"] if r["method"] in ("paired", "aug only")]
    assert painted and all(r["n_painted"] >= 1 for r in painted)
    assert all(r["n_painted"] == 0 for r in data["runs"] if r["method"] in ("ERM", "oracle", "no feature", "groups"))
    # the job's recipe propagated the painted masks to the other training images, with their IoU measured
    job = [r for r in data["runs"] if r.get("recipe") == "job default"]
    assert job and all(r["propagated_used"] >= 1 and 0.0 <= r["mask_iou"] <= 1.0 for r in job)
    # every method is scored on the same test items; the suspicion ranking was built from val, never test
    preset = data["preset"]
    n_val, n_test = preset["n_val"] * preset["n_classes"], preset["n_test"] * preset["n_classes"]
    assert 0 < n_val != n_test
    assert {r["n_test"] for r in data["runs"]} == {n_test}
    ranked = [r for r in data["runs"] if r["method"] == "paired, suspicion-ranked"]
    assert ranked and all(r["ranked_on"] == "val" and r["n_ranked_on"] == n_val for r in ranked)


def test_speed_smoke(smoke_runs):
    out, tmp_path = _result(smoke_runs, "speed")
    for title in ("**Paired step vs plain step**", "**Brush RLE**", "**/predict parts**", "**Influence**",
                  "**Full training job by phase**"):
        assert title in out, title
    assert "| tiny-cnn | 32 | 16 |" in out  # the paired/plain row
    assert "| 256² |" in out and "decode" in out and "encode" in out
    assert "| classifier |" in out and "| influence |" in out
    for phase in ("| export |", "| decode |", "| images |", "| train |", "| eval_new |", "| index |"):
        assert phase in out, phase
    assert (tmp_path / "speed.md").read_text().startswith("Speed (smoke size)")


def test_synthetic_kinds_write_masks_and_values(tmp_path):
    import numpy as np
    from PIL import Image

    from training.synthetic import KINDS, make_spurious_dataset

    for kind in KINDS:
        info = make_spurious_dataset(tmp_path / kind, classes=("circle", "square"), n_train=3, n_test=2, size=24,
                                     seed=0, kind=kind)
        assert info["kind"] == kind and info["train"] == 6 and info["test"] == 4
        values = info["spurious_values"]
        assert len(values) == 10 and all(v in (0, 1) for v in values.values())
        for rel in (k for k in values if k.startswith("train/")):
            mask = np.asarray(Image.open(tmp_path / kind / "masks" / rel))
            assert mask.shape == (24, 24) and 0 < (mask > 0).sum() < 24 * 24
    neutral = make_spurious_dataset(tmp_path / "none", classes=("circle",), n_train=2, n_test=1, size=24,
                                    spurious=False, kind="background")
    assert set(neutral["spurious_values"].values()) == {-1}
    with pytest.raises(ValueError):
        make_spurious_dataset(tmp_path / "bad", kind="stripes")
