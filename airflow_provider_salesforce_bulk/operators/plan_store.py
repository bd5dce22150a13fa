"""Where a task keeps its job plan so that a retry reattaches instead of loading the data again.

Airflow 3.3+ gives every task ``context["task_state_store"]``, which survives retries. Before 3.3
there is none, so :class:`VariablePlanStore` keeps the same keys in an Airflow Variable per task
instance: the metadata database is the one store every worker of every executor sees (a file under
``results_path`` is shared only when that path is shared storage, which the default is not), and it
survives a worker's death. The operator keeps the plan when the task succeeds, marked done, so a
try that Airflow fails after its success does not load again on its retry; a plan left by a task that
failed for good stays too, so clearing the task later still reattaches instead of resending.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any, Protocol

from airflow_provider_salesforce_bulk.triggers.task_state import COMMS_GUARD

__all__ = ["PLAN_VARIABLE_PREFIX", "PlanStore", "VariablePlanStore", "plan_store_for"]

PLAN_VARIABLE_PREFIX = "salesforce_bulk_plan."
"""Every plan Variable's key starts with this (``airflow variables list`` shows them)."""

# Variable keys are at most 250 characters; ids are cut to keep the key readable, the digest keeps
# it unique (it covers the full ids, the run id and the map index).
_ID_CHARS = 80


class PlanStore(Protocol):
    """The part of Airflow 3.3's ``task_state_store`` the operator uses."""

    def get(self, key: str, default: Any = None) -> Any: ...

    def set(self, key: str, value: Any) -> None: ...

    def delete(self, key: str) -> None: ...


class VariablePlanStore:
    """``task_state_store``'s get/set/delete on Airflow Variables, one per task instance and key.

    Parameters
    ----------
    dag_id, run_id, task_id : str
    map_index : int
        ``-1`` for a task that is not mapped; each mapped instance has its own plan.

    Notes
    -----
    Values are JSON. A Variable holds job ids, record counts and the instance URL: no secret.
    """

    def __init__(self, dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> None:
        self.dag_id = dag_id
        self.run_id = run_id
        self.task_id = task_id
        self.map_index = map_index

    def __repr__(self) -> str:
        return (
            f"<VariablePlanStore {self.dag_id}/{self.run_id}/{self.task_id}"
            f"{'' if self.map_index == -1 else f'[{self.map_index}]'}>"
        )

    def variable_key(self, key: str) -> str:
        """The Variable holding ``key`` of this task instance."""
        identity = json.dumps([self.dag_id, self.run_id, self.task_id, self.map_index, key])
        digest = hashlib.sha256(identity.encode("utf-8")).hexdigest()[:24]
        return f"{PLAN_VARIABLE_PREFIX}{self.dag_id[:_ID_CHARS]}.{self.task_id[:_ID_CHARS]}.{digest}"

    def get(self, key: str, default: Any = None) -> Any:
        from airflow.providers.common.compat.sdk import Variable

        with COMMS_GUARD:
            return Variable.get(self.variable_key(key), default=default, deserialize_json=True)

    def set(self, key: str, value: Any) -> None:
        from airflow.providers.common.compat.sdk import Variable

        if value is None:
            raise ValueError("Cannot set value as None")  # as task_state_store
        mapped = "" if self.map_index == -1 else f" [{self.map_index}]"
        description = (
            f"Salesforce Bulk job plan of {self.dag_id} / {self.run_id} / {self.task_id}{mapped} ({key}): "
            "lets a retry reattach to its jobs; marked done when the task succeeds."
        )
        with COMMS_GUARD:
            Variable.set(self.variable_key(key), value, description=description, serialize_json=True)

    def delete(self, key: str) -> None:
        from airflow.providers.common.compat.sdk import Variable

        with COMMS_GUARD:
            Variable.delete(self.variable_key(key))


def plan_store_for(context: Mapping[str, Any]) -> PlanStore | None:
    """``context["task_state_store"]`` where Airflow has it (3.3+), else a :class:`VariablePlanStore`.

    ``None`` only without a task instance (``execute`` called outside a task run): nothing to key a
    plan by, so nothing is remembered. Unit tests that call ``execute`` with a stub ``ti`` should pass
    their own ``task_state_store`` (a dict-backed one), since Variables need a running task.
    """
    store = context.get("task_state_store")
    if store is not None:
        return store  # type: ignore[no-any-return]
    ti = context.get("ti")
    if ti is None:
        return None
    map_index = getattr(ti, "map_index", -1)
    return VariablePlanStore(ti.dag_id, ti.run_id, ti.task_id, -1 if map_index is None else int(map_index))
