"""Webhook events -> RQ jobs, with a real Redis and a real RQ worker process."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from redis import Redis
from rq.job import Job
from rq.registry import DeferredJobRegistry, FinishedJobRegistry, StartedJobRegistry

from ml_backend.jobs.queue import TrainingPolicy, TrainingQueue

ROOT = Path(__file__).resolve().parents[3]
TARGET = "tests.ml_backend.jobs.test_queue.blocking_train"


def blocking_train(project_id: int, options: dict) -> dict:
    """A stand-in training function that runs until the test releases it (via a Redis key)."""
    from rq import get_current_job

    redis = get_current_job().connection
    redis.rpush(f"test:started:{project_id}", get_current_job().id)
    redis.blpop(f"test:release:{project_id}", timeout=60)
    return {"project": project_id}


def storm(queue: TrainingQueue, project_id: int, n: int = 100) -> list[dict]:
    with ThreadPoolExecutor(16) as pool:
        return list(pool.map(lambda _: queue.handle_event(project_id, "ANNOTATION_CREATED"), range(n)))


def pending(queue: TrainingQueue) -> int:
    return queue.queue.count + len(DeferredJobRegistry(queue=queue.queue))


def test_annotation_policy_counts_events(redis_url):
    queue = TrainingQueue(Redis.from_url(redis_url), "t-policy", TrainingPolicy(every_n_annotations=3), target=TARGET)
    answers = [queue.handle_event(1, "ANNOTATION_CREATED")["status"] for _ in range(3)]
    assert answers == ["counted", "counted", "queued"]
    off = TrainingQueue(Redis.from_url(redis_url), "t-policy", TrainingPolicy(every_n_annotations=0), target=TARGET)
    assert off.handle_event(2, "ANNOTATION_UPDATED")["status"] == "ignored"
    assert off.handle_event(2, "PROJECT_UPDATED")["status"] == "ignored"


def test_proposal_jobs_are_deduplicated_apart_from_training(redis_url):
    """PROPOSE_AFTER_PAINTED > 0: every annotation event asks for one proposal job per project (own keys:
    training's counter and queued job are untouched); a storm leaves one queued; 0: none, and the answer says so."""
    redis = Redis.from_url(redis_url)
    queue = TrainingQueue(redis, "t-propose", TrainingPolicy(every_n_annotations=2, propose_after_painted=3),
                          target=TARGET)
    first = queue.handle_event(4, "ANNOTATION_CREATED")
    assert first["status"] == "counted" and first["proposals"]["status"] == "queued"
    job = Job.fetch(first["proposals"]["job"], connection=redis)
    assert job.kwargs["target"] == "ml_backend.jobs.propose_job.propose_project"
    assert job.kwargs["options"] == {"min_painted": 3} and job.kwargs["slot"] == "propose:"
    answers = storm(queue, 4, 30)
    assert {a["proposals"]["job"] for a in answers} == {job.id}
    assert {a["proposals"]["status"] for a in answers} == {"already queued"}
    assert {a["status"] for a in answers} <= {"counted", "queued", "already queued"}
    trainings = {a["job"] for a in answers if "job" in a}
    assert len(trainings) == 1 and job.id not in trainings  # training queued on its own keys, once
    assert pending(queue) == 2
    # a proposal job that runs: the next event queues one follow-up that waits for it
    queue.mark_started(4, job.id, "propose:")
    job.set_status("started")
    follow = queue.handle_event(4, "ANNOTATION_UPDATED")["proposals"]
    assert follow["status"] == "follow-up" and follow["job"] != job.id
    assert queue.handle_event(4, "ANNOTATIONS_DELETED")["proposals"] == {**follow, "status": "already queued"}
    queue.mark_finished(4, job.id, "propose:")
    assert redis.get("robustar:project:4:propose:running") is None

    off = TrainingQueue(redis, "t-propose-off", TrainingPolicy(propose_after_painted=0), target=TARGET)
    answer = off.handle_event(5, "ANNOTATION_CREATED")
    assert answer["proposals"]["status"] == "off" and "PROPOSE_AFTER_PAINTED=0" in answer["proposals"]["reason"]
    assert off.queue.count == 0 and off.handle_event(5, "START_TRAINING")["status"] == "queued"


@pytest.mark.slow  # a real `robustar worker` process
def test_webhook_storm_leaves_one_queued_and_one_running_job(redis_url):
    redis = Redis.from_url(redis_url, socket_timeout=None)  # blpop waits longer than redis-py's default read timeout
    queue = TrainingQueue(redis, "t-storm", TrainingPolicy(every_n_annotations=1), target=TARGET)
    answers = storm(queue, 7)
    assert {a["job"] for a in answers} == {answers[0]["job"]} and pending(queue) == 1
    other = queue.handle_event(8, "START_TRAINING")  # another project is independent
    assert other["job"] != answers[0]["job"] and pending(queue) == 2

    env = {**os.environ, "REDIS_URL": redis_url, "RQ_QUEUE": "t-storm", "PYTHONPATH": str(ROOT)}
    worker = subprocess.Popen([sys.executable, "-m", "ml_backend.cli", "worker", "--burst"], env=env, cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        first = redis.blpop("test:started:7", timeout=60)
        assert first is not None, "worker never started the job"
        running_id = first[1].decode()
        assert running_id == answers[0]["job"]
        # while it runs, a second storm schedules exactly one follow-up that waits for it
        again = storm(queue, 7)
        follow = {a["job"] for a in again}
        assert len(follow) == 1 and running_id not in follow
        assert {a["status"] for a in again} <= {"follow-up", "already queued"}
        assert len(StartedJobRegistry(queue=queue.queue)) == 1
        follow_id = follow.pop()
        assert Job.fetch(follow_id, connection=redis).get_status() == "deferred"
        redis.rpush("test:release:7", 1)
        redis.rpush("test:release:8", 1)
        second = redis.blpop("test:started:7", timeout=60)
        assert second is not None and second[1].decode() == follow_id
        redis.rpush("test:release:7", 1)
        worker.wait(60)
    finally:
        if worker.poll() is None:
            worker.kill()
    assert worker.returncode == 0, worker.stdout.read().decode()[-2000:]
    assert len(FinishedJobRegistry(queue=queue.queue)) == 3
    assert pending(queue) == 0
    # nothing left marked queued or running: the next event starts a fresh job
    assert queue.handle_event(7, "START_TRAINING")["status"] == "queued"


def test_redis_down_is_a_clear_error_fast():
    queue = TrainingQueue(Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2, socket_timeout=0.2))
    start = time.perf_counter()
    with pytest.raises(Exception) as err:
        queue.handle_event(1, "START_TRAINING")
    assert time.perf_counter() - start < 2
    assert "Connection" in type(err.value).__name__ or "connect" in str(err.value).lower()
