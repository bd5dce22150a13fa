"""Records passed by XCom: a task builds a small list of accounts, the operator inserts them.

For small loads (thousands of records) only: XCom is a database row. Large loads belong in a file
(see ``example_salesforce_bulk_etl``). Uses the ``salesforce_bulk_default`` connection.
"""

from __future__ import annotations

import datetime
from typing import Any

from airflow.sdk import DAG, task

from airflow_provider_salesforce_bulk.operators.salesforce_bulk import SalesforceBulkOperator

with DAG(
    dag_id="example_salesforce_bulk_xcom",
    schedule=None,
    start_date=datetime.datetime(2024, 1, 1),
    catchup=False,
    tags=["salesforce", "example"],
) as dag:

    @task
    def build_accounts() -> list[dict[str, Any]]:
        return [
            {"Name": f"Example Account {i}", "External_Id__c": f"ACC-{i:04d}", "NumberOfEmployees": i * 10}
            for i in range(1, 21)
        ]

    SalesforceBulkOperator(
        task_id="insert_accounts",
        conn_id="salesforce_bulk_default",
        operation="upsert",
        object_name="Account",
        external_id_field="External_Id__c",
        records=build_accounts(),
        none_as="null",
        poll_interval=2,
        # Explicit: the operator's default follows [operators] default_deferrable, which is False.
        deferrable=True,
    )
