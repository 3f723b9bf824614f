"""Driving Label Studio 1.23.2's UI with Playwright: the browser, the page log, screenshots, and the
pages of the expert's loop (login, labeling view, Settings > Model, Settings > Annotation).

The selectors are the ones docs/label-studio-ui.md records (found against a real 1.23.2 server).
Every wait here is bounded; a helper that gives up raises with what it saw.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path(os.environ.get("ROBUSTAR_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
ARTIFACTS = REPO_ROOT / ".robustar" / "test-artifacts" / "browser"
INSTALL_LOG = REPO_ROOT / ".robustar" / "chromium-install.log"
VIEWPORT = {"width": 1400, "height": 1000}
DEFAULT_TIMEOUT_MS = 30_000  # every Playwright action and wait, unless a call says otherwise


def chromium_missing_message() -> str:
    log = f"; the last install attempt logged to {INSTALL_LOG}" if INSTALL_LOG.exists() else ""
    return (f"Debian chromium is not installed at {CHROMIUM}: the browser tests need it (`make browser` runs "
            f"`apt-get install -y chromium`, with sudo -n when not root{log}). `playwright install` is not used: "
            "browsers cannot be downloaded here.")


# ------------------------------------------------------------------ what a page logged


@dataclass
class PageLog:
    """Console messages, uncaught page errors and failed requests of one page, in order."""

    console: list[tuple[str, str]] = field(default_factory=list)  # (type, text)
    page_errors: list[str] = field(default_factory=list)
    failed_requests: list[tuple[str, str, str]] = field(default_factory=list)  # (method, url, failure)
    http_errors: list[tuple[int, str]] = field(default_factory=list)  # (status, url) of answers >= 400

    def attach(self, page: Any) -> PageLog:
        page.on("console", lambda m: self.console.append((m.type, m.text)))
        page.on("pageerror", lambda e: self.page_errors.append(str(e)))
        page.on("requestfailed", lambda r: self.failed_requests.append((r.method, r.url, r.failure or "")))
        page.on("response", lambda r: self.http_errors.append((r.status, r.url)) if r.status >= 400 else None)
        return self

    def mark(self) -> tuple[int, int, int, int]:
        """A position in the log; ``since(mark)`` gives what came after it."""
        return len(self.console), len(self.page_errors), len(self.failed_requests), len(self.http_errors)

    def since(self, mark: tuple[int, int, int, int]) -> PageLog:
        c, p, f, h = mark
        return PageLog(self.console[c:], self.page_errors[p:], self.failed_requests[f:], self.http_errors[h:])

    def cors_errors(self) -> list[str]:
        return [text for kind, text in self.console if "CORS policy" in text]

    def errors(self) -> list[str]:
        return [text for kind, text in self.console if kind == "error"]

    def dump(self) -> str:
        lines = [f"console.{kind}: {text}" for kind, text in self.console]
        lines += [f"pageerror: {e}" for e in self.page_errors]
        lines += [f"requestfailed: {m} {u} {f}" for m, u, f in self.failed_requests]
        lines += [f"http {s}: {u}" for s, u in self.http_errors]
        return "\n".join(lines)

    def summary(self, limit: int = 8) -> str:
        """A short description for assertion messages."""
        cors = self.cors_errors()
        out = [(f"{len(cors)} CORS errors, {len(self.errors())} console errors, {len(self.page_errors)} page errors, "
                f"{len(self.failed_requests)} failed requests")]
        out += [f"  {t[:300]}" for t in (cors or self.errors())[:limit]]
        out += [f"  pageerror: {e[:300]}" for e in self.page_errors[:3]]
        return "\n".join(out)


# Label Studio's own console noise (docs/label-studio-ui.md): none of it comes from our answers
# Label Studio 1.23.2 draws accept/reject buttons beside a suggested region on the canvas and sets their
# icon (a React component) as an Image src: one 404 for "<page dir>/[object Object]" per suggestion shown
LS_ICON_404 = "/[object%20Object]"
NOISE = ("heidi-tips", "mobx-state-tree", "deprecated", "Content Security Policy", "violates", "favicon")


def own_errors(log: PageLog) -> list[str]:
    """Console errors, page errors and failed loads that are not Label Studio's own known noise."""
    console = [e for e in log.errors() if not any(n in e for n in NOISE) and not e.startswith("Failed to load resource")]
    loads = [f"http {status}: {url}" for status, url in log.http_errors
             if "heidi-tips" not in url and not url.endswith(LS_ICON_404)]
    return console + [f"pageerror: {e}" for e in log.page_errors] + loads


_LOGS: dict[int, PageLog] = {}


def page_log(page: Any) -> PageLog:
    """The log the ``page`` fixture attached to ``page``."""
    return _LOGS[id(page)]


def register_log(page: Any) -> PageLog:
    log = PageLog().attach(page)
    _LOGS[id(page)] = log
    return log


def forget_log(page: Any) -> None:
    _LOGS.pop(id(page), None)


# ------------------------------------------------------------------ screenshots

_counter = itertools.count(1)
_written: list[Path] = []
_current_test = ["session"]


def reset_artifacts() -> None:
    """Empty the artifacts folder (once per test session, so the folder holds this run's files only)."""
    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)


def set_current_test(name: str) -> None:
    _current_test[0] = re.sub(r"[^A-Za-z0-9_.-]+", "-", name.removeprefix("test_"))[:60]


def shot(page: Any, name: str) -> Path:
    """Save a full-page PNG ``<NN>-<test>-<name>.png`` under ``ARTIFACTS`` and return its path."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", name)[:80]
    path = ARTIFACTS / f"{next(_counter):02d}-{_current_test[0]}-{safe}.png"
    try:
        page.screenshot(path=str(path), full_page=True, timeout=15_000)
    except Exception as e:  # noqa: BLE001  (a screenshot must never be the reason a test fails)
        path = path.with_suffix(".txt")
        path.write_text(f"screenshot failed: {e}\n")
    _written.append(path)
    return path


def written() -> list[Path]:
    return list(_written)


def write_artifact(name: str, text: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{next(_counter):02d}-{_current_test[0]}-{name}"
    path.write_text(text)
    _written.append(path)
    return path


# ------------------------------------------------------------------ waiting


def poll(check: Callable[[], Any], timeout: float, interval: float = 0.5, what: str = "condition") -> Any:
    """Call ``check`` until it returns something truthy; raise ``AssertionError`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not reached within {timeout:.0f}s")
        time.sleep(interval)


# ------------------------------------------------------------------ login


def login(page: Any, ls_url: str, email: str, password: str, next_path: str = "/") -> None:
    """Log in through Label Studio's login form and wait until the app left /user/login."""
    page.goto(f"{ls_url}/user/login/?next={next_path}")
    page.locator("#email").fill(email)
    page.locator("#password").fill(password)
    page.locator("button[type=submit]").click()  # "Log in"
    page.wait_for_url(lambda url: "/user/login" not in url, timeout=DEFAULT_TIMEOUT_MS)


# ------------------------------------------------------------------ the labeling view

MAIN_VIEW = ".lsf-main-view"
OBJECTS = ".lsf-main-view .lsf-object"  # one per object tag that draws an image: [0] $image, [1] $saliency
SUBMIT = "[data-testid=bottombar-submit-button]"
# the controls with a Spurious label in label_config/robustar.xml, in config order: brush, magic wand, smart keypoint, box
SPURIOUS_CONTROLS = ("spurious", "spurious_wand", "spurious_point", "spurious_box")
UPDATE = "[data-testid=bottombar-update-button]"


class LabelingView:
    """The labeling view of one task, opened as ``/projects/<pid>/data?task=<tid>`` (Data Manager + task)."""

    def __init__(self, page: Any, ls_url: str, project_id: int, task_id: int) -> None:
        self.page, self.ls_url, self.project_id, self.task_id = page, ls_url, project_id, task_id

    def open(self, timeout: float = 60) -> LabelingView:
        self.page.goto(f"{self.ls_url}/projects/{self.project_id}/data?task={self.task_id}")
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 60) -> None:
        """The task's main image is decoded and the editor's annotation store has a selected annotation."""
        self.page.locator(f"{OBJECTS} .lsf-image img").first.wait_for(state="attached", timeout=timeout * 1000)
        self.page.wait_for_function(
            """() => { const img = document.querySelector('.lsf-main-view .lsf-object .lsf-image img');
                       return img && img.complete && img.naturalWidth > 0 && window.Htx
                              && window.Htx.annotationStore && window.Htx.annotationStore.selected; }""",
            timeout=timeout * 1000,
        )
        self.page.wait_for_timeout(500)  # let the toolbar and regions settle

    # --- the two <Image> panes

    def object_pane(self, index: int) -> Any:
        return self.page.locator(OBJECTS).nth(index)

    def image_state(self, index: int) -> dict:
        """``{"img": bool, "naturalWidth": int, "src": str, "error": str}`` of the index-th image pane."""
        return self.object_pane(index).evaluate(
            """pane => { const img = pane.querySelector('.lsf-image img');
                         const err = pane.querySelector('[data-testid="error:http"]');
                         return {img: !!img, naturalWidth: img ? img.naturalWidth : 0, src: img ? img.src : '',
                                 error: err ? err.innerText : ''}; }"""
        )

    def wait_saliency_loaded(self, timeout: float = 20) -> dict:
        """Wait until the saliency pane's <img> has naturalWidth > 0; returns its last state either way."""
        deadline = time.monotonic() + timeout
        state: dict = {}
        while time.monotonic() < deadline:
            if self.page.locator(OBJECTS).count() >= 2:
                state = self.image_state(1)
                if state["naturalWidth"] > 0:
                    return state
            self.page.wait_for_timeout(500)
        return state or {"img": False, "naturalWidth": 0, "src": "", "error": "no second image pane"}

    # --- painting on the main image (a Konva stage over the <img>)

    def stage_box(self) -> dict:
        return self.object_pane(0).locator(".konvajs-content").bounding_box()

    def image_size(self) -> tuple[int, int]:
        return tuple(self.object_pane(0).locator(".lsf-image img").evaluate("i => [i.naturalWidth, i.naturalHeight]"))

    def to_screen(self, x: float, y: float) -> tuple[float, float]:
        """Image pixel (x, y) (column, row; pixel centres at +0.5) -> page coordinates on the stage."""
        box, (w, h) = self.stage_box(), self.image_size()
        return box["x"] + (x + 0.5) * box["width"] / w, box["y"] + (y + 0.5) * box["height"] / h

    def drag(self, points: list[tuple[float, float]], steps: int = 8) -> None:
        """Press at the first image pixel, move through the others, release (a mouse drag)."""
        mouse = self.page.mouse
        mouse.move(*self.to_screen(*points[0]))
        mouse.down()
        for p in points[1:]:
            mouse.move(*self.to_screen(*p), steps=steps)
        mouse.up()
        self.page.wait_for_timeout(400)

    def select_label(self, text: str) -> None:
        """Click a BrushLabels label (e.g. "Spurious"): selects it and activates that control's brush."""
        self.page.locator(".lsf-label", has_text=text).first.click()
        self.page.wait_for_timeout(200)

    def spurious_label(self, control: str) -> Any:
        """The ``Spurious`` label of one control (``SPURIOUS_CONTROLS``: the labels are drawn in config order)."""
        return self.page.locator(".lsf-label", has_text="Spurious").nth(SPURIOUS_CONTROLS.index(control))

    def tool(self, aria_label: str) -> Any:
        """A toolbar button: ``brush-tool`` (one per BrushLabels), ``magicwand``, ``eraser``, ``move-tool`` ..."""
        return self.page.locator(f"button.lsf-tool[aria-label='{aria_label}']")

    def choose_tool(self, aria_label: str) -> None:
        self.tool(aria_label).first.click()
        self.page.wait_for_timeout(200)

    def active_tools(self) -> list[str]:
        return self.page.locator("button.lsf-tool_active").evaluate_all("bs => bs.map(b => b.getAttribute('aria-label'))")

    def regions(self) -> list[dict]:
        """The selected annotation as Label Studio would submit it now (from the editor's store)."""
        return self.page.evaluate("() => window.Htx.annotationStore.selected.serializeAnnotation()")

    def submit(self, timeout: float = 60) -> dict:
        """Click Submit (or Update on an annotated task) and return the saved annotation (the API's answer)."""
        button = self.page.locator(SUBMIT)
        if not button.count():
            button = self.page.locator(UPDATE)
        pattern = re.compile(rf"/api/(tasks/{self.task_id}/annotations|annotations/\d+)")
        with self.page.expect_response(lambda r: bool(pattern.search(r.url)) and r.request.method in ("POST", "PATCH"),
                                       timeout=timeout * 1000) as answer:
            button.first.click()
        response = answer.value
        assert response.ok, f"saving the annotation failed: HTTP {response.status} {response.text()[:500]}"
        return response.json()

    def prediction_tabs(self) -> list[str]:
        """Names on the annotation/prediction tabs above the editor (predictions show their model_version)."""
        return self.page.locator(".lsf-annotation-button__name").all_inner_texts()


# ------------------------------------------------------------------ Settings > Model and Settings > Annotation


class ModelPage:
    """Settings > Model (``/projects/<pid>/settings/ml``): the ML backend's card and its ``⋯`` menu."""

    CARD = ".lsf-backend-card"

    def __init__(self, page: Any, ls_url: str, project_id: int) -> None:
        self.page, self.ls_url, self.project_id = page, ls_url, project_id

    def open(self) -> ModelPage:
        self.page.goto(f"{self.ls_url}/projects/{self.project_id}/settings/ml")
        self.page.locator(self.CARD).first.wait_for(timeout=DEFAULT_TIMEOUT_MS)
        return self

    def card_text(self) -> str:
        """Everything the card shows: state, title, URL, 'Created ...'."""
        cards = self.page.locator(self.CARD)
        return " | ".join(t.replace("\n", " ") for t in cards.all_inner_texts())

    def card_title(self) -> str:
        return " | ".join(self.page.locator(".lsf-backend-card__title").all_inner_texts())

    def card_state(self) -> str:
        return " | ".join(self.page.locator(".lsf-ml__status-label").all_inner_texts())

    def refresh_in_app(self) -> None:
        """Re-render the card from a fresh ``GET /api/ml`` without reloading the page: go to Settings >
        Predictions and back to Settings > Model through the settings menu (the SPA's own links; the
        Model page itself never refetches)."""
        menu = self.page.locator("a.lsf-main-menu__item")
        with self.page.expect_response(lambda r: "/api/projects/" in r.url and "model-versions" in r.url,
                                       timeout=DEFAULT_TIMEOUT_MS):
            menu.filter(has_text="Predictions").first.click()
        with self.page.expect_response(lambda r: "/api/ml?" in r.url, timeout=DEFAULT_TIMEOUT_MS):
            menu.filter(has_text=re.compile(r"^\s*Model\s*$")).first.click()
        self.page.locator(self.CARD).first.wait_for(timeout=DEFAULT_TIMEOUT_MS)

    def start_training(self) -> str:
        """``⋯`` -> Start Training -> the dialog's Start Training button; returns the dialog's text after."""
        self.page.get_by_role("button", name="Machine learning model options").first.click()
        self.page.get_by_text("Start Training", exact=True).first.click()  # the menu item opens a dialog
        self.page.get_by_text("Start Model Training").first.wait_for(timeout=DEFAULT_TIMEOUT_MS)
        with self.page.expect_response(lambda r: re.search(r"/api/ml/\d+/train", r.url) is not None,
                                       timeout=120_000) as answer:
            self.page.locator("[class*=modal]").get_by_role("button", name="Start Training").first.click()
        assert answer.value.ok, f"POST /api/ml/<id>/train failed: HTTP {answer.value.status} {answer.value.text()[:300]}"
        self.page.get_by_text("Request Sent!").first.wait_for(timeout=DEFAULT_TIMEOUT_MS)
        return " ".join(self.page.locator("[class*=modal] pre").all_inner_texts())  # "Request Sent!" "Response: {...}"

    def close_dialog(self) -> None:
        close = self.page.get_by_role("button", name="Close modal")
        if close.count():
            close.first.click()
            self.page.wait_for_timeout(300)


class AnnotationSettingsPage:
    """Settings > Annotation (``/projects/<pid>/settings/annotation``): "Use predictions to prelabel tasks"
    and the model/predictions select (``model_version``), saved with PATCH /api/projects/<pid>."""

    def __init__(self, page: Any, ls_url: str, project_id: int) -> None:
        self.page, self.ls_url, self.project_id = page, ls_url, project_id

    def open(self) -> AnnotationSettingsPage:
        with self.page.expect_response(lambda r: "model-versions" in r.url, timeout=DEFAULT_TIMEOUT_MS):
            self.page.goto(f"{self.ls_url}/projects/{self.project_id}/settings/annotation")
        self.trigger().wait_for(timeout=DEFAULT_TIMEOUT_MS)
        return self

    def trigger(self) -> Any:
        return self.page.locator("button[data-name=model_version]").first

    def selected(self) -> str:
        return self.trigger().get_attribute("data-value") or ""

    def options(self) -> list[tuple[str, str]]:
        """Open the select; (value, label) of every option: ML backends "<title> (<state>)" under
        "Models", stored prediction versions "<version> (<n> predictions)" under "Predictions"."""
        if self.trigger().get_attribute("aria-expanded") != "true":
            self.trigger().click()
        options = self.page.locator("[data-testid=select-popup] [role=option]")
        options.first.wait_for(timeout=DEFAULT_TIMEOUT_MS)
        return [(o.get_attribute("data-value") or "", o.inner_text().strip()) for o in options.all()]

    def choose(self, value: str) -> dict:
        """Select ``value`` and Save; returns the PATCH body Label Studio sent."""
        self.options()
        self.page.locator(f"[data-testid=select-popup] [role=option][data-value='{value}']").click()
        with self.page.expect_request(lambda r: r.method == "PATCH" and f"/api/projects/{self.project_id}" in r.url,
                                      timeout=DEFAULT_TIMEOUT_MS) as sent:
            self.page.get_by_role("button", name="Save annotation settings").click()
        return sent.value.post_data_json or {}
