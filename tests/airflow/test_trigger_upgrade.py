"""Triggers deferred by the release before the trigger only polled still finish after an upgrade.

That release's triggers carried the ingest operator's working state in their kwargs (records per
job, earlier tries' jobs, the resubmission rounds) and echoed it in their events; the rows in the
metadata database keep those kwargs across an upgrade. Each test builds a trigger from kwargs written
down literally as that release's ``serialize()`` wrote them, runs it against the emulator and
finishes the task with a fresh operator, as a worker of the new release would.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from airflow_provider_salesforce_bulk.client import BulkIngestClient
from airflow_provider_salesforce_bulk.emulator.server import RunningEmulator
from tests.airflow import helpers

# The stub task instance and the fixtures of the operator's fault tests: same emulator, same connection.
from tests.airflow.test_operator_faults import _TI, client, conn

__all__ = ["client", "conn"]  # fixtures, used by name

CSV = b"Name,External_Id__c\n" + b"".join(b"Upgrade %d,UP-%d\n" % (i, i) for i in range(40))


def _operator(tmp_path: Path, conn: str) -> Any:
    from airflow_provider_salesforce_bulk.operators.salesforce_bulk import SalesforceBulkOperator

    return SalesforceBulkOperator(
        task_id="load",
        operation="insert",
        object_name="Account",
        records=[{"Name": "unused"}],
        conn_id=conn,
        deferrable=False,
        poll_interval=0.2,
        resubmit_backoff=0.1,
        results_path=str(tmp_path / "results"),
    )


async def _ended_job(client: BulkIngestClient, data: bytes) -> str:
    job = await client.create_job("insert", "Account")
    await client.upload_job_data(job.id, data)
    await client.wait_for_job(job.id, timeout=60)
    return job.id


def _plan(job_ids: list[str], instance_url: str) -> dict[str, Any]:
    """The plan that release stored beside its trigger: one closed job per chunk of 40 records."""
    return {
        "version": 2,
        "chunks": {
            str(40 * n): {
                "count": 40,
                "jobs": [{"job": job_id, "count": 40, "phase": "closed", "source": "chunk"}],
            }
            for n, job_id in enumerate(job_ids)
        },
        "complete": True,
        "instance_url": instance_url,
    }


async def _first_event(trigger: Any) -> Any:
    async for event in trigger.run():
        return event.payload
    raise AssertionError("no event")


async def test_a_jobs_trigger_of_the_previous_release_resumes_to_a_correct_summary(
    emulator: RunningEmulator, conn: str, client: BulkIngestClient, tmp_path: Path
) -> None:
    from airflow_provider_salesforce_bulk.triggers.salesforce_bulk import SalesforceBulkJobTrigger

    first = await _ended_job(client, CSV)
    second = await _ended_job(client, CSV.replace(b"UP-", b"UQ-"))
    # SalesforceBulkJobTrigger.serialize() of the previous release, for a load of two chunks.
    stored = {
        "conn_id": conn,
        "job_ids": [first, second],
        "deadline": time.time() + 120,
        "poll_interval": 0.2,
        "instance_url": emulator.base_url,
        "record_counts": {first: 40, second: 40},
        "history": [],
        "job_kind": "ingest",
    }
    defer_kwargs = {"record_counts": {first: 40, second: 40}, "instance_url": emulator.base_url}
    event = await _first_event(SalesforceBulkJobTrigger(**stored))
    store = helpers.DictStore()
    store.set("salesforce_bulk", _plan([first, second], emulator.base_url))
    ti = _TI()
    summary = await asyncio.to_thread(
        _operator(tmp_path, conn).execute_complete,
        {"ti": ti, "task_state_store": store},
        event,
        **defer_kwargs,
    )
    assert summary["instance_url"] == emulator.base_url
    assert summary["totals"] == {
        "records": 80,
        "processed": 80,
        "succeeded": 80,
        "failed": 0,
        "unprocessed": 0,
        "jobs": 2,
    }
    assert all(job["records"] == 40 and job["accounted"] for job in summary["jobs"].values())
    assert ti.pushed["return_value"] == summary
    assert store.get("salesforce_bulk")["done"]["summary"] == summary
    assert len(emulator.records("Account")) == 80


async def test_a_backoff_trigger_of_the_previous_release_sends_its_round_once(
    emulator: RunningEmulator, conn: str, client: BulkIngestClient, tmp_path: Path
) -> None:
    from airflow_provider_salesforce_bulk.operators.result_files import copy_job_results
    from airflow_provider_salesforce_bulk.operators.summary import job_entry
    from airflow_provider_salesforce_bulk.triggers.events import job_summary
    from airflow_provider_salesforce_bulk.triggers.round_backoff import ResubmitBackoffTrigger

    emulator.update_settings(lock_failure_rate=0.3, seed=7)
    first = await _ended_job(client, CSV)
    emulator.update_settings(lock_failure_rate=0.0)
    info = await client.get_job(first)
    locked = info.number_records_failed
    assert 0 < locked < 40, "the emulator's lock failures give round 2 something to send"
    # Round 1 as that release left it: its job's result files copied, its line in the state.
    from airflow.providers.common.compat.sdk import ObjectStoragePath

    results = await copy_job_results(client, first, ObjectStoragePath(f"file://{tmp_path / 'results'}"))
    entry = {**job_entry(job_summary(info), 40, dict(results.uris), dict(results.rows)), "round": 1}
    # ResubmitBackoffTrigger.serialize() of the previous release, between rounds 1 and 2.
    stored = {
        "moment": time.time() - 1,
        "resubmit": {
            "round": 1,
            "ledger": {"jobs": {first: [1, 40, 40, locked]}, "resubmitted": {}},
            "entries": {first: entry},
            "by_code": {},
            "samples": {},
            "input_records": 40,
        },
        "retry_from": [first],
        "instance_url": emulator.base_url,
    }
    event = await _first_event(ResubmitBackoffTrigger(**stored))
    store = helpers.DictStore()
    store.set("salesforce_bulk", _plan([first], emulator.base_url))
    ti = _TI()
    summary = await asyncio.to_thread(
        _operator(tmp_path, conn).send_next_round, {"ti": ti, "task_state_store": store}, event
    )
    stored_ids = [record["External_Id__c"] for record in emulator.records("Account")]
    assert sorted(stored_ids) == sorted(f"UP-{i}" for i in range(40)), "every record stored exactly once"
    assert summary["rounds"] == 2
    assert summary["totals"]["records"] == summary["totals"]["succeeded"] == 40
    assert summary["totals"]["failed"] == 0
    assert summary["totals"]["resubmitted"] == locked
    assert summary["jobs"][first]["resubmitted"] == locked
    assert summary["jobs"][first]["failed"] == 0
    assert summary["failed_results_rows"] == 0
    assert ti.pushed["return_value"] == summary


async def test_a_trigger_built_now_carries_only_what_polling_needs(conn: str) -> None:
    from airflow_provider_salesforce_bulk.triggers.round_backoff import ResubmitBackoffTrigger
    from airflow_provider_salesforce_bulk.triggers.salesforce_bulk import SalesforceBulkJobTrigger

    job = "7505e0000000001AAA"
    _, kwargs = SalesforceBulkJobTrigger(conn, [job], deadline=2_000_000_000.0, poll_interval=5.0).serialize()
    assert kwargs == {
        "conn_id": conn,
        "job_ids": [job],
        "deadline": 2_000_000_000.0,
        "poll_interval": 5.0,
        "job_kind": "ingest",
    }
    _, kwargs = ResubmitBackoffTrigger(2_000_000_000.0, next_round=3).serialize()
    assert kwargs == {"moment": 2_000_000_000.0, "next_round": 3}
    assert await _first_event(ResubmitBackoffTrigger(time.time() - 1, next_round=3)) == {"next_round": 3}
