"""Reverse ETL: upsert the rows of a SQL query into Salesforce, fetched in bounded batches.

The query runs on ``warehouse_sqlite``, any common-sql connection (here SQLite, Airflow's sqlite
provider; Postgres, Snowflake, ... the same way), e.g.
``AIRFLOW_CONN_WAREHOUSE_SQLITE='{"conn_type": "sqlite", "host": "/tmp/warehouse.db"}'``. The first
task fills that database with sample accounts, so the DAG runs as it is against the emulator. Columns
are renamed to Salesforce fields by ``field_mapping``; records failing with ``UNABLE_TO_LOCK_ROW`` are
sent again in new jobs (up to 3 rounds) and counted once, at their final outcome.
"""

from __future__ import annotations

import datetime
import sqlite3
from typing import Any

from airflow.sdk import DAG, BaseHook, task

from airflow_provider_salesforce_bulk.operators.salesforce_bulk import SalesforceBulkOperator

WAREHOUSE = "warehouse_sqlite"

with DAG(
    dag_id="example_salesforce_bulk_sql",
    schedule="@daily",
    start_date=datetime.datetime(2024, 1, 1),
    catchup=False,
    params={"region": "EMEA"},
    tags=["salesforce", "example"],
) as dag:

    @task
    def seed_warehouse() -> None:
        """Sample data in the warehouse connection's SQLite file (a real warehouse has its own)."""
        path = BaseHook.get_connection(WAREHOUSE).host
        if not path:
            raise ValueError(f"connection {WAREHOUSE!r} names no SQLite file (its host)")
        with sqlite3.connect(path) as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS accounts (account_key TEXT PRIMARY KEY, account_name TEXT, "
                "employees INTEGER, region TEXT)"
            )
            db.executemany(
                "INSERT OR REPLACE INTO accounts VALUES (?, ?, ?, ?)",
                [(f"WH-{i:05d}", f"Account {i}", i * 10, "EMEA" if i % 2 else "AMER") for i in range(1, 201)],
            )

    upsert = SalesforceBulkOperator(
        task_id="upsert_accounts",
        conn_id="salesforce_bulk_default",
        operation="upsert",
        object_name="Account",
        external_id_field="External_Id__c",
        sql="SELECT account_key, account_name, employees FROM accounts WHERE region = :region",
        parameters={"region": "{{ params.region }}"},
        sql_conn_id=WAREHOUSE,
        field_mapping={
            "account_key": "External_Id__c",
            "account_name": "Name",
            "employees": "NumberOfEmployees",
        },
        max_records_per_job=50,
        limits_check="warn",
        resubmit_rounds=3,
        resubmit_backoff=10,
        poll_interval=2,
        deferrable=True,
    )

    @task
    def report(summary: dict[str, Any]) -> None:
        totals = summary["totals"]
        print(
            f"{totals['succeeded']} of {totals['records']} accounts upserted, {totals['failed']} failed, "
            f"{totals.get('resubmitted', 0)} sent again after a lock failure"
        )

    seed_warehouse() >> upsert
    report(upsert.output)  # type: ignore[arg-type]
