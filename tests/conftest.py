"""Shared fixtures: a real Redis (the machine's, or a private redis-server when none runs) and the one
allocator of its DB numbers, so no two tests (nor two test runs on the same Redis) share a DB."""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from redis import Redis

from ml_backend.local.label_studio_server import LabelStudioServer, default_venv, ensure_label_studio
from devkit.servers import redis_answers, start_redis_server

LOCAL_REDIS = "redis://127.0.0.1:6379"
pytest_plugins = ["tests.scheduling"]  # longest modules first under xdist


def _share_cores_between_xdist_workers() -> None:
    """Under pytest-xdist (``make test`` runs ``-n 2``), each worker and the processes it starts use
    their share of the cores: torch's default (one thread per core) in every worker only adds contention."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 0)
    if workers > 1:
        share = str(max(1, (os.cpu_count() or 1) // workers))
        os.environ.setdefault("OMP_NUM_THREADS", share)
        import torch

        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


_share_cores_between_xdist_workers()


@pytest.fixture(scope="session")
def redis_base_url(tmp_path_factory) -> Iterator[str]:
    """``redis://host:port`` of a running Redis: 127.0.0.1:6379 if it answers, else a private one."""
    if redis_answers(LOCAL_REDIS + "/0"):
        yield LOCAL_REDIS
        return
    try:
        proc, url = start_redis_server(tmp_path_factory.mktemp("redis"))
    except RuntimeError as e:
        pytest.fail(f"no Redis on 127.0.0.1:6379 and no private one: {e}")
    yield url
    proc.terminate()
    proc.wait(10)


class RedisDBs:
    """Hands out the DB numbers 1..15 of one Redis, one per user at a time, each flushed before and after.

    DB 0 is never handed out (a local stack may use it); it holds one lease key per DB in use
    (``robustar-tests:db:<n>``, owner and expiry), so a second test run on the same Redis (another
    checkout, another engineer) takes other DBs. A lease whose owner process is gone is taken over.
    """

    POOL = range(1, 16)
    LEASE_SECONDS = 3600
    KEY = "robustar-tests:db:{}"
    # if KEYS[1] still holds ARGV[1]: give it to ARGV[2] for ARGV[3] seconds, or delete it when ARGV[2] is ""
    _SWAP = """if redis.call('get', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[2] == '' then redis.call('del', KEYS[1]) else redis.call('set', KEYS[1], ARGV[2], 'EX', ARGV[3]) end
return 1"""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.registry = Redis.from_url(base_url + "/0")
        self.host = socket.gethostname()
        self.owner = f"{self.host}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.held: set[int] = set()

    def _stale(self, owner: bytes | None) -> bool:
        """True if ``owner`` is a process on this host that no longer runs."""
        try:
            host, pid, _ = owner.decode().split(":")
            if host != self.host:
                return False
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return True
        except (AttributeError, ValueError, PermissionError):
            return False
        return False

    def _claim(self) -> int | None:
        for db in self.POOL:
            if db in self.held:
                continue
            key = self.KEY.format(db)
            taken = self.registry.set(key, self.owner, nx=True, ex=self.LEASE_SECONDS)
            if not taken:
                owner = self.registry.get(key)
                taken = self._stale(owner) and self.registry.eval(self._SWAP, 1, key, owner, self.owner,
                                                                  self.LEASE_SECONDS)
            if taken:
                self.held.add(db)
                return db
        return None

    def _release(self, db: int) -> None:
        self.registry.eval(self._SWAP, 1, self.KEY.format(db), self.owner, "", 0)
        self.held.discard(db)

    @contextmanager
    def lease(self, wait: float = 300) -> Iterator[str]:
        """``redis://host:port/<db>`` of a DB that is this block's alone, empty on entry and flushed on exit."""
        deadline = time.monotonic() + wait
        while (db := self._claim()) is None:
            if time.monotonic() > deadline:
                pytest.fail(f"all test DBs {self.POOL.start}..{self.POOL.stop - 1} of {self.base_url} "
                            f"stayed in use for {wait}s")
            time.sleep(0.5)
        url = f"{self.base_url}/{db}"
        conn = Redis.from_url(url)
        try:
            conn.flushdb()
            yield url
        finally:
            conn.flushdb()
            conn.close()
            self._release(db)

    def close(self) -> None:
        for db in list(self.held):
            self._release(db)
        self.registry.close()


@pytest.fixture(scope="session")
def redis_dbs(redis_base_url: str) -> Iterator[RedisDBs]:
    """The session's DB allocator; module-scoped fixtures take a DB with ``with redis_dbs.lease() as url``."""
    dbs = RedisDBs(redis_base_url)
    yield dbs
    dbs.close()


@pytest.fixture
def redis_url(redis_dbs: RedisDBs) -> Iterator[str]:
    """A URL of a DB that is this test's alone, flushed before and after the test."""
    with redis_dbs.lease() as url:
        yield url


# --------------------------------------------------------------------------------------------------
# one real Label Studio 1.23.2 server per session (e2e and browser suites)


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabelStudioServer]:
    """A running Label Studio server (installed into the LS venv first if missing)."""
    venv = default_venv()
    ensure_label_studio(venv)
    root = tmp_path_factory.mktemp("label_studio")
    server = LabelStudioServer(root / "data", venv=venv, log_path=root / "label-studio.log")
    with server:
        yield server


@pytest.fixture(scope="session")
def ls_client(label_studio: LabelStudioServer) -> Any:
    """``label_studio_sdk.LabelStudio`` client for the session server."""
    return label_studio.client()
