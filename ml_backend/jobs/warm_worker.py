"""A warm ``robustar worker``: the libraries a training job needs are imported once, in the worker process,
before RQ forks a work-horse per job, so the horse inherits them and a job reaches its first phase in
about a second instead of re-importing torch, torchvision, captum, tensorboard, matplotlib and the
Label Studio SDK (~5-10 s on a busy CPU) every time.

Only imports: no tensor is created and no thread pool is started in the parent (the forked horse then
starts torch's own), and nothing is connected (each horse opens its own Redis, HTTP and Label Studio
connections).
"""

from __future__ import annotations

import importlib
import logging
import time

log = logging.getLogger(__name__)

PRELOAD = (
    "ml_backend.jobs.queue",
    "ml_backend.jobs.train_job",  # torch, torchvision, training, the prediction parts, rq
    "ml_backend.jobs.launch",
    "label_studio_sdk.client",  # the SDK client (ml_backend.labelstudio.client and the SDK import it lazily; ~3 s alone)
    "captum.attr",  # the saliency part (imported lazily by ml_backend.predict.saliency)
    "torch.utils.tensorboard",  # the run's event files (training.pipeline)
)


def _matplotlib() -> None:
    """The report's curves (``training.report``): the Agg backend, as the report selects it."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    importlib.import_module("matplotlib.pyplot")


def preload(modules: tuple[str, ...] = PRELOAD) -> float:
    """Import ``modules`` (and matplotlib's pyplot) into this process; returns the seconds it took. A module
    that fails to import is logged and left to the job (which then reports the real error)."""
    t0 = time.perf_counter()
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as e:
            log.warning("worker preload: %s not imported: %s", name, e)
    try:
        _matplotlib()
    except Exception as e:
        log.warning("worker preload: matplotlib not imported: %s", e)
    seconds = time.perf_counter() - t0
    log.info("worker preload: job libraries imported in %.1fs (each job's work-horse inherits them)", seconds)
    return seconds


class PromptShutdownMixin:
    """Stops RQ's pub/sub thread without waiting out its poll: redis-py 8's ``PubSubWorkerThread.stop()``
    joins the thread, which may sit in a 60 s wait for a subscription RQ has just dropped, so a SIGTERM'ed
    worker took up to a minute to exit (the thread is a daemon: leaving it is safe)."""

    def unsubscribe(self) -> None:
        thread = getattr(self, "pubsub_thread", None)
        if thread is None:
            return
        self.pubsub.unsubscribe()
        try:
            thread.stop(timeout=1)
        except TypeError:  # redis-py before 8: stop() takes no timeout and does not join
            thread.stop()


def worker_class(simple: bool) -> type:
    """RQ's forking ``Worker`` (or ``SimpleWorker``: jobs in the worker process) with a prompt shutdown."""
    from rq import SimpleWorker, Worker

    base = SimpleWorker if simple else Worker
    return type(f"Robustar{base.__name__}", (PromptShutdownMixin, base), {})
