"""Proposals before training (issue 23) in the real labeling view, in headless Debian chromium: the expert
marks the patch of three training tasks with the magic wand (its ``Spurious`` label) and submits each;
Label Studio's annotation webhooks queue the propose job (``PROPOSE_AFTER_PAINTED=3``), which fits the
mask net and pushes the served v0's predictions again, now with a proposal. Without any training job:
the model card says "proposals from 3 painted images", the project stays on v0, and an unpainted training
task opened in the labeling view holds a ``Spurious`` region on its patch. The page logs no error.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np
import pytest
from PIL import Image

from label_config.rle import decode_rle
from tests.browser import ui
from tests.browser.stack import Stack, running_stack
from tests.browser.ui import LabelingView, ModelPage, own_errors, shot

pytestmark = [pytest.mark.browser, pytest.mark.e2e, pytest.mark.slow]

SPURIOUS = "Spurious"
PAINTED = 3
PROPOSALS_TIMEOUT = 180  # s from the third submit to proposals on every unpainted training task, at most


@pytest.fixture(scope="module")
def stack(label_studio, redis_dbs, tmp_path_factory) -> Iterator[Stack]:
    """The browser stack with proposals on after three painted images (the product's default)."""
    with redis_dbs.lease() as redis_url, \
            running_stack(label_studio, redis_url, tmp_path_factory.mktemp("propose-stack"), title="Robustar proposals",
                          env={"PROPOSE_AFTER_PAINTED": str(PAINTED)}) as running:
        yield running


def patch_of(stack: Stack, task_id: int) -> np.ndarray:
    return np.asarray(Image.open(stack.dataset / "masks" / stack.task(task_id)["data"]["key"]).convert("L")) > 127


def proposal_of(stack: Stack, task_id: int, version: str) -> np.ndarray | None:
    """The ``propagated`` Spurious region of the task's one prediction of ``version`` (None: none yet)."""
    preds = [p for p in stack.predictions(task_id) if p.get("model_version") == version]
    regions = [r for p in preds for r in p["result"] if r.get("type") == "brushlabels"
               and SPURIOUS in r["value"].get("brushlabels", []) and str(r.get("id", "")).startswith("propagated")]
    if len(preds) != 1 or not regions:
        return None
    r = regions[0]
    return decode_rle(r["value"]["rle"], r["original_height"], r["original_width"])


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def wand_paint(page, stack: Stack, task_id: int) -> None:
    """The magic wand with its Spurious label, pressed on the task's patch, then Submit."""
    ys, xs = np.nonzero(patch_of(stack, task_id))
    view = LabelingView(page, stack.ls_url, stack.project_id, task_id).open()
    view.choose_tool("magicwand")
    view.spurious_label("spurious_wand").click()
    page.wait_for_timeout(200)
    view.drag([(int(xs.mean()), int(ys.mean())), (int(xs.mean()) + 1, int(ys.mean()) + 1)])
    view.submit()


def test_three_painted_tasks_bring_proposals_to_the_others_without_training(logged_in, stack):
    page, log = logged_in, ui.page_log(logged_in)
    version = stack.model_version
    train = stack.task_ids("train")
    by_class: dict[str, int] = {}
    for t in train:  # one painted task per class, as an expert starting out would
        by_class.setdefault(stack.task(t)["data"]["label"], t)
    painted = list(by_class.values())[:PAINTED]
    rest = [t for t in train if t not in painted]
    assert not [t for t in rest if proposal_of(stack, t, version) is not None], "v0 proposed before any painting"

    mark = log.mark()
    for task_id in painted:
        wand_paint(page, stack, task_id)
    shot(page, "third-task-submitted")
    t0 = time.monotonic()
    try:
        ui.poll(lambda: all(proposal_of(stack, t, version) is not None for t in rest), timeout=PROPOSALS_TIMEOUT,
                interval=2, what=f"a proposal of {version} on every unpainted training task")
    except AssertionError as e:
        raise AssertionError(f"{e}\n{stack.logs()}") from None
    seconds = time.monotonic() - t0

    project = stack.project()
    assert project["model_version"] == version, f"the project left {version}: {project['model_version']!r}"
    card = ModelPage(page, stack.ls_url, stack.project_id).open()
    ui.poll(lambda: f"proposals from {PAINTED} painted images" in card.card_title(), timeout=30,
            what="the card's proposal status")
    shot(page, "card-proposals")
    title = card.card_title()
    assert f"serving {version}" in title, title

    ious = {t: round(iou(proposal_of(stack, t, version), patch_of(stack, t)), 3) for t in rest}
    shown_on = max(ious, key=ious.get)
    view = LabelingView(page, stack.ls_url, stack.project_id, shown_on).open()
    shot(page, f"train-task-{shown_on}-proposal")
    shown = [decode_rle(r["value"]["rle"], r["original_height"], r["original_width"]) for r in view.regions()
             if r.get("type") == "brushlabels" and SPURIOUS in r["value"].get("brushlabels", [])]
    ui.write_artifact("proposals.txt", f"{seconds:.1f}s from the third submit to proposals on {len(rest)} tasks; "
                                       f"IoU per task {ious}; card {title!r}\n{log.since(mark).dump()}")
    assert shown and iou(shown[0], patch_of(stack, shown_on)) > 0.5, (
        f"the labeling view of task {shown_on} does not show the proposal on its patch (IoU per task {ious})")
    assert float(np.median(list(ious.values()))) > 0.5, f"proposals off the patch: IoU per task {ious}"
    assert not [p for t in train for p in stack.predictions(t) if p["model_version"] != version], (
        "a prediction of another version appeared: the proposal job trains no classifier")
    errors = own_errors(log.since(mark))
    assert not errors, f"the page logged errors: {errors[:5]}"
