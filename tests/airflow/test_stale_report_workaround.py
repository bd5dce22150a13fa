"""The README's workaround for Airflow's stale-report race (apache/airflow#72716, #71580): ``retries >= 1``.

In the race, the scheduler takes the deferring try's late "success" report for the resumed try and
fails it. Here the first try defers, its trigger fires, and the resumed try is then failed the same
way (from outside the operator's own logic), either before ``execute_complete`` did anything or
after it finished (the resumed try kept running until its next heartbeat and completed: its plan is
marked done). With one retry the task reattaches to the jobs the first try submitted, or finds them
done and returns their summary: no new job, and every record is stored exactly once, counted in the
emulator's own database. ``insert`` is used so a chunk sent twice would show as duplicates.
"""

from __future__ import annotations

import collections
import json
import textwrap
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_salesforce_bulk.emulator.server import RunningEmulator
from tests.airflow.helpers import conn_uri_json, load_dag_file

N = 45
PER_JOB = 10
DAG_ID = "e2e_stale_report_retry"

# The seam: on the first try, the resumed try fails as soon as it starts, as when the scheduler marks
# it failed on the deferring try's stale report. The message is the scheduler's own.
_FAILED_ON_RESUME = """
class FailedOnResume(SalesforceBulkOperator):
    resumed = []

    def execute_complete(self, context, event, **kwargs):
        FailedOnResume.resumed.append((context["ti"].try_number, event.get("status")))
        if context["ti"].try_number == 1 and FAIL_AFTER:
            super().execute_complete(context, event, **kwargs)
        if context["ti"].try_number == 1:
            raise RuntimeError(
                "Executor reported that the task instance finished with state success, but the task "
                "instance's state attribute is running (simulated stale report)"
            )
        return super().execute_complete(context, event, **kwargs)
"""


@pytest.fixture
def sf(emulator: RunningEmulator, monkeypatch: pytest.MonkeyPatch, airflow_db: object) -> RunningEmulator:
    monkeypatch.setenv("AIRFLOW_CONN_SF_STALE", conn_uri_json(emulator))
    return emulator


@pytest.mark.parametrize("fail_after", [False, True], ids=["before_execute_complete", "after_it"])
def test_a_retry_after_the_stale_report_failure_reattaches_and_loads_nothing_twice(
    sf: RunningEmulator, tmp_path: Path, fail_after: bool
) -> None:
    # No unique field: a record sent twice would be stored twice, not refused as DUPLICATE_VALUE.
    records = [{"LastName": f"Stale {i}"} for i in range(N)]
    source = tmp_path / "records.json"
    source.write_text(json.dumps(records))
    dag_id = f"{DAG_ID}_{'after' if fail_after else 'before'}"
    dag = load_dag_file(
        dag_id,
        f"""
        import datetime, json
        from airflow.sdk import DAG
        from airflow_provider_salesforce_bulk.operators.salesforce_bulk import SalesforceBulkOperator
        FAIL_AFTER = {fail_after!r}
{textwrap.indent(_FAILED_ON_RESUME, " " * 8)}
        with DAG({dag_id!r}, schedule=None, start_date=datetime.datetime(2024, 1, 1)) as dag:
            FailedOnResume(
                task_id="load", operation="insert", object_name="Contact", conn_id="sf_stale",
                deferrable=True, poll_interval=0.2, max_records_per_job={PER_JOB},
                results_path={str(tmp_path / "results")!r}, records=json.load(open({str(source)!r})),
                retries=1, retry_delay=datetime.timedelta(0),
            )
        """,
    )
    operator_class: Any = type(dag.get_task("load"))  # type: ignore[attr-defined]
    dr = dag.test()  # type: ignore[attr-defined]

    # The first try deferred and its trigger fired; its resume was failed; the retry succeeded.
    assert operator_class.resumed[0] == (1, "success")
    assert dr.state == "success"
    assert dr.get_task_instance("load").try_number == 2

    # The retry created no job: the org holds exactly the first try's five jobs, each complete.
    jobs = sf.emulator.store.list_jobs(0, 10_000)
    assert len(jobs) == 5
    assert sorted(job["state"] for job in jobs) == ["JobComplete"] * 5
    assert sum(job["processed"] for job in jobs) == N

    # Every record stored exactly once.
    stored = [r["LastName"] for r in sf.records("Contact")]
    assert [name for name, count in collections.Counter(stored).items() if count > 1] == []
    assert sorted(stored) == sorted(f"Stale {i}" for i in range(N))

    summary = _summary(dag_id)
    assert summary["totals"]["records"] == N
    assert summary["totals"]["succeeded"] == N
    assert summary["totals"]["jobs"] == 5
    assert set(summary["jobs"]) == {job["id"] for job in jobs}


def _summary(dag_id: str) -> Any:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        row = session.scalars(
            select(XComModel.value).where(
                XComModel.dag_id == dag_id, XComModel.task_id == "load", XComModel.key == "return_value"
            )
        ).first()
    value = json.loads(row) if isinstance(row, str) else row
    return json.loads(value) if isinstance(value, str) else value
