"""``python -m benchmarks.gpu --smoke``: the GPU benchmark's every loop runs on the CPU (the CUDA settings are
no-ops there), so the command is ready whenever a GPU is at hand. No timing is asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # a subprocess

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_benchmark_smoke_runs_on_the_cpu(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "benchmarks.gpu", "--smoke", "--out", str(tmp_path)], cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    for row in ("| reference |", "| reference at batch 2B |", "| product plain |", "| product paired |",
                "| product plain, fp32 |", "| product plain, streamed (1 DataLoader workers) |", "| classify, batch 1 ", "| classify, batch 16 ", "| forward, batch 16 ",
                "| patch | oracle |", "| patch | ERM |"):
        assert row in out, row
    result = json.loads((tmp_path / "gpu.json").read_text())
    assert result["device"] == "cpu" and set(result["train_s"]) >= {"reference", "product plain", "product paired"}
    assert all(v > 0 for times in result["train_s"].values() for v in times)
    assert (tmp_path / "gpu.md").read_text().startswith("GPU path (smoke)")
