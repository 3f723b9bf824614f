"""Load: 200 concurrent /predict requests of 16 tasks each against a real ``robustar serve`` process
(tiny-cnn): no errors, bounded memory, the model loaded once; p50/p99 printed (README figures).
Bigger runs: ``python -m benchmarks.bench_load --help``."""

from __future__ import annotations

import pytest

from benchmarks.bench_load import HEADER, run_load
from tests.e2e.backend import BackendProcess
from tests.faultkit import time_limit

pytestmark = pytest.mark.slow  # a `robustar serve` subprocess under 2 x 200 concurrent requests

MAX_RSS_GROWTH_MIB = 400  # after the warm-up request; measured ~tens of MiB


def test_200_concurrent_predict_requests(tmp_path, capsys):
    env = {"MODEL_DIR": str(tmp_path / "models"), "MODEL_ARCH": "tiny-cnn", "IMAGE_SIZE": "32", "DEVICE": "cpu",
           "PREDICT_PARTS": "", "REDIS_URL": "redis://127.0.0.1:1/0", "LOG_LEVEL": "info"}
    log = tmp_path / "backend.log"
    with BackendProcess(env, log) as backend, time_limit(600, "load test"):
        res = run_load(backend.url, backend.proc.pid, log, n_requests=200, concurrency=200, tasks=16, size=32)
        again = run_load(backend.url, backend.proc.pid, log, n_requests=200, concurrency=200, tasks=16, size=32)
    with capsys.disabled():
        print("\n[load] 200 concurrent /predict x 16 tasks (data-URI images), tiny-cnn 32 px, one uvicorn process")
        print(HEADER)
        print(res.row("tiny-cnn 32px, round 1"))
        print(again.row("tiny-cnn 32px, round 2"))
    for r in (res, again):
        assert r.errors == [], r.errors[:3]
        assert len(r.latencies) == 200
        assert r.rss_peak - res.rss_before < MAX_RSS_GROWTH_MIB, r
        assert r.extra["health_max_s"] < 2.0, r  # Label Studio checks /health with 1 s timeout and 2 retries
    assert res.metrics_200 == 201 and again.metrics_200 == 402  # warm-up + 200 per round, as the backend counted them
    assert again.loads == 1, "the model must be loaded once per version, not per request"
    assert again.rss_after - res.rss_after < 100, "memory keeps growing from one round to the next"
