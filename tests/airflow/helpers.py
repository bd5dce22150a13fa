"""Helpers the Airflow tests import: connections to the emulator, DAG files, stand-ins for a task.

They live here, not in ``conftest.py``: pytest imports a conftest as ``conftest``, and a test importing
it again as ``tests.airflow.conftest`` would run its module code a second time. ``conftest.py`` sets
``SF_BULK_TEST_AIRFLOW_HOME`` before any test module is imported.
"""

from __future__ import annotations

import json
import os
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from airflow_provider_salesforce_bulk.emulator.server import RunningEmulator


def conn_uri_json(running: RunningEmulator, **extra: object) -> str:
    """``AIRFLOW_CONN_...`` value logging in to the emulator with the client credentials flow."""
    return running.airflow_connection(**extra)


def load_dag_file(name: str, source: str) -> object:
    """Write a DAG file into the dags folder (dag.test() syncs DAGs from it) and return its ``dag``."""
    import importlib.util
    import textwrap

    dags = Path(os.environ["SF_BULK_TEST_AIRFLOW_HOME"]) / "dags"
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
    """Answers GetTaskStates as a task's or the triggerer's supervisor does, with a state set by the test,
    and keeps Variables (what the plan store uses before Airflow 3.3) in ``variables``."""

    def __init__(self, state: str | None, *, broken: bool = False) -> None:
        self.state = state
        self.broken = broken
        self.asked: list[Any] = []
        self.variables: dict[str, str | None] = {}

    def send(self, msg: Any) -> Any:
        from airflow.sdk.execution_time import comms

        if isinstance(msg, (comms.GetVariable, comms.PutVariable, comms.DeleteVariable, comms.MaskSecret)):
            return self._variable(msg)
        assert isinstance(msg, comms.GetTaskStates)
        self.asked.append(msg)
        if self.broken:
            raise ConnectionResetError("supervisor went away")
        return comms.TaskStatesResult(task_states={TI.run_id: {TI.task_id: self.state}})

    def _variable(self, msg: Any) -> Any:
        from airflow.sdk.exceptions import ErrorType
        from airflow.sdk.execution_time import comms

        if isinstance(msg, comms.GetVariable):
            if msg.key not in self.variables:
                return comms.ErrorResponse(error=ErrorType.VARIABLE_NOT_FOUND, detail={"key": msg.key})
            return comms.VariableResult(key=msg.key, value=self.variables[msg.key])
        if isinstance(msg, comms.PutVariable):
            self.variables[msg.key] = msg.value
        elif isinstance(msg, comms.DeleteVariable):
            self.variables.pop(msg.key, None)
        return comms.OKResponse(ok=True)
