"""Longest test modules first, so pytest-xdist's two workers finish together.

``make test`` runs ``-n 2 --dist loadscope --no-loadscope-reorder``: a module's tests stay on one worker
(its module fixtures are built once) and the modules are handed out in collection order, each to the
worker that frees up first. Started last, a 90 s module leaves the other worker idle for 90 s; started
first, it overlaps the many short ones (longest-processing-time-first). This plugin orders the modules by
their measured seconds in ``tests/durations.json`` (a module not in it: ``UNKNOWN_S`` per test); the tests
inside a module keep their order.

Refresh the file after adding slow tests: ``ROBUSTAR_RECORD_DURATIONS=1 make test`` (it rewrites the
seconds of the modules that ran, setup and teardown included, and keeps the others).
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path

import pytest

DURATIONS = Path(__file__).with_name("durations.json")
RECORD_ENV = "ROBUSTAR_RECORD_DURATIONS"
UNKNOWN_S = 1.0  # seconds per test of a module the file does not know

_seconds: defaultdict[str, float] = defaultdict(float)


def module_of(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


def recorded() -> dict[str, float]:
    try:
        return {str(k): float(v) for k, v in json.loads(DURATIONS.read_text()).items()}
    except (OSError, ValueError, AttributeError):
        return {}


def module_weights(nodeids: list[str], known: dict[str, float]) -> dict[str, float]:
    """Each module's expected seconds: the recorded figure, else ``UNKNOWN_S`` per collected test."""
    counts: defaultdict[str, int] = defaultdict(int)
    for nodeid in nodeids:
        counts[module_of(nodeid)] += 1
    return {m: known.get(m, UNKNOWN_S * n) for m, n in counts.items()}


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Stable sort by module: the heaviest module first, ties by name, each module's tests in their order."""
    weights = module_weights([item.nodeid for item in items], recorded())
    items.sort(key=lambda item: (-weights[module_of(item.nodeid)], module_of(item.nodeid)))


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    _seconds[module_of(report.nodeid)] += report.duration


def pytest_sessionfinish(session: pytest.Session) -> None:
    """With ``ROBUSTAR_RECORD_DURATIONS`` set, write the modules' seconds (on the controller, not a worker)."""
    if not os.environ.get(RECORD_ENV) or hasattr(session.config, "workerinput") or not _seconds:
        return
    merged = {**recorded(), **{m: round(s, 1) for m, s in _seconds.items()}}
    DURATIONS.write_text(json.dumps(dict(sorted(merged.items())), indent=1) + "\n")
