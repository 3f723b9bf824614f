"""A generated project's expert and worker, in this process (the proposal job's test and benchmark):
paint a task's true spurious mask through the SDK, then run the queue's jobs in the product's worker."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from redis import Redis
from rq import Queue
from rq.job import Job

from label_config import regions
from ml_backend.jobs.warm_worker import worker_class


def paint_true_mask(client, task, dataset: Path) -> None:
    """The task's true spurious mask (``dataset/masks/<key>``) as a Spurious brush annotation; Label Studio
    sends its webhook to the backend."""
    mask = np.asarray(Image.open(Path(dataset) / "masks" / task.data["key"])) > 0
    client.annotations.create(id=task.id, result=[regions.brush(mask)])


def run_queue(redis: Redis, queue_name: str, logging_level: str = "INFO") -> list[Job]:
    """The jobs queued now, run by a burst worker (RQ's SimpleWorker with the product's prompt teardown),
    refreshed."""
    queue = Queue(queue_name, connection=redis)
    jobs = queue.jobs
    worker_class(simple=True)([queue], connection=redis).work(burst=True, with_scheduler=False,
                                                              logging_level=logging_level)
    for job in jobs:
        job.refresh()
    return jobs
