"""Daily ETL round trip: extract the Accounts changed since the last run to Parquet, derive a primary
Contact for each, and upsert those Contacts back into Salesforce.

Runs against whatever the ``salesforce_bulk_default`` connection points at: the local emulator in
``make demo-extract`` (which first loads some Accounts into it), a real org by changing only the
connection. The extract is incremental by watermark: ``incremental_field="SystemModstamp"`` keeps the
task's mark across DAG runs and adds the filter to the SOQL, so each run (scheduled, manual, cleared or
backfilled) extracts what changed since the last published extract; the first run extracts everything.
A filter on ``data_interval_start`` would not do: on Airflow 3 a scheduled or manual run's data interval
has zero length (start = end = the run's date), so it extracts nothing new, or everything again for a
back-dated run. The files land under ``$AIRFLOW_HOME/salesforce_bulk_extracts/<dag>/<run>/<task>``
with ``_manifest.json`` and ``_SUCCESS`` (set ``output_path`` to any ObjectStoragePath, e.g.
``s3://bucket/salesforce/accounts/{{ run_id }}``, for a warehouse: one folder per run, since each run
holds only its changes). A run with nothing new succeeds with an empty extract, and the load after it
creates no job.
"""

from __future__ import annotations

import datetime
import json
import os
from typing import Any

from airflow.sdk import DAG, task

from airflow_provider_salesforce_bulk.operators.salesforce_bulk import SalesforceBulkOperator
from airflow_provider_salesforce_bulk.operators.salesforce_bulk_query import SalesforceBulkQueryOperator

DATA_DIR = os.path.join(os.environ.get("AIRFLOW_HOME", os.path.expanduser("~/airflow")), "data")

with DAG(
    dag_id="example_salesforce_bulk_extract",
    schedule="@daily",
    start_date=datetime.datetime(2024, 1, 1),
    catchup=False,
    tags=["salesforce", "example"],
) as dag:
    extract_accounts = SalesforceBulkQueryOperator(
        task_id="extract_accounts",
        conn_id="salesforce_bulk_default",
        soql="SELECT Id, Name, Industry, NumberOfEmployees, AnnualRevenue, SystemModstamp FROM Account",
        incremental_field="SystemModstamp",
        output_format="parquet",
        records_per_file=50_000,
        poll_interval=2,
        timeout=datetime.timedelta(hours=2),
        # Explicit: the operator's default follows [operators] default_deferrable, which is False.
        deferrable=True,
    )

    @task
    def primary_contacts(summary: dict[str, Any], ds: str | None = None) -> str:
        """One primary Contact per changed Account, as NDJSON, read from the Parquet files in batches."""
        import pyarrow.parquet as pq

        os.makedirs(DATA_DIR, exist_ok=True)
        path = os.path.join(DATA_DIR, f"primary_contacts_{ds}.ndjson")
        written = 0
        with open(path, "w", encoding="utf-8") as out:
            for file in summary["files"]:
                for batch in pq.ParquetFile(file["path"]).iter_batches(batch_size=10_000):
                    for account in batch.to_pylist():
                        contact = {
                            "External_Id__c": f"PRIMARY-{account['Id']}",
                            "LastName": f"Primary contact of {account['Name']}",
                            "Title": f"{account['Industry'] or 'General'} lead",
                            "AccountId": account["Id"],
                        }
                        out.write(json.dumps(contact) + "\n")
                        written += 1
        print(f"{written} contacts from {summary['records']} changed accounts in {path}")
        return path

    contacts = primary_contacts(extract_accounts.output)  # type: ignore[arg-type]

    upsert_contacts = SalesforceBulkOperator(
        task_id="upsert_contacts",
        conn_id="salesforce_bulk_default",
        operation="upsert",
        object_name="Contact",
        external_id_field="External_Id__c",
        source="{{ ti.xcom_pull(task_ids='primary_contacts') }}",
        source_format="ndjson",
        poll_interval=2,
        timeout=datetime.timedelta(hours=2),
        deferrable=True,
    )

    contacts >> upsert_contacts
