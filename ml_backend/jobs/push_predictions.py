"""After a new version is published: push its predictions to Label Studio, then point the project at it.

Label Studio's Data Manager column "Prediction score" averages the scores of the predictions whose
``model_version`` equals the project's ``model_version`` (see ls-protocol/dm_sort_by_prediction_score
.json), and once that is no longer the backend title the label stream shows the stored predictions
instead of calling ``/predict``. So the worker predicts every task with the new version (the same
``RobustarModel.predict`` the backend serves, with every configured prediction part), stores the
predictions with ``model_version=vN`` and then sets ``project.model_version = vN``. With
``PUSH_DETAIL=light`` (the default) a pushed prediction holds what the Data Manager needs — the class and
the score (the confidence; a training task's suspicion goes into its data, ``jobs.task_columns``) — and the views the labeling page loads by URL (heatmap,
influence page) are made when a task is opened (``ml_backend.predict.lazy_views``).

Everything here is best effort: the caller logs a failure and the job still succeeds.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import Any, Callable

from ml_backend.jobs.task_columns import column_values, write_task_columns
from ml_backend.predict.lazy_views import TaskRecords
from ml_backend.predict.predictor import RobustarModel, configured_parts
from ml_backend.predict.registry import ModelRegistry
from ml_backend.settings import Settings

log = logging.getLogger(__name__)

PredictFn = Callable[[list[dict]], list[dict]]


DETAILS = ("light", "full")


def backend_predictor(settings: Settings, project_id: int, label_config: str, version: str) -> PredictFn:
    """``RobustarModel(...).predict`` pinned to ``version``, with the backend's configured parts.

    ``PUSH_DETAIL=light`` (default): views the browser loads by URL (saliency heatmap, influence/suspicion
    page) are left out and each batch's tasks are recorded (``lazy_views.TaskRecords``), so the backend
    makes those views on a task's first GET; ``full``: every part, every task, now."""
    if settings.push_detail not in DETAILS:
        raise ValueError(f"PUSH_DETAIL={settings.push_detail!r}: choose one of {', '.join(DETAILS)}")
    pinned = replace(settings, pinned_version=version)
    try:
        parts = configured_parts(pinned)
    except Exception as e:  # a part that cannot be built degrades to the classifier alone
        log.warning("project %s: prediction parts unavailable for pushed predictions: %s", project_id, e)
        parts = []
    model = RobustarModel(project_id, label_config, pinned, ModelRegistry(pinned), parts)
    if settings.push_detail == "full":
        return lambda tasks: model.predict(tasks)
    records = TaskRecords(settings.model_dir, project_id)

    def predict_light(tasks: list[dict]) -> list[dict]:
        records.write(tasks, label_config)
        return model.predict(tasks, lazy_views=True)

    return predict_light


MAX_CONSECUTIVE_FAILURES = 3


class PredictionStore:
    """Stores predictions: bulk import per batch; per-task ``predictions.create`` once bulk is refused.

    Gives up (raises) after ``MAX_CONSECUTIVE_FAILURES`` failed calls in a row: Label Studio is then
    unreachable or refusing, and retrying every task would hold the worker for minutes.
    """

    def __init__(self, client, project_id: int) -> None:
        self.client, self.project_id = client, project_id
        self.bulk = True
        self.failures_in_row = 0
        self.last_error: Exception | None = None

    def _failed(self, e: Exception, what: str) -> None:
        self.failures_in_row += 1
        self.last_error = e
        log.warning("project %s: %s failed: %s", self.project_id, what, e)
        if self.failures_in_row >= MAX_CONSECUTIVE_FAILURES:
            raise RuntimeError(
                f"Label Studio refused {self.failures_in_row} prediction requests in a row; last error: {e}"
            ) from e

    def __call__(self, predictions: list[dict]) -> int:
        if self.bulk:
            try:
                self.client.projects.import_predictions(id=self.project_id, request=predictions)
                self.failures_in_row = 0
                return len(predictions)
            except Exception as e:
                self.bulk = False
                self._failed(e, f"bulk import of {len(predictions)} predictions (falling back to one by one)")
        ok = 0
        for p in predictions:
            try:
                self.client.predictions.create(**p, request_options={"max_retries": 0})
                self.failures_in_row = 0
                ok += 1
            except Exception as e:
                self._failed(e, f"storing the prediction of task {p.get('task')}")
        return ok


def push_predictions(
    client,
    project_id: int,
    tasks: list[dict],
    predict: PredictFn,
    version: str,
    batch_size: int = 64,
    set_project_version: bool = True,
) -> dict[str, Any]:
    """Predict ``tasks`` in batches, store the predictions as ``version``, then set the project's
    ``model_version``. Returns counts and seconds; raises only if nothing could be stored."""
    t0 = time.perf_counter()
    pushed = empty = failed = 0
    store = PredictionStore(client, project_id)
    columns: list[tuple[dict, dict]] = []  # (task, its suspicion fields) for the Data Manager column
    for start in range(0, len(tasks), batch_size):
        chunk = tasks[start : start + batch_size]
        try:
            results = predict(chunk)
        except Exception as e:
            failed += len(chunk)
            log.warning("project %s: predicting tasks %s..%s failed: %s", project_id,
                        chunk[0].get("id"), chunk[-1].get("id"), e)
            continue
        batch = []
        for task, res in zip(chunk, results):
            if not res.get("result"):
                empty += 1  # e.g. unreadable image: nothing to show
                continue
            fields = column_values(res, version)
            if fields is not None:
                columns.append((task, fields))
            batch.append({
                "task": int(task["id"]),
                "result": res["result"],
                "score": None if res.get("score") is None else float(res["score"]),
                "model_version": version,
            })
        stored = store(batch) if batch else 0
        pushed += stored
        failed += len(batch) - stored
    if tasks and pushed == 0:
        raise RuntimeError(f"no prediction of {version} could be stored for project {project_id} ({failed} failed, {empty} empty)")
    project_version_set = False
    if set_project_version:
        client.projects.update(id=project_id, model_version=version)
        project_version_set = True
    out = {"pushed": pushed, "empty": empty, "failed": failed, "project_model_version": version if project_version_set else None,
           "suspicion_column": write_task_columns(client, project_id, columns),
           "seconds": round(time.perf_counter() - t0, 3)}
    log.info("project %s: pushed %d predictions of %s (%d empty, %d failed); project model_version=%s",
             project_id, pushed, version, empty, failed, out["project_model_version"])
    return out
