"""Browser-test fixtures: Debian's chromium driven by Playwright, against the real stack.

- ``browser`` (session): chromium launched by ``executable_path`` (never ``playwright install``); the
  tests FAIL, not skip, when chromium or playwright is missing (``make test`` installs both).
- ``page`` (per test): a fresh context; console messages, page errors and failed requests are
  collected (``ui.page_log(page)``); on failure a last screenshot and the page log are saved.
- ``stack`` (module): Label Studio (the e2e session server), ``robustar serve``, a ``robustar worker``,
  a Redis DB of the session allocator and a generated 12 + 6 task project (``tests/browser/stack.py``).

Screenshots (``ui.shot(page, name)``) go to ``.robustar/test-artifacts/browser/``; the folder and the
files this run wrote are printed at the end of the session.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.browser import ui
from tests.browser.stack import Stack, running_stack

BROWSER_MARKS = ("browser", "e2e", "slow")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test under tests/browser is ``browser``, ``e2e`` and ``slow`` (so ``make test-fast`` skips it)."""
    here = str(ui.REPO_ROOT / "tests" / "browser")
    for item in items:
        if str(item.path).startswith(here):
            for mark in BROWSER_MARKS:
                if mark not in item.keywords:
                    item.add_marker(getattr(pytest.mark, mark))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Any:
    report = yield
    setattr(item, f"rep_{report.when}", report)  # the page fixture looks at rep_call to save failure artifacts
    return report


def pytest_terminal_summary(terminalreporter: Any) -> None:
    files = ui.written()
    if files:
        terminalreporter.write_sep("-", f"browser test artifacts ({len(files)} files) in {ui.ARTIFACTS}")
        for path in files:
            terminalreporter.write_line(f"  {path.name}")


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """Debian chromium, headless, launched by executable path with the CI flags."""
    if not ui.CHROMIUM.exists():
        pytest.fail(ui.chromium_missing_message(), pytrace=False)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as e:
        pytest.fail(f"playwright is not installed ({e}): it is in the `test` extra; run `make test` "
                    "(or .venv/bin/pip install -e '.[test]')", pytrace=False)
    ui.reset_artifacts()
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(ui.CHROMIUM), args=ui.CHROMIUM_ARGS, headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: Any, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A new page in a fresh context (no cookies), its log collected; failure artifacts saved."""
    ui.set_current_test(request.node.name)
    context = browser.new_context(viewport=ui.VIEWPORT)
    context.set_default_timeout(ui.DEFAULT_TIMEOUT_MS)
    pg = context.new_page()
    log = ui.register_log(pg)
    try:
        yield pg
    finally:
        rep = getattr(request.node, "rep_call", None)
        if rep is not None and rep.failed:
            ui.shot(pg, "FAILED")
            ui.write_artifact("page-log.txt", log.dump())
        ui.forget_log(pg)
        context.close()


@pytest.fixture(scope="module")
def stack(label_studio, redis_dbs, tmp_path_factory) -> Iterator[Stack]:
    """The real stack with a small imported project (backend connected, every task predicted)."""
    with redis_dbs.lease() as redis_url, \
            running_stack(label_studio, redis_url, tmp_path_factory.mktemp("browser-stack")) as running:
        yield running


@pytest.fixture
def logged_in(page: Any, stack: Stack) -> Any:
    """``page`` after logging in through Label Studio's login form."""
    ui.login(page, stack.ls_url, stack.ls.username, stack.ls.password)
    return page
