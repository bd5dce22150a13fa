"""Exactly once through Airflow's own retries, against the emulator (issue 7, items 1 and 5).

1. A job's close reaches Salesforce but its answer is lost, and the close's retries and the state
   reads after it get 503s. The job may be processing: it is never aborted; the try fails, and the
   retry reads the job's state, keeps it and sends the chunks that were never sent.
2. A job is aborted while Salesforce processes it (a triggerer that lost its lease, a user): the
   stored plan says every chunk was submitted, which used to make every later try reattach to the
   Aborted job and fail again. The retry sends only the job's unprocessed records to a new job.

``insert`` throughout: an insert duplicates a record sent twice, an upsert would hide it. Every
test checks the org record by record against the input and the summary against the org.
"""

from __future__ import annotations

import collections
import json
import re
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from airflow_provider_salesforce_bulk.client import (
    BulkIngestClient,
    ClientCredentialsAuth,
    SalesforceSession,
)
from airflow_provider_salesforce_bulk.emulator.server import RunningEmulator
from tests.airflow.helpers import conn_uri_json, load_dag_file, wrap_pool_transport

PER_JOB = 250
N = 4 * PER_JOB
_JOB_PATH = re.compile(r"/jobs/ingest/(750[A-Za-z0-9]+)")


def _records() -> list[dict[str, Any]]:
    return [{"LastName": f"Once {i}", "External_Id__c": f"EO-{i}"} for i in range(N)]


@pytest.fixture
def sf(emulator: RunningEmulator, monkeypatch: pytest.MonkeyPatch, airflow_db: object) -> RunningEmulator:
    monkeypatch.setenv("AIRFLOW_CONN_SF_ONCE", conn_uri_json(emulator))
    return emulator


def _dag(
    dag_id: str, tmp_path: Path, *, retries: int, operator: str = "SalesforceBulkOperator", prelude: str = ""
) -> Any:
    records = tmp_path / "records.json"
    records.write_text(json.dumps(_records()))
    return load_dag_file(
        dag_id,
        f"""
        import datetime, json
        from airflow.sdk import DAG
        from airflow_provider_salesforce_bulk.operators.salesforce_bulk import SalesforceBulkOperator
{textwrap.indent(prelude, " " * 8)}
        with DAG({dag_id!r}, schedule=None, start_date=datetime.datetime(2024, 1, 1)) as dag:
            {operator}(
                task_id="load", operation="insert", object_name="Contact", conn_id="sf_once",
                deferrable=True, poll_interval=0.2, max_records_per_job={PER_JOB},
                results_path={str(tmp_path / "results")!r}, records=json.load(open({str(records)!r})),
                retries={retries}, retry_delay=datetime.timedelta(0),
            )
        """,
    )


def _xcom(dag_id: str) -> Any:
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


def _assert_org_holds_the_input_once(sf: RunningEmulator) -> None:
    stored = [r["External_Id__c"] for r in sf.records("Contact")]
    assert [ext for ext, n in collections.Counter(stored).items() if n > 1] == []
    assert sorted(stored) == sorted(f"EO-{i}" for i in range(N))


def _assert_summary_is_the_org(summary: dict[str, Any], sf: RunningEmulator) -> None:
    assert summary["totals"]["records"] == N
    assert summary["totals"]["succeeded"] == len(sf.records("Contact")) == N
    assert summary["totals"]["failed"] == summary["totals"]["unprocessed"] == 0
    assert "unaccounted" not in summary
    jobs = {job["id"]: job for job in sf.emulator.store.list_jobs(0, 10_000)}
    # Every job of every try is in the summary, with the counts Salesforce holds.
    assert set(summary["jobs"]) == set(jobs)
    for job_id, entry in summary["jobs"].items():
        assert entry["state"] == jobs[job_id]["state"]
        if entry["outcome"] != "replaced":
            assert entry["processed"] == jobs[job_id]["processed"]


class LoseCloseAnswer(httpx.AsyncBaseTransport):
    """The second close reaches Salesforce, its answer is lost, then the job's requests get 503s.

    The 503s last until a request for another job arrives, which is the next try's reconcile.
    """

    failing: str | None = None
    lost: str | None = None
    closes = 0
    refused = 0

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        match = _JOB_PATH.search(request.url.path)
        job = match[1] if match else None
        cls = type(self)
        if cls.failing is not None and job is not None:
            if job == cls.failing:
                cls.refused += 1
                body = [{"errorCode": "SERVER_UNAVAILABLE", "message": "Server is temporarily unavailable"}]
                return httpx.Response(503, headers={"Retry-After": "0"}, json=body, request=request)
            cls.failing = None
        if request.method == "PATCH" and job and b"UploadComplete" in request.content:
            cls.closes += 1
            if cls.closes == 2:
                response = await self.inner.handle_async_request(request)
                await response.aread()
                await response.aclose()
                cls.failing = cls.lost = job
                raise httpx.ReadError("connection lost before the answer", request=request)
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


def test_lost_close_answer_then_503s_never_aborts_and_the_retry_loads_every_record_once(
    sf: RunningEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(LoseCloseAnswer, "failing", None)
    monkeypatch.setattr(LoseCloseAnswer, "closes", 0)
    wrap_pool_transport(monkeypatch, LoseCloseAnswer)
    dr = _dag("once_lost_close", tmp_path, retries=2).test()
    assert dr.state == "success"
    # Try 1 failed on the unknown close; try 2 read the job's state and finished the load.
    assert dr.get_task_instance("load").try_number == 2
    lost = LoseCloseAnswer.lost
    assert lost is not None
    assert LoseCloseAnswer.refused >= 5  # the close's retries and the state reads all got 503s
    jobs = {job["id"]: job for job in sf.emulator.store.list_jobs(0, 10_000)}
    # One job per chunk: the job whose close answer was lost was kept, never aborted nor resent.
    assert len(jobs) == 4
    assert jobs[lost]["state"] == "JobComplete"
    assert jobs[lost]["processed"] == PER_JOB
    assert all(job["state"] == "JobComplete" for job in jobs.values())
    _assert_org_holds_the_input_once(sf)
    summary = _xcom("once_lost_close")
    _assert_summary_is_the_org(summary, sf)
    assert summary["totals"]["jobs"] == 4


# On the first try only, once the task is deferred, the second job is aborted while Salesforce is
# processing it, as a triggerer that lost its lease used to do. The trigger then sees it Aborted.
_ABORTS_SECOND_JOB = """
import asyncio
from airflow.providers.common.compat.sdk import TaskDeferred
from airflow_provider_salesforce_bulk.hooks.salesforce_bulk import SalesforceBulkHook, run_sync

class AbortedMidway(SalesforceBulkOperator):
    aborted = []

    def execute(self, context):
        try:
            return super().execute(context)
        except TaskDeferred as deferral:
            if context["ti"].try_number == 1:
                run_sync(lambda: self._abort_midway(deferral.trigger.job_ids[1]))
            raise

    async def _abort_midway(self, job_id):
        async with SalesforceBulkHook(self.conn_id).client() as client:
            for _ in range(600):
                job = await client.get_job(job_id)
                if job.number_records_processed > 0:
                    break
                await asyncio.sleep(0.05)
            await client.abort_job(job_id)
            AbortedMidway.aborted.append(job_id)
"""


def test_retry_after_an_abort_mid_processing_sends_only_the_unprocessed_records(
    sf: RunningEmulator, tmp_path: Path
) -> None:
    # Slow enough that the second job is still being processed once the fourth is closed and the
    # task defers, even on a busy machine: at 250 records a second it had ended before the abort
    # landed there (Aborted with all 250 processed: nothing to resend, so the task failed).
    sf.update_settings(records_per_second=50.0)
    dag = _dag("once_aborted", tmp_path, retries=1, operator="AbortedMidway", prelude=_ABORTS_SECOND_JOB)
    operator_class: Any = type(dag.get_task("load"))
    dr = dag.test()
    assert dr.state == "success"
    assert dr.get_task_instance("load").try_number == 2
    (aborted,) = operator_class.aborted
    jobs = {job["id"]: job for job in sf.emulator.store.list_jobs(0, 10_000)}
    processed = jobs[aborted]["processed"]
    assert jobs[aborted]["state"] == "Aborted"
    assert 0 < processed < PER_JOB
    # One new job, given exactly the records the aborted job did not process.
    assert len(jobs) == 5
    (resend,) = (
        set(jobs)
        - set(operator_class.aborted)
        - {j for j, job in jobs.items() if job["processed"] == PER_JOB}
    )
    assert jobs[resend]["processed"] == PER_JOB - processed
    _assert_org_holds_the_input_once(sf)
    summary = _xcom("once_aborted")
    _assert_summary_is_the_org(summary, sf)
    assert summary["jobs"][aborted]["outcome"] == "resent"
    assert summary["jobs"][aborted]["next_job"] == resend
    assert summary["jobs"][aborted]["succeeded"] == processed
    assert summary["jobs"][resend]["records"] == PER_JOB - processed
    assert summary["totals"]["jobs"] == 5
    # The aborted job's result files hold what it did process, the new job's the rest.
    rows = summary["jobs"][aborted]["result_rows"]
    assert rows == {"successful": processed, "failed": 0, "unprocessed": PER_JOB - processed}


# -- reconcile when the unprocessed records cannot be read -----------------------------------------


@pytest.fixture
async def client(emulator: RunningEmulator) -> AsyncIterator[BulkIngestClient]:
    creds = emulator.credentials
    auth = ClientCredentialsAuth(creds.client_id, creds.client_secret, emulator.base_url)

    def handler_factory() -> httpx.AsyncBaseTransport:
        inner = httpx.AsyncHTTPTransport()

        class NoUnprocessed(httpx.AsyncBaseTransport):
            async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
                if request.url.path.endswith("/unprocessedrecords"):
                    body = [{"errorCode": "NOT_FOUND", "message": "The requested resource does not exist"}]
                    return httpx.Response(404, json=body, request=request)
                return await inner.handle_async_request(request)

        return NoUnprocessed()

    async with SalesforceSession(auth, transport=handler_factory()) as session:
        yield BulkIngestClient(session)


async def test_aborted_job_whose_unprocessed_records_cannot_be_read_fails_naming_it(
    emulator: RunningEmulator, client: BulkIngestClient
) -> None:
    from airflow.providers.common.compat.sdk import AirflowFailException

    from airflow_provider_salesforce_bulk.client import JobSpec
    from airflow_provider_salesforce_bulk.operators.submit import JobPlan, reconcile

    emulator.update_settings(records_per_second=200.0)
    csv_data = b"LastName\n" + b"".join(b"U%d\n" % i for i in range(100))
    job = await client.create_job("insert", "Contact")
    await client.upload_job_data(job.id, csv_data)
    for _ in range(400):
        if (await client.get_job(job.id)).number_records_processed > 0:
            break
    await client.abort_job(job.id)
    plan = JobPlan(None, {"chunks": {"0": {"job": job.id, "count": 100, "closed": True}}, "complete": True})
    with pytest.raises(AirflowFailException, match=job.id):
        await reconcile(client, plan, JobSpec(operation="insert", object="Contact"))
    # Nothing was sent again.
    assert len(emulator.emulator.store.list_jobs(0, 100)) == 1


async def test_lost_upload_answer_sends_the_chunk_to_a_new_job_and_records_both(
    emulator: RunningEmulator,
) -> None:
    from airflow_provider_salesforce_bulk.client import ChunkLimits, JobSpec
    from airflow_provider_salesforce_bulk.client.serialize import iter_record_chunks
    from airflow_provider_salesforce_bulk.operators.submit import JobPlan, submit_chunks

    # The first upload reaches Salesforce, its answer is lost: that job is never closed (so never
    # processed), aborted, and recorded as replaced; the chunk goes to a second job.
    lost: list[str] = []
    inner = httpx.AsyncHTTPTransport()

    class LoseFirstUploadAnswer(httpx.AsyncBaseTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            response = await inner.handle_async_request(request)
            if request.method == "PUT" and not lost:
                await response.aread()
                await response.aclose()
                lost.append(request.url.path.split("/")[-2])
                raise httpx.ReadError("connection lost before the answer", request=request)
            return response

    creds = emulator.credentials
    auth = ClientCredentialsAuth(creds.client_id, creds.client_secret, emulator.base_url)
    records = _records()[:PER_JOB]
    async with SalesforceSession(auth, transport=LoseFirstUploadAnswer()) as session:
        client = BulkIngestClient(session)
        plan = JobPlan(None)
        chunks = iter_record_chunks(records, ["LastName", "External_Id__c"], ChunkLimits(max_records=PER_JOB))
        await submit_chunks(client, plan, chunks, JobSpec(operation="insert", object="Contact"))
        (new_job,) = plan.job_ids
        await client.wait_for_job(new_job, timeout=30)
    (first,) = lost
    (entry_lost, entry_new) = plan.chunks[0]["jobs"]
    assert entry_lost["job"] == first
    assert entry_lost["outcome"] == "replaced"
    assert entry_lost["next"] == new_job
    assert entry_new["job"] == new_job
    jobs = {job["id"]: job for job in emulator.emulator.store.list_jobs(0, 10)}
    assert jobs[first]["state"] == "Aborted"
    assert jobs[first]["processed"] == 0
    assert jobs[new_job]["processed"] == PER_JOB
    stored = sorted(r["External_Id__c"] for r in emulator.records("Contact"))
    assert stored == sorted(f"EO-{i}" for i in range(PER_JOB))


async def test_a_job_failed_on_its_data_is_not_sent_again(emulator: RunningEmulator) -> None:
    from airflow_provider_salesforce_bulk.client import JobSpec
    from airflow_provider_salesforce_bulk.operators.submit import JobPlan, reconcile

    creds = emulator.credentials
    auth = ClientCredentialsAuth(creds.client_id, creds.client_secret, emulator.base_url)
    async with SalesforceSession(auth) as session:
        client = BulkIngestClient(session)
        job = await client.create_job("insert", "Contact")
        await client.upload_job_data(job.id, b"LastName,No_Such_Field__c\nA,1\nB,2\n")
        failed = await client.wait_for_job(job.id, timeout=30)
        assert failed.state == "Failed"
        assert (failed.error_message or "").startswith("InvalidBatch")
        plan = JobPlan(None, {"chunks": {"0": {"job": job.id, "count": 2, "closed": True}}, "complete": True})
        latest = await reconcile(client, plan, JobSpec(operation="insert", object="Contact"))
    assert list(latest) == [job.id]
    assert plan.job_ids == [job.id]
    assert len(emulator.emulator.store.list_jobs(0, 10)) == 1
