"""The change-only example DAG (dags_examples/example_salesforce_bulk_change_sync.py) as shipped.

Two runs through ``dag.test()`` against the emulator, as ``make demo-sync`` does: the first sends
the 200 sample rows and creates the state; after 5 rows changed, 3 arrived and 2 left the
warehouse table, the second sends those 8 and deletes the 2, and the org then holds the table.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_salesforce_bulk.emulator.server import RunningEmulator
from tests.airflow.change_sync_helpers import EXT, stored, summary_of
from tests.airflow.helpers import conn_uri_json, load_dag_file

DAG_ID = "example_salesforce_bulk_change_sync"
SOURCE = Path(__file__).parents[2] / "dags_examples" / f"{DAG_ID}.py"


def _sync_summary(run_id: str) -> Any:
    return summary_of(DAG_ID, run_id, "sync_contacts")["sync"]


def _counts(sync: dict[str, Any]) -> dict[str, Any]:
    keys = ("records_read", "unchanged", "sent", "new", "changed", "to_delete", "deleted", "version")
    return {key: sync[key] for key in keys}


def test_the_example_sends_only_changes_and_deletes_what_left(
    emulator: RunningEmulator, monkeypatch: pytest.MonkeyPatch, airflow_db: object, tmp_path: Path
) -> None:
    warehouse = tmp_path / "warehouse.db"
    monkeypatch.setenv("AIRFLOW_CONN_SALESFORCE_BULK_DEFAULT", conn_uri_json(emulator))
    monkeypatch.setenv(
        "AIRFLOW_CONN_WAREHOUSE_SQLITE", json.dumps({"conn_type": "sqlite", "host": str(warehouse)})
    )
    monkeypatch.setenv("SALESFORCE_SYNC_STATE", str(tmp_path / "state"))
    dag: Any = load_dag_file(DAG_ID, SOURCE.read_text())

    first = dag.test()
    assert first.state == "success"
    assert _counts(_sync_summary(first.run_id)) == {
        "records_read": 200, "unchanged": 0, "sent": 200, "new": 200, "changed": 0,
        "to_delete": 0, "deleted": 0, "version": 1,
    }  # fmt: skip
    assert len(stored(emulator)) == 200

    with sqlite3.connect(warehouse) as db:
        db.execute("UPDATE crm_contacts SET title = 'Director' WHERE contact_key <= 'CRM-00005'")
        db.executemany(
            "INSERT INTO crm_contacts VALUES (?, ?, ?, ?, ?)",
            [
                (f"CRM-{i:05d}", f"First{i}", f"Last{i}", f"c{i}@example.com", "Buyer")
                for i in (201, 202, 203)
            ],
        )
        db.execute("DELETE FROM crm_contacts WHERE contact_key IN ('CRM-00100', 'CRM-00150')")
    second = dag.test()
    assert second.state == "success"
    assert _counts(_sync_summary(second.run_id)) == {
        "records_read": 201, "unchanged": 193, "sent": 8, "new": 3, "changed": 5,
        "to_delete": 2, "deleted": 2, "version": 2,
    }  # fmt: skip
    org = stored(emulator)
    expected = {f"CRM-{i:05d}" for i in range(1, 204)} - {"CRM-00100", "CRM-00150"}
    assert set(org) == expected
    assert sorted(key for key, record in org.items() if record.get("Title") == "Director") == [
        f"CRM-{i:05d}" for i in range(1, 6)
    ]
    assert EXT in next(iter(org.values()))
