"""What the change-only sync tests share: a DAG loading Contacts from an NDJSON file, and counts.

Each ``run()`` is a new DAG run (a new task instance, so a new plan store) over the file as it is
then; the emulator keeps its records between runs, as an org does.
"""

from __future__ import annotations

import collections
import json
from pathlib import Path
from typing import Any

from airflow_provider_salesforce_bulk.emulator.server import RunningEmulator
from tests.airflow.helpers import load_dag_file

EXT = "External_Id__c"


def contacts(ids: range | list[int], version: int = 0) -> list[dict[str, Any]]:
    """Contacts keyed ``ext-<i>``; ``version`` changes every LastName (a changed row)."""
    return [{EXT: f"ext-{i}", "LastName": f"Last {i} v{version}", "Email": f"c{i}@example.com"} for i in ids]


def write_ndjson(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def sync_dag(
    dag_id: str, tmp_path: Path, *, seam: str = "", operator: str = "SalesforceBulkOperator", **kwargs: Any
) -> Any:
    """A DAG of one change-only upsert task ``load`` reading ``tmp_path / 'input.ndjson'``."""
    args = {
        "task_id": "load",
        "operation": "upsert",
        "object_name": "Contact",
        "external_id_field": EXT,
        "conn_id": "sf_sync",
        "deferrable": False,
        "poll_interval": 0.2,
        "max_records_per_job": 100,
        "results_path": str(tmp_path / "results"),
        "source": str(tmp_path / "input.ndjson"),
        "changes_only": True,
        "sync_state_path": str(tmp_path / "state"),
        "retries": 2,
    }
    args.update(kwargs)
    rendered = ", ".join(f"{k}={v!r}" for k, v in args.items())
    return load_dag_file(
        dag_id,
        f"""
        import datetime
        from airflow.sdk import DAG
        from airflow_provider_salesforce_bulk.operators.salesforce_bulk import SalesforceBulkOperator
{seam}
        with DAG({dag_id!r}, schedule=None, start_date=datetime.datetime(2024, 1, 1)) as dag:
            {operator}({rendered}, retry_delay=datetime.timedelta(0))
        """,
    )


def run(dag: Any) -> tuple[str, int, Any]:
    """One DAG run: its state, the load's try number and its summary (the XCom of that run)."""
    dr = dag.test()
    ti = dr.get_task_instance("load")
    return dr.state, ti.try_number, summary_of(dag.dag_id, dr.run_id)


def summary_of(dag_id: str, run_id: str) -> Any:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        row = session.scalars(
            select(XComModel.value).where(
                XComModel.dag_id == dag_id,
                XComModel.run_id == run_id,
                XComModel.task_id == "load",
                XComModel.key == "return_value",
            )
        ).first()
    return json.loads(row) if isinstance(row, str) else row


def stored(sf: RunningEmulator) -> dict[str, dict[str, Any]]:
    """The org's Contacts by external id (a duplicate would fail the uniqueness, so count them too)."""
    records = sf.records("Contact")
    counts = collections.Counter(record[EXT] for record in records)
    assert all(n == 1 for n in counts.values()), counts
    return {record[EXT]: record for record in records}


def jobs(sf: RunningEmulator) -> list[dict[str, Any]]:
    return sf.emulator.store.list_jobs(0, 1000)  # type: ignore[no-any-return]


def records_sent(sf: RunningEmulator, operation: str) -> int:
    """Records Salesforce processed in jobs of ``operation`` (every job, every run)."""
    return sum(int(job["processed"]) for job in jobs(sf) if job["operation"] == operation)
