"""A retry after a kill, when the input changed meanwhile, loads every record once (issue 15 §1).

Through ``dag.test()`` against the emulator: the first try dies (as a SIGKILLed worker would: no
abort, no cleanup) right after its third job's upload, and before the retry the input changes as it
does in real pipelines: a query without ``ORDER BY`` returns its rows in another order (SQLite
through Airflow's sqlite provider), a row arrives at the top of the table, an upstream task rewrites
the Parquet file in another order, or the records passed by XCom are regenerated in another order.

- With the staged copy in place, the retry sends the chunks the first try staged, never the live
  source: every record of the first try's input is stored exactly once (the row that arrived later
  is not loaded by this task instance), and the task succeeds.
- With the staged copy gone (a worker-local staging folder on another machine), the retry cuts the
  chunks again, finds that they differ from the digests in the plan, and fails for good
  (``AirflowFailException``: no third try) before creating any job, naming the chunk, its records
  and its jobs. With the input unchanged the cut matches and the load completes exactly once.

Records are counted by ``LastName``, which the emulator does not keep unique, so a record stored
twice shows up (an ``External_Id__c`` is unique there and would refuse the second copy).
"""

from __future__ import annotations

import collections
import json
import sqlite3
import textwrap
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_salesforce_bulk.emulator.server import RunningEmulator
from tests.airflow.helpers import conn_uri_json, load_dag_file

N = 2_000
PER_JOB = 400  # five chunks; the first try dies after uploading the third


def _names() -> list[str]:
    return [f"Changed {i}" for i in range(N)]


def _rows() -> list[tuple[str, str]]:
    return [(name, f"changed{i}@example.com") for i, name in enumerate(_names())]


@pytest.fixture
def sf(emulator: RunningEmulator, monkeypatch: pytest.MonkeyPatch, airflow_db: object) -> RunningEmulator:
    monkeypatch.setenv("AIRFLOW_CONN_SF_CHANGED", conn_uri_json(emulator))
    return emulator


# The first try's worker dies right after its third upload (the job recorded as created, never
# closed); CHANGE runs first, standing for what happens to the input before Airflow's retry. A
# killed process aborts nothing, so the abort is switched off for the rest of that try.
_SEAM = """
from airflow.providers.common.compat.sdk import AirflowFailException
from airflow_provider_salesforce_bulk.client import BulkIngestClient

class WorkerKilled(BaseException):
    pass

class KilledThenChanged(SalesforceBulkOperator):
    failures = []

    def execute(self, context):
        try:
            return self._run(context)
        except AirflowFailException as exc:
            KilledThenChanged.failures.append(str(exc))
            raise

    def _run(self, context):
        if context["ti"].try_number != 1:
            return super().execute(context)
        original_abort, original_upload = BulkIngestClient.abort_job, BulkIngestClient.upload_job_data
        uploads = []

        async def abort_job(client, job_id):
            raise WorkerKilled(job_id)

        async def upload_job_data(client, job_id, data, **kwargs):
            result = await original_upload(client, job_id, data, **kwargs)
            uploads.append(job_id)
            if len(uploads) == 3:
                BulkIngestClient.abort_job = abort_job  # the process is gone: nothing runs after this
                change(context)
                raise WorkerKilled(job_id)
            return result

        BulkIngestClient.upload_job_data = upload_job_data
        try:
            return super().execute(context)
        except WorkerKilled:
            raise RuntimeError("worker killed after its third upload") from None
        finally:
            BulkIngestClient.abort_job, BulkIngestClient.upload_job_data = original_abort, original_upload
"""

_CHANGES = {
    "sql_reordered": """
        def change_input(context):
            with sqlite3.connect(DB) as db:
                rows = db.execute("SELECT LastName, Email FROM contacts").fetchall()
                random.Random(7).shuffle(rows)
                db.execute("DELETE FROM contacts")
                db.executemany("INSERT INTO contacts VALUES (?, ?)", rows)
        """,
    "sql_row_added_at_top": """
        def change_input(context):
            with sqlite3.connect(DB) as db:
                rows = db.execute("SELECT LastName, Email FROM contacts").fetchall()
                db.execute("DELETE FROM contacts")
                late = [("Arrived later", "late@example.com")]
                db.executemany("INSERT INTO contacts VALUES (?, ?)", late + rows)
        """,
    "parquet_rewritten": """
        def change_input(context):
            import pyarrow.parquet as pq
            table = pq.read_table(PARQUET)
            order = list(range(table.num_rows))
            random.Random(7).shuffle(order)
            pq.write_table(table.take(order), PARQUET)
        """,
    "xcom_regenerated": """
        def change_input(context):
            # The upstream task's XCom rewritten in place, in the form the task SDK stored it.
            from airflow.models.xcom import XComModel
            from airflow.utils.session import create_session
            from sqlalchemy import select
            records = [{"LastName": name, "Email": email} for name, email in ROWS]
            random.Random(7).shuffle(records)
            ti = context["ti"]
            with create_session() as session:
                row = session.scalars(select(XComModel).where(
                    XComModel.dag_id == ti.dag_id, XComModel.run_id == ti.run_id,
                    XComModel.task_id == "make_records", XComModel.key == "return_value",
                )).one()
                row.value = json.dumps(records) if isinstance(row.value, str) else records
        """,
    "unchanged": """
        def change_input(context):
            pass
        """,
}


def _source_args(kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, str]:
    """What the DAG file defines first, and the operator's source arguments."""
    if kind.startswith("sql"):
        db = tmp_path / "warehouse.db"
        with sqlite3.connect(db) as conn:
            conn.execute("CREATE TABLE contacts (LastName TEXT, Email TEXT)")
            conn.executemany("INSERT INTO contacts VALUES (?, ?)", _rows())
        monkeypatch.setenv(
            "AIRFLOW_CONN_WAREHOUSE_CHANGED", json.dumps({"conn_type": "sqlite", "host": str(db)})
        )
        return (
            f"DB = {str(db)!r}",
            'sql="SELECT LastName, Email FROM contacts", sql_conn_id="warehouse_changed"',
        )
    if kind.startswith("xcom"):
        rows = tmp_path / "rows.json"
        rows.write_text(json.dumps(_rows()))
        prelude = f"ROWS = json.load(open({str(rows)!r}))"
        return prelude, "records=make_records()"
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "contacts.parquet"
    names, emails = zip(*_rows(), strict=True)
    pq.write_table(pa.table({"LastName": list(names), "Email": list(emails)}), path, row_group_size=500)
    return f"PARQUET = {str(path)!r}", "source=PARQUET"


def _dag(
    dag_id: str,
    kind: str,
    change: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    *,
    drop_staging: bool,
) -> Any:
    prelude, source = _source_args(kind, tmp_path, monkeypatch)
    staging = tmp_path / "results" / "_staging"
    seam = _SEAM.replace(
        "change(context)",
        "change_input(context)" + (f"; shutil.rmtree({str(staging)!r})" if drop_staging else ""),
    )
    return load_dag_file(
        dag_id,
        f"""
        import datetime, json, random, shutil, sqlite3
        from airflow.sdk import DAG, task
        from airflow_provider_salesforce_bulk.operators.salesforce_bulk import SalesforceBulkOperator
        {prelude}
{textwrap.indent(textwrap.dedent(_CHANGES[change]), " " * 8)}
{textwrap.indent(seam, " " * 8)}
        with DAG({dag_id!r}, schedule=None, start_date=datetime.datetime(2024, 1, 1)) as dag:
            @task
            def make_records():
                return [{{"LastName": name, "Email": email}} for name, email in ROWS]

            KilledThenChanged(
                task_id="load", operation="insert", object_name="Contact", conn_id="sf_changed",
                deferrable=False, poll_interval=0.2, max_records_per_job={PER_JOB},
                results_path={str(tmp_path / "results")!r}, {source},
                retries=2, retry_delay=datetime.timedelta(0),
            )
        """,
    )


def _stored_names(sf: RunningEmulator) -> collections.Counter[str]:
    return collections.Counter(record["LastName"] for record in sf.records("Contact"))


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
    return json.loads(row) if isinstance(row, str) else row


_KINDS = {
    "sql_reordered": "sql",
    "sql_row_added_at_top": "sql",
    "parquet_rewritten": "parquet",
    "xcom_regenerated": "xcom",
}


@pytest.mark.parametrize("change", list(_KINDS))
def test_retry_sends_the_staged_chunks_not_the_changed_input(
    sf: RunningEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change: str
) -> None:
    dag_id = f"changed_input_{change}"
    dag = _dag(dag_id, _KINDS[change], change, tmp_path, monkeypatch, drop_staging=False)
    dr = dag.test()  # type: ignore[attr-defined]
    ti = dr.get_task_instance("load")
    assert (dr.state, ti.try_number) == ("success", 2)

    stored = _stored_names(sf)
    duplicated = sum(count - 1 for count in stored.values() if count > 1)
    missing = sum(1 for name in _names() if name not in stored)
    assert (duplicated, missing) == (0, 0)
    assert stored == collections.Counter(_names())  # the late row is not part of this run's input
    summary = _summary(dag_id)
    assert summary["totals"]["records"] == N
    assert summary["totals"]["succeeded"] == N
    # Removed once the task instance succeeded.
    assert not any((tmp_path / "results" / "_staging").rglob("*.csv"))


@pytest.mark.parametrize("change", list(_KINDS))
def test_retry_without_the_staged_copy_fails_before_any_job_when_the_input_changed(
    sf: RunningEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change: str
) -> None:
    dag_id = f"changed_input_gone_{change}"
    dag = _dag(dag_id, _KINDS[change], change, tmp_path, monkeypatch, drop_staging=True)
    operator_class: Any = type(dag.get_task("load"))  # type: ignore[attr-defined]
    dr = dag.test()  # type: ignore[attr-defined]
    ti = dr.get_task_instance("load")
    # Failed for good by the second try: no third one although retries=2.
    assert (dr.state, ti.try_number) == ("failed", 2)
    jobs = sf.emulator.store.list_jobs(0, 10_000)
    first_try = {job["id"] for job in jobs}
    assert len(first_try) == 3  # the retry created no job
    (message,) = operator_class.failures
    print(message)  # shown with -s: the message a user reads
    assert "changed since the first try" in message
    assert "chunk 0 (records 0..399, 400 records, given to job(s) " in message
    assert any(job_id in message for job_id in first_try), message
    # What the first try's two closed jobs held is stored once; nothing else was sent.
    stored = _stored_names(sf)
    assert max(stored.values()) == 1
    assert sum(stored.values()) == 2 * PER_JOB


def test_retry_without_the_staged_copy_completes_when_the_input_is_unchanged(
    sf: RunningEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dag_id = "changed_input_gone_unchanged"
    dag = _dag(dag_id, "parquet", "unchanged", tmp_path, monkeypatch, drop_staging=True)
    dr = dag.test()  # type: ignore[attr-defined]
    assert (dr.state, dr.get_task_instance("load").try_number) == ("success", 2)
    assert _stored_names(sf) == collections.Counter(_names())
