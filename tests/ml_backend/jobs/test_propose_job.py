"""Proposals before training (issue 23): the expert paints a few training images in a real Label Studio
1.23, its annotation webhooks reach the real backend app (served in this process), which queues
``propose_job.propose_project``; a real RQ SimpleWorker runs it. Then every unpainted training task holds
exactly one prediction of the served version, with a Spurious brush proposal; the project's model version
stays that version; nothing else changes."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from redis import Redis
from rq import Queue
from rq.job import JobStatus

from devkit.backend_thread import serve_app
from devkit.project_jobs import paint_true_mask, run_queue
from label_config import regions
from ml_backend.labelstudio.importer import import_dataset
from ml_backend.settings import Settings
from training.checkpoints import CheckpointStore
from training import propagation
from training.synthetic import make_spurious_dataset


QUEUE = "t-propose-job"
# the tests on a real Label Studio are e2e and slow (its session fixture takes ~60 s on a first start)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("propose-data")
    make_spurious_dataset(root, n_train=5, n_test=1, size=32, seed=3)  # 15 train, 3 test (one becomes val)
    return root


@pytest.fixture(scope="module")
def stack(label_studio, redis_dbs, tmp_path_factory):
    """Environment of backend and worker (one process here), the backend app serving, a Redis DB."""
    from ml_backend.api.app import create_app

    tmp = tmp_path_factory.mktemp("propose-backend")
    with redis_dbs.lease() as redis_url, pytest.MonkeyPatch.context() as mp:
        for k in ("MODEL_VERSION", "MODEL_CHECKPOINT", "WEBHOOK_SECRET", "BASIC_AUTH_USER", "BASIC_AUTH_PASS"):
            mp.delenv(k, raising=False)
        env = {"LABEL_STUDIO_URL": label_studio.url, "LABEL_STUDIO_API_KEY": label_studio.token,
               "MODEL_DIR": str(tmp / "models"), "MODEL_ARCH": "tiny-cnn", "IMAGE_SIZE": "32", "DEVICE": "cpu",
               "PREDICT_PARTS": "propagation", "REDIS_URL": redis_url, "RQ_QUEUE": QUEUE,
               "PROPOSE_AFTER_PAINTED": "3", "TRAIN_EVERY_N_ANNOTATIONS": "0", "FETCH_WORKERS": "4"}
        for k, v in env.items():
            mp.setenv(k, v)
        app = create_app(Settings.from_env())
        with serve_app(app) as url:
            mp.setenv("BACKEND_PUBLIC_URL", url)
            yield {"app": app, "url": url, "redis": Redis.from_url(redis_url), "model_dir": tmp / "models"}


def new_project(stack, dataset: Path, label_studio, title: str) -> int:
    report = import_dataset(dataset, label_studio.url, label_studio.token, title=title, backend_url=stack["url"],
                            progress=False)
    assert report.model_version == "v0", report
    return report.project_id


def tasks_of(client, pid: int) -> list:
    return list(client.tasks.list(project=pid, fields="all"))


def run_worker(redis: Redis) -> list:
    return run_queue(redis, QUEUE)


def predictions_by_task(client, pid: int) -> dict[int, list]:
    out: dict[int, list] = {}
    for p in client.predictions.list(project=pid):
        out.setdefault(p.task, []).append(p)
    return out


def test_no_served_version_is_skipped_with_the_reason(tmp_path, monkeypatch):
    """Nothing served yet for the project (never connected): the job ends at once, before asking Label Studio."""
    from ml_backend.jobs.propose_job import propose_project

    for k, v in {"LABEL_STUDIO_URL": "http://127.0.0.1:9", "LABEL_STUDIO_API_KEY": "k", "MODEL_DIR": str(tmp_path)}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("MODEL_VERSION", raising=False)
    result = propose_project(7, {"min_painted": 3})
    assert result["status"] == "skipped" and result["reason"].startswith("no served version")


def test_the_webhook_answer_says_a_proposal_job_was_queued(tmp_path, redis_url):
    """Label Studio's recorded ANNOTATION_CREATED body, to the app: training is off, a proposal job is queued
    (once: the second event finds it waiting)."""
    import json

    from fastapi.testclient import TestClient

    from label_config import render_config
    from ml_backend.api.app import create_app
    from tests.fixtures import fixture_path

    recorded = json.loads((fixture_path("ls-protocol") / "webhook_annotation_created.json").read_text())
    body = recorded["received"][0]["body"]
    pid = int(body["project"]["id"])
    settings = Settings(model_dir=tmp_path, model_arch="tiny-cnn", image_size=32, redis_url=redis_url,
                        queue_name=QUEUE, propose_after_painted=3)
    with TestClient(create_app(settings)) as client:
        client.post("/setup", json={"project": f"{pid}.1", "schema": render_config(["cat", "dog", "bird"])})
        first = client.post("/webhook", json=body).json()
        second = client.post("/webhook", json=body).json()
    assert first["status"] == "ignored" and "TRAIN_EVERY_N_ANNOTATIONS=0" in first["reason"]
    assert first["proposals"]["status"] == "queued"
    assert second["proposals"] == {"job": first["proposals"]["job"], "status": "already queued"}
    assert Queue(QUEUE, connection=Redis.from_url(redis_url)).count == 1


@pytest.mark.e2e
@pytest.mark.slow
def test_three_painted_images_give_every_training_image_a_proposal(stack, dataset, label_studio, ls_client):
    client, redis = ls_client, stack["redis"]
    pid = new_project(stack, dataset, label_studio, "propose: three painted")
    tasks = tasks_of(client, pid)
    train = [t for t in tasks if t.data["split"] == "train"]
    train.sort(key=lambda t: (t.data["key"].rsplit("_", 1)[-1], t.data["label"]))  # painted: one of each class
    assert len(train) == 15 and all(len(ps) == 1 for ps in predictions_by_task(client, pid).values())

    for task in train[:2]:
        paint_true_mask(client, task, dataset)
    (below,) = run_worker(redis)  # two events: one job (deduplicated)
    assert below.get_status() == JobStatus.FINISHED, below.latest_result().exc_string
    assert below.return_value()["status"] == "skipped"
    assert below.return_value()["reason"].startswith("2 of 3 training images painted")

    # another version's prediction on one task is kept (only the served version's is replaced)
    other = client.predictions.create(task=train[3].id, result=[regions.choices("circle")], score=0.5,
                                      model_version="v1")
    paint_true_mask(client, train[2], dataset)
    t0 = time.perf_counter()
    (job,) = run_worker(redis)
    took = time.perf_counter() - t0
    assert job.get_status() == JobStatus.FINISHED, job.latest_result().exc_string
    result = job.return_value()
    assert (result["status"], result["version"], result["painted"], result["unpainted"]) == ("proposed", "v0", 3, 12)
    assert result["predictions"]["pushed"] == 12 and result["replaced"] == 12
    assert set(result["timings"]) == {"export", "fetch", "fit", "push", "total"}
    root = CheckpointStore(stack["model_dir"], pid).root
    assert propagation.newest_net_path(root, "v0") == propagation.proposals_path(root, "v0")

    stored = predictions_by_task(client, pid)
    (kept,) = [p for p in stored.pop(train[3].id) if p.model_version == "v1"]  # stored again, unchanged
    assert (kept.result, kept.score) == (other.result, other.score)
    stored[train[3].id] = [p for p in predictions_by_task(client, pid)[train[3].id] if p.model_version == "v0"]
    for task in train[3:]:
        (pred,) = stored[task.id]  # the old v0 prediction replaced, not joined
        assert pred.model_version == "v0"
        ids = [r["id"] for r in pred.result]
        assert len(ids) == len(set(ids))  # region ids unique per answer
        (brush,) = [r for r in pred.result if r["type"] == "brushlabels"]
        assert brush["from_name"] == "spurious" and brush["value"]["brushlabels"] == ["Spurious"]
        assert brush["id"].startswith("propagated") and brush["original_width"] == 32
        assert [r["type"] for r in pred.result].count("choices") == 1
    for task in [t for t in tasks if t not in train[3:]]:  # painted and test tasks: untouched
        (pred,) = stored[task.id]
        assert not [r for r in pred.result if r["type"] == "brushlabels"]

    # versions only in the version select: the project and every prediction say v0; the card says the rest
    assert client.projects.get(id=pid).model_version == "v0"
    assert {p.model_version for ps in stored.values() for p in ps} == {"v0"}
    (ml,) = client.ml.list(project=pid)
    assert ml.title == "Robustar · serving v0 · proposals from 3 painted images"
    # an event that changes no painted mask (a class fix on a painted task): no new fit, nothing pushed again
    queue = stack["app"].state.queue
    assert queue.handle_event(pid, "ANNOTATION_UPDATED")["proposals"]["status"] == "queued"
    (again,) = run_worker(redis)
    assert again.return_value()["status"] == "skipped" and "did not change" in again.return_value()["reason"]
    # the expert corrects a proposal (paints the task): the correction trains the next fit
    paint_true_mask(client, train[4], dataset)
    (corrected,) = run_worker(redis)
    assert corrected.return_value()["painted"] == 4 and corrected.return_value()["predictions"]["pushed"] == 11
    assert all(len(ps) == 1 for t, ps in predictions_by_task(client, pid).items() if t != train[3].id)
    print(f"\n[propose] 3 painted -> 12 proposals: worker {took:.2f}s, timings {result['timings']}")


@pytest.mark.e2e
@pytest.mark.slow
def test_propose_after_painted_zero_queues_no_job(stack, dataset, label_studio, ls_client):
    pid = new_project(stack, dataset, label_studio, "propose: off")
    queue = stack["app"].state.queue
    queue.policy.propose_after_painted = 0
    try:
        train = [t for t in tasks_of(ls_client, pid) if t.data["split"] == "train"]
        for task in train[:3]:
            paint_true_mask(ls_client, task, dataset)
        assert Queue(QUEUE, connection=stack["redis"]).count == 0
        answer = queue.handle_event(pid, "ANNOTATION_CREATED")
        assert answer["proposals"]["status"] == "off"
    finally:
        queue.policy.propose_after_painted = 3
