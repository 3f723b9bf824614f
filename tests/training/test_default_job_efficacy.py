"""CI guard: the default job still removes a shortcut.

A small end-to-end efficacy check (``benchmarks.job_efficacy``: a Label Studio export through
``parse_export`` and ``run_pipeline`` with the options a job resolves from default settings): 24 px,
3 classes x 30 training images whose background colour always matches the class (p = 1), 10 % of them
painted, no val split (the step-count epochs), test where the background is random. Plain training
(ERM) learns the background: measured on this world 0.317 test accuracy, 0.0 worst-group accuracy;
the default job 0.917 and 0.667 (seed 0; ~95 s CPU for the job, 2 cores, so it is marked slow).
The default job must score well above ERM.
"""

from __future__ import annotations

import pytest
import torch

from benchmarks.job_efficacy import Size, make_world, run_job

pytestmark = pytest.mark.slow

CI_WORLD = Size(n_classes=3, n_train=30, n_val=0, n_test=20, size=24, p=1.0)


def test_default_job_removes_a_background_shortcut(tmp_path):
    torch.set_num_threads(2)
    world = make_world(tmp_path / "data", "background", 0, CI_WORLD)
    row = run_job(world, "job", 0.10, CI_WORLD, "cpu", tmp_path)
    assert row["n_painted"] == 9 and row["arch"] == "small-cnn"
    assert row["test_acc"] >= 0.8 and row["worst_group_acc"] >= 0.5, row
