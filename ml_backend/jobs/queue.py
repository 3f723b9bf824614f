"""Webhook events -> RQ training jobs: at most one queued job per project, one follow-up while running.

Redis keys (prefix ``robustar:``): ``project:<id>:queued`` holds the id of the project's queued job,
``project:<id>:running`` the id of its running job, ``project:<id>:annotations`` counts annotation
events towards the next automatic training.  A request that arrives while a job runs enqueues one
follow-up that depends on the running job, so two jobs of one project never train at once, even
with several workers on the queue.

Mask proposals (``PROPOSE_AFTER_PAINTED`` > 0): every annotation event also asks for
``ml_backend.jobs.propose_job.propose_project`` (which skips while too few images are painted), under
the same rules with keys of their own (``project:<id>:propose:queued``, ``project:<id>:propose:running``),
so a proposal job never takes training's place in the queue nor waits for it.

Retries (``TRAIN_RETRIES``, default 1): a job that fails for a transient reason (Label Studio
unreachable, I/O error, a work-horse killed or abandoned by a dead worker) is requeued by RQ up to
that many times; a ``ValueError`` (bad options, no usable data, a label config we cannot serve) or a
timeout fails at once. A job that is retried keeps its project's "running" slot, so a webhook that
arrives meanwhile answers "already queued" instead of starting a second job of the project.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

from redis import Redis
from rq import Queue, Retry, get_current_job
from rq.job import Dependency, Job, JobStatus

from ml_backend.settings import Settings

log = logging.getLogger(__name__)

JOB_FUNC = "ml_backend.jobs.queue.run_training_job"
TRAIN_TARGET = "ml_backend.jobs.train_job.train_project"
PROPOSE_TARGET = "ml_backend.jobs.propose_job.propose_project"
PROPOSE_SLOT = "propose:"  # key infix of the proposal jobs' queued/running markers
PROPOSE_TIMEOUT = 1800  # seconds a proposal job may take
START_TRAINING = "START_TRAINING"
ANNOTATION_EVENTS = {"ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED", "ANNOTATION_DELETED"}
_PENDING = {JobStatus.QUEUED, JobStatus.DEFERRED, JobStatus.SCHEDULED}


@dataclass
class TrainingPolicy:
    """When annotation events start training: every ``every_n_annotations`` events (0 = never)."""

    every_n_annotations: int = 0
    propose_after_painted: int = 0  # > 0: annotation events queue a mask-proposal job (propose_job)
    retries: int = 1
    job_timeout: int = 6 * 3600
    result_ttl: int = 7 * 24 * 3600
    prefix: str = "robustar:"

    @classmethod
    def from_settings(cls, settings: Settings) -> "TrainingPolicy":
        return cls(
            every_n_annotations=settings.train_every_n_annotations,
            propose_after_painted=settings.propose_after_painted,
            retries=settings.train_retries,
            job_timeout=settings.train_job_timeout,
            prefix=settings.redis_key_prefix,
        )


class TrainingQueue:
    """Turns webhook events into RQ jobs with the per-project dedup rules above."""

    def __init__(
        self, redis: Redis, queue_name: str = "robustar", policy: TrainingPolicy | None = None,
        target: str = TRAIN_TARGET,
    ) -> None:
        self.redis = redis
        self.policy = policy or TrainingPolicy()
        self.queue = Queue(queue_name, connection=redis)
        self.target = target

    def _key(self, project_id: int, what: str) -> str:
        return f"{self.policy.prefix}project:{project_id}:{what}"

    def _job_status(self, job_id: bytes | str | None) -> JobStatus | None:
        if not job_id:
            return None
        try:
            return Job.fetch(job_id.decode() if isinstance(job_id, bytes) else job_id, connection=self.redis).get_status()
        except Exception:
            return None

    def handle_event(self, project_id: int, action: str, options: dict | None = None) -> dict:
        """Apply the policy to one webhook event; returns the JSON answer for Label Studio."""
        if action == START_TRAINING:
            return self.request(project_id, reason=action, options=options)
        if action in ANNOTATION_EVENTS:
            answer = self._count_annotation(project_id, action, options)
            if self.policy.propose_after_painted > 0:
                answer["proposals"] = self.request_proposals(project_id, reason=action)
            else:
                answer["proposals"] = {"status": "off", "reason": "mask proposals are off (PROPOSE_AFTER_PAINTED=0)"}
            return answer
        return {"status": "ignored", "action": action}

    def _count_annotation(self, project_id: int, action: str, options: dict | None) -> dict:
        """``TRAIN_EVERY_N_ANNOTATIONS``: count the event; queue training at every N-th."""
        n = self.policy.every_n_annotations
        if n <= 0:
            return {"status": "ignored", "reason": "automatic training is off (TRAIN_EVERY_N_ANNOTATIONS=0)"}
        count = self.redis.incr(self._key(project_id, "annotations"))
        if count < n:
            return {"status": "counted", "annotations": count, "train_every": n}
        self.redis.delete(self._key(project_id, "annotations"))
        return self.request(project_id, reason=action, options=options)

    def request_proposals(self, project_id: int, reason: str) -> dict:
        """Enqueue a mask-proposal job for a project unless one is already waiting (own dedup keys)."""
        options = {"min_painted": self.policy.propose_after_painted}
        return self.request(project_id, reason, options, slot=PROPOSE_SLOT, target=PROPOSE_TARGET,
                            timeout=min(self.policy.job_timeout, PROPOSE_TIMEOUT))

    def request(self, project_id: int, reason: str, options: dict | None = None, *, slot: str = "",
                target: str | None = None, timeout: int | None = None) -> dict:
        """Enqueue training (``slot`` "": training; ``PROPOSE_SLOT``: mask proposals, ``target`` its job) for
        a project unless one is already waiting."""
        what = "proposals" if slot else "training"
        with self.redis.lock(self._key(project_id, slot + "lock"), timeout=10, blocking_timeout=5):
            queued = self.redis.get(self._key(project_id, slot + "queued"))
            if self._job_status(queued) in _PENDING:
                return {"job": queued.decode(), "status": "already queued"}
            running = self.redis.get(self._key(project_id, slot + "running"))
            running_status = self._job_status(running)
            if running_status in _PENDING:  # the running job failed and RQ requeued it (Retry)
                return {"job": running.decode(), "status": "already queued"}
            depends = None
            if running_status == JobStatus.STARTED:
                depends = Dependency(jobs=[running.decode()], allow_failure=True)
            job = self.queue.enqueue(
                JOB_FUNC,
                kwargs={"project_id": int(project_id), "options": options or {}, "target": target or self.target,
                        **({"slot": slot} if slot else {})},
                job_timeout=timeout or self.policy.job_timeout,
                result_ttl=self.policy.result_ttl,
                failure_ttl=self.policy.result_ttl,
                depends_on=depends,
                retry=Retry(max=self.policy.retries) if self.policy.retries > 0 else None,
                meta={"project_id": int(project_id), "reason": reason, "phase": "queued"},
                description=f"{'propose masks for' if slot else 'train'} project {project_id} ({reason})",
            )
            self.redis.set(self._key(project_id, slot + "queued"), job.id)
        log.info("project %s: queued %s job %s (%s%s)", project_id, what, job.id, reason,
                 ", after the running one" if depends else "")
        return {"job": job.id, "status": "queued" if depends is None else "follow-up"}

    def mark_started(self, project_id: int, job_id: str, slot: str = "") -> None:
        """Called by the job when it starts: it is no longer 'queued' but 'running'."""
        with self.redis.lock(self._key(project_id, slot + "lock"), timeout=10, blocking_timeout=5):
            if (self.redis.get(self._key(project_id, slot + "queued")) or b"").decode() == job_id:
                self.redis.delete(self._key(project_id, slot + "queued"))
            self.redis.set(self._key(project_id, slot + "running"), job_id)

    def mark_finished(self, project_id: int, job_id: str, slot: str = "") -> None:
        """Called by the job when it ends, successfully or not."""
        key = self._key(project_id, slot + "running")
        if (self.redis.get(key) or b"").decode() == job_id:
            self.redis.delete(key)


def run_training_job(project_id: int, options: dict | None = None, target: str = TRAIN_TARGET, slot: str = "") -> dict:
    """The RQ entry point: queue bookkeeping (``slot``'s keys) around ``target``
    (``ml_backend.jobs.train_job.train_project``, or ``PROPOSE_TARGET``)."""
    from rq.utils import import_attribute

    from ml_backend.credentials import install_log_redaction

    settings = Settings.from_env()
    install_log_redaction(settings.label_studio_api_key)
    train_project = import_attribute(target)
    job = get_current_job()
    queue = TrainingQueue(job.connection, job.origin, TrainingPolicy.from_settings(settings)) if job else None
    if queue:
        queue.mark_started(project_id, job.id, slot)
    will_retry = False
    try:
        return train_project(project_id, options or {})
    except Exception as e:
        if job is not None and job.retries_left:
            if is_transient(e):
                will_retry = True  # keep the project's running slot: RQ requeues this same job
            else:
                log.warning("project %s job %s: %s is not transient; not retried", project_id, job.id, type(e).__name__)
                job.retries_left = 0
        raise
    finally:
        if queue and not will_retry:
            queue.mark_finished(project_id, job.id, slot)


def is_transient(exc: BaseException) -> bool:
    """Worth a retry: anything but a ValueError (bad options/data/config) or a job timeout."""
    from rq.timeouts import JobTimeoutException

    return not isinstance(exc, (ValueError, JobTimeoutException))


def rq_progress_sink(job) -> Callable[[dict], None] | None:
    """Where ``training.progress.Progress`` writes: the RQ job's meta (for logs, rq-dashboard, /job_status)."""
    if job is None:
        return None

    def save(state: dict) -> None:
        job.meta.update(state)
        job.save_meta()

    return save
