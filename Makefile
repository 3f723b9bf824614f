# Robustar for Label Studio — the two commands a newcomer needs: `make demo` and `make test`.
PY ?= python3
VENV := .venv
LS_VENV := .venv-ls
PYTEST_ARGS ?=

.PHONY: setup demo test test-fast bench clean

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

demo: setup
	$(VENV)/bin/robustar demo

test: setup
	$(VENV)/bin/pytest -q $(PYTEST_ARGS)

test-fast: $(VENV)/.installed
	$(VENV)/bin/pytest -q -m "not slow" $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) $(LS_VENV) .robustar
