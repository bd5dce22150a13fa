"""Nightly ETL: extract contacts to a CSV file, upsert them into Salesforce by external ID, report.

Runs against whatever the ``salesforce_bulk_default`` connection points at: the local emulator in
``make demo``, a real org by changing only the connection (and the file source, in a real pipeline).
The sample data holds a few invalid e-mail addresses so the run shows failed records; up to 10% of
failures are tolerated (``max_failed_ratio``), more fail the task after the summary is saved.
"""

from __future__ import annotations

import csv
import datetime
import os
from typing import Any

from airflow.sdk import DAG, task

from airflow_provider_salesforce_bulk.operators.salesforce_bulk import SalesforceBulkOperator

DATA_DIR = os.path.join(os.environ.get("AIRFLOW_HOME", os.path.expanduser("~/airflow")), "data")

with DAG(
    dag_id="example_salesforce_bulk_etl",
    schedule="@daily",
    start_date=datetime.datetime(2024, 1, 1),
    catchup=False,
    tags=["salesforce", "example"],
) as dag:

    @task
    def extract(ds: str | None = None) -> str:
        """Write the day's contacts to a CSV file (a warehouse query in a real pipeline)."""
        os.makedirs(DATA_DIR, exist_ok=True)
        path = os.path.join(DATA_DIR, f"contacts_{ds}.csv")
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(["External_Id__c", "FirstName", "LastName", "Email", "LeadSource"])
            for i in range(1, 101):
                # Every 25th address is invalid: Salesforce rejects those records (INVALID_EMAIL_ADDRESS).
                email = f"contact{i}(at)example.com" if i % 25 == 0 else f"contact{i}@example.com"
                writer.writerow([f"CRM-{i:05d}", f"Ada {i}", "Lovelace, Jr.", email, "Web"])
        return path

    upsert = SalesforceBulkOperator(
        task_id="upsert_contacts",
        conn_id="salesforce_bulk_default",
        operation="upsert",
        object_name="Contact",
        external_id_field="External_Id__c",
        source="{{ ti.xcom_pull(task_ids='extract') }}",
        max_records_per_job=40,
        max_failed_ratio=0.1,
        poll_interval=2,
        timeout=datetime.timedelta(hours=2),
        # Explicit: the operator's default follows [operators] default_deferrable, which is False.
        deferrable=True,
    )

    @task
    def report(summary: dict[str, Any]) -> None:
        """Downstream use of the summary: log it (alert, write to a table, ...)."""
        totals = summary["totals"]
        print(
            f"Upserted {totals['succeeded']} of {totals['records']} contacts; {totals['failed']} failed "
            f"{summary['failed_by_error_code']}; result files under {summary['results_path']}"
        )

    extract() >> upsert
    # Airflow's typing gap: @task types its call with the function's own parameters, while at DAG
    # definition an XComArg stands in for the value resolved at run time.
    report(upsert.output)  # type: ignore[arg-type]
