"""Retry reattachment when the worker died between creating a job and closing it.

``reconcile()`` against the emulator (a job left Open and never closed is aborted and its chunk sent
again; a job closed but not yet marked so is kept; a job Salesforce does not know is sent again),
and end to end with ``dag.test()``: the first try dies right after uploading the second chunk, or
right before its close request, and the retry loads every record exactly once. ``insert`` is used throughout,
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
    ChunkLimits,
    ClientCredentialsAuth,
    JobSpec,
    SalesforceSession,
)
from airflow_provider_salesforce_bulk.client.csv_format import CsvChunk
from airflow_provider_salesforce_bulk.client.serialize import iter_record_chunks
from airflow_provider_salesforce_bulk.emulator.server import RunningEmulator
from airflow_provider_salesforce_bulk.operators.submit import (
    STATE_KEY,
    JobPlan,
    reconcile,
    submit_chunks,
)
from tests.airflow.helpers import conn_uri_json, load_dag_file

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
    return iter_record_chunks(_records(), ["LastName", "External_Id__c"], ChunkLimits(max_records=PER_JOB))


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
    # What an earlier try left behind, one case per chunk (the plan as the first version wrote it):
    # 0: closed and marked closed in the store (read again all the same: it could have been aborted);
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
    plan = JobPlan(
        store,
        {
            "chunks": {
                "0": {"job": marked.id, "count": PER_JOB, "closed": True},
                "10": {"job": unmarked.id, "count": PER_JOB, "closed": False},
                "20": {"job": open_job.id, "count": PER_JOB, "closed": False},
                "30": {"job": UNKNOWN_JOB, "count": PER_JOB, "closed": False},
            },
            "complete": True,
        },
    )
    looked_up: list[str] = []
    original_get_job = client.get_job

    async def get_job(job_id: str) -> Any:
        looked_up.append(job_id)
        return await original_get_job(job_id)

    client.get_job = get_job  # type: ignore[method-assign]
    options = JobSpec(operation="insert", object="Contact")
    latest = await reconcile(client, plan, options)
    client.get_job = original_get_job  # type: ignore[method-assign]

    assert set(looked_up) == {marked.id, unmarked.id, open_job.id, UNKNOWN_JOB}
    assert set(latest) == {marked.id, unmarked.id}
    assert plan.job_ids == [marked.id, unmarked.id]
    assert not plan.complete  # chunks 20 and 30 wait for their records from the input
    assert [j["phase"] for j in plan.chunks[10]["jobs"]] == ["closed"]
    assert plan.chunks[20]["jobs"][0]["outcome"] == "replaced"
    assert plan.chunks[30]["jobs"][0]["outcome"] == "replaced"
    assert (await client.get_job(open_job.id)).state == "Aborted"
    # The reconciled plan is what the store holds now, so a third try starts from it.
    assert JobPlan.load(store).dump() == plan.dump()

    await submit_chunks(client, plan, iter(chunks), options)
    assert plan.complete
    assert sorted(plan.chunks) == [0, 10, 20, 30]
    assert plan.job_ids[:2] == [marked.id, unmarked.id]
    new_jobs = set(plan.job_ids[2:])
    assert len(new_jobs) == 2
    assert not new_jobs & {open_job.id, UNKNOWN_JOB}
    assert all(entry["phase"] == "closed" for entry in plan.active())
    # Every job of every try stays in the plan, for the summary.
    assert set(plan.all_job_ids) == {marked.id, unmarked.id, open_job.id, UNKNOWN_JOB} | new_jobs
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


# The seam: on the first try only, the worker dies (OOM, node lost) right after the second upload
# (``after_upload``: the job is recorded as created, its close never sent) or right before the
# second close request (``before_close``: recorded as closing, the request never left). An exception
# alone is not enough: the operator aborts a refused job on its way out, which a dead worker cannot
# do, so the abort is switched off for the rest of that try. Everything is restored for the retry.
_DIES_AT_SECOND_JOB = """
from airflow_provider_salesforce_bulk.client import BulkIngestClient

class WorkerKilled(BaseException):
    pass

class DiesAtSecondJob(SalesforceBulkOperator):
    left_open = []
    where = WHERE

    def execute(self, context):
        if context["ti"].try_number != 1:
            return super().execute(context)
        originals = BulkIngestClient.close_job, BulkIngestClient.abort_job, BulkIngestClient.upload_job_data
        original_close, original_abort, original_upload = originals
        calls = []

        def die(job_id):
            DiesAtSecondJob.left_open.append(job_id)
            BulkIngestClient.abort_job = abort_job  # the process is gone: nothing runs after this
            raise WorkerKilled(job_id)

        async def upload_job_data(client, job_id, data, **kwargs):
            result = await original_upload(client, job_id, data, **kwargs)
            calls.append(job_id)
            if self.where == "after_upload" and len(calls) == 2:
                die(job_id)
            return result

        async def close_job(client, job_id):
            if self.where == "before_close" and len(calls) == 2:
                die(job_id)
            return await original_close(client, job_id)

        async def abort_job(client, job_id):
            raise WorkerKilled(job_id)

        BulkIngestClient.close_job, BulkIngestClient.upload_job_data = close_job, upload_job_data
        try:
            return super().execute(context)
        except WorkerKilled:
            raise RuntimeError("worker killed between the upload and the close") from None
        finally:
            (BulkIngestClient.close_job, BulkIngestClient.abort_job,
             BulkIngestClient.upload_job_data) = originals
"""


@pytest.mark.parametrize("where", ["after_upload", "before_close"])
def test_retry_after_death_between_upload_and_close_loads_every_record_once(
    sf: RunningEmulator, tmp_path: Path, where: str
) -> None:
    records = tmp_path / "records.json"
    records.write_text(json.dumps(_records()))
    dag_id = f"e2e_reattach_{where}"
    seam = _DIES_AT_SECOND_JOB.replace("WHERE", repr(where))
    dag = load_dag_file(
        dag_id,
        f"""
        import datetime, json
        from airflow.sdk import DAG
        from airflow_provider_salesforce_bulk.operators.salesforce_bulk import SalesforceBulkOperator
{textwrap.indent(seam, " " * 8)}
        with DAG({dag_id!r}, schedule=None, start_date=datetime.datetime(2024, 1, 1)) as dag:
            DiesAtSecondJob(
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
    summary = _xcom(dag_id)
    if where == "after_upload":
        # Never closed, so never processed: the retry aborts it and sends chunk 10 to a new job.
        # Five jobs in all, one Aborted without processing a record.
        assert len(jobs) == 5
        assert jobs[left_open]["state"] == "Aborted"
        assert sorted(job["state"] for job in jobs.values()) == ["Aborted"] + ["JobComplete"] * 4
        assert summary["jobs"][left_open]["outcome"] == "replaced"
        assert summary["jobs"][left_open]["processed"] == 0
    else:
        # Its close may have been sent: never aborted; the retry closes it and it loads chunk 10.
        assert len(jobs) == 4
        assert jobs[left_open]["state"] == "JobComplete"
        assert summary["jobs"][left_open]["outcome"] == "final"
    _assert_loaded_exactly_once(sf, N, "RA-")
    assert summary["totals"] == {
        "records": N,
        "processed": N,
        "succeeded": N,
        "failed": 0,
        "unprocessed": 0,
        "jobs": len(jobs),
    }
    assert "unaccounted" not in summary
    assert all(job["accounted"] for job in summary["jobs"].values() if job["outcome"] == "final")


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
