"""Shared fixtures: a real Redis (the machine's, or a private redis-server when none runs)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest
from redis import Redis

TEST_DB = 15  # tests own this DB number on a shared server and flush it before and after


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ping(url: str) -> bool:
    try:
        return bool(Redis.from_url(url, socket_connect_timeout=0.5).ping())
    except Exception:
        return False


@pytest.fixture(scope="session")
def redis_base_url(tmp_path_factory) -> Iterator[str]:
    """``redis://host:port`` of a running Redis: 127.0.0.1:6379 if it answers, else a private one."""
    if _ping("redis://127.0.0.1:6379/0"):
        yield "redis://127.0.0.1:6379"
        return
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.fail("no Redis on 127.0.0.1:6379 and no redis-server executable to start one")
    port = _free_port()
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(tmp_path_factory.mktemp("redis"))],
        stdout=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}"
    for _ in range(100):
        if _ping(url + "/0"):
            break
        time.sleep(0.05)
    yield url
    proc.terminate()
    proc.wait(10)


@pytest.fixture
def redis_url(redis_base_url: str) -> Iterator[str]:
    """A URL of the test DB, flushed before and after the test."""
    url = f"{redis_base_url}/{TEST_DB}"
    conn = Redis.from_url(url)
    conn.flushdb()
    yield url
    conn.flushdb()
