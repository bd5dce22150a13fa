"""Where a task keeps its job plan so that a retry reattaches instead of loading the data again.

Airflow 3.3+ gives every task ``context["task_state_store"]``, which survives retries. Before 3.3
there is none, so :class:`VariablePlanStore` keeps the same keys in an Airflow Variable per task
instance: the metadata database is the one store every worker of every executor sees (a file under
``results_path`` is shared only when that path is shared storage, which the default is not), and it
survives a worker's death. The operator keeps the plan when the task succeeds, marked done, so a
try that Airflow fails after its success does not load again on its retry; a plan left by a task that
failed for good stays too, so clearing the task later still reattaches instead of resending.

Every try names itself in the store when it starts (:func:`~..triggers.task_state.record_try`), and
:func:`plan_store_for` hands out the store behind :class:`FencedPlanStore`: a try that froze past the
heartbeat timeout and woke up after its retry took over stops at its first write instead of replacing
what its successor recorded. Airflow 3.3's store refuses such a write on its own; Variables do not.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any, Protocol

from airflow_provider_salesforce_bulk.operators.stop_flag import TryStopped
from airflow_provider_salesforce_bulk.triggers.task_state import COMMS_GUARD, TRY_KEY, names_this_try

__all__ = ["PLAN_VARIABLE_PREFIX", "FencedPlanStore", "PlanStore", "VariablePlanStore", "plan_store_for"]

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


class FencedPlanStore:
    """A task's plan store that writes only while it names ``ti``'s try as the task's current one.

    Before each write (but the try's own record) the store's try record is read: once it names a
    newer try, the write raises :class:`~.stop_flag.TryStopped` and nothing is written. The check and
    the write are two requests, so a try that wakes between them still writes once; the window is
    one request wide instead of the rest of the try. No record (a plan from a release that kept
    none) lets the write through.
    """

    def __init__(self, store: PlanStore, ti: Any) -> None:
        self.store = store
        self.ti = ti

    def __repr__(self) -> str:
        return f"<FencedPlanStore try {getattr(self.ti, 'try_number', None)} of {self.store!r}>"

    def get(self, key: str, default: Any = None) -> Any:
        return self.store.get(key, default)

    def set(self, key: str, value: Any) -> None:
        if key != TRY_KEY:
            self._check(f"writing {key!r}")
        self.store.set(key, value)

    def delete(self, key: str) -> None:
        self._check(f"deleting {key!r}")
        self.store.delete(key)

    def _check(self, what: str) -> None:
        recorded = self.store.get(TRY_KEY)
        if isinstance(recorded, Mapping) and not names_this_try(recorded, self.ti):
            raise TryStopped(
                f"This is try {getattr(self.ti, 'try_number', None)}, but the task is at try "
                f"{recorded.get('try_number')} now (this worker was frozen or cut off past the heartbeat "
                f"timeout): stopped before {what} in the plan store; the newer try owns the task's jobs"
            )


def plan_store_for(context: Mapping[str, Any]) -> PlanStore | None:
    """``context["task_state_store"]`` where Airflow has it (3.3+), else a :class:`VariablePlanStore`;
    behind a :class:`FencedPlanStore` for the context's try.

    ``None`` only without a task instance (``execute`` called outside a task run): nothing to key a
    plan by, so nothing is remembered. Unit tests that call ``execute`` with a stub ``ti`` should pass
    their own ``task_state_store`` (a dict-backed one), since Variables need a running task.
    """
    store: PlanStore | None = context.get("task_state_store")
    ti = context.get("ti")
    if store is None:
        if ti is None:
            return None
        map_index = getattr(ti, "map_index", -1)
        index = -1 if map_index is None else int(map_index)
        store = VariablePlanStore(ti.dag_id, ti.run_id, ti.task_id, index)
    return store if ti is None else FencedPlanStore(store, ti)
