"""``make demo-sync``: the change-only sync DAG against the local Salesforce emulator, three runs.

Starts the emulator, runs ``example_salesforce_bulk_change_sync`` with ``airflow dags test`` (a
SQLite warehouse table of 200 contacts, kept in ``./airflow_home``): the first run sends every row
and creates the sync state; then 5 rows change, 3 arrive and 2 leave the table, and the second run
sends those 8 and deletes the 2; a third run with nothing changed sends nothing. Prints each run's
sync summary from XCom and what the emulator holds, and fails unless every count is exact. Same
private ``./airflow_home`` as ``make demo``; the warehouse file and the sync state are recreated
first, since every demo starts a fresh, empty org.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import sys
from typing import Any

from demo import HOME, _airflow, _env
from demo_extract import _run_dag, _xcom

DAG_ID = "example_salesforce_bulk_change_sync"
TASK_ID = "sync_contacts"
WAREHOUSE = HOME / "warehouse_change_sync.db"
STATE = HOME / "sync_state" / "crm_contacts"
# Each run: what the table is changed by before it, and the sync counts it must report.
RUNS: list[tuple[str, dict[str, int]]] = [
    (
        "first run: every row is new",
        {"sent": 200, "new": 200, "changed": 0, "unchanged": 0, "deleted": 0, "version": 1},
    ),
    (
        "5 rows changed, 3 new, 2 removed",
        {"sent": 8, "new": 3, "changed": 5, "unchanged": 193, "deleted": 2, "version": 2},
    ),
    # Nothing sent or deleted: the state is kept as it is, version and all.
    ("nothing changed", {"sent": 0, "new": 0, "changed": 0, "unchanged": 201, "deleted": 0, "version": 2}),
]


def _edit_warehouse() -> None:
    """Between runs 1 and 2: what a day of CRM activity does to the table."""
    with sqlite3.connect(WAREHOUSE) as db:
        db.executemany(
            "UPDATE crm_contacts SET title = 'Director' WHERE contact_key = ?",
            [(f"CRM-{i:05d}",) for i in (1, 2, 3, 4, 5)],
        )
        db.executemany(
            "INSERT INTO crm_contacts VALUES (?, ?, ?, ?, ?)",
            [
                (f"CRM-{i:05d}", f"First{i}", f"Last{i}", f"contact{i}@example.com", "Buyer")
                for i in (201, 202, 203)
            ],
        )
        db.executemany("DELETE FROM crm_contacts WHERE contact_key = ?", [("CRM-00100",), ("CRM-00150",)])


def _stored(emulator: Any) -> dict[str, str]:
    """External id -> Title of the Contacts the org holds."""
    return {str(c.get("External_Id__c")): str(c.get("Title")) for c in emulator.records("Contact")}


def main() -> int:
    from airflow_provider_salesforce_bulk.emulator.server import run_emulator

    HOME.mkdir(exist_ok=True)
    WAREHOUSE.unlink(missing_ok=True)
    shutil.rmtree(STATE, ignore_errors=True)
    failures = []
    with run_emulator(records_per_second=500.0) as emulator:
        print(f"Salesforce emulator at {emulator.base_url}", flush=True)
        env = _env(emulator.airflow_connection())
        env["AIRFLOW_CONN_WAREHOUSE_SQLITE"] = json.dumps({"conn_type": "sqlite", "host": str(WAREHOUSE)})
        env["SALESFORCE_SYNC_STATE"] = str(STATE)
        _airflow(env, "db", "migrate")
        for number, (what, expected) in enumerate(RUNS, start=1):
            if number == 2:
                _edit_warehouse()
            print(f"\n=== Run {number}: {what} ===", flush=True)
            ran = _run_dag(env, DAG_ID)
            summary = _xcom(TASK_ID, DAG_ID) if ran else None
            sync = (summary or {}).get("sync")
            print(json.dumps(sync, indent=2))
            got = {key: (sync or {}).get(key) for key in expected}
            if not ran or got != expected:
                failures.append(f"run {number}: expected {expected}, got {got}")
        stored = _stored(emulator)
    expected_keys = {f"CRM-{i:05d}" for i in range(1, 204)} - {"CRM-00100", "CRM-00150"}
    directors = sorted(key for key, title in stored.items() if title == "Director")
    print(f"\nContacts now stored in the emulator: {len(stored)} (Directors: {', '.join(directors)})")
    print(f"Sync state: {STATE}")
    if set(stored) != expected_keys:
        failures.append(f"the org holds {len(stored)} contacts, not the table's {len(expected_keys)}")
    if directors != [f"CRM-{i:05d}" for i in (1, 2, 3, 4, 5)]:
        failures.append(f"changed titles in the org: {directors}")
    for failure in failures:
        print(f"FAILED: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
