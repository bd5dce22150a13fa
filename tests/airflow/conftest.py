"""Airflow settings for the provider tests, applied before Airflow is first imported.

Only this folder needs Airflow, so the client and emulator tests never pay for it. A private
AIRFLOW_HOME with a SQLite metadata database is created once per test session.
"""

from __future__ import annotations

import json
import os
import tempfile
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

# pytest imports this file as ``conftest`` and the tests import it again as ``tests.airflow.conftest``:
# both copies must agree on the home, or a test module that imports Airflow before this module would
# have Airflow read one home while load_dag_file writes into the other.
_HOME = Path(os.environ.get("SF_BULK_TEST_AIRFLOW_HOME") or tempfile.mkdtemp(prefix="sf-bulk-airflow-"))
os.environ["SF_BULK_TEST_AIRFLOW_HOME"] = str(_HOME)
os.environ["AIRFLOW_HOME"] = str(_HOME)
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(_HOME / "dags")
os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{_HOME / 'airflow.db'}"
os.environ["AIRFLOW__CORE__UNIT_TEST_MODE"] = "False"
os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "INFO")

from airflow_provider_salesforce_bulk.emulator.server import RunningEmulator, run_emulator  # noqa: E402


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


def conn_uri_json(running: RunningEmulator, **extra: object) -> str:
    """``AIRFLOW_CONN_...`` value logging in to the emulator with the client credentials flow."""
    return running.airflow_connection(**extra)


def load_dag_file(name: str, source: str) -> object:
    """Write a DAG file into the dags folder (dag.test() syncs DAGs from it) and return its ``dag``."""
    import importlib.util
    import textwrap

    dags = _HOME / "dags"
    dags.mkdir(exist_ok=True)
    path = dags / f"{name}.py"
    path.write_text(textwrap.dedent(source))
    spec = importlib.util.spec_from_file_location(f"sf_bulk_test_dag_{name}", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.dag


def wrap_pool_transport(
    monkeypatch: pytest.MonkeyPatch, wrap: Callable[[httpx.AsyncBaseTransport], httpx.AsyncBaseTransport]
) -> None:
    """Send every request of the hook's shared pools (operator and trigger) through ``wrap(real)``.

    The real transport still talks to the emulator over its socket; the wrapper can lose answers,
    refuse requests or hold them, as a network or an overloaded org would.
    """
    from airflow_provider_salesforce_bulk.hooks.pool import shared_pools

    monkeypatch.setattr(shared_pools, "transport", lambda: wrap(httpx.AsyncHTTPTransport()))


TI = types.SimpleNamespace(
    id="01a2297e-0000-7000-8000-000000000001",
    dag_id="sf_dag",
    task_id="load",
    run_id="manual__1",
    map_index=-1,
    try_number=1,
    context_carrier=None,
)
"""A task instance as a trigger or an operator sees it (the fields Airflow's code reads)."""


class DictStore:
    """``task_state_store``'s get/set/delete in memory, JSON round-tripped as a real store does.

    Tests that call ``execute`` with a stub ``ti`` pass one: without it the operator would keep its
    plan in an Airflow Variable (before 3.3), which needs a running task.
    """

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}

    def get(self, key: str, default: Any = None) -> Any:
        return json.loads(json.dumps(self.data.get(key, default)))

    def set(self, key: str, value: Any) -> None:
        self.data[key] = json.loads(json.dumps(value))

    def delete(self, key: str) -> None:
        self.data.pop(key, None)


class SupervisorComms:
    """Answers GetTaskStates as a task's or the triggerer's supervisor does, with a state set by the test."""

    def __init__(self, state: str | None, *, broken: bool = False) -> None:
        self.state = state
        self.broken = broken
        self.asked: list[Any] = []

    def send(self, msg: Any) -> Any:
        from airflow.sdk.execution_time.comms import GetTaskStates, TaskStatesResult

        assert isinstance(msg, GetTaskStates)
        self.asked.append(msg)
        if self.broken:
            raise ConnectionResetError("supervisor went away")
        return TaskStatesResult(task_states={TI.run_id: {TI.task_id: self.state}})


@pytest.fixture
def comms(monkeypatch: pytest.MonkeyPatch) -> SupervisorComms:
    """Airflow's task SDK talks to this stand-in supervisor; the task's state is ``failed`` unless set."""
    from airflow.sdk.execution_time import task_runner

    fake = SupervisorComms("failed")
    monkeypatch.setattr(task_runner, "SUPERVISOR_COMMS", fake, raising=False)
    return fake
