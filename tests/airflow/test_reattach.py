"""Retry reattachment when the worker died between creating a job and closing it.

``reconcile()`` against the emulator (a job left Open with its data is aborted and its chunk sent
again; a job closed but not yet marked so is kept; a job Salesforce does not know is sent again),
and end to end with ``dag.test()``: the first try dies right after uploading the second chunk,
before its close, and the retry loads every record exactly once. ``insert`` is used throughout,
not ``upsert``: an upsert by external id would hide a chunk loaded twice, an insert duplicates it.
"""

from __future__ import annotations

import collections
import json
import textwrap
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_salesforce_bulk.client import (
    BulkIngestClient,
    ClientCredentialsAuth,
    SalesforceSession,
    iter_record_chunks,
)
from airflow_provider_salesforce_bulk.client.csv_split import CsvChunk
from airflow_provider_salesforce_bulk.emulator.server import RunningEmulator
from airflow_provider_salesforce_bulk.operators.submit import STATE_KEY, JobPlan, reconcile, submit_chunks
from tests.airflow.conftest import conn_uri_json, load_dag_file

N = 40
PER_JOB = 10
UNKNOWN_JOB = "7505e0000009999AAA"


class DictStore:
    """The task state store's get/set, in memory; counts writes."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}
        self.writes = 0

    def get(self, key: str, default: Any = None) -> Any:
        return json.loads(json.dumps(self.data.get(key, default)))  # a copy, as a real store returns

    def set(self, key: str, value: Any) -> None:
        self.writes += 1
        self.data[key] = json.loads(json.dumps(value))


def _records(n: int = N) -> list[dict[str, Any]]:
    return [{"LastName": f"Reattach {i}", "External_Id__c": f"RA-{i}"} for i in range(n)]


def _chunks() -> Iterator[CsvChunk]:
    return iter_record_chunks(_records(), ["LastName", "External_Id__c"], max_records=PER_JOB)


@pytest.fixture
async def client(emulator: RunningEmulator) -> AsyncIterator[BulkIngestClient]:
    creds = emulator.credentials
    auth = ClientCredentialsAuth(creds.client_id, creds.client_secret, emulator.base_url)
    async with SalesforceSession(auth) as session:
        yield BulkIngestClient(session)


def _assert_loaded_exactly_once(emulator: RunningEmulator, n: int, prefix: str) -> None:
    stored = [r["External_Id__c"] for r in emulator.records("Contact")]
    duplicates = [ext for ext, count in collections.Counter(stored).items() if count > 1]
    assert duplicates == []
    assert len(stored) == n
    assert set(stored) == {f"{prefix}{i}" for i in range(n)}


async def test_reconcile_aborts_open_keeps_closed_and_resends_unknown(
    emulator: RunningEmulator, client: BulkIngestClient
) -> None:
    chunks = list(_chunks())
    assert [c.first_record_index for c in chunks] == [0, 10, 20, 30]
    # What an earlier try left behind, one case per chunk:
    # 0: closed and marked closed in the store (reconcile must not even look at it);
    marked = await client.create_job("insert", "Contact")
    await client.upload_job_data(marked.id, chunks[0].data)
    # 10: closed, but the worker died before marking it (the close reached Salesforce): kept;
    unmarked = await client.create_job("insert", "Contact")
    await client.upload_job_data(unmarked.id, chunks[1].data)
    # 20: uploaded, never closed (the worker died between the upload and the close): aborted, resent;
    open_job = await client.create_job("insert", "Contact")
    await client.upload_job_data(open_job.id, chunks[2].data, close=False)
    # 30: a job Salesforce does not know (deleted, or another org): resent.
    store = DictStore()
    plan = JobPlan(store)
    plan.chunks = {
        0: {"job": marked.id, "count": PER_JOB, "closed": True},
        10: {"job": unmarked.id, "count": PER_JOB, "closed": False},
        20: {"job": open_job.id, "count": PER_JOB, "closed": False},
        30: {"job": UNKNOWN_JOB, "count": PER_JOB, "closed": False},
    }
    looked_up: list[str] = []
    original_get_job = client.get_job

    async def get_job(job_id: str) -> Any:
        looked_up.append(job_id)
        return await original_get_job(job_id)

    client.get_job = get_job  # type: ignore[method-assign]
    await reconcile(client, plan)
    client.get_job = original_get_job  # type: ignore[method-assign]

    assert marked.id not in looked_up
    assert sorted(plan.chunks) == [0, 10]
    assert plan.chunks[10] == {"job": unmarked.id, "count": PER_JOB, "closed": True}
    assert (await client.get_job(open_job.id)).state == "Aborted"
    # The reconciled plan is what the store holds now, so a third try starts from it.
    assert JobPlan.load(store).dump() == plan.dump()

    await submit_chunks(
        client,
        plan,
        iter(chunks),
        operation="insert",
        sobject="Contact",
        external_id_field=None,
        assignment_rule_id=None,
        column_delimiter="COMMA",
        line_ending="LF",
    )
    assert plan.complete
    assert sorted(plan.chunks) == [0, 10, 20, 30]
    assert plan.chunks[0]["job"] == marked.id
    assert plan.chunks[10]["job"] == unmarked.id
    new_jobs = {plan.chunks[20]["job"], plan.chunks[30]["job"]}
    assert not new_jobs & {open_job.id, UNKNOWN_JOB}
    assert all(entry["closed"] for entry in plan.chunks.values())
    for job_id in plan.job_ids:
        assert (await client.wait_for_job(job_id, timeout=30)).state == "JobComplete"
    aborted = await client.get_job(open_job.id)
    assert aborted.state == "Aborted"
    assert aborted.number_records_processed == 0
    _assert_loaded_exactly_once(emulator, N, "RA-")
    assert store.data[STATE_KEY]["complete"] is True


# -- end to end -----------------------------------------------------------------------------------


@pytest.fixture
def sf(emulator: RunningEmulator, monkeypatch: pytest.MonkeyPatch, airflow_db: object) -> RunningEmulator:
    monkeypatch.setenv("AIRFLOW_CONN_SF_REATTACH", conn_uri_json(emulator))
    return emulator


# The seam: on the first try only, the second close never reaches Salesforce and nothing after it
# runs, as when the worker is killed (OOM, node lost) between the upload and the close. An exception
# alone is not enough: the client aborts the job on its way out, which a dead worker cannot do, so
# the abort is switched off for the rest of that try. Both are restored before the retry.
_DIES_BEFORE_SECOND_CLOSE = """
from airflow_provider_salesforce_bulk.client import BulkIngestClient

class WorkerKilled(BaseException):
    pass

class DiesBeforeSecondClose(SalesforceBulkOperator):
    left_open = []

    def execute(self, context):
        if context["ti"].try_number != 1:
            return super().execute(context)
        original_close, original_abort = BulkIngestClient.close_job, BulkIngestClient.abort_job
        closes = []

        async def close_job(client, job_id):
            closes.append(job_id)
            if len(closes) == 2:
                DiesBeforeSecondClose.left_open.append(job_id)
                BulkIngestClient.abort_job = abort_job  # the process is gone: nothing runs after this
                raise WorkerKilled(job_id)
            return await original_close(client, job_id)

        async def abort_job(client, job_id):
            raise WorkerKilled(job_id)

        BulkIngestClient.close_job = close_job
        try:
            return super().execute(context)
        except WorkerKilled:
            raise RuntimeError("worker killed between the upload and the close") from None
        finally:
            BulkIngestClient.close_job, BulkIngestClient.abort_job = original_close, original_abort
"""


def test_retry_after_death_between_upload_and_close_loads_every_record_once(
    sf: RunningEmulator, tmp_path: Path
) -> None:
    records = tmp_path / "records.json"
    records.write_text(json.dumps(_records()))
    dag = load_dag_file(
        "e2e_reattach_open",
        f"""
        import datetime, json
        from airflow.sdk import DAG
        from airflow_provider_salesforce_bulk.operators.salesforce_bulk import SalesforceBulkOperator
{textwrap.indent(_DIES_BEFORE_SECOND_CLOSE, " " * 8)}
        with DAG("e2e_reattach_open", schedule=None, start_date=datetime.datetime(2024, 1, 1)) as dag:
            DiesBeforeSecondClose(
                task_id="load", operation="insert", object_name="Contact", conn_id="sf_reattach",
                deferrable=True, poll_interval=0.2, max_records_per_job={PER_JOB},
                results_path={str(tmp_path / "results")!r}, records=json.load(open({str(records)!r})),
                retries=1, retry_delay=datetime.timedelta(0),
            )
        """,
    )
    operator_class: Any = type(dag.get_task("load"))  # type: ignore[attr-defined]
    dr = dag.test()  # type: ignore[attr-defined]
    assert dr.state == "success"
    assert dr.get_task_instance("load").try_number == 2

    # The first try left the second chunk's job Open with its data (never closed, never aborted).
    (left_open,) = operator_class.left_open
    jobs = {job["id"]: job for job in sf.emulator.store.list_jobs(0, 10_000)}
    # Try 1: chunk 0 closed, chunk 10 uploaded and left Open. Try 2: that job aborted, chunks 10, 20
    # and 30 each sent to a new job. Five jobs in all, one Aborted without processing a record.
    assert len(jobs) == 5
    assert jobs[left_open]["state"] == "Aborted"
    assert sorted(job["state"] for job in jobs.values()) == ["Aborted"] + ["JobComplete"] * 4
    _assert_loaded_exactly_once(sf, N, "RA-")

    summary = _xcom("e2e_reattach_open")
    assert summary["totals"] == {
        "records": N,
        "processed": N,
        "succeeded": N,
        "failed": 0,
        "unprocessed": 0,
        "jobs": 4,
    }
    assert left_open not in summary["jobs"]
    assert all(job["accounted"] for job in summary["jobs"].values())


def _xcom(dag_id: str, key: str = "return_value") -> Any:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        row = session.scalars(
            select(XComModel.value).where(
                XComModel.dag_id == dag_id, XComModel.task_id == "load", XComModel.key == key
            )
        ).first()
    return json.loads(row) if isinstance(row, str) else row
