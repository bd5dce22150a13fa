"""Change-only syncs through ``dag.test()`` against the emulator, with exact counts (issue 18).

First run (every record sent, the state created), then a run with changed, new and removed rows
(only those sent; the removed deleted with ``delete_missing``), a run whose records partly fail
(sent again next run, the others not), ``full_sync`` and a run with nothing changed.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from airflow_provider_salesforce_bulk.emulator.server import RunningEmulator
from tests.airflow.change_sync_helpers import (
    EXT,
    contacts,
    jobs,
    records_sent,
    run,
    stored,
    sync_dag,
    write_ndjson,
)
from tests.airflow.helpers import conn_uri_json

N = 300


@pytest.fixture
def sf(emulator: RunningEmulator, monkeypatch: pytest.MonkeyPatch, airflow_db: object) -> RunningEmulator:
    monkeypatch.setenv("AIRFLOW_CONN_SF_SYNC", conn_uri_json(emulator))
    return emulator


def test_first_run_then_changed_new_and_removed_rows(sf: RunningEmulator, tmp_path: Path) -> None:
    source = tmp_path / "input.ndjson"
    write_ndjson(source, contacts(range(N)))
    dag = sync_dag("sync_basic", tmp_path, delete_missing=False)
    state, tries, summary = run(dag)
    assert (state, tries) == ("success", 1)
    assert summary["totals"]["succeeded"] == N
    assert summary["sync"] | {"state": None, "delete_jobs": None} == {
        "state": None,
        "records_read": N,
        "unchanged": 0,
        "sent": N,
        "new": N,
        "changed": 0,
        "to_delete": 0,
        "deleted": 0,
        "delete_failed": 0,
        "delete_jobs": None,
        "full_sync": False,
        "version_before": None,
        "version": 1,
        "state_records": N,
    }
    assert len(stored(sf)) == N
    assert records_sent(sf, "upsert") == N

    # 10 changed (0..9), 20 removed (280..299), 15 new (300..314): only 25 sent, 20 deleted.
    rows = contacts(range(10), version=1) + contacts(range(10, 280)) + contacts(range(300, 315))
    write_ndjson(source, rows)
    dag = sync_dag("sync_basic", tmp_path, delete_missing=True)
    state, tries, summary = run(dag)
    assert (state, tries) == ("success", 1)
    sync = summary["sync"]
    assert (sync["records_read"], sync["unchanged"], sync["new"], sync["changed"]) == (295, 270, 15, 10)
    assert (sync["to_delete"], sync["deleted"], sync["delete_failed"]) == (20, 20, 0)
    assert (sync["version_before"], sync["version"], sync["state_records"]) == (1, 2, 295)
    assert summary["totals"]["succeeded"] == 25
    assert records_sent(sf, "upsert") == N + 25
    assert records_sent(sf, "delete") == 20
    org = stored(sf)
    assert sorted(org) == sorted(row[EXT] for row in rows)
    assert all(org[row[EXT]]["LastName"] == row["LastName"] for row in rows)

    # Nothing changed: no job at all, and the state kept as it is (version 2, nothing written).
    before = len(jobs(sf))
    state, tries, summary = run(sync_dag("sync_basic", tmp_path, delete_missing=True))
    assert (state, summary["sync"]["sent"], summary["sync"]["unchanged"]) == ("success", 0, 295)
    assert (summary["totals"]["jobs"], len(jobs(sf)) - before) == (0, 0)
    assert (summary["sync"]["version_before"], summary["sync"]["version"]) == (2, 2)
    assert summary["sync"]["state_records"] == 295


def test_full_sync_resends_everything_and_rebuilds_the_state(sf: RunningEmulator, tmp_path: Path) -> None:
    write_ndjson(tmp_path / "input.ndjson", contacts(range(100)))
    assert run(sync_dag("sync_full", tmp_path))[0] == "success"
    state, _, summary = run(sync_dag("sync_full", tmp_path, full_sync=True))
    assert state == "success"
    sync = summary["sync"]
    assert (sync["sent"], sync["unchanged"], sync["full_sync"], sync["version"]) == (100, 0, True, 2)
    assert records_sent(sf, "upsert") == 200
    # After it, a change-only run sends nothing.
    state, _, summary = run(sync_dag("sync_full", tmp_path))
    assert (state, summary["sync"]["sent"], summary["sync"]["version_before"]) == ("success", 0, 2)
    assert records_sent(sf, "upsert") == 200


def test_records_that_fail_are_sent_again_next_run_and_only_they(sf: RunningEmulator, tmp_path: Path) -> None:
    rows = contacts(range(100))
    for row in rows[:7]:
        row["LastName"] = "x" * 81  # longer than LastName's 80: STRING_TOO_LONG
    write_ndjson(tmp_path / "input.ndjson", rows)
    state, _, summary = run(sync_dag("sync_fail", tmp_path, retries=0))
    assert state == "failed"  # failures stay loud
    assert summary["totals"]["failed"] == 7
    assert (summary["sync"]["sent"], summary["sync"]["state_records"]) == (100, 93)  # advanced first
    assert len(stored(sf)) == 93

    for row in rows[:7]:
        row["LastName"] = "Fixed"
    write_ndjson(tmp_path / "input.ndjson", rows)
    state, _, summary = run(sync_dag("sync_fail", tmp_path, retries=0))
    assert state == "success"
    sync = summary["sync"]
    assert (sync["sent"], sync["new"], sync["unchanged"], sync["state_records"]) == (7, 7, 93, 100)
    assert records_sent(sf, "upsert") == 107
    assert len(stored(sf)) == 100


def test_an_empty_input_compares_nothing_and_deletes_nothing(sf: RunningEmulator, tmp_path: Path) -> None:
    write_ndjson(tmp_path / "input.ndjson", contacts(range(40)))
    assert run(sync_dag("sync_empty", tmp_path))[0] == "success"
    write_ndjson(tmp_path / "input.ndjson", [])
    state, _, summary = run(sync_dag("sync_empty", tmp_path, delete_missing=True, max_delete_ratio=1.0))
    assert (state, summary["totals"]["jobs"], "sync" in summary) == ("success", 0, False)
    assert len(stored(sf)) == 40
    write_ndjson(tmp_path / "input.ndjson", contacts(range(40)))
    state, _, summary = run(sync_dag("sync_empty", tmp_path, delete_missing=True))
    assert (state, summary["sync"]["sent"], summary["sync"]["version_before"]) == ("success", 0, 1)


def test_a_deferred_run_advances_in_the_resumed_try(sf: RunningEmulator, tmp_path: Path) -> None:
    write_ndjson(tmp_path / "input.ndjson", contacts(range(150)))
    state, _, summary = run(sync_dag("sync_deferred", tmp_path, deferrable=True))
    assert (state, summary["sync"]["sent"], summary["sync"]["version"]) == ("success", 150, 1)
    write_ndjson(tmp_path / "input.ndjson", contacts(range(4), version=1) + contacts(range(4, 140)))
    dag = sync_dag("sync_deferred", tmp_path, deferrable=True, delete_missing=True)
    state, _, summary = run(dag)
    sync = summary["sync"]
    assert (state, sync["sent"], sync["deleted"], sync["version"]) == ("success", 4, 10, 2)
    assert records_sent(sf, "upsert") == 154
    assert len(stored(sf)) == 140


def test_records_resubmitted_in_rounds_advance_with_their_final_outcome(
    sf: RunningEmulator, tmp_path: Path
) -> None:
    sf.update_settings(lock_failure_rate=0.1, seed=5)
    write_ndjson(tmp_path / "input.ndjson", contacts(range(200)))
    dag = sync_dag("sync_rounds", tmp_path, resubmit_rounds=2, resubmit_backoff=0.0, retries=0)
    state, _, summary = run(dag)
    succeeded, failed = summary["totals"]["succeeded"], summary["totals"]["failed"]
    assert summary.get("rounds") == 2
    assert summary["totals"]["resubmitted"] > 0
    assert (succeeded + failed, summary["sync"]["state_records"]) == (200, succeeded)
    assert len(stored(sf)) == succeeded
    # The next run sends exactly the records whose final outcome was failed.
    sf.update_settings(lock_failure_rate=0.0)
    state, _, summary = run(sync_dag("sync_rounds", tmp_path, retries=0))
    assert (state, summary["sync"]["sent"], summary["sync"]["unchanged"]) == ("success", failed, succeeded)
    assert len(stored(sf)) == 200


def test_a_short_read_of_the_successful_results_does_not_advance_the_state(
    sf: RunningEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The state advances from the successful results read again from Salesforce; a read that comes
    back a row short (after the load's own copy of the results read them whole) fails the try and
    leaves the state where it was."""
    import collections

    import httpx

    from tests.airflow.helpers import wrap_pool_transport

    reads: collections.Counter[str] = collections.Counter()

    class ShortSecondRead(httpx.AsyncBaseTransport):
        def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
            self.inner = inner

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            response = await self.inner.handle_async_request(request)
            if not request.url.path.endswith("/successfulResults"):
                return response
            reads[request.url.path] += 1
            if reads[request.url.path] == 1:
                return response
            body = await response.aread()
            lines = body.splitlines(keepends=True)
            headers = {
                k: v
                for k, v in response.headers.items()
                if k.lower() not in ("content-length", "content-encoding")
            }
            return httpx.Response(
                response.status_code, headers=headers, content=b"".join(lines[:-1]), request=request
            )

    source = tmp_path / "input.ndjson"
    write_ndjson(source, contacts(range(20)))
    wrap_pool_transport(monkeypatch, ShortSecondRead)
    state, _, _ = run(sync_dag("sync_short_read", tmp_path, retries=0))
    assert state == "failed"
    assert reads
    assert all(n >= 2 for n in reads.values())  # the load's copy, then the sync's read
    assert not (tmp_path / "state" / "CURRENT").exists()  # nothing advanced
