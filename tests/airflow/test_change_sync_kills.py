"""A change-only run killed at every point, then retried: every record sent once, the state advanced once.

The base run stores 200 Contacts and creates the state (version 1). The second run changes 10 rows,
adds 10 and drops 10 (``delete_missing``); its first try dies at one point (a ``BaseException``, as a
killed worker: no cleanup, no abort) and Airflow's retry finishes it. Salesforce then processed
exactly 20 upserts and 10 deletes for that run, the org holds exactly the input, and a third run finds
only the input's later change: the state advanced exactly once, to version 2. The input changes
before each retry too: the retry sends the change set it recorded, never a new plan.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from airflow_provider_salesforce_bulk.emulator.server import RunningEmulator
from tests.airflow.change_sync_helpers import (
    EXT,
    KILL_POINTS,
    KILL_SEAM,
    contacts,
    jobs,
    recording_seam,
    records_sent,
    run,
    stored,
    sync_dag,
    write_ndjson,
)
from tests.airflow.helpers import conn_uri_json


@pytest.fixture
def sf(emulator: RunningEmulator, monkeypatch: pytest.MonkeyPatch, airflow_db: object) -> RunningEmulator:
    monkeypatch.setenv("AIRFLOW_CONN_SF_SYNC", conn_uri_json(emulator))
    return emulator


@pytest.mark.parametrize("point", KILL_POINTS)
def test_a_kill_at_every_point_then_the_retry_sends_once_and_advances_once(
    sf: RunningEmulator, tmp_path: Path, point: str
) -> None:
    source = tmp_path / "input.ndjson"
    write_ndjson(source, contacts(range(200)))
    options = {"delete_missing": True, "max_records_per_job": 8}
    assert run(sync_dag(f"sync_kill_{point}", tmp_path, **options))[0] == "success"
    assert records_sent(sf, "upsert") == 200

    rows = contacts(range(10), version=1) + contacts(range(10, 190)) + contacts(range(200, 210))
    write_ndjson(source, rows)
    later = contacts(range(5), version=2) + rows[5:]
    seam = KILL_SEAM + textwrap.indent(
        textwrap.dedent(f"""
        KilledOnce.point = {point!r}

        def _input_changes():
            import json
            rows = {later!r}
            with open({str(source)!r}, "w") as out:
                out.write("".join(json.dumps(row) + "\\n" for row in rows))

        KilledOnce.before_death = _input_changes
        """),
        " " * 8,
    )
    dag = sync_dag(f"sync_kill_{point}", tmp_path, seam=seam, operator="KilledOnce", **options)
    state, tries, summary = run(dag)
    assert (state, tries) == ("success", 2), point
    sync = summary["sync"]
    assert (sync["new"], sync["changed"], sync["unchanged"], sync["to_delete"]) == (10, 10, 180, 10)
    assert (sync["deleted"], sync["delete_failed"], sync["version_before"], sync["version"]) == (10, 0, 1, 2)
    assert summary["totals"]["succeeded"] == 20
    assert records_sent(sf, "upsert") == 220  # no record of the change set processed twice
    assert records_sent(sf, "delete") == 10
    org = stored(sf)
    assert sorted(org) == sorted(row[EXT] for row in rows)
    assert all(org[row[EXT]]["LastName"] == row["LastName"] for row in rows)
    assert "v2" in source.read_text(), "the input did not change before the retry"

    # The state advanced once, with exactly the second run's outcomes: the next run sends only the
    # input's later change, which the retry did not send.
    state, _, summary = run(sync_dag(f"sync_kill_{point}", tmp_path, **options))
    assert (state, summary["sync"]["version_before"], summary["sync"]["sent"]) == ("success", 2, 5)
    assert summary["sync"]["to_delete"] == 0


def test_a_state_moved_by_another_run_meanwhile_fails_the_retry_for_good(
    sf: RunningEmulator, tmp_path: Path
) -> None:
    """Another run advances the state while this run's jobs end: its retry refuses to overwrite it."""
    source = tmp_path / "input.ndjson"
    write_ndjson(source, contacts(range(30)))
    assert run(sync_dag("sync_moved", tmp_path))[0] == "success"
    write_ndjson(source, contacts(range(3), version=1) + contacts(range(3, 30)))
    where = str(tmp_path / "state")
    seam = KILL_SEAM + textwrap.indent(
        textwrap.dedent(f"""
        def _another_run_advances():
            import tempfile
            from airflow_provider_salesforce_bulk.sync import SyncSpec, plan_sync
            # The module's own function: the kill seam wraps the package's, which the operator calls.
            from airflow_provider_salesforce_bulk.sync.advance import advance_state
            rows = [{{"External_Id__c": "ext-0", "LastName": "Other", "Email": "o@example.com"}}]
            spec = SyncSpec(object_name="Contact", external_id_field="External_Id__c",
                            fieldnames=("External_Id__c", "LastName", "Email"))
            with tempfile.TemporaryDirectory() as work:
                plan = plan_sync({where!r}, rows, spec, work)
                pending = plan.pending({where!r}, "other")
                advance_state({where!r}, pending, [("ext-0", "003000000000000AAA")], [], work)

        KilledOnce.point = "upsert_done"
        KilledOnce.before_death = _another_run_advances
        """),
        " " * 8,
    )
    failures = tmp_path / "failures.txt"
    seam += recording_seam(failures).replace("(SalesforceBulkOperator)", "(KilledOnce)")
    state, tries, _ = run(sync_dag("sync_moved", tmp_path, seam=seam, operator="Recorded"))
    assert (state, tries) == ("failed", 2)  # the retry failed for good: no third try
    message = failures.read_text()
    assert "StateMovedError" in message
    assert "was not advanced" in message
    assert records_sent(sf, "upsert") == 33  # the jobs ran once; only the advance was refused


def test_a_users_kill_while_the_deletes_are_waited_for_aborts_the_delete_job(
    sf: RunningEmulator, tmp_path: Path
) -> None:
    """The deletes are waited for in the worker: a kill there that a user decided (the task marked
    failed) aborts the delete job, as it does the load's jobs, and the try stops before it advances
    the state (Airflow lets a SIGTERMed task run on until its SIGKILL)."""
    source = tmp_path / "input.ndjson"
    write_ndjson(source, contacts(range(40)))
    assert run(sync_dag("sync_kill_deletes", tmp_path))[0] == "success"
    write_ndjson(source, contacts(range(38)))  # 2 rows left: their Contacts are deleted
    sf.update_settings(records_per_second=0.5)  # the delete job is still processing when killed
    seam = textwrap.dedent("""
        import threading
        from airflow_provider_salesforce_bulk.client import BulkIngestClient
        from airflow_provider_salesforce_bulk.operators import base, sync_finish

        class KilledWhileDeleting(SalesforceBulkOperator):
            def execute(self, context):
                op, wait, submit = self, BulkIngestClient.wait_for_job, sync_finish.submit_chunks
                asked = base.try_is_over
                deleting = threading.Event()

                async def submitted(*args, **kwargs):
                    deleting.set()
                    return await submit(*args, **kwargs)

                async def killed_while_waiting(client, job_id, **kwargs):
                    if deleting.is_set() and not op._stop_event().is_set():
                        op.on_kill()  # what the task runner calls on the SIGTERM
                        op._kill_thread.join(30)
                    return await wait(client, job_id, **kwargs)

                sync_finish.submit_chunks = submitted
                BulkIngestClient.wait_for_job = killed_while_waiting
                base.try_is_over = lambda ti, store: True  # a user marked the task failed
                try:
                    return super().execute(context)
                finally:
                    sync_finish.submit_chunks, BulkIngestClient.wait_for_job = submit, wait
                    base.try_is_over = asked  # the later tests' kills ask Airflow again
        """)
    seam = textwrap.indent(seam, " " * 8)
    dag = sync_dag(
        "sync_kill_deletes",
        tmp_path,
        seam=seam,
        operator="KilledWhileDeleting",
        delete_missing=True,
        retries=0,
    )
    state, _, _ = run(dag)
    delete_jobs = [job for job in jobs(sf) if job["operation"] == "delete"]
    assert [job["state"] for job in delete_jobs] == ["Aborted"], delete_jobs
    assert state == "failed"
    current = json.loads((tmp_path / "state" / "CURRENT").read_text())
    assert current["version"] == 1, "a killed try advanced the state"
