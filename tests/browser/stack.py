"""The real stack a browser test drives: Label Studio, ``robustar serve``, a ``robustar worker``, Redis,
and a small generated project imported through the product's importer (backend connected, every task
predicted).

``running_stack`` is a context manager so the ``stack`` fixture and a throw-away exploration script
start exactly the same thing. Everything it starts it stops (each process in its own group).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from ml_backend.labelstudio.importer import import_dataset
from ml_backend.local.label_studio_server import LabelStudioServer
from ml_backend.local.stack import ManagedProcess, worker_process
from tests.browser.ui import poll
from tests.e2e.backend import BackendProcess
from devkit.servers import free_port
from training.synthetic import make_spurious_dataset

# ~12 training and 6 test images (3 classes), 64 px, the demo's tiny-cnn: fast enough for 2 CPU cores
N_TRAIN_PER_CLASS, N_TEST_PER_CLASS, IMAGE_SIZE = 4, 2, 64
PREDICTIONS_TIMEOUT = 180  # s after the import until every task has a prediction


@dataclass
class Stack:
    """What a running stack offers a test: URLs, the project, its tasks by split, logs."""

    ls: LabelStudioServer
    backend: BackendProcess
    worker: ManagedProcess
    redis_url: str
    env: dict[str, str]
    dataset: Path
    workdir: Path
    project_id: int
    ml_backend_id: int
    model_version: str
    tasks: list[dict] = field(default_factory=list)  # {"id", "data"} of every task, in id order

    @property
    def ls_url(self) -> str:
        return self.ls.url

    @property
    def backend_url(self) -> str:
        return self.backend.url

    def client(self) -> Any:
        return self.ls.client()

    def http(self) -> requests.Session:
        """A session authenticated as the admin against Label Studio's API."""
        s = requests.Session()
        s.headers.update(self.ls.headers)
        return s

    def api(self, path: str, **params: Any) -> Any:
        r = self.http().get(f"{self.ls_url}{path}", params=params, timeout=60)
        r.raise_for_status()
        return r.json()

    def task_ids(self, split: str) -> list[int]:
        return [t["id"] for t in self.tasks if t["data"].get("split") == split]

    def task(self, task_id: int) -> dict:
        return next(t for t in self.tasks if t["id"] == task_id)

    def predictions(self, task_id: int) -> list[dict]:
        return self.api("/api/predictions", task=task_id)

    def project(self) -> dict:
        return self.api(f"/api/projects/{self.project_id}")

    def logs(self, lines: int = 40) -> str:
        """The tails of the backend's, the worker's and Label Studio's logs (for failure messages)."""
        return "\n".join(
            f"--- {name} ({path}) ---\n{tail}"
            for name, path, tail in (
                ("backend", self.backend.log_path, self.backend.tail(lines)),
                ("worker", self.worker.log_path, self.worker.tail(lines)),
                ("label-studio", self.ls.log_path, self.ls.log_tail(lines)),
            )
        )


@contextmanager
def running_stack(
    ls: LabelStudioServer,
    redis_url: str,
    workdir: Path,
    *,
    title: str = "Robustar browser test",
    env: dict[str, str] | None = None,
    seed: int = 7,
) -> Iterator[Stack]:
    """Start backend + worker against ``ls`` and ``redis_url``, import a generated dataset, yield the stack.

    ``env`` adds to (or overrides) the backend's and the worker's environment.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    dataset = workdir / "dataset"
    make_spurious_dataset(dataset, n_train=N_TRAIN_PER_CLASS, n_test=N_TEST_PER_CLASS, size=IMAGE_SIZE, seed=seed)
    port = free_port()
    backend_url = f"http://127.0.0.1:{port}"
    full_env = {
        "LABEL_STUDIO_URL": ls.url,
        "LABEL_STUDIO_API_KEY": ls.token,
        "REDIS_URL": redis_url,
        "RQ_QUEUE": f"browser-{uuid.uuid4().hex[:8]}",  # this stack's jobs only
        "MODEL_DIR": str(workdir / "models"),
        "MODEL_ARCH": "tiny-cnn",
        "IMAGE_SIZE": str(IMAGE_SIZE),
        "BACKEND_PUBLIC_URL": backend_url,
        "PREDICT_PARTS": "saliency,influence,propagation",  # no Mask R-CNN weights here
        "TRAIN_EPOCHS": "2",
        "TRAIN_BATCH_SIZE": "8",
        "PROPOSE_AFTER_PAINTED": "0",  # the expert loop's steps as they were; proposal jobs: test_proposals_before_training
        **(env or {}),
    }
    logs = workdir / "logs"
    with ExitStack() as stop:
        backend = BackendProcess(full_env, logs / "backend.log", port=port, timeout=180)
        worker = worker_process("browser-worker", full_env, logs / "worker.log")
        stop.callback(backend.stop)
        stop.callback(worker.stop)
        # both boot (torch imports) at the same time; the worker only needs to be alive before Start Training
        worker.start()
        backend.start()
        report = import_dataset(dataset, ls.url, ls.token, title=f"{title} {uuid.uuid4().hex[:6]}",
                                backend_url=backend.url, progress=False)
        if not report.ml_backend_id or not report.model_version:
            raise RuntimeError(f"the ML backend was not connected: {report}\n{backend.tail()}")
        stack = Stack(
            ls=ls, backend=backend, worker=worker, redis_url=redis_url, env=full_env, dataset=dataset,
            workdir=workdir, project_id=report.project_id, ml_backend_id=report.ml_backend_id,
            model_version=report.model_version,
        )
        stack.tasks = sorted(
            ({"id": t["id"], "data": t["data"]} for t in _all_tasks(stack)), key=lambda t: t["id"]
        )
        try:  # the import predicts every task; allow the backend to deliver some of them a little later
            poll(lambda: not [t for t in stack.tasks if not stack.predictions(t["id"])], timeout=PREDICTIONS_TIMEOUT,
                 interval=2, what="a prediction for every task")
        except AssertionError as e:
            missing = [t["id"] for t in stack.tasks if not stack.predictions(t["id"])]
            raise RuntimeError(f"{e}: tasks {missing} have none\n{stack.logs()}") from None
        if not worker.alive():
            raise RuntimeError(f"the worker exited:\n{worker.tail()}")
        yield stack


def _all_tasks(stack: Stack) -> list[dict]:
    out, page = [], 1
    while True:
        r = stack.http().get(f"{stack.ls_url}/api/tasks", params={"project": stack.project_id, "page": page,
                                                                   "page_size": 100, "fields": "all"}, timeout=60)
        if r.status_code == 404:  # past the last page
            return out
        r.raise_for_status()
        tasks = r.json()["tasks"]
        out += tasks
        if len(tasks) < 100:
            return out
        page += 1
