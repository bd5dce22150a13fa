"""The job plan store: ``task_state_store`` on Airflow 3.3+, an Airflow Variable per task instance before.

Run inside real task runs (``dag.test()``): the store is written on the first try, which then fails,
and read back on the retry, per mapped instance. The same test runs on every supported Airflow
(``make test-airflow AIRFLOW=...``) and proves whichever store that version gets.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_salesforce_bulk.operators.plan_store import (
    PLAN_VARIABLE_PREFIX,
    FencedPlanStore,
    VariablePlanStore,
)
from tests.airflow.helpers import load_dag_file


def _has_task_state_store() -> bool:
    from airflow_provider_salesforce_bulk.version_compat import AIRFLOW_V_3_3_PLUS

    return AIRFLOW_V_3_3_PLUS


@pytest.mark.usefixtures("airflow_db")
def test_plan_survives_a_retry_per_mapped_instance_and_is_deleted(tmp_path: Path) -> None:
    out = tmp_path / "seen"
    out.mkdir()
    dag = load_dag_file(
        "plan_store_retry",
        f"""
        import datetime, json, pathlib
        from airflow.sdk import DAG, BaseOperator
        from airflow_provider_salesforce_bulk.operators.plan_store import plan_store_for

        OUT = pathlib.Path({str(out)!r})

        # A plain operator, not @task: the standard provider's PythonOperator leaves a lazy
        # cloudpickle proxy behind that breaks a client test's gc.get_objects() scan.
        class Remember(BaseOperator):
            def __init__(self, n, **kwargs):
                super().__init__(**kwargs)
                self.n = n

            def execute(self, context):
                n = self.n
                store = plan_store_for(context)
                ti = context["ti"]
                seen = store.get("plan", "missing")
                if ti.try_number == 1:
                    store.set("plan", {{"chunks": {{"0": {{"job": f"750-{{n}}", "count": n}}}}}})
                    store.set("other", [n])
                    raise RuntimeError("worker lost after saving the plan")
                # The retry reads what its first try saved, for its own map index only.
                (OUT / f"{{ti.map_index}}.json").write_text(json.dumps({{
                    "seen": seen,
                    "other": store.get("other"),
                    "store": type(store.store).__name__,
                }}))
                store.delete("plan")
                (OUT / f"{{ti.map_index}}.after.json").write_text(json.dumps(store.get("plan", "gone")))

        with DAG("plan_store_retry", schedule=None, start_date=datetime.datetime(2024, 1, 1)) as dag:
            Remember.partial(
                task_id="remember", retries=1, retry_delay=datetime.timedelta(0)
            ).expand(n=[3, 7])
        """,
    )
    dr = dag.test()  # type: ignore[attr-defined]
    assert dr.state == "success"
    for index, n in enumerate([3, 7]):
        seen = json.loads((out / f"{index}.json").read_text())
        assert seen["seen"] == {"chunks": {"0": {"job": f"750-{n}", "count": n}}}
        assert seen["other"] == [n]
        expected = "TaskStateStoreAccessor" if _has_task_state_store() else "VariablePlanStore"
        assert seen["store"] == expected
        assert json.loads((out / f"{index}.after.json").read_text()) == "gone"

    if not _has_task_state_store():
        # The Variables are there for the user to see; the deleted key is gone, the other stays.
        from airflow.models.variable import Variable as VariableModel
        from airflow.utils.session import create_session
        from sqlalchemy import select

        with create_session() as session:
            keys = set(session.scalars(select(VariableModel.key)).all())
        for index in (0, 1):
            store = VariablePlanStore("plan_store_retry", dr.run_id, "remember", index)
            assert store.variable_key("plan") not in keys
            assert store.variable_key("other") in keys


def test_variable_keys_are_distinct_bounded_and_readable() -> None:
    a = VariablePlanStore("d" * 300, "run", "t" * 300, -1)
    keys = {
        a.variable_key("plan"),
        a.variable_key("other"),
        VariablePlanStore("d" * 300, "run2", "t" * 300, -1).variable_key("plan"),
        VariablePlanStore("d" * 300, "run", "t" * 300, 0).variable_key("plan"),
        VariablePlanStore("d" * 300, "run", "t" * 301, -1).variable_key("plan"),
    }
    assert len(keys) == 5
    assert all(len(key) <= 250 and key.startswith(PLAN_VARIABLE_PREFIX) for key in keys)
    assert (
        VariablePlanStore("my_dag", "r", "load")
        .variable_key("plan")
        .startswith("salesforce_bulk_plan.my_dag.load.")
    )


def test_the_context_decides_the_store() -> None:
    from airflow_provider_salesforce_bulk.operators.plan_store import plan_store_for

    class _TI:
        dag_id, run_id, task_id, map_index = "d", "r", "t", 2

    native: Any = object()
    fenced = plan_store_for({"task_state_store": native, "ti": _TI()})
    assert isinstance(fenced, FencedPlanStore)
    assert fenced.store is native
    fallback = plan_store_for({"task_state_store": None, "ti": _TI()})
    assert isinstance(fallback, FencedPlanStore)
    assert isinstance(fallback.store, VariablePlanStore)
    fallback = fallback.store
    assert (fallback.dag_id, fallback.run_id, fallback.task_id, fallback.map_index) == ("d", "r", "t", 2)
    assert plan_store_for({"ti": None}) is None


def test_none_is_refused_like_task_state_store() -> None:
    with pytest.raises(ValueError, match="None"):
        VariablePlanStore("d", "r", "t").set("plan", None)
