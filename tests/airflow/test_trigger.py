"""SalesforceBulkJobTrigger against the emulator: round trip, completion, deadline, on_kill, errors."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from typing import Any

import httpx
import pytest

from airflow_provider_salesforce_bulk.client import BulkIngestClient, ClientCredentialsAuth, SalesforceSession
from airflow_provider_salesforce_bulk.emulator.server import RunningEmulator
from airflow_provider_salesforce_bulk.triggers.salesforce_bulk import SalesforceBulkJobTrigger
from airflow_provider_salesforce_bulk.version_compat import AIRFLOW_V_3_3_PLUS
from tests.airflow.helpers import TI, SupervisorComms, conn_uri_json, wrap_pool_transport

CSV = b"LastName,External_Id__c\n" + b"".join(b"Name%d,T%d\n" % (i, i) for i in range(50))


@pytest.fixture
def conn(emulator: RunningEmulator, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("AIRFLOW_CONN_SF_TRIGGER", conn_uri_json(emulator))
    return "sf_trigger"


async def _submit(emulator: RunningEmulator, count: int = 1, close: bool = True) -> list[str]:
    creds = emulator.credentials
    auth = ClientCredentialsAuth(creds.client_id, creds.client_secret, emulator.base_url)
    async with SalesforceSession(auth) as session:
        client = BulkIngestClient(session)
        ids = []
        for _ in range(count):
            job = await client.create_job("upsert", "Contact", "External_Id__c")
            await client.upload_job_data(job.id, CSV, close=close)
            ids.append(job.id)
        return ids


async def _state(emulator: RunningEmulator, job_id: str) -> str | None:
    creds = emulator.credentials
    auth = ClientCredentialsAuth(creds.client_id, creds.client_secret, emulator.base_url)
    async with SalesforceSession(auth) as session:
        return (await BulkIngestClient(session).get_job(job_id)).state


def test_serialize_round_trip_holds_no_secret(emulator: RunningEmulator) -> None:
    trigger = SalesforceBulkJobTrigger("sf_trigger", ["750A", "750B"], deadline=123.5, poll_interval=2)
    classpath, kwargs = trigger.serialize()
    assert classpath == "airflow_provider_salesforce_bulk.triggers.salesforce_bulk.SalesforceBulkJobTrigger"
    assert kwargs == {
        "conn_id": "sf_trigger",
        "job_ids": ["750A", "750B"],
        "deadline": 123.5,
        "poll_interval": 2.0,
        "job_kind": "ingest",
    }
    import json

    text = json.dumps(kwargs)  # JSON-able
    assert emulator.credentials.client_secret not in text
    again = SalesforceBulkJobTrigger(**kwargs)
    assert again.serialize() == (classpath, kwargs)


async def test_settings_given_to_the_trigger_are_used_and_never_serialized(
    emulator: RunningEmulator, conn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow.providers.common.compat.sdk import AirflowNotFoundException

    from airflow_provider_salesforce_bulk.hooks.salesforce_bulk import SalesforceBulkHook
    from airflow_provider_salesforce_bulk.triggers.events import validate_event

    settings = SalesforceBulkHook(salesforce_bulk_conn_id=conn).get_settings()
    # The connection is gone: only the settings given to the constructor can reach the org.
    monkeypatch.delenv("AIRFLOW_CONN_SF_TRIGGER")
    (job_id,) = await _submit(emulator)
    trigger = SalesforceBulkJobTrigger(
        conn, [job_id], deadline=time.time() + 60, poll_interval=0.2, settings=settings
    )
    _, kwargs = trigger.serialize()
    assert "settings" not in kwargs
    text = json.dumps(kwargs) + repr(trigger)
    for secret in settings.secrets():
        assert secret not in text
    event = (await trigger.run().__anext__()).payload
    assert validate_event(event)["jobs"][job_id]["numberRecordsProcessed"] == 50

    resumed = SalesforceBulkJobTrigger(**kwargs)  # the triggerer's copy reads the connection itself
    with pytest.raises(AirflowNotFoundException, match=conn):
        await resumed.run().__anext__()


async def test_polls_every_job_to_completion(emulator: RunningEmulator, conn: str) -> None:
    emulator.update_settings(records_per_second=100.0)
    ids = await _submit(emulator, count=3)
    trigger = SalesforceBulkJobTrigger(conn, ids, deadline=time.time() + 60, poll_interval=0.2)
    events = [e async for e in trigger.run()]
    assert len(events) == 1
    payload = events[0].payload
    assert payload["status"] == "success"
    assert list(payload["jobs"]) == ids
    for job in payload["jobs"].values():
        assert job["state"] == "JobComplete"
        assert job["numberRecordsProcessed"] == 50


async def test_deadline_aborts_unfinished_jobs_and_reports_their_real_counts(
    emulator: RunningEmulator, conn: str
) -> None:
    emulator.update_settings(records_per_second=20.0)
    (job_id,) = await _submit(emulator)
    trigger = SalesforceBulkJobTrigger(conn, [job_id], deadline=time.time() + 1.0, poll_interval=0.2)
    started = time.monotonic()
    payload = (await trigger.run().__anext__()).payload
    assert time.monotonic() - started < 8
    assert payload["status"] == "timeout"
    assert payload["jobs"][job_id]["state"] == "Aborted"
    assert await _state(emulator, job_id) == "Aborted"
    # The counts are read again after the abort (its answer has none): they are what the org holds.
    (stored,) = emulator.emulator.store.list_jobs(0, 10)
    assert stored["processed"] > 0
    assert payload["jobs"][job_id]["numberRecordsProcessed"] == stored["processed"]
    assert len(emulator.records("Contact")) == stored["processed"]


async def test_deadline_is_enforced_while_a_poll_hangs(
    emulator: RunningEmulator, conn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every read of the job hangs until a while after the deadline: the poll in flight is
    # cancelled at the deadline, the job aborted, and its counts read once reads answer again.
    emulator.update_settings(records_per_second=10.0)
    (job_id,) = await _submit(emulator)
    deadline = time.time() + 1.5
    held: list[str] = []

    class HangingReads(httpx.AsyncBaseTransport):
        def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
            self.inner = inner

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            if request.method == "GET" and job_id in request.url.path and time.time() < deadline + 1:
                held.append(request.url.path)
                await asyncio.sleep(deadline + 1 - time.time())
            return await self.inner.handle_async_request(request)

        async def aclose(self) -> None:
            await self.inner.aclose()

    wrap_pool_transport(monkeypatch, HangingReads)
    trigger = SalesforceBulkJobTrigger(conn, [job_id], deadline=deadline, poll_interval=0.2)
    payload = (await trigger.run().__anext__()).payload
    assert time.time() - deadline < 6
    assert held  # a poll was in flight when the deadline passed
    assert payload["status"] == "timeout"
    assert await _state(emulator, job_id) == "Aborted"
    (stored,) = emulator.emulator.store.list_jobs(0, 10)
    assert payload["jobs"][job_id]["numberRecordsProcessed"] == stored["processed"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"deadline": math.nan}, "deadline"),
        ({"deadline": math.inf}, "deadline"),
        ({"poll_interval": math.nan}, "poll_interval"),
        ({"poll_interval": math.inf}, "poll_interval"),
        ({"poll_interval": 0}, "poll_interval"),
        ({"poll_interval": -1}, "poll_interval"),
        ({"poll_interval": "abc"}, "poll_interval"),
    ],
)
def test_nan_inf_and_non_positive_settings_are_refused(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SalesforceBulkJobTrigger("c", ["7505e0000000001AAA"], **kwargs)


async def test_many_jobs_log_a_readable_amount(
    emulator: RunningEmulator, conn: str, caplog: pytest.LogCaptureFixture
) -> None:
    # 30 jobs polled many times: one line per job when it finishes and a total now and then,
    # never a line per job per poll.
    emulator.update_settings(records_per_second=400.0)
    ids = await _submit(emulator, count=30)
    trigger = SalesforceBulkJobTrigger(conn, ids, deadline=time.time() + 120, poll_interval=0.2)
    trigger._log = logging.getLogger("sf_test.trigger")  # type: ignore[assignment]  # stdlib, for caplog
    with caplog.at_level(logging.INFO):
        payload = (await trigger.run().__anext__()).payload
    assert payload["status"] == "success"
    lines = [r.getMessage() for r in caplog.records if r.name == "sf_test.trigger"]
    finished = [line for line in lines if "JobComplete: 50 processed" in line]
    assert len(finished) == 30
    totals = [line for line in lines if "jobs finished" in line]
    assert 1 <= len(totals) <= 31
    assert totals[-1] == "30 of 30 jobs finished: 1500 records processed, 0 failed so far"
    assert len(lines) <= 30 + 31


async def test_on_kill_aborts_idempotently_and_cleanup_does_not(
    emulator: RunningEmulator, conn: str, comms: SupervisorComms
) -> None:
    emulator.update_settings(records_per_second=1.0)
    ids = await _submit(emulator, count=2)
    trigger = SalesforceBulkJobTrigger(conn, ids, deadline=time.time() + 60, poll_interval=0.2)
    trigger.task_instance = TI  # type: ignore[assignment]  # marked failed (the comms fixture)
    task = asyncio.create_task(trigger.run().__anext__())
    await asyncio.sleep(0.5)
    task.cancel()
    # The cancel is handled before anything is checked: before 3.3 the triggerer has no on_kill, so
    # run() asks Airflow on any cancel and aborts for a try a user ended (the TI here is marked
    # failed); a loaded machine finished that abort before the check, a quiet one after it.
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await trigger.cleanup()
    after_cancel = {await _state(emulator, j) for j in ids}
    if AIRFLOW_V_3_3_PLUS:
        assert after_cancel <= {"UploadComplete", "InProgress"}, "a cancel or cleanup aborted jobs"
    else:
        assert after_cancel == {"Aborted"}, "before 3.3 a cancel of a try a user ended aborts its jobs"
    await trigger.on_kill()
    await trigger.on_kill()  # a second kill on finished jobs must not fail
    assert [await _state(emulator, j) for j in ids] == ["Aborted", "Aborted"]


async def test_unknown_job_is_an_error_event(emulator: RunningEmulator, conn: str) -> None:
    trigger = SalesforceBulkJobTrigger(conn, ["7505e0000009999AAA"], poll_interval=0.2)
    payload = (await trigger.run().__anext__()).payload
    assert payload["status"] == "error"
    assert "NotFound" in payload["message"]


async def test_refused_login_is_an_error_event_without_the_secret(
    emulator: RunningEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_SF_BAD", conn_uri_json(emulator, client_secret="WRONG-SECRET-VALUE"))
    trigger = SalesforceBulkJobTrigger("sf_bad", ["7505e0000000001AAA"], poll_interval=0.2)
    payload = (await trigger.run().__anext__()).payload
    assert payload["status"] == "error"
    assert "Authentication" in payload["message"]
    assert "WRONG-SECRET-VALUE" not in str(payload)
