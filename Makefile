# Everything a fresh machine needs, from its own files: a virtualenv, uv (pinned) and the pinned environment.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
UV_VERSION := 0.13.8
CONSTRAINTS := requirements/constraints.txt
STAMP := $(VENV)/.installed

.PHONY: setup test test-airflow lint typecheck bench demo demo-extract lock lock-airflow clean

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
	$(PY) -m pytest

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

# The provider's Airflow tests on another supported Airflow, e.g. `make test-airflow AIRFLOW=3.1.8`, in
# .venv-airflow-<version> pinned by requirements/constraints-airflow-<version>.txt. The real-stack test
# (separate Airflow processes) and the client/emulator tests, which import no Airflow, run in `make test`.
AIRFLOW ?= 3.1.8
AIRFLOW_VENV := .venv-airflow-$(AIRFLOW)
AIRFLOW_PY := $(AIRFLOW_VENV)/bin/python
AIRFLOW_CONSTRAINTS := requirements/constraints-airflow-$(AIRFLOW).txt
AIRFLOW_STAMP := $(AIRFLOW_VENV)/.installed

$(AIRFLOW_STAMP): pyproject.toml $(AIRFLOW_CONSTRAINTS)
	test -x $(AIRFLOW_PY) || $(PYTHON) -m venv $(AIRFLOW_VENV)
	$(AIRFLOW_PY) -m pip install --quiet "uv==$(UV_VERSION)"
	$(AIRFLOW_VENV)/bin/uv pip install --python $(AIRFLOW_PY) --quiet -c $(AIRFLOW_CONSTRAINTS) -e ".[test]"
	touch $(AIRFLOW_STAMP)

test-airflow: $(AIRFLOW_STAMP)
	$(AIRFLOW_PY) -c 'import airflow, sys; sys.exit(airflow.__version__ != "$(AIRFLOW)")'
	$(AIRFLOW_PY) -m pytest tests/airflow --ignore=tests/airflow/test_real_stack.py

# Re-pin after changing dependencies in pyproject.toml.
lock: $(STAMP)
	$(VENV)/bin/uv pip freeze --python $(PY) --exclude-editable | grep -v '^airflow-provider-salesforce-bulk' > $(CONSTRAINTS)

# Pin another Airflow from requirements/airflow-<version>.in (its version and any pins it needs) plus
# this project's dependencies, resolved in a fresh venv: `make lock-airflow AIRFLOW=3.2.2`.
lock-airflow:
	rm -rf $(AIRFLOW_VENV)
	$(PYTHON) -m venv $(AIRFLOW_VENV)
	$(AIRFLOW_PY) -m pip install --quiet "uv==$(UV_VERSION)"
	$(AIRFLOW_VENV)/bin/uv pip install --python $(AIRFLOW_PY) --quiet -r requirements/airflow-$(AIRFLOW).in -e ".[test]"
	$(AIRFLOW_VENV)/bin/uv pip freeze --python $(AIRFLOW_PY) --exclude-editable | grep -v '^airflow-provider-salesforce-bulk' > $(AIRFLOW_CONSTRAINTS)
	touch $(AIRFLOW_STAMP)

clean:
	rm -rf $(VENV) .venv-airflow-* .pytest_cache .mypy_cache .ruff_cache .hypothesis
