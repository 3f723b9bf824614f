"""Scale-out: two ``robustar worker`` processes on one queue run two projects' jobs at the same time,
and still never run two jobs of one project at once (README "Deployment", several GPU machines)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from redis import Redis
from rq.job import Job

from ml_backend.jobs.queue import TrainingPolicy, TrainingQueue

pytestmark = pytest.mark.slow  # two `robustar worker` processes

ROOT = Path(__file__).resolve().parents[3]
BIN = Path(sys.executable).parent
TARGET = "tests.ml_backend.jobs.test_queue_scale_out.recording_train"
QUEUE = "t-scale"


def recording_train(project_id: int, options: dict) -> dict:
    """Stand-in training: logs start/end (time, worker, pid) to Redis and runs until the test releases it."""
    from rq import get_current_job

    job = get_current_job()
    redis = job.connection

    def log(event: str) -> None:
        redis.rpush("scale:log", json.dumps({"project": project_id, "job": job.id, "event": event, "t": time.time(),
                                             "worker": job.worker_name, "pid": os.getpid()}))

    log("start")
    redis.rpush("scale:started", job.id)
    released = redis.blpop(f"scale:release:{project_id}", timeout=90)
    log("end")
    if released is None:
        raise TimeoutError("the test never released this job")
    return {"project": project_id}


def start_worker(name: str, redis_url: str, log_path: Path) -> subprocess.Popen:
    env = {**os.environ, "REDIS_URL": redis_url, "RQ_QUEUE": QUEUE, "PYTHONPATH": str(ROOT)}
    with open(log_path, "wb") as out:
        return subprocess.Popen([str(BIN / "robustar"), "worker", "--name", name], cwd=ROOT, env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def events(redis: Redis) -> list[dict]:
    return [json.loads(e) for e in redis.lrange("scale:log", 0, -1)]


def test_two_workers_run_two_projects_concurrently(tmp_path, redis_url):
    redis = Redis.from_url(redis_url, socket_timeout=150)  # longer than the BLPOP waits below
    queue = TrainingQueue(redis, QUEUE, TrainingPolicy(), target=TARGET)
    names = [f"scale-a-{os.getpid()}", f"scale-b-{os.getpid()}"]
    workers = [start_worker(n, redis_url, tmp_path / f"{n}.log") for n in names]

    def logs() -> str:
        return "\n".join(f"--- {n}\n" + (tmp_path / f"{n}.log").read_text()[-1500:] for n in names)

    try:
        first = {p: queue.handle_event(p, "START_TRAINING") for p in (1, 2)}
        assert {a["status"] for a in first.values()} == {"queued"}
        # each job blocks until released, so both can only be "started" if two workers run them at once
        started = [redis.blpop("scale:started", timeout=90) for _ in range(2)]
        assert all(started), f"only {sum(map(bool, started))} of 2 jobs started\n{logs()}"
        assert {s[1].decode() for s in started} == {first[1]["job"], first[2]["job"]}
        time.sleep(1)  # both keep running side by side for a moment

        # one project still never trains twice at once: its next request waits for the running job
        follow = queue.handle_event(1, "START_TRAINING")
        assert follow["status"] == "follow-up"
        redis.rpush("scale:release:2", 1)  # a worker is free now, but must not take project 1's follow-up
        time.sleep(2)
        assert Job.fetch(follow["job"], connection=redis).get_status() == "deferred"
        assert redis.llen("scale:started") == 0
        redis.rpush("scale:release:1", 1)
        third = redis.blpop("scale:started", timeout=60)
        assert third and third[1].decode() == follow["job"], logs()
        redis.rpush("scale:release:1", 1)
        deadline = time.monotonic() + 60
        while Job.fetch(follow["job"], connection=redis).get_status() != "finished":
            assert time.monotonic() < deadline, logs()
            time.sleep(0.2)
    finally:
        for w in workers:  # SIGTERM = warm shutdown, as `docker-compose stop` sends it
            if w.poll() is None:
                os.killpg(w.pid, signal.SIGTERM)
        codes = []
        for w in workers:
            try:
                codes.append(w.wait(30))
            except subprocess.TimeoutExpired:
                os.killpg(w.pid, signal.SIGKILL)
                codes.append(w.wait())
    assert codes == [0, 0], logs()

    log = events(redis)
    span = {}
    for e in log:
        span.setdefault(e["job"], {})[e["event"]] = e
    a, b, c = (span[first[1]["job"]], span[first[2]["job"]], span[follow["job"]])
    # projects 1 and 2 overlapped in time, on two different workers (two processes)
    assert a["start"]["t"] < b["end"]["t"] and b["start"]["t"] < a["end"]["t"]
    assert a["start"]["worker"] != b["start"]["worker"] and {a["start"]["worker"], b["start"]["worker"]} == set(names)
    assert a["start"]["pid"] != b["start"]["pid"]
    # project 1's follow-up started only after its first job ended
    assert c["start"]["t"] >= a["end"]["t"]
    print(f"\nprojects 1 and 2 started {abs(a['start']['t'] - b['start']['t']):.2f}s apart on {a['start']['worker']} and "
          f"{b['start']['worker']}; ran side by side for {min(a['end']['t'], b['end']['t']) - max(a['start']['t'], b['start']['t']):.2f}s")
