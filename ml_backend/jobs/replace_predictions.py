"""Replace a version's stored predictions of some tasks in Label Studio 1.23, in bulk, keeping other versions'.

``version_predictions`` lists the project's predictions once; ``Replacing`` wraps a predict function so that
each batch's old predictions of the version are deleted just before ``push_predictions`` stores the new
ones: one prediction of the version per task. Label Studio 1.23 deletes predictions in bulk only per task,
every version at once (the Data Manager's ``delete_tasks_predictions`` action; ``DELETE
/api/projects/<id>/model-versions`` would delete the version's predictions of every task), so the tasks'
predictions of other versions are stored again, unchanged (new ids); one ``DELETE`` per prediction is the
fallback where the action is refused.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from ml_backend.jobs.push_predictions import PredictFn, PredictionStore

log = logging.getLogger(__name__)

DELETE_THREADS = 4  # parallel deletes on the fallback path


def version_predictions(client, project_id: int, version: str) -> tuple[dict[int, list[int]], dict[int, list[dict]]]:
    """Task id -> ids of its stored predictions of ``version``, and task id -> its predictions of other
    versions (as ``import_predictions`` takes them), from one listing of the project."""
    out: dict[int, list[int]] = {}
    others: dict[int, list[dict]] = {}
    for p in client.predictions.list(project=project_id):
        task = getattr(p, "task", None)
        if task is None:
            continue
        if getattr(p, "model_version", None) == version:
            out.setdefault(int(task), []).append(int(p.id))
        else:
            others.setdefault(int(task), []).append({"task": int(task), "result": p.result, "score": p.score,
                                                     "model_version": p.model_version})
    return out, others


def delete_predictions(client, project_id: int, old: dict[int, list[int]], others: dict[int, list[dict]],
                       task_ids: list[int]) -> int:
    """Delete the old predictions (``old``) of ``task_ids``. Label Studio 1.23 deletes predictions in bulk only
    per task (the Data Manager action, every version): one action for the batch, then the tasks' predictions
    of other versions (``others``) are stored again, unchanged but with new ids. Where the action is refused:
    one ``DELETE`` per old prediction. Returns how many old predictions were deleted."""
    tasks = [t for t in task_ids if t in old]
    if not tasks:
        return 0
    try:
        client.actions.create(id="delete_tasks_predictions", project=project_id,
                              selected_items={"all": False, "included": tasks})
    except Exception as e:
        log.warning("project %s: bulk delete of %d tasks' predictions refused (%s); one by one", project_id,
                    len(tasks), e)
        return delete_one_by_one(client, [pid for t in tasks for pid in old[t]])
    kept = [p for t in tasks for p in others.get(t, [])]
    if kept and PredictionStore(client, project_id)(kept) < len(kept):
        log.error("project %s: %d predictions of other versions could not be stored again", project_id, len(kept))
    return sum(len(old[t]) for t in tasks)


def delete_one_by_one(client, ids: list[int]) -> int:
    """``DELETE`` each prediction (a few threads); returns how many were deleted."""
    def delete(pid: int) -> int:
        try:
            client.predictions.delete(id=pid, request_options={"max_retries": 1})
            return 1
        except Exception as e:  # gone already, or refused: the new one is stored anyway
            log.warning("prediction %s not deleted: %s", pid, e)
            return 0

    with ThreadPoolExecutor(DELETE_THREADS) as pool:
        return sum(pool.map(delete, ids))


class Replacing:
    """``predict``, deleting each predicted task's old predictions of the version (``old``) before
    ``push_predictions`` stores the new one: one prediction of the version per task. ``done`` hears how many
    tasks are predicted so far; ``replaced`` counts the deleted predictions."""

    def __init__(self, predict: PredictFn, client, project_id: int, old: dict[int, list[int]],
                 others: dict[int, list[dict]], done: Callable[[int], None]) -> None:
        self.predict, self.client, self.project_id = predict, client, project_id
        self.old, self.others, self.done = old, others, done
        self.tasks = self.replaced = 0

    def __call__(self, tasks: list[dict]) -> list[dict]:
        results = self.predict(tasks)
        predicted = [int(task["id"]) for task, res in zip(tasks, results) if res.get("result")]
        self.replaced += delete_predictions(self.client, self.project_id, self.old, self.others, predicted)
        self.tasks += len(tasks)
        self.done(self.tasks)
        return results
