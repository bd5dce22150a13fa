# Everything a fresh machine needs, from its own files: a virtualenv, uv (pinned) and the pinned environment.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
UV_VERSION := 0.13.8
CONSTRAINTS := requirements/constraints.txt
STAMP := $(VENV)/.installed
# Bytecode caches go to the venvs and __pycache__ (ignored by git) even where the environment sets
# PYTHONDONTWRITEBYTECODE (our development machines do): the suites start many Python processes
# (the emulator, Airflow's own) and without caches each compiled Airflow's modules again
# (tests/airflow/test_query_operator.py: 34 s of CPU without, 26 s with).
unexport PYTHONDONTWRITEBYTECODE

.PHONY: setup test test-stack test-airflow lint typecheck bench demo demo-extract demo-sync lock lock-airflow dist clean

setup: $(STAMP)

$(STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet "uv==$(UV_VERSION)"
	$(VENV)/bin/uv pip install --python $(PY) --quiet -c $(CONSTRAINTS) -e ".[test]"
	touch $(STAMP)

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check --quiet .
	$(VENV)/bin/mypy
	$(PY) -m pytest --durations=20

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy

bench: $(STAMP)
	$(PY) -m benchmarks

demo: $(STAMP)
	$(PY) scripts/demo.py

# The extract round trip: an incremental query of Accounts to Parquet, Contacts derived and loaded back.
demo-extract: $(STAMP)
	$(PY) scripts/demo_extract.py

# The change-only sync DAG, three runs against the emulator (dags_examples/example_salesforce_bulk_change_sync.py).
demo-sync: $(STAMP)
	$(PY) scripts/demo_sync.py

# The provider's tests on another supported Airflow and Python, e.g.
# `make test-airflow AIRFLOW=3.1.8 PYTHON=python3.10`, in .venv-airflow-<airflow>-py<python>. Pins:
# requirements/constraints-airflow-<airflow>.txt for PINNED_PYTHON (python3 of CI's machine),
# requirements/constraints-airflow-<airflow>-py<python>.txt for another Python. It runs mypy for that
# Python and every test but the real-stack one (separate Airflow processes, in `make test`): the client
# and emulator tests prove the Python floor too. TESTS narrows it: TESTS=tests/airflow.
AIRFLOW ?= 3.1.8
PINNED_PYTHON := 3.11
TESTS ?= tests

ifneq ($(filter test-airflow lock-airflow,$(MAKECMDGOALS)),)
AIRFLOW_PYTHON_VERSION := $(shell $(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)
ifeq ($(AIRFLOW_PYTHON_VERSION),)
$(error PYTHON=$(PYTHON) does not run here; install that Python or pass its path, e.g. PYTHON=$$(pyenv root)/versions/3.10.13/bin/python3.10)
endif
endif

AIRFLOW_VENV := .venv-airflow-$(AIRFLOW)-py$(AIRFLOW_PYTHON_VERSION)
AIRFLOW_PY := $(AIRFLOW_VENV)/bin/python
AIRFLOW_STAMP := $(AIRFLOW_VENV)/.installed
AIRFLOW_CONSTRAINTS_PINNED := requirements/constraints-airflow-$(AIRFLOW).txt
# The file `lock-airflow` writes for this Python; `test-airflow` falls back to the pinned Python's file.
AIRFLOW_CONSTRAINTS_OWN := $(if $(filter $(PINNED_PYTHON),$(AIRFLOW_PYTHON_VERSION)),$(AIRFLOW_CONSTRAINTS_PINNED),requirements/constraints-airflow-$(AIRFLOW)-py$(AIRFLOW_PYTHON_VERSION).txt)
AIRFLOW_CONSTRAINTS := $(or $(wildcard $(AIRFLOW_CONSTRAINTS_OWN)),$(AIRFLOW_CONSTRAINTS_PINNED))

$(AIRFLOW_STAMP): pyproject.toml $(AIRFLOW_CONSTRAINTS)
	test -x $(AIRFLOW_PY) || $(PYTHON) -m venv $(AIRFLOW_VENV)
	$(AIRFLOW_PY) -m pip install --quiet "uv==$(UV_VERSION)"
	$(AIRFLOW_VENV)/bin/uv pip install --python $(AIRFLOW_PY) --quiet -c $(AIRFLOW_CONSTRAINTS) -e ".[test]"
	touch $(AIRFLOW_STAMP)

test-airflow: $(AIRFLOW_STAMP)
	$(AIRFLOW_PY) -c 'import airflow, sys; sys.exit(airflow.__version__ != "$(AIRFLOW)")'
	$(AIRFLOW_VENV)/bin/mypy --python-version $(AIRFLOW_PYTHON_VERSION) --cache-dir $(AIRFLOW_VENV)/.mypy_cache
	$(AIRFLOW_PY) -m pytest --durations=20 $(TESTS) --ignore=tests/airflow/test_real_stack.py --ignore=tests/packaging

# The sdist and the wheel (hatchling, in uv's isolated build env) into DIST_DIR; tests/packaging
# installs that wheel into a clean venv.
DIST_DIR ?= dist
dist: $(STAMP)
	$(VENV)/bin/uv build --quiet --sdist --wheel --out-dir $(DIST_DIR) .

# The production stack (tests/stack): CeleryExecutor, Redis, PostgreSQL, S3 (moto), two workers and
# two triggerers, faults injected. Needs Debian's redis-server and postgresql (.ci/run installs them).
STACK_STAMP := $(VENV)/.installed-stack
$(STACK_STAMP): $(STAMP)
	$(VENV)/bin/uv pip install --python $(PY) --quiet -c $(CONSTRAINTS) -e ".[test,stack]"
	touch $(STACK_STAMP)

# STACK_WOKEN=0 leaves out the two woken-worker scenarios (issue 20, a few minutes); STACK_ARGS
# passes pytest options (-x, -k ...).
STACK_WOKEN ?= 1
test-stack: $(STACK_STAMP)
	$(PY) -u -m pytest tests/stack -m stack -s -p no:cacheprovider \
		$(if $(filter 0,$(STACK_WOKEN)),-k "not woken") $(STACK_ARGS)

# Re-pin after changing dependencies in pyproject.toml (the stack's extra included).
lock: $(STACK_STAMP)
	$(VENV)/bin/uv pip freeze --python $(PY) --exclude-editable | grep -v '^airflow-provider-salesforce-bulk' > $(CONSTRAINTS)

# Pin another Airflow from requirements/airflow-<version>.in (its version and any pins it needs) plus
# this project's dependencies, resolved in a fresh venv under PYTHON: `make lock-airflow AIRFLOW=3.2.2`,
# `make lock-airflow AIRFLOW=3.1.8 PYTHON=python3.10`.
lock-airflow:
	rm -rf $(AIRFLOW_VENV)
	$(PYTHON) -m venv $(AIRFLOW_VENV)
	$(AIRFLOW_PY) -m pip install --quiet "uv==$(UV_VERSION)"
	$(AIRFLOW_VENV)/bin/uv pip install --python $(AIRFLOW_PY) --quiet -r requirements/airflow-$(AIRFLOW).in -e ".[test]"
	$(AIRFLOW_VENV)/bin/uv pip freeze --python $(AIRFLOW_PY) --exclude-editable | grep -v '^airflow-provider-salesforce-bulk' > $(AIRFLOW_CONSTRAINTS_OWN)
	touch $(AIRFLOW_STAMP)

clean:
	rm -rf $(VENV) .venv-airflow-* .pytest_cache .mypy_cache .ruff_cache .hypothesis
