"""Helpers for the reliability tests: a private redis-server process, an overall time guard, /proc
probes (child pids, RSS), and the queue/DB these tests own on a shared Redis."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from redis import Redis

SHARED_DB = 11  # our DB number on a shared Redis (flushed before and after)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """A private ``redis-server`` on a free port (no persistence), stoppable, freezable and restartable."""

    def __init__(self, workdir: Path) -> None:
        self.exe = shutil.which("redis-server")
        if self.exe is None:
            pytest.skip("redis-server executable not found")
        self.workdir, self.port, self.proc = workdir, free_port(), None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "RedisServer":
        self.proc = subprocess.Popen(
            [self.exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if Redis.from_url(self.url, socket_connect_timeout=0.2).ping():
                    return self
            except Exception:
                time.sleep(0.05)
        raise RuntimeError("private redis-server did not start")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            self.proc.wait(10)

    def freeze(self) -> None:
        """SIGSTOP: the port stays open but nothing answers (a hung Redis)."""
        self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        self.proc.send_signal(signal.SIGCONT)


@pytest.fixture
def private_redis(tmp_path):
    server = RedisServer(tmp_path).start()
    yield server
    server.stop()


@pytest.fixture
def shared_redis_url(redis_base_url):
    """DB 11 of the session's Redis, flushed before and after."""
    url = f"{redis_base_url}/{SHARED_DB}"
    conn = Redis.from_url(url)
    conn.flushdb()
    yield url
    conn.flushdb()
    conn.close()


@contextmanager
def time_limit(seconds: float, what: str = "test"):
    """Raise TimeoutError in the main thread if the block runs longer than ``seconds`` (no hang)."""

    def on_alarm(signum, frame):
        raise TimeoutError(f"{what} still running after {seconds}s (hang?)")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def children(pid: int) -> list[int]:
    """Direct child pids (Linux /proc)."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def rss_mib(pid: int) -> float:
    """Resident set size of a process in MiB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def wait_for(predicate, timeout: float, interval: float = 0.1, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"{what} not reached within {timeout}s")


def kill(pid: int, sig: int = signal.SIGKILL) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
