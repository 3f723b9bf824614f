"""The expert's loop in the real Label Studio UI (issue 11), in headless Debian chromium, in this order:

log in; open a train and a test task (the saliency heatmap loads, no CORS error); paint with mouse drags
(brush, eraser) and with the magic wand on a training task and submit without touching the class; the
job's training record keeps the task's own label and contains the magic-wand pixels; Start Training on
the model card, progress and then the new version in the UI without a reload; roll back to the
previous version from the UI and see predictions of it. One screenshot per step in
``.robustar/test-artifacts/browser/``.

The tests share one stack and run in file order: the record tests read what the painting test
submitted, the roll-back test needs the version the training test produced.
"""

from __future__ import annotations

import json
import re
import time

import numpy as np
import pytest
from PIL import Image

from label_config.export import parse_export
from label_config.render import parse_config
from label_config.rle import decode_rle
from ml_backend.labelstudio.client import fetch_export
from tests.browser import ui
from tests.browser.ui import AnnotationSettingsPage, LabelingView, ModelPage, shot
from tests.e2e.test_local_stack import predict_new_task_through_label_studio
from training.options import TrainOptions

pytestmark = [pytest.mark.browser, pytest.mark.e2e, pytest.mark.slow]

SPURIOUS = "Spurious"
PROGRESS = re.compile(r"queued|started|training|epoch\s*\d+\s*(of|/)\s*\d+", re.IGNORECASE)
TRAINING_TIMEOUT = 300  # s from the Start Training click to the new version, at most
CARD_GRACE = 45  # s the card may lag behind the published version (it shows it after an in-app navigation)


@pytest.fixture(scope="module")
def loop() -> dict:
    """What one step leaves for the next (the painted task, its masks, the new version)."""
    return {}


def needs(loop: dict, key: str, step: str):
    if key not in loop:
        pytest.fail(f"needs the result of {step}, which did not complete (see its failure above)", pytrace=False)
    return loop[key]


def predicted_class(stack, task_id: int, version: str) -> str | None:
    for p in stack.predictions(task_id):
        if p["model_version"] == version:
            for r in p["result"]:
                if r.get("type") == "choices" and r.get("from_name") == "pred_class":
                    return r["value"]["choices"][0]
    return None


def mask_of(results: list[dict], keep) -> np.ndarray | None:
    """Union of the RLE masks of the results ``keep`` accepts (at their original size)."""
    out = None
    for r in results:
        if keep(r) and isinstance(r.get("value"), dict) and "rle" in r["value"]:
            m = decode_rle(r["value"]["rle"], r["original_height"], r["original_width"])
            out = m if out is None else out | m
    return out


def short(results: list[dict]) -> str:
    """Results as JSON with every RLE replaced by its length (for artifacts and messages)."""
    def one(r):
        r = dict(r)
        if isinstance(r.get("value"), dict) and "rle" in r["value"]:
            r["value"] = {**r["value"], "rle": f"<{len(r['value']['rle'])} ints>"}
        return r
    return json.dumps([one(r) for r in results], indent=1)


# ------------------------------------------------------------------ 1. log in


def test_login(page, stack):
    ui.login(page, stack.ls_url, stack.ls.username, stack.ls.password, next_path="/projects/")
    shot(page, "logged-in")
    page.get_by_text(stack.project()["title"]).first.wait_for(timeout=30_000)
    shot(page, "projects-list")


# ------------------------------------------------------------------ 2. the heatmap loads on a train and a test task


def test_saliency_heatmap_loads_on_a_train_and_a_test_task(logged_in, stack):
    page, log = logged_in, ui.page_log(logged_in)
    seen = {}
    for split in ("train", "test"):
        task_id = stack.task_ids(split)[0]
        view = LabelingView(page, stack.ls_url, stack.project_id, task_id).open()
        seen[split] = {"task": task_id, **view.wait_saliency_loaded(timeout=20)}
        shot(page, f"{split}-task-{task_id}")
    broken = {s: v for s, v in seen.items() if not v["naturalWidth"] > 0}
    cors = log.cors_errors()
    assert not broken and not cors, (
        "the saliency heatmap did not load: "
        + "; ".join(f"{s} task {v['task']}: img={v['img']} naturalWidth={v['naturalWidth']} "
                    f"error box={v['error'][:160]!r}" for s, v in broken.items())
        + f"\n{log.summary()}"
    )


# ------------------------------------------------------------------ 3. paint: brush, eraser, magic wand; submit


def test_paint_with_brush_eraser_and_magic_wand_then_submit(logged_in, stack, loop):
    page = logged_in
    # a training task the model gets wrong, so a pre-filled guess cannot pass for the task's label
    train = stack.task_ids("train")
    wrong = [t for t in train if predicted_class(stack, t, stack.model_version) not in (None, stack.task(t)["data"]["label"])]
    task_id = (wrong or train)[0]
    data = stack.task(task_id)["data"]
    patch = np.asarray(Image.open(stack.dataset / "masks" / data["key"]).convert("L")) > 127
    ys, xs = np.nonzero(patch)
    cy, cx = int(ys.mean()), int(xs.mean())
    h, w = patch.shape
    stroke_x = w * 3 // 4 if cx < w // 2 else w // 4  # the brush stroke stays clear of the patch
    erase_y = h // 2

    view = LabelingView(page, stack.ls_url, stack.project_id, task_id).open()
    prefilled = page.locator(".lsf-choices input:checked").evaluate_all("els => els.map(e => e.name)")
    shot(page, f"train-task-{task_id}-opened")

    view.select_label(SPURIOUS)  # selects the Spurious brush
    view.drag([(stroke_x, h // 4), (stroke_x, h * 3 // 4)])
    shot(page, "brush-stroke")
    view.choose_tool("eraser")  # erases from the selected region: the stroke just painted
    view.drag([(stroke_x - 8, erase_y), (stroke_x + 8, erase_y)])
    shot(page, "eraser-stroke")
    view.choose_tool("magicwand")
    view.drag([(cx, cy), (cx + 1, cy + 1)])  # press on the patch, a tiny drag (threshold), release
    shot(page, "magic-wand")

    saved = view.submit()  # without touching the class
    shot(page, "submitted")
    annotation = stack.client().annotations.get(id=saved["id"])
    results = [dict(r) for r in annotation.result]
    ui.write_artifact("stored-annotation.json", short(results))
    manual = [r for r in results if r.get("origin") != "prediction"]
    brush = mask_of(manual, lambda r: r.get("type") == "brushlabels" and SPURIOUS in r["value"].get("brushlabels", []))
    wand_ids = {r["id"] for r in manual if r.get("type") == "magicwand" or r.get("from_name") == "magicwand"}
    wand = mask_of(manual, lambda r: r["id"] in wand_ids)
    loop.update(task_id=task_id, label=data["label"], prefilled=prefilled, annotation_id=saved["id"],
                predicted=predicted_class(stack, task_id, stack.model_version))

    # Label Studio draws a ~4 px stroke a few pixels left of a vertical drag's path: look near the column
    near = slice(max(0, stroke_x - 5), stroke_x + 6)
    assert brush is not None and brush[h // 4 + 2: erase_y - 2, near].any(axis=1).all(), (
        f"the brush stroke along column {stroke_x} is not in the stored Spurious region:\n{short(manual)}")
    assert not brush[erase_y - 2: erase_y + 3, near].any(axis=1).all(), (
        f"the eraser stroke along row {erase_y} removed nothing from the brush region")
    assert wand is not None and wand.any(), f"no magic-wand region was stored:\n{short(manual)}"
    inside = (wand & patch).sum() / wand.sum()
    assert inside > 0.8, f"the magic-wand region is not on the patch ({inside:.0%} inside)"
    loop.update(brush=brush, wand=wand, patch=patch, stroke_x=stroke_x, erase_y=erase_y)


# ------------------------------------------------------------------ 4. what the job trains on


def training_record(stack, loop):
    task_id = needs(loop, "task_id", "test_paint_with_brush_eraser_and_magic_wand_then_submit")
    project = stack.project()
    tasks = fetch_export(stack.client(), stack.project_id)
    export = parse_export(tasks, parse_config(project["label_config"]), label_source=TrainOptions.label_source)
    records = {r.task_id: r for r in export.records}
    assert task_id in records, f"task {task_id} has no training record; skipped: {export.skipped}"
    return records[task_id], export


def test_submitting_without_touching_the_class_keeps_the_task_label(stack, loop):
    record, _ = training_record(stack, loop)
    assert record.target == loop["label"], (
        f"task {loop['task_id']} (label {loop['label']!r}) would train as {record.target!r}: the class box came "
        f"pre-filled with the prediction ({loop['prefilled']}, model said {loop['predicted']!r}) and painting "
        f"without touching it submitted that guess")


def test_magic_wand_pixels_are_in_the_training_mask(stack, loop):
    record, export = training_record(stack, loop)
    brush, wand = needs(loop, "brush", "the painting test"), loop["wand"]
    assert record.mask is not None, f"task {loop['task_id']} has no training mask (ignored: {export.ignored_regions})"
    assert record.mask.shape == wand.shape, (record.mask.shape, wand.shape)
    assert (brush & ~record.mask).sum() == 0, "brush pixels are missing from the training mask"
    missing = wand & ~record.mask & ~brush
    assert missing.sum() == 0, (
        f"{int(missing.sum())} of {int((wand & ~brush).sum())} magic-wand pixels are not in the training mask "
        f"(mask {int(record.mask.sum())} px = the brush stroke only; ignored regions: {export.ignored_regions}, "
        f"counts: {export.counts()['painted']} painted)")


def test_paint_two_more_tasks_with_the_magic_wand(logged_in, stack, loop):
    """Two more training tasks of other classes, each painted with one magic-wand click on its patch: with
    three painted images the job can fit its mask net (mask propagation needs two)."""
    page = logged_in
    first = needs(loop, "task_id", "test_paint_with_brush_eraser_and_magic_wand_then_submit")
    labels = {stack.task(first)["data"]["label"]}
    painted = [first]
    for task_id in stack.task_ids("train"):
        data = stack.task(task_id)["data"]
        if len(painted) == 3:
            break
        if task_id in painted or data["label"] in labels:
            continue
        patch = np.asarray(Image.open(stack.dataset / "masks" / data["key"]).convert("L")) > 127
        ys, xs = np.nonzero(patch)
        view = LabelingView(page, stack.ls_url, stack.project_id, task_id).open()
        view.select_label(SPURIOUS)
        view.choose_tool("magicwand")
        cy, cx = int(ys.mean()), int(xs.mean())
        view.drag([(cx, cy), (cx + 1, cy + 1)])
        shot(page, f"wand-task-{task_id}")
        view.submit()
        painted.append(task_id)
        labels.add(data["label"])
    loop["painted"] = painted
    assert len(painted) == 3, f"painted only {painted}"


# ------------------------------------------------------------------ 5. Start Training; progress, then vN


def test_start_training_shows_progress_then_the_new_version(logged_in, stack, loop):
    page = logged_in
    before = stack.model_version
    model = ModelPage(page, stack.ls_url, stack.project_id).open()
    shot(page, "model-card-before")
    dialog = model.start_training()
    clicked = time.monotonic()
    shot(page, "start-training-sent")
    model.close_dialog()

    seen: list[tuple[float, str]] = []  # (seconds since the click, card text)
    versions_seen: set[str] = set()  # the project's model_version at every look: only ever a version
    progress_at = card_version_at = published_at = None
    new = None
    while True:
        now = time.monotonic() - clicked
        model.refresh_in_app()
        text = model.card_text()
        if not seen or seen[-1][1] != text:
            seen.append((round(now, 1), text))
        if progress_at is None and PROGRESS.search(text):
            progress_at = now
            shot(page, "progress")
        current = stack.project()["model_version"]
        versions_seen.add(current)
        if published_at is None:
            if current and current != before and re.fullmatch(r"v\d+", current):
                published_at, new = now, current
        if new and re.search(rf"\b{re.escape(new)}\b", text) and not PROGRESS.search(text):  # served, not in training
            card_version_at = now
            shot(page, f"new-version-{new}")
            break
        if now > TRAINING_TIMEOUT or (published_at is not None and now > published_at + CARD_GRACE):
            shot(page, "gave-up")
            break
        page.wait_for_timeout(1500)

    if new:
        loop["new_version"] = new
    timing = (f"Start Training click -> {new or 'no new version'} published by the worker: "
              f"{published_at if published_at is None else round(published_at, 1)} s; "
              f"-> visible on the model card: {card_version_at if card_version_at is None else round(card_version_at, 1)} s")
    print("\n" + timing)
    ui.write_artifact("training-timing.txt", timing + "\ncard texts seen:\n"
                      + "\n".join(f"  {t:6.1f}s  {x}" for t, x in seen) + f"\ndialog:\n{dialog}\n")
    problems = []
    if new is None:
        problems.append(f"no new version was published within {TRAINING_TIMEOUT}s (project model_version stayed "
                        f"{before!r})\n{stack.logs(20)}")
    not_versions = sorted(v for v in versions_seen if not re.fullmatch(r"v\d+", v or ""))
    if not_versions:
        problems.append(f"the project's model_version was not a version during training: {not_versions}")
    if progress_at is None:
        problems.append("the model card never showed training progress (queued / epoch k of n)")
    if new and card_version_at is None:
        problems.append(f"the worker published {new} after {published_at:.0f}s, but the model card never showed it "
                        f"within {CARD_GRACE}s")
    assert not problems, "\n".join(problems) + "\ncard texts seen (s after the click):\n" + "\n".join(
        f"  {t:6.1f}s  {x}" for t, x in seen) + f"\nthe Start Training dialog said: {dialog!r}"


# ------------------------------------------------------------------ 5b. the new version's report, one click away


def test_the_new_versions_report_is_one_click_from_a_task(logged_in, stack, loop):
    """A task's influence view (predicted by the new version) links the version's training report: curves,
    accuracy per split parent vs new, what the job used or skipped."""
    page = logged_in
    new = needs(loop, "new_version", "test_start_training_shows_progress_then_the_new_version")
    task_id = stack.task_ids("test")[0]
    LabelingView(page, stack.ls_url, stack.project_id, task_id).open()
    link = page.get_by_role("link", name=f"{new}: training report")
    link.wait_for(timeout=30_000)
    shot(page, f"task-{task_id}-influence-with-report-link")
    with page.context.expect_page(timeout=30_000) as opened:
        link.click()
    report = opened.value
    report.wait_for_load_state("load", timeout=30_000)
    report.locator("img").first.wait_for(timeout=30_000)
    curves_width = report.locator("img").first.evaluate("img => img.complete ? img.naturalWidth : 0")
    text = report.inner_text("body")
    shot(report, f"report-{new}")
    assert f"/report/{stack.project_id}/{new}" in report.url
    assert "Δ accuracy" in text and "test" in text and "Training images used" in text, text[:500]
    assert "What changed" in text and "Attention on spurious pixels" in text, text[:800]  # issue 23
    assert curves_width > 0, "the training curves image did not load"
    report.close()


def test_suspicion_is_its_own_column_and_the_score_a_confidence(logged_in, stack, loop):
    """After the job, every training task's data holds its suspicion (and the version and formula that computed
    it), a Data Manager column of its own; every prediction's score is the confidence of its class."""
    page = logged_in
    new = needs(loop, "new_version", "test_start_training_shows_progress_then_the_new_version")
    data = {t: stack.api(f"/api/tasks/{t}")["data"] for t in stack.task_ids("train") + stack.task_ids("test")}
    train, test = stack.task_ids("train"), stack.task_ids("test")
    missing = [t for t in train if not isinstance(data[t].get("suspicion"), (int, float))]
    assert not missing, f"training tasks without a suspicion in their data: {missing}"
    assert all(str(data[t].get("suspicion_by", "")).startswith(f"{new} · ") for t in train), data[train[0]]
    assert not [t for t in test if "suspicion" in data[t]], "a test task got a suspicion"
    for t in train[:3] + test[:3]:
        (p,) = [p for p in stack.predictions(t) if p["model_version"] == new]
        choice = next(r for r in p["result"] if r.get("type") == "choices")
        assert p["score"] == pytest.approx(choice["score"]), f"task {t}: score {p['score']} is not the confidence"
    columns = stack.api("/api/dm/columns", project=stack.project_id)["columns"]
    ids = {c["id"] for c in columns if c.get("parent") == "data"}
    assert {"suspicion", "suspicion_by"} <= ids, f"the Data Manager has no suspicion column: {sorted(ids)}"
    page.goto(f"{stack.ls_url}/projects/{stack.project_id}/data")
    page.locator(".lsf-table__cell, .dm-table__cell, [class*=table] td").first.wait_for(timeout=30_000)
    shot(page, "data-manager-with-suspicion")


# ------------------------------------------------------------------ 5c. after training, a task's heatmap is vN's


def test_the_new_versions_heatmap_shows_when_a_task_is_opened(logged_in, stack, loop):
    """The worker pushed only vN's class and score (PUSH_DETAIL=light); opening a task makes its heatmap with
    vN on the first GET of ``$saliency`` (ml_backend.predict.lazy_views), and it displays."""
    import requests

    page = logged_in
    new = needs(loop, "new_version", "test_start_training_shows_progress_then_the_new_version")
    seen = {}
    for split in ("train", "test"):
        task_id = stack.task_ids(split)[-1]
        view = LabelingView(page, stack.ls_url, stack.project_id, task_id).open()
        state = view.wait_saliency_loaded(timeout=30)
        shot(page, f"{split}-task-{task_id}-heatmap-of-{new}")
        url = stack.task(task_id)["data"]["saliency"]  # what the pane loaded (the page shows it as a blob: URL)
        served = requests.get(url, timeout=30).headers.get("X-Robustar-Model-Version")
        seen[split] = {"task": task_id, "naturalWidth": state.get("naturalWidth", 0), "url": url,
                       "version": served, "error": state.get("error", "")[:160]}
    assert all(v["naturalWidth"] > 0 and v["version"] == new for v in seen.values()), (
        f"the heatmap of {new} did not display on opening a task: {seen}\n{stack.logs(20)}")


def test_the_new_version_proposes_the_spurious_region(logged_in, stack, loop):
    """The job fitted a mask net to the three painted tasks; vN's predictions of the other training tasks
    carry its proposal as a ``Spurious`` region (scored), on the task's patch, and the labeling view holds
    it, ready to accept or edit."""
    page = logged_in
    new = needs(loop, "new_version", "test_start_training_shows_progress_then_the_new_version")
    painted = set(loop.get("painted", []))
    found, checked = None, []
    for task_id in [t for t in stack.task_ids("train") if t not in painted][:8]:
        preds = [p for p in stack.predictions(task_id) if p.get("model_version") == new]
        regions = [r for p in preds for r in p["result"] if r.get("id") == "propagated"]
        if not regions:
            checked.append((task_id, "no proposal"))
            continue
        r = regions[0]
        mask = decode_rle(r["value"]["rle"], r["original_height"], r["original_width"])
        patch = np.asarray(Image.open(stack.dataset / "masks" / stack.task(task_id)["data"]["key"]).convert("L")) > 127
        iou = float((mask & patch).sum() / max((mask | patch).sum(), 1))
        checked.append((task_id, round(iou, 3), r.get("score")))
        if r["value"]["brushlabels"] == [SPURIOUS] and 0 < r.get("score", 0) <= 1 and iou > 0.3:
            found = task_id
            break
    ui.write_artifact("propagated-proposals.txt", repr(checked))
    assert found is not None, f"no training task of {new} has a propagated Spurious proposal on its patch: {checked}"
    view = LabelingView(page, stack.ls_url, stack.project_id, found).open()
    shot(page, f"train-task-{found}-propagated-proposal")
    shown = [r for r in view.regions() if r.get("type") == "brushlabels" and SPURIOUS in r["value"].get("brushlabels", [])]
    assert shown, f"the labeling view of task {found} holds no Spurious region: {short(view.regions())}"

    # interactive: a keypoint on the patch, sent the way Label Studio's Auto-Annotation sends it, comes back
    # as the whole proposed region at that point
    data = stack.task(found)["data"]
    patch = np.asarray(Image.open(stack.dataset / "masks" / data["key"]).convert("L")) > 127
    ys, xs = np.nonzero(patch)
    h, w = patch.shape
    mark = {"type": "keypointlabels", "from_name": "spurious", "to_name": "image", "original_width": w,
            "original_height": h, "value": {"x": 100 * (xs.mean() + 0.5) / w, "y": 100 * (ys.mean() + 0.5) / h,
                                            "width": 1, "keypointlabels": [SPURIOUS]}}
    ml = stack.api("/api/ml", project=stack.project_id)[0]
    t0 = time.monotonic()
    answer = stack.http().post(f"{stack.ls_url}/api/ml/{ml['id']}/interactive-annotating",
                               json={"task": found, "context": {"result": [mark]}}, timeout=60)
    seconds = time.monotonic() - t0
    assert answer.ok, f"interactive-annotating: HTTP {answer.status_code} {answer.text[:300]}"
    result = answer.json().get("data", {}).get("result", [])
    region = next((r for r in result if r.get("type") == "brushlabels"), None)
    assert region is not None, f"no Spurious region in the interactive answer: {short(result)}"
    assert [r.get("type") for r in result] == ["brushlabels"] and region["id"] != "propagated", (
        f"an interactive answer is the one region at the mark, with an id of its own: {short(result)}")
    got = decode_rle(region["value"]["rle"], region["original_height"], region["original_width"])
    cy, cx = int(ys.mean()), int(xs.mean())
    inside = float((got & patch).sum() / max(got.sum(), 1))
    ui.write_artifact("interactive.txt", f"answer in {seconds:.2f}s through Label Studio; region {int(got.sum())} px, "
                                         f"{inside:.0%} on the patch")
    assert got[cy, cx] and inside > 0.5, f"the interactive region misses the mark ({inside:.0%} on the patch)"


# ------------------------------------------------------------------ 6. roll back from the UI


def test_roll_back_to_the_previous_version_from_the_ui(logged_in, stack, loop):
    page = logged_in
    previous = stack.model_version
    new = loop.get("new_version") or ui.poll(
        lambda: (v := stack.project()["model_version"]) != previous and v, timeout=60,
        what=f"a version after {previous} (the training test's)")

    settings = AnnotationSettingsPage(page, stack.ls_url, stack.project_id).open()
    options = settings.options()
    shot(page, "model-version-options")
    values = [v for v, _ in options]
    assert previous in values and new in values, f"the select offers {options}, not both {previous} and {new}"
    sent = settings.choose(previous)
    shot(page, f"rolled-back-to-{previous}")
    assert sent.get("model_version") == previous, sent
    ui.poll(lambda: stack.project()["model_version"] == previous, timeout=30,
            what=f"project model_version == {previous}")

    problems = []
    # the served version follows, without a restart: the model card says so (Label Studio refetches the
    # card, and calls the backend's /setup, when the user comes back to Settings > Model) ...
    model = ModelPage(page, stack.ls_url, stack.project_id).open()
    def serving_previous() -> bool:
        text = model.card_text()
        return bool(re.search(rf"\b{re.escape(previous)}\b", text)) and not re.search(rf"\b{re.escape(new)}\b", text)

    deadline = time.monotonic() + CARD_GRACE
    while not serving_previous() and time.monotonic() < deadline:
        page.wait_for_timeout(1500)
        model.refresh_in_app()
    shot(page, "model-card-after-rollback")
    if not serving_previous():
        problems.append(f"the model card does not show the served version {previous} within {CARD_GRACE}s: "
                        f"{model.card_text()!r}")
    # ... and a new task's prediction, asked for through Label Studio, comes from the previous version
    prediction = predict_new_task_through_label_studio(stack.ls_url, stack.project_id, stack.ls.token,
                                                       key=f"browser/rollback-{int(time.time())}.png")
    if prediction["model_version"] != previous:
        problems.append(f"after rolling back to {previous} in the UI, Label Studio's new prediction came from "
                        f"{prediction['model_version']!r}: the backend still serves it")
    view = LabelingView(page, stack.ls_url, stack.project_id, prediction["task"]).open()
    tabs = view.prediction_tabs()
    shot(page, f"new-task-predicted-by-{prediction['model_version']}")
    if previous not in tabs:
        problems.append(f"the labeling view of the new task shows predictions {tabs}, none of {previous}")
    assert not problems, "\n".join(problems)
