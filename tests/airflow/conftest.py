"""Airflow settings for the provider tests, applied before Airflow is first imported.

Only this folder needs Airflow, so the client and emulator tests never pay for it. A private
AIRFLOW_HOME with a SQLite metadata database is created once per test session.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

# The home is kept in the environment so that tests/airflow/helpers.py writes DAG files where Airflow reads.
_HOME = Path(os.environ.get("SF_BULK_TEST_AIRFLOW_HOME") or tempfile.mkdtemp(prefix="sf-bulk-airflow-"))
os.environ["SF_BULK_TEST_AIRFLOW_HOME"] = str(_HOME)
os.environ["AIRFLOW_HOME"] = str(_HOME)
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(_HOME / "dags")
os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{_HOME / 'airflow.db'}"
os.environ["AIRFLOW__CORE__UNIT_TEST_MODE"] = "False"
os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "INFO")

from airflow_provider_salesforce_bulk.emulator.server import RunningEmulator, run_emulator  # noqa: E402
from tests.airflow.helpers import SupervisorComms  # noqa: E402


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """A migrated metadata database (once per session)."""
    from airflow.utils import db

    db.resetdb(skip_init=False) if hasattr(db, "resetdb") else db.initdb()
    return _HOME


@pytest.fixture
def emulator() -> Iterator[RunningEmulator]:
    with run_emulator() as running:
        yield running


@pytest.fixture
def comms(monkeypatch: pytest.MonkeyPatch) -> SupervisorComms:
    """Airflow's task SDK talks to this stand-in supervisor; the task's state is ``failed`` unless set."""
    from airflow.sdk.execution_time import task_runner

    fake = SupervisorComms("failed")
    monkeypatch.setattr(task_runner, "SUPERVISOR_COMMS", fake, raising=False)
    return fake
