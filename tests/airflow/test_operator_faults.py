"""The operator under kills, lost streams, bad events and bad settings, against the emulator."""

from __future__ import annotations

import asyncio
import math
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest

from airflow_provider_salesforce_bulk.client import BulkIngestClient, ClientCredentialsAuth, SalesforceSession
from airflow_provider_salesforce_bulk.emulator.server import RunningEmulator
from tests.airflow import helpers
from tests.airflow.helpers import TI, SupervisorComms, conn_uri_json

CSV = b"LastName,External_Id__c\n" + b"".join(b"Fault%d,F%d\n" % (i, i) for i in range(40))


class _TI:
    dag_id, run_id, task_id, map_index, try_number = TI.dag_id, TI.run_id, TI.task_id, -1, 1
    pushed: ClassVar[dict[str, Any]] = {}

    def xcom_push(self, key: str, value: Any) -> None:
        self.pushed[key] = value


class DictStore(helpers.DictStore):
    """The in-memory store, holding a plan under the operator's key from the start when given one."""

    def __init__(self, value: Any = None) -> None:
        super().__init__()
        if value is not None:
            self.data["salesforce_bulk"] = value


@pytest.fixture
def conn(emulator: RunningEmulator, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("AIRFLOW_CONN_SF_FAULTS", conn_uri_json(emulator))
    return "sf_faults"


def _operator(tmp_path: Path, **kwargs: Any) -> Any:
    from airflow_provider_salesforce_bulk.operators.salesforce_bulk import SalesforceBulkOperator

    args: dict[str, Any] = {
        "task_id": "load",
        "operation": "insert",
        "object_name": "Contact",
        "conn_id": "sf_faults",
        "poll_interval": 0.2,
        "results_path": str(tmp_path / "results"),
        "records": [{"LastName": f"Op {i}", "External_Id__c": f"OP-{i}"} for i in range(60)],
        "max_records_per_job": 20,
    }
    args.update(kwargs)
    return SalesforceBulkOperator(**args)


@pytest.fixture
async def client(emulator: RunningEmulator) -> AsyncIterator[BulkIngestClient]:
    creds = emulator.credentials
    auth = ClientCredentialsAuth(creds.client_id, creds.client_secret, emulator.base_url)
    async with SalesforceSession(auth) as session:
        yield BulkIngestClient(session)


def _jobs(emulator: RunningEmulator) -> list[dict[str, Any]]:
    return emulator.emulator.store.list_jobs(0, 1000)


# -- on_kill in the worker (deferrable=False) ------------------------------------------------------


@pytest.fixture
def sigterm_calls_on_kill() -> Iterator[list[Any]]:
    """SIGTERM runs ``operator.on_kill()`` in the main thread, as Airflow's task runner does."""
    holder: list[Any] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: holder[0].on_kill())
    try:
        yield holder
    finally:
        signal.signal(signal.SIGTERM, previous)


class _SigtermAtSecondJob(httpx.AsyncBaseTransport):
    """SIGTERMs this process as the second job is created, while the first one is processing."""

    creates = 0

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST" and request.url.path.endswith("/jobs/ingest"):
            type(self).creates += 1
            if type(self).creates == 2:
                os.kill(os.getpid(), signal.SIGTERM)  # handled in this (the main) thread: on_kill
        return await self.inner.handle_async_request(request)


@pytest.mark.parametrize("state", ["failed", "running"])
def test_on_kill_in_the_worker_stops_the_try_and_aborts_only_when_a_user_ended_it(
    emulator: RunningEmulator,
    conn: str,
    tmp_path: Path,
    comms: SupervisorComms,
    sigterm_calls_on_kill: list[Any],
    state: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from airflow_provider_salesforce_bulk.operators.try_stop import TryStopped

    # "failed": the user marked the task failed, the supervisor terminates the process. "running":
    # the worker is shutting down (pod eviction): the jobs must go on for the retry to reattach.
    # Either way the try stops sending at the next chunk (Airflow lets it run on until its SIGKILL).
    comms.state = state
    emulator.update_settings(records_per_second=10.0)
    op = _operator(tmp_path, deferrable=False)
    sigterm_calls_on_kill.append(op)
    helpers.wrap_pool_transport(monkeypatch, _SigtermAtSecondJob)
    _SigtermAtSecondJob.creates = 0
    store = DictStore()
    with pytest.raises(TryStopped, match="stopped before chunk 3"):
        op.execute({"ti": _TI(), "task_state_store": store})
    _SigtermAtSecondJob.creates = 10  # no more signals
    op._kill_thread.join(30)  # on_kill returns at once; its thread asks and aborts
    assert len(comms.asked) == 1
    created = _jobs(emulator)
    assert len(created) == 2, "the try sent no chunk after the SIGTERM"
    if state == "failed":
        assert {job["state"] for job in created} <= {"Aborted", "JobComplete"}
        assert "Aborted" in {job["state"] for job in created}
        return
    assert not any(job["state"] == "Aborted" for job in created)
    # The retry reattaches to the jobs the stopped try left running and sends the rest, once.
    emulator.update_settings(records_per_second=0.0)
    retry = _TI()
    retry.try_number = 2
    summary = _operator(tmp_path, deferrable=False).execute({"ti": retry, "task_state_store": store})
    assert summary["totals"]["succeeded"] == 60
    assert len(emulator.records("Contact")) == 60


# -- reattached, every job already ended: no deferral ------------------------------------------------


async def _finished_jobs(client: BulkIngestClient, count: int) -> list[str]:
    ids = []
    for n in range(count):
        job = await client.create_job("insert", "Contact")
        await client.upload_job_data(job.id, CSV.replace(b",F", b",F%d-" % n))
        ids.append(job.id)
    for job_id in ids:
        await client.wait_for_job(job_id, timeout=30)
    return ids


async def test_reattached_task_whose_jobs_all_ended_finishes_without_deferring(
    emulator: RunningEmulator, conn: str, tmp_path: Path, client: BulkIngestClient
) -> None:
    ids = await _finished_jobs(client, 2)
    plan = {
        "version": 2,
        "chunks": {
            str(i * 40): {
                "count": 40,
                "jobs": [{"job": job_id, "count": 40, "phase": "closing", "source": "chunk"}],
            }
            for i, job_id in enumerate(ids)
        },
        "complete": True,
        "instance_url": emulator.base_url,
    }
    store = DictStore(plan)
    records = [{"LastName": f"Fault{i}", "External_Id__c": f"F{i}"} for i in range(40)] * 2
    op = _operator(tmp_path, deferrable=True, records=records, max_records_per_job=40)
    ti = _TI()
    # No TaskDeferred: the summary comes straight back (in a thread: execute runs its own loop).
    summary = await asyncio.to_thread(op.execute, {"ti": ti, "task_state_store": store})
    assert summary["totals"] == {
        "records": 80,
        "processed": 80,
        "succeeded": 80,
        "failed": 0,
        "unprocessed": 0,
        "jobs": 2,
    }
    assert list(summary["jobs"]) == ids
    # Kept, marked done by this try with its summary (not deleted: see the next test).
    assert store.data["salesforce_bulk"]["done"] == {"try_number": 1, "summary": summary}
    assert len(_jobs(emulator)) == 2


@pytest.mark.parametrize("reload_on_clear", [False, True])
async def test_a_later_try_after_a_done_try_loads_nothing_unless_told_to_reload(
    emulator: RunningEmulator, conn: str, tmp_path: Path, reload_on_clear: bool
) -> None:
    # Try 1 succeeds; Airflow then fails it anyway (a late stale report) or a user clears it: try 2
    # cannot tell which, so it loads nothing again and returns try 1's summary, unless the operator
    # says a clear reloads.
    store = DictStore()
    records = [{"LastName": f"Done{i}", "External_Id__c": f"D{i}"} for i in range(30)]
    upsert = {"operation": "upsert", "external_id_field": "External_Id__c", "max_records_per_job": 10}
    first = _operator(tmp_path, records=records, **upsert)
    summary = await asyncio.to_thread(first.execute, {"ti": _TI(), "task_state_store": store})
    assert summary["totals"]["succeeded"] == 30
    assert len(_jobs(emulator)) == 3

    class _Retry(_TI):
        try_number = 2

    again = _operator(tmp_path, records=records, reload_on_clear=reload_on_clear, **upsert)
    second = await asyncio.to_thread(again.execute, {"ti": _Retry(), "task_state_store": store})
    if reload_on_clear:
        assert len(_jobs(emulator)) == 6
        assert set(second["jobs"]).isdisjoint(summary["jobs"])
        assert store.data["salesforce_bulk"]["done"]["try_number"] == 2
        assert second["totals"]["succeeded"] == 30
    else:
        assert len(_jobs(emulator)) == 3
        assert second == summary
        assert len(emulator.records("Contact")) == 30


# -- events -------------------------------------------------------------------------------------------


def test_execute_complete_without_or_with_a_malformed_event_is_a_clear_error(tmp_path: Path) -> None:
    from airflow.providers.common.compat.sdk import AirflowException, AirflowFailException

    op = _operator(tmp_path)
    context = {"ti": _TI(), "task_state_store": DictStore()}
    with pytest.raises(AirflowException, match="no trigger event"):
        op.execute_complete(context)
    with pytest.raises(AirflowException, match="no trigger event"):
        op.execute_complete(context, event="done")
    with pytest.raises(AirflowException, match="malformed trigger event"):
        op.execute_complete(context, event={"status": "finished", "jobs": {}})
    with pytest.raises(AirflowException, match="malformed trigger event"):
        op.execute_complete(context, event={"status": "success", "jobs": []})
    bad_job = {"id": "7505e0000000001AAA", "state": "JobComplete"}
    with pytest.raises(AirflowException, match="malformed trigger event"):
        op.execute_complete(context, event={"status": "success", "jobs": {"7505e0000000002AAA": bad_job}})
    with pytest.raises(AirflowFailException, match="not a Salesforce Bulk API job id"):
        op.execute_complete(context, event={"status": "success", "jobs": {"../../x": {"id": "../../x"}}})
    assert not (tmp_path / "results").exists()


async def test_the_event_alone_is_enough_to_finish(
    emulator: RunningEmulator, conn: str, tmp_path: Path, client: BulkIngestClient
) -> None:
    from airflow_provider_salesforce_bulk.triggers.salesforce_bulk import SalesforceBulkJobTrigger

    # `airflow dags test` drops the kwargs given to defer(): the event carries what is needed.
    ids = await _finished_jobs(client, 2)
    trigger = SalesforceBulkJobTrigger(
        conn,
        ids,
        deadline=time.time() + 60,
        poll_interval=0.2,
        instance_url=emulator.base_url,
        record_counts=dict.fromkeys(ids, 40),
    )
    event = (await trigger.run().__anext__()).payload
    op = _operator(tmp_path)
    summary = await asyncio.to_thread(
        op.execute_complete, {"ti": _TI(), "task_state_store": DictStore()}, event
    )
    assert summary["instance_url"] == emulator.base_url
    assert summary["totals"]["records"] == summary["totals"]["succeeded"] == 80
    assert all(job["records"] == 40 and job["accounted"] for job in summary["jobs"].values())


# -- result downloads -----------------------------------------------------------------------------------


class DropFirstResultStreams(httpx.AsyncBaseTransport):
    """The first ``drops`` downloads of each result file break after a few bytes."""

    def __init__(self, drops: int) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.drops = drops
        self.dropped: dict[str, int] = {}

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        kind = request.url.path.rsplit("/", 1)[-1]
        if kind not in ("successfulResults", "failedResults", "unprocessedrecords"):
            return response
        if self.dropped.get(kind, 0) >= self.drops:
            return response
        self.dropped[kind] = self.dropped.get(kind, 0) + 1
        body = await response.aread()

        class Broken(httpx.AsyncByteStream):
            async def __aiter__(self) -> AsyncIterator[bytes]:
                yield body[:20]
                raise httpx.ReadError("connection reset by peer")

        # The body is already decoded: drop the headers describing the encoded one.
        headers = [
            (k, v) for k, v in response.headers.items() if k not in ("content-encoding", "content-length")
        ]
        return httpx.Response(response.status_code, headers=headers, stream=Broken(), request=request)

    async def aclose(self) -> None:
        await self.inner.aclose()


@pytest.mark.parametrize("drops", [1, 3])
async def test_result_download_starts_again_from_the_first_byte_after_a_dropped_stream(
    emulator: RunningEmulator, client: BulkIngestClient, tmp_path: Path, drops: int
) -> None:
    from airflow.sdk import ObjectStoragePath

    from airflow_provider_salesforce_bulk.operators.result_files import copy_job_results

    emulator.update_settings(records_per_second=None)
    bad = b"LastName,Email\n" + b"".join(
        (b"Bad%d,not-an-email\n" if i % 4 == 0 else b"Good%d,g%d@example.com\n" % (i, i))
        % ((i,) if i % 4 == 0 else ())
        for i in range(40)
    )
    job = await client.create_job("insert", "Contact")
    await client.upload_job_data(job.id, bad)
    await client.wait_for_job(job.id, timeout=30)
    clean = ObjectStoragePath(f"file://{tmp_path / 'clean'}")
    expected = await copy_job_results(client, job.id, clean, "COMMA")

    creds = emulator.credentials
    auth = ClientCredentialsAuth(creds.client_id, creds.client_secret, emulator.base_url)
    faulty = DropFirstResultStreams(drops)
    async with SalesforceSession(auth, transport=faulty) as session:
        target = ObjectStoragePath(f"file://{tmp_path / 'faulty'}")
        got = await copy_job_results(BulkIngestClient(session), job.id, target, "COMMA")
    assert faulty.dropped == dict.fromkeys(
        ("successfulResults", "failedResults", "unprocessedrecords"), drops
    )
    assert got.rows == expected.rows == {"successful": 30, "failed": 10, "unprocessed": 0}
    assert got.by_code == expected.by_code
    for name in ("successfulResults.csv", "failedResults.csv", "unprocessedrecords.csv"):
        assert (tmp_path / "faulty" / job.id / name).read_bytes() == (
            tmp_path / "clean" / job.id / name
        ).read_bytes()


async def test_result_download_gives_up_after_bounded_attempts(
    emulator: RunningEmulator, client: BulkIngestClient, tmp_path: Path
) -> None:
    from airflow.sdk import ObjectStoragePath

    from airflow_provider_salesforce_bulk.client import TransportError
    from airflow_provider_salesforce_bulk.operators.result_files import DOWNLOAD_ATTEMPTS, copy_job_results

    (job_id,) = await _finished_jobs(client, 1)
    creds = emulator.credentials
    auth = ClientCredentialsAuth(creds.client_id, creds.client_secret, emulator.base_url)
    faulty = DropFirstResultStreams(1000)
    async with SalesforceSession(auth, transport=faulty) as session:
        with pytest.raises(TransportError):
            await copy_job_results(BulkIngestClient(session), job_id, ObjectStoragePath(f"file://{tmp_path}"))
    assert faulty.dropped == {"successfulResults": DOWNLOAD_ATTEMPTS}


@pytest.mark.parametrize(
    "job_id", ["../../x", "750/../../etc", "7505e0000000001AA", "7505e0000000001AAA/..", "", 750]
)
def test_only_salesforce_job_ids_become_paths(job_id: Any, tmp_path: Path) -> None:
    from airflow.providers.common.compat.sdk import AirflowFailException
    from airflow.sdk import ObjectStoragePath

    from airflow_provider_salesforce_bulk.operators.result_files import copy_job_results
    from airflow_provider_salesforce_bulk.triggers.events import check_job_id

    with pytest.raises(AirflowFailException, match="not a Salesforce Bulk API job id"):
        check_job_id(job_id)
    with pytest.raises(AirflowFailException):
        asyncio.run(copy_job_results(None, job_id, ObjectStoragePath(f"file://{tmp_path / 'r'}")))  # type: ignore[arg-type]
    assert not (tmp_path / "r").exists()
    assert check_job_id("7505e0000000001") == "7505e0000000001"
    assert check_job_id("7505e0000000001AAA") == "7505e0000000001AAA"


# -- bad settings ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"max_failed_ratio": "abc"}, "max_failed_ratio"),
        ({"max_failed_ratio": math.nan}, "max_failed_ratio"),
        ({"timeout": math.nan}, "timeout"),
        ({"timeout": math.inf}, "timeout"),
        ({"timeout": "soon"}, "timeout"),
        ({"poll_interval": math.nan}, "poll_interval"),
        ({"poll_interval": math.inf}, "poll_interval"),
        ({"poll_interval": -1}, "poll_interval"),
        ({"object_name": "Contactx"}, "'Contactx'"),
    ],
)
def test_bad_settings_fail_without_retry_naming_the_setting(
    emulator: RunningEmulator, conn: str, tmp_path: Path, kwargs: dict[str, Any], expected: str
) -> None:
    from airflow.providers.common.compat.sdk import AirflowFailException

    op = _operator(tmp_path, **kwargs)
    with pytest.raises(AirflowFailException, match=expected):
        op.execute({"ti": _TI(), "task_state_store": DictStore()})
    # A wrong object is only known to Salesforce: its job creation is refused, nothing else sent.
    assert _jobs(emulator) == []


# -- a lost close answer: one rule with the client ---------------------------------------------------


async def test_a_close_whose_outcome_stays_unknown_is_retried_by_airflow_and_never_aborted() -> None:
    # The operator closes with the client's rule (close_uploaded_job): the close fails, the job's
    # state cannot be read, so the job is left as it is and the try fails for a retry to reconcile.
    from airflow.providers.common.compat.sdk import AirflowException, AirflowFailException

    from airflow_provider_salesforce_bulk.client import ServerError
    from airflow_provider_salesforce_bulk.operators.submit import _close

    calls: list[str] = []

    class Unreachable:
        async def close_job(self, job_id: str) -> Any:
            calls.append("close")
            raise ServerError("503 after the session's retries", status_code=503)

        async def get_job(self, job_id: str) -> Any:
            calls.append("get")
            raise ServerError("503 after the session's retries", status_code=503)

        async def abort_job(self, job_id: str) -> Any:  # pragma: no cover - must not happen
            calls.append("abort")

    with pytest.raises(AirflowException, match=r"7505e0000000001AAA.*a retry reads its state") as info:
        await _close(Unreachable(), "7505e0000000001AAA")  # type: ignore[arg-type]
    assert not isinstance(info.value, AirflowFailException)
    assert calls == ["close", "get"]


async def test_a_summary_too_big_for_the_store_still_marks_the_plan_done(
    emulator: RunningEmulator, conn: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A store with a value size limit (a Variable on MySQL holds 64 KB): the plan fits, the summary
    # does not. The plan is marked done without it; a later try reattaches to the finished jobs,
    # sends nothing and counts the results again.
    class SmallStore(DictStore):
        def set(self, key: str, value: Any) -> None:
            done = value.get("done") or {}
            if done.get("summary") is not None:
                raise ValueError("value too long for the column")
            super().set(key, value)

    store = SmallStore()
    upsert = {"operation": "upsert", "external_id_field": "External_Id__c", "max_records_per_job": 10}
    records = [{"LastName": f"Big{i}", "External_Id__c": f"B{i}"} for i in range(30)]
    first = await asyncio.to_thread(
        _operator(tmp_path, records=records, **upsert).execute, {"ti": _TI(), "task_state_store": store}
    )
    assert store.data["salesforce_bulk"]["done"] == {"try_number": 1, "summary": None}
    assert "value too long" in caplog.text

    second = await asyncio.to_thread(
        _operator(tmp_path, records=records, **upsert).execute, {"ti": _TI(), "task_state_store": store}
    )
    assert len(_jobs(emulator)) == 3
    assert second["totals"] == first["totals"]
    assert set(second["jobs"]) == set(first["jobs"])
    assert len(emulator.records("Contact")) == 30
