"""Load a Parquet file into Salesforce: its columns renamed to fields, streamed in Arrow batches.

Needs the ``arrow`` extra (``pip install "airflow-provider-salesforce-bulk[arrow]"``). The first task
writes the day's file (a warehouse export in a real pipeline) under ``$AIRFLOW_HOME/data``; the
operator reads only the columns named in ``field_mapping``, converts them to the job's CSV batch by
batch and upserts them by external ID. Runs against whatever ``salesforce_bulk_default`` points at.
"""

from __future__ import annotations

import datetime
import os
from typing import Any

from airflow.sdk import DAG, task

from airflow_provider_salesforce_bulk.operators.salesforce_bulk import SalesforceBulkOperator

DATA_DIR = os.path.join(os.environ.get("AIRFLOW_HOME", os.path.expanduser("~/airflow")), "data")
RECORDS = 120

with DAG(
    dag_id="example_salesforce_bulk_parquet",
    schedule="@daily",
    start_date=datetime.datetime(2024, 1, 1),
    catchup=False,
    tags=["salesforce", "example"],
) as dag:

    @task
    def export_contacts(ds: str | None = None) -> str:
        """Write the day's contacts to a Parquet file, with the warehouse's column names."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        os.makedirs(DATA_DIR, exist_ok=True)
        path = os.path.join(DATA_DIR, f"contacts_{ds}.parquet")
        table = pa.table(
            {
                "contact_key": [f"PQ-{i:05d}" for i in range(1, RECORDS + 1)],
                "first_name": [f"Grace {i}" for i in range(1, RECORDS + 1)],
                "last_name": ["Hopper"] * RECORDS,
                "email": [f"grace{i}@example.com" for i in range(1, RECORDS + 1)],
                "internal_score": [i * 1.5 for i in range(1, RECORDS + 1)],  # not loaded: not mapped
            }
        )
        pq.write_table(table, path)
        return path

    upsert = SalesforceBulkOperator(
        task_id="upsert_contacts",
        conn_id="salesforce_bulk_default",
        operation="upsert",
        object_name="Contact",
        external_id_field="External_Id__c",
        source="{{ ti.xcom_pull(task_ids='export_contacts') }}",  # .parquet: source_format inferred
        field_mapping={
            "contact_key": "External_Id__c",
            "first_name": "FirstName",
            "last_name": "LastName",
            "email": "Email",
        },
        max_records_per_job=50,
        poll_interval=2,
        deferrable=True,
    )

    @task
    def report(summary: dict[str, Any]) -> None:
        totals = summary["totals"]
        print(f"{totals['succeeded']} of {totals['records']} contacts upserted, {totals['failed']} failed")

    export_contacts() >> upsert
    report(upsert.output)  # type: ignore[arg-type]
