"""The suspicion as its own Data Manager column: written into each training task's data by the worker.

A prediction's score is the classifier's confidence on every task (Label Studio shows it as "Prediction
score" and on the prediction's tab); a training task's suspicion (``ml_backend.predict.influence``) goes into
the task's data as ``suspicion`` (a number, sortable and filterable in the Data Manager) and
``suspicion_by`` (the version and the formula it was computed with: a change of definition between versions
shows in that column instead of silently changing what the number means).
"""

from __future__ import annotations

import logging
from typing import Any

from ml_backend.predict.predictor import SUSPICION, SUSPICION_BY

log = logging.getLogger(__name__)

MAX_CONSECUTIVE_FAILURES = 3
FORMULAS = {  # index formula -> what the column says
    "self_influence": "self-influence (no misclassified test)",
}


def describe(formula: str | None, version: str) -> str:
    """``"v2 · harm to misclassified tests (cosine)"`` for the index's formula name."""
    if formula and formula.startswith("harmful_") and formula.endswith("_on_misclassified_tests"):
        text = f"harm to misclassified tests ({formula.removeprefix('harmful_').removesuffix('_on_misclassified_tests')})"
    else:
        text = FORMULAS.get(formula or "", formula or "unknown")
    return f"{version} · {text}"


def column_values(result: dict, version: str) -> dict[str, Any] | None:
    """The task-data fields one prediction result carries (None: no suspicion)."""
    value = result.get(SUSPICION)
    if value is None:
        return None
    return {SUSPICION: round(float(value), 4), SUSPICION_BY: describe(result.get(SUSPICION_BY), version)}


def write_task_columns(client, project_id: int, updates: list[tuple[dict, dict[str, Any]]]) -> dict[str, int]:
    """Merge each ``(task, fields)`` into the task's data (``PATCH /api/tasks/<id>``; unchanged ones skipped).
    Best effort: gives up after ``MAX_CONSECUTIVE_FAILURES`` refusals in a row; returns the counts."""
    written = unchanged = failed = 0
    in_row = 0
    for task, fields in updates:
        data = dict(task.get("data") or {})
        if all(data.get(k) == v for k, v in fields.items()):
            unchanged += 1
            continue
        data.update(fields)
        try:
            client.tasks.update(id=int(task["id"]), data=data, request_options={"max_retries": 0})
            written += 1
            in_row = 0
        except Exception as e:  # a column is a view: never fail the job for it
            failed += 1
            in_row += 1
            log.warning("project %s task %s: cannot write its suspicion column: %s", project_id, task.get("id"), e)
            if in_row >= MAX_CONSECUTIVE_FAILURES:
                failed += len(updates) - written - unchanged - failed
                break
    if updates:
        log.info("project %s: suspicion column written for %d tasks (%d unchanged, %d failed)", project_id, written,
                 unchanged, failed)
    return {"written": written, "unchanged": unchanged, "failed": failed}
