"""The expert's hands in the real labeling view (issue 23), in headless Debian chromium:

- click-to-propose: with Auto-Annotation on, a click of the smart ``Spurious`` keypoint on the task's patch
  makes Label Studio ask the backend, and the patch comes back as a ``Spurious`` brush region — with no
  error in the page's console;
- versions only in the version select: the project's ``model_version`` is a published ``vN`` and the
  select lists no card status as a version.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image

from label_config.rle import decode_rle
from tests.browser import ui
from tests.browser.ui import AnnotationSettingsPage, LabelingView, own_errors, shot

pytestmark = [pytest.mark.browser, pytest.mark.e2e, pytest.mark.slow]

SPURIOUS = "Spurious"
AUTO_ANNOTATION = "[data-testid=bottombar-auto-annotation-toggle]"
ACCEPT_SUGGESTIONS = "[data-testid=bottombar-accept-suggestions-button]"
VERSION = re.compile(r"^v\d+$")


def patch_of(stack, task_id: int) -> np.ndarray:
    data = stack.task(task_id)["data"]
    return np.asarray(Image.open(stack.dataset / "masks" / data["key"]).convert("L")) > 127


def spurious_masks(results: list[dict]) -> list[np.ndarray]:
    return [decode_rle(r["value"]["rle"], r["original_height"], r["original_width"]) for r in results
            if r.get("type") == "brushlabels" and SPURIOUS in (r.get("value") or {}).get("brushlabels", [])]


def test_a_click_on_the_patch_proposes_its_whole_region(logged_in, stack):
    page, log = logged_in, ui.page_log(logged_in)
    task_id = stack.task_ids("train")[1]
    patch = patch_of(stack, task_id)
    ys, xs = np.nonzero(patch)
    view = LabelingView(page, stack.ls_url, stack.project_id, task_id).open()
    mark = log.mark()
    kinds: list[str] = []  # resource type of every request that failed or answered >= 400, for the artifact
    page.on("response", lambda r: kinds.append(f"{r.status} {r.request.resource_type} {r.url}") if r.status >= 400 else None)
    toggle = page.locator(AUTO_ANNOTATION)
    kinds.append("-- toggle")
    toggle.first.click()
    page.wait_for_timeout(500)
    tools = page.locator("button.lsf-tool").evaluate_all("bs => bs.map(b => b.getAttribute('aria-label'))")
    labels = page.locator(".lsf-label").all_inner_texts()
    ui.write_artifact("toolbar.txt", f"tools {tools}\nlabels {labels}")
    shot(page, "auto-annotation-on")
    before = len(spurious_masks(view.regions()))  # what the draft holds from the prediction (v0 proposes nothing)
    view.spurious_label("spurious_point").click()  # the smart keypoint's label
    page.wait_for_timeout(300)
    active = view.active_tools()
    choose_smart_tool(page, "key-point-tool")
    if not page.locator(".lsf-label_selected", has_text=SPURIOUS).count():
        view.spurious_label("spurious_point").click()
    ui.write_artifact("active-tools.txt", f"after the label: {active}; now {view.active_tools()}; selected labels "
                      f"{page.locator('.lsf-label_selected').all_inner_texts()}")
    shot(page, "smart-keypoint-chosen")
    kinds.append("-- click")
    with page.expect_response(lambda r: "interactive-annotating" in r.url and r.request.method == "POST",
                              timeout=60_000) as answer:
        page.mouse.click(*view.to_screen(float(xs.mean()), float(ys.mean())))
    body = answer.value.json()
    kinds.append("-- answered")
    accept = page.locator(ACCEPT_SUGGESTIONS)
    accept.wait_for(timeout=20_000)  # "1 suggestion" with reject / accept buttons in the bottom bar
    shot(page, "suggested")
    kinds.append("-- suggested")
    accept.click()
    page.wait_for_timeout(1000)
    shot(page, "accepted")
    regions = view.regions()
    found = spurious_masks(regions)[before:]
    ui.write_artifact("interactive.txt", f"answer {str(body)[:600]}\nregions {short(regions)}\nfailed {kinds}\n"
                                         f"{log.since(mark).dump()}")
    assert len(found) == 1, f"one Spurious region should be accepted: {short(regions)}"
    assert not [r for r in regions if r.get("type") == "keypointlabels"], "the mark stays in the annotation"
    got = found[-1]
    iou = float((got & patch).sum() / max((got | patch).sum(), 1))
    assert iou > 0.8, f"the proposed region is not the patch: IoU {iou:.2f}"
    errors = own_errors(log.since(mark))
    assert not errors, f"the page logged errors: {errors[:5]}"


def choose_smart_tool(page, aria_label: str) -> None:
    """Pick a tool of the toolbar's Auto-Detect menu (its last button, shown with Auto-Annotation on; the menu
    opens on hover: the click is dispatched to the menu item, which is what a hover-and-click does)."""
    item = page.locator(f".lsf-toolbar__smart button.lsf-tool[aria-label='{aria_label}']").first
    item.wait_for(state="attached", timeout=10_000)
    item.dispatch_event("click")
    page.wait_for_timeout(300)


def short(results: list[dict]) -> list[tuple]:
    return [(r.get("type"), r.get("from_name"), r.get("id")) for r in results]


def test_the_version_select_lists_only_versions(logged_in, stack):
    page = logged_in
    project = stack.project()
    assert VERSION.match(project.get("model_version") or ""), f"project model_version {project.get('model_version')!r}"
    settings = AnnotationSettingsPage(page, stack.ls_url, stack.project_id).open()
    options = settings.options()
    shot(page, "version-select")
    ui.write_artifact("version-options.txt", repr(options))
    predictions = [value for value, text in options if "prediction" in text.lower()]
    assert predictions and all(VERSION.match(v) for v in predictions), f"options {options}"
    assert VERSION.match(settings.selected()), f"the select shows {settings.selected()!r}, not a version: {options}"
