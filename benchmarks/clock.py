"""The benchmarks' clock: elapsed seconds, or (``--clock cpu``) CPU seconds of this process, all its
threads, which are steadier on a machine shared with other jobs."""

from __future__ import annotations

import argparse
import time

_now = time.perf_counter


def add_argument(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="wall: elapsed seconds; cpu: CPU seconds of this process (steadier on a shared machine)")


def use(name: str) -> None:
    """Read ``now()`` from the wall clock (``wall``) or the process's CPU time (``cpu``)."""
    global _now
    _now = time.process_time if name == "cpu" else time.perf_counter


def now() -> float:
    return _now()
