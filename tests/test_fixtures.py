"""The test infrastructure itself: the Redis DB allocator, the recorded fixtures, the fakes."""

from __future__ import annotations

import os
import socket

import pytest
import requests
from redis import Redis

from tests.conftest import RedisDBs
from devkit.servers import FileServer, redis_answers, start_redis_server
from tests.fixtures import fixture_path


def test_each_lease_is_its_own_db_flushed_before_and_after(redis_dbs):
    with redis_dbs.lease() as a, redis_dbs.lease() as b:
        assert a != b and a.rsplit("/", 1)[1] != "0" and b.rsplit("/", 1)[1] != "0"
        Redis.from_url(a).set("robustar-test-key", 1)
        assert Redis.from_url(b).get("robustar-test-key") is None
    assert Redis.from_url(a).dbsize() == 0


def test_a_second_run_on_the_same_redis_gets_other_dbs(redis_dbs, redis_base_url):
    other = RedisDBs(redis_base_url)  # another pytest process, as far as the lease keys go
    try:
        with redis_dbs.lease() as mine, other.lease() as theirs:
            assert mine != theirs
    finally:
        other.close()


def test_only_a_dead_local_owner_loses_its_lease(redis_dbs):
    host = socket.gethostname()
    dead = 2**22 + 1  # above the largest pid_max Linux allows: no such process
    assert redis_dbs._stale(f"{host}:{dead}:x".encode())
    assert not redis_dbs._stale(f"{host}:{os.getpid()}:x".encode())
    assert not redis_dbs._stale(f"elsewhere:{dead}:x".encode())
    assert not redis_dbs._stale(None)


def test_recorded_traffic_is_in_the_repository():
    assert fixture_path("ls-protocol/setup.json").is_file()
    with pytest.raises(FileNotFoundError):
        fixture_path("ls-protocol/not-recorded.json")


def test_file_server_checks_the_token_and_records_requests():
    with FileServer({"/a.png": b"png"}, "t0k") as ls:
        assert requests.get(ls.url + "/a.png", headers={"Authorization": "Token t0k"}, timeout=5).content == b"png"
        assert requests.get(ls.url + "/b.png", headers={"Authorization": "Token t0k"}, timeout=5).status_code == 404
        assert requests.get(ls.url + "/a.png", timeout=5).status_code == 401
    assert ls.requests == [("/a.png", "Token t0k"), ("/b.png", "Token t0k"), ("/a.png", None)]


def test_private_redis_server_starts_and_stops(tmp_path):
    try:
        proc, url = start_redis_server(tmp_path)
    except RuntimeError as e:
        pytest.skip(str(e))
    try:
        assert redis_answers(url + "/0")
    finally:
        proc.terminate()
        proc.wait(10)
    assert not redis_answers(url + "/0", 0.2)
