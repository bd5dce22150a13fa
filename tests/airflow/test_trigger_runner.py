"""The trigger run by Airflow's own TriggerRunner.run_trigger and cancelled as the triggerer cancels it.

In Airflow 3.3 a user action on a deferred task (mark failed / success, clear) reaches the trigger as
``task.cancel(_USER_ACTION_CANCEL_MSG)`` from ``TriggerRunner.cancel_triggers``; ``run_trigger`` then
awaits ``trigger.on_kill()`` and, always, ``trigger.cleanup()``. A triggerer shutting down cancels the
task without that message: only ``cleanup()`` runs, and the jobs must keep running for the next
triggerer to resume polling.

A user-action cancel is not always a user's decision: Airflow 3.3.2 also sends it to a triggerer
that lost its triggers to another one (HA), which still polls them. ``on_kill`` therefore asks
Airflow for the task instance's state (through the task SDK's supervisor channel, here a stand-in
answering as the triggerer's supervisor would) and aborts only if the task is no longer deferred.

Before 3.3 (3.1, 3.2) ``run_trigger`` never calls ``on_kill`` and cancels a trigger without a message
both for a user's action and a shutdown. The trigger's ``run`` then calls ``on_kill`` itself when
cancelled, so the same state check decides: a user's action aborts, a shutdown (task still deferred)
does not. The same tests run on every version (``make test-airflow AIRFLOW=...``) and expect each
version's path.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
from typing import Any

import pytest

from airflow_provider_salesforce_bulk.client import BulkIngestClient, ClientCredentialsAuth, SalesforceSession
from airflow_provider_salesforce_bulk.emulator.server import RunningEmulator
from airflow_provider_salesforce_bulk.version_compat import AIRFLOW_V_3_3_PLUS
from tests.airflow.helpers import TI, SupervisorComms, conn_uri_json

CSV = b"LastName,External_Id__c\n" + b"".join(b"Runner%d,TR%d\n" % (i, i) for i in range(50))
TRIGGER_ID = 7


@pytest.fixture
def conn(emulator: RunningEmulator, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("AIRFLOW_CONN_SF_RUNNER", conn_uri_json(emulator))
    return "sf_runner"


async def _client_call(
    emulator: RunningEmulator, count: int = 0, states: list[str] | None = None
) -> list[str]:
    creds = emulator.credentials
    auth = ClientCredentialsAuth(creds.client_id, creds.client_secret, emulator.base_url)
    async with SalesforceSession(auth) as session:
        client = BulkIngestClient(session)
        if states is not None:
            return [(await client.get_job(job_id)).state for job_id in states]
        ids = []
        for _ in range(count):
            job = await client.create_job("upsert", "Contact", "External_Id__c")
            await client.upload_job_data(job.id, CSV)
            ids.append(job.id)
        return ids


async def _run_then_cancel(conn: str, job_ids: list[str], *, user_action: bool, ti: Any = TI) -> list[str]:
    """Start the trigger as the triggerer does, let it poll, cancel it; return what was logged."""
    from airflow.jobs.triggerer_job_runner import TriggerRunner

    from airflow_provider_salesforce_bulk.triggers.salesforce_bulk import SalesforceBulkJobTrigger

    runner = TriggerRunner()
    # Inflated from its serialized form, as TriggerRunner.create_triggers does.
    classpath, kwargs = SalesforceBulkJobTrigger(
        conn, job_ids, deadline=time.time() + 60, poll_interval=0.2
    ).serialize()
    trigger = runner.get_trigger_by_classpath(classpath)(**kwargs)
    trigger.task_instance = ti  # as create_triggers sets it
    calls: list[str] = []
    on_kill, cleanup = trigger.on_kill, trigger.cleanup

    async def counting_on_kill() -> None:
        calls.append("on_kill")
        await on_kill()

    async def counting_cleanup() -> None:
        calls.append("cleanup")
        await cleanup()

    trigger.on_kill = counting_on_kill  # type: ignore[method-assign]
    trigger.cleanup = counting_cleanup  # type: ignore[method-assign]
    # The deferral's timeout is in the future: a cancellation past it would skip on_kill.
    timeout_after = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(minutes=5)
    task = asyncio.create_task(runner.run_trigger(TRIGGER_ID, trigger, timeout_after), name="sf")
    runner.triggers[TRIGGER_ID] = {"task": task, "is_watcher": False, "name": "sf", "events": 0}
    await asyncio.sleep(0.6)  # polling by now
    assert not task.done()
    if user_action:
        runner.to_cancel.append(TRIGGER_ID)  # what the supervisor sends for a user-killed task
        await runner.cancel_triggers()
    else:
        task.cancel()  # shutdown: no message
    with pytest.raises(asyncio.CancelledError):
        await task
    assert runner.triggers[TRIGGER_ID]["events"] == 0
    return calls


@pytest.mark.parametrize("state", ["failed", "success"])
async def test_user_kill_through_the_trigger_runner_aborts_the_jobs(
    emulator: RunningEmulator, conn: str, comms: SupervisorComms, state: str | None
) -> None:
    # Marked failed or success.
    comms.state = state
    emulator.update_settings(records_per_second=1.0)
    ids = await _client_call(emulator, count=2)
    calls = await _run_then_cancel(conn, ids, user_action=True)
    assert calls == ["on_kill", "cleanup"]
    assert await _client_call(emulator, states=ids) == ["Aborted", "Aborted"]
    (asked,) = comms.asked
    assert (asked.dag_id, asked.task_ids, asked.run_ids) == (TI.dag_id, [TI.task_id], [TI.run_id])


@pytest.mark.parametrize("state", ["deferred", "running", None, "scheduled", "queued", "up_for_retry"])
async def test_cancel_of_a_task_that_goes_on_aborts_nothing(
    emulator: RunningEmulator, conn: str, comms: SupervisorComms, state: str, caplog: pytest.LogCaptureFixture
) -> None:
    # The HA case: Airflow cancels the trigger "by user action" on a triggerer that lost it, while
    # the task is still deferred and another triggerer polls the same jobs. A cleared task (no
    # state, or scheduled again) and a try failed by Airflow (up for retry) go on in a newer try,
    # which reattaches to the same jobs.
    comms.state = state
    emulator.update_settings(records_per_second=1.0)
    ids = await _client_call(emulator, count=2)
    with caplog.at_level(logging.WARNING):
        calls = await _run_then_cancel(conn, ids, user_action=True)
    assert calls == ["on_kill", "cleanup"]
    assert len(comms.asked) == 1
    assert set(await _client_call(emulator, states=ids)) <= {"UploadComplete", "InProgress"}
    assert f"still {state or 'cleared'}" in caplog.text


@pytest.mark.parametrize("case", ["broken_channel", "no_task_instance"])
async def test_kill_whose_task_state_cannot_be_read_aborts_nothing(
    emulator: RunningEmulator, conn: str, comms: SupervisorComms, case: str, caplog: pytest.LogCaptureFixture
) -> None:
    comms.broken = case == "broken_channel"
    emulator.update_settings(records_per_second=1.0)
    ids = await _client_call(emulator, count=2)
    with caplog.at_level(logging.WARNING):
        calls = await _run_then_cancel(conn, ids, user_action=True, ti=TI if comms.broken else None)
    if AIRFLOW_V_3_3_PLUS or comms.broken:
        assert calls == ["on_kill", "cleanup"]
        assert "aborting nothing" in caplog.text
    else:
        # Before 3.3 a trigger without a task instance (dag.test) does not even ask.
        assert calls == ["cleanup"]
        assert comms.asked == []
    assert set(await _client_call(emulator, states=ids)) <= {"UploadComplete", "InProgress"}


async def test_triggerer_shutdown_leaves_the_jobs_running(
    emulator: RunningEmulator, conn: str, comms: SupervisorComms
) -> None:
    # A shutdown leaves the task deferred, for the next triggerer to resume.
    comms.state = "deferred"
    emulator.update_settings(records_per_second=1.0)
    ids = await _client_call(emulator, count=2)
    calls = await _run_then_cancel(conn, ids, user_action=False)
    if AIRFLOW_V_3_3_PLUS:
        # Told apart by the cancel's message: only cleanup runs.
        assert calls == ["cleanup"]
        assert comms.asked == []
    else:
        # No message to tell it by: the trigger asks Airflow, which says the task is still deferred.
        assert calls == ["on_kill", "cleanup"]
        assert len(comms.asked) == 1
    assert set(await _client_call(emulator, states=ids)) <= {"UploadComplete", "InProgress"}
