"""Smoke run of ``python -m benchmarks.recipe --smoke`` (seconds; no timing or accuracy assertions)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # the benchmark command as a subprocess

ROOT = Path(__file__).resolve().parents[2]


def test_recipe_benchmark_smoke(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "benchmarks.recipe", "--smoke", "--seeds", "2", "--out", str(tmp_path)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, f"exited {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    header = ("| kind | train set | images | px | product arch | product (defaults) | train s | CPU s | old defaults | "
              "train s | plain 1 ep | plain 2 ep | train s | CPU s | Δ accuracy | time × (CPU) | time × 1 | "
              "product per seed | plain per seed (better) |")
    assert header in proc.stdout
    assert "| patch | oracle |" in proc.stdout and "| patch | ERM |" in proc.stdout
    assert header in (tmp_path / "recipe.md").read_text()
    rows = json.loads((tmp_path / "recipe.json").read_text())["rows"]
    assert {r["set"] for r in rows} == {"oracle", "ERM"} and {r["seed"] for r in rows} == {0, 1}
    for r in rows:
        assert 0.0 <= r["product_acc"] <= 1.0 and 0.0 <= r["plain_acc"] <= 1.0
        assert r["recipe"]["optimizer"] == "adamw" and r["recipe"]["augment"] == "crop_flip"  # the job's defaults
        assert r["arch"] == "small-cnn" and r["recipe"]["arch"] == "small-cnn"  # MODEL_ARCH resnet-18 at 16 px
        assert r["plain_epochs"] in (1, 2) and set(r["plain"]) == {"1", "2"}
        assert r["product_cpu_s"] > 0 and r["plain_cpu_s"] > 0
