"""A change-only run killed at every point, then retried: every record sent once, the state advanced once.

The base run stores 200 Contacts and creates the state (version 1). The second run changes 10 rows,
adds 10 and drops 10 (``delete_missing``); its first try dies at one point (a ``BaseException``, as a
killed worker: no cleanup, no abort) and Airflow's retry finishes it. Salesforce then processed
exactly 20 upserts and 10 deletes for that run, the org holds exactly the input, and a third run finds
nothing to send: the state advanced exactly once, to version 2. At ``planned`` the input changes
before the retry too: the retry sends the change set it recorded, never a new plan.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from airflow_provider_salesforce_bulk.emulator.server import RunningEmulator
from tests.airflow.change_sync_helpers import (
    EXT,
    KILL_POINTS,
    KILL_SEAM,
    contacts,
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

        KilledOnce.on_planned = _input_changes
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
    if point == "planned":
        assert "v2" in source.read_text(), "the input did not change before the retry"

    # The state advanced once, with exactly the second run's outcomes.
    if point != "planned":
        write_ndjson(source, rows)
    state, _, summary = run(sync_dag(f"sync_kill_{point}", tmp_path, **options))
    expected_sent = 5 if point == "planned" else 0  # the later change, which the retry did not send
    assert (state, summary["sync"]["version_before"], summary["sync"]["sent"]) == (
        "success",
        2,
        expected_sent,
    )
    assert summary["sync"]["to_delete"] == 0
