"""Change-only reverse ETL: a warehouse table of contacts kept in sync with Salesforce Contacts.

Every run reads the whole ``crm_contacts`` table of the ``warehouse_sqlite`` connection (any
common-sql connection works the same way) and compares it with the sync state kept at
``SYNC_STATE`` (a local folder here; an ``s3://`` or ``gs://`` path, or an ``ObjectStoragePath``,
when workers run on several machines). Only new and changed rows are upserted; rows that left the
table are deleted in Salesforce by the Id the state holds, unless more than ``max_delete_ratio`` of
the state would go (then the task fails before any job, naming the numbers). The state advances
only with the records Salesforce accepted, after their results are known: a failed record is sent
again by the next run.

The first task creates the table with sample rows when it is missing, so the DAG runs as it is
against the emulator (``make demo-sync`` runs it three times, editing the table in between).
"""

from __future__ import annotations

import datetime
import os
import sqlite3
from typing import Any

from airflow.sdk import DAG, BaseHook, task

from airflow_provider_salesforce_bulk.operators.salesforce_bulk import SalesforceBulkOperator

WAREHOUSE = "warehouse_sqlite"
# The state outlives every run: never a temporary folder. Object storage with several workers.
AIRFLOW_HOME = os.environ.get("AIRFLOW_HOME", os.path.expanduser("~/airflow"))
SYNC_STATE = os.environ.get("SALESFORCE_SYNC_STATE", os.path.join(AIRFLOW_HOME, "sync_state", "crm_contacts"))
SAMPLE_ROWS = 200

with DAG(
    dag_id="example_salesforce_bulk_change_sync",
    schedule="@daily",
    start_date=datetime.datetime(2024, 1, 1),
    catchup=False,
    tags=["salesforce", "example"],
) as dag:

    @task
    def seed_warehouse() -> None:
        """Sample rows in the warehouse connection's SQLite file, once (a real warehouse has its own)."""
        path = BaseHook.get_connection(WAREHOUSE).host
        if not path:
            raise ValueError(f"connection {WAREHOUSE!r} names no SQLite file (its host)")
        with sqlite3.connect(path) as db:
            missing = (
                db.execute(
                    "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'crm_contacts'"
                ).fetchone()[0]
                == 0
            )
            if missing:
                db.execute(
                    "CREATE TABLE crm_contacts (contact_key TEXT PRIMARY KEY, first_name TEXT, "
                    "last_name TEXT NOT NULL, email TEXT, title TEXT)"
                )
                db.executemany(
                    "INSERT INTO crm_contacts VALUES (?, ?, ?, ?, ?)",
                    [
                        (f"CRM-{i:05d}", f"First{i}", f"Last{i}", f"contact{i}@example.com", "Buyer")
                        for i in range(1, SAMPLE_ROWS + 1)
                    ],
                )

    sync = SalesforceBulkOperator(
        task_id="sync_contacts",
        conn_id="salesforce_bulk_default",
        operation="upsert",
        object_name="Contact",
        external_id_field="External_Id__c",
        sql="SELECT contact_key, first_name, last_name, email, title FROM crm_contacts",
        sql_conn_id=WAREHOUSE,
        field_mapping={
            "contact_key": "External_Id__c",
            "first_name": "FirstName",
            "last_name": "LastName",
            "email": "Email",
            "title": "Title",
        },
        changes_only=True,
        sync_state_path=SYNC_STATE,
        delete_missing=True,
        max_delete_ratio=0.1,
        poll_interval=2,
        deferrable=True,
    )

    @task
    def report(summary: dict[str, Any]) -> None:
        sync = summary["sync"]
        print(
            f"read {sync['records_read']}, unchanged {sync['unchanged']}, sent {sync['sent']} "
            f"({sync['new']} new, {sync['changed']} changed), deleted {sync['deleted']} of "
            f"{sync['to_delete']}; state version {sync['version_before']} -> {sync['version']}"
        )

    seed_warehouse() >> sync
    report(sync.output)  # type: ignore[arg-type]
