# Set-up is part of every target: the virtual environment is made in .venv when missing or stale.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export DO_NOT_TRACK := 1
export DVC_NO_ANALYTICS := 1
export NO_ALBUMENTATIONS_UPDATE := 1
export MLFLOW_ENABLE_TELEMETRY := false
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PREFECT_HOME ?= $(CURDIR)/.prefect
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 180
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: help venv sysdeps run repro lint format test test-fast bench ui serve clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e ".[dev,team]"
	@touch $@

# `dvc plots show` and `dvc plots diff` write a page that draws with Vega. .dvc/config (plots.html_template) points
# DVC at this template, which carries Vega's builds inlined instead of DVC's CDN links, so the page draws offline.
# cxr/ops/vega.py fetches them with npm from its registry, at pinned versions checked by hash. Git-ignored:
# third-party code is fetched at set-up, never committed.
VEGA_TEMPLATE := build/vega/plots.html

$(VEGA_TEMPLATE): cxr/ops/vega.py | $(VENV)/.installed
	$(PY) -m cxr.ops.vega $@

venv: $(VENV)/.installed $(VEGA_TEMPLATE)  ## create .venv, install the project, fetch Vega for dvc plots (npm)

# PostgreSQL (the MLflow server test), Chromium (the report and plots tests) and npm (Vega for dvc plots) from
# Debian; the server and browser tests skip without them, and the Vega step says what is missing.
sysdeps:  ## install PostgreSQL, Chromium and npm when missing (Debian, as root)
	@need=""; ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need="$$need postgresql"; \
	command -v chromium >/dev/null 2>&1 || need="$$need chromium"; \
	command -v npm >/dev/null 2>&1 || need="$$need npm"; \
	if [ -z "$$need" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing$$need"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$need >/dev/null; \
	else echo "sysdeps: cannot install$$need (needs root and apt-get); the tests that use them will be skipped"; fi

# The pipeline needs no Vega: only `dvc plots` pages draw with it.
run: $(VENV)/.installed  ## the whole pipeline as a Prefect flow on the embedded synthetic data
	$(PY) -m cxr run

repro: $(VENV)/.installed  ## fetch the data, then reproduce the DVC stages
	$(PY) -m cxr download
	$(PY) -m dvc repro

# One pytest worker per core; a module's tests stay on one worker, so its fixtures are built once. The long
# modules start first (tests/conftest.py orders them; xdist's own reorder would start them last).
TEST_WORKERS ?= auto

lint: venv  ## ruff: the lint rules and the formatting, checked (make format applies the formatting)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: venv  ## ruff: fix what can be fixed and format the tree
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

test: sysdeps venv lint  ## ruff, then every test that runs on a CPU (CI runs this)
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadscope --no-loadscope-reorder

test-fast: venv  ## the tests not marked slow
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadscope --no-loadscope-reorder -m "not slow"

bench: venv  ## benchmarks: writes benchmarks/results.json
	$(PY) -m benchmarks

# The link printed opens the project's experiment on the model-training view (MLflow 3.17's UI starts a new
# browser on its GenAI view); without params or a store yet it is the experiment list's.
PORT ?= 5000
UI_LINK := from pathlib import Path; from cxr.core.config import load_settings; from cxr.ops.tracking import ui_link; \
  print(ui_link(Path.cwd(), load_settings(Path("params.yaml")).base.experiment, $(PORT)))

ui: venv  ## the MLflow UI on the project's store: make ui [PORT=5000], then open the link it prints
	@echo "MLflow UI, model training: $$($(PY) -c '$(UI_LINK)' 2>/dev/null || echo http://127.0.0.1:$(PORT))"
	$(PY) -m mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port $(PORT)

serve: venv  ## serve the champion model over HTTP (http://127.0.0.1:5001/invocations)
	MLFLOW_TRACKING_URI=$${MLFLOW_TRACKING_URI:-sqlite:///$(CURDIR)/mlflow.db} $(PY) -m mlflow models serve \
	  -m models:/cxr-classifier@champion --env-manager local --host 127.0.0.1 -p 5001

clean:  ## remove pipeline outputs (keeps .venv, data and the stores)
	rm -rf data/split data/cache models reports
