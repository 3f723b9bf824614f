"""The rough-stroke rows of benchmarks/bench_proposals.py at toy size (no timing assertions)."""

from __future__ import annotations

import torch

from benchmarks.bench_proposals import stroke_rows


def test_stroke_rows_score_exact_rough_and_snapped_masks():
    torch.set_num_threads(1)
    rows = stroke_rows("patch", n=16, size=64, painted=3, seed=0)  # the demo's 10 x 10 patch
    assert list(rows) == ["exact", "rough", "snapped"]
    assert rows["exact"][0] == 1.0 and rows["rough"][0] < 0.6 < rows["snapped"][0]
    assert all(0.0 <= proposal <= 1.0 and fit_s > 0 for _, proposal, fit_s in rows.values())
