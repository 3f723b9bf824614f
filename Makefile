# Robustar for Label Studio — the two commands a newcomer needs: `make demo` and `make test`.
PY ?= python3
VENV := .venv
LS_VENV := .venv-ls
PYTEST_ARGS ?=
# pytest-xdist workers (one per core of the 2-core CI machine); each takes its share of the cores (tests/conftest.py)
# and a module's tests stay on one worker (--dist loadscope), so module fixtures are built once; the modules go out
# longest first (tests/scheduling.py, from tests/durations.json), not by test count. TEST_WORKERS=0: serial.
TEST_WORKERS ?= 2
XDIST := $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadscope --no-loadscope-reorder)
# Debian's chromium for the browser tests (tests/browser, driven by Playwright by executable path;
# `playwright install` is never used). Installed with apt-get, through `sudo -n` when not root.
CHROMIUM ?= /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo -n)
APT_GET := $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get

.PHONY: setup demo test test-fast bench clean browser

$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $@

$(LS_VENV)/.installed:
	$(PY) -m venv $(LS_VENV)
	$(LS_VENV)/bin/pip install -q --upgrade pip
	$(LS_VENV)/bin/pip install -q label-studio==1.23.2
	touch $@

setup: $(VENV)/.installed $(LS_VENV)/.installed

# A failed install does not stop `make test`: the browser tests then FAIL with the reason (never skip).
$(CHROMIUM):
	@mkdir -p .robustar
	@echo "installing Debian chromium for the browser tests: apt-get install -y chromium (log: .robustar/chromium-install.log)"
	@{ $(APT_GET) install -y chromium || { $(APT_GET) update && $(APT_GET) install -y chromium; }; } \
		>.robustar/chromium-install.log 2>&1 \
	|| echo "WARNING: could not install chromium (see .robustar/chromium-install.log; needs root or passwordless sudo);" \
		"the browser tests (tests/browser) will fail"

browser: $(CHROMIUM)

demo: setup
	$(VENV)/bin/robustar demo

test: setup browser
	$(VENV)/bin/pytest -q $(XDIST) --durations=15 $(PYTEST_ARGS)

test-fast: $(VENV)/.installed
	$(VENV)/bin/pytest -q -m "not slow" $(XDIST) --durations=15 $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) $(LS_VENV) .robustar
