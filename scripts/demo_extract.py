"""``make demo-extract``: the extract ETL round trip DAG against the local Salesforce emulator.

Starts the emulator, loads some Accounts into it (the org's data: the emulator starts empty), runs
``example_salesforce_bulk_extract`` with ``airflow dags test`` (an incremental query of the changed
Accounts to Parquet, a primary Contact derived for each, upserted back), prints both summaries from
XCom and what the emulator holds, and stops the emulator. Same private ``./airflow_home`` as ``make demo``.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import sqlite3
import subprocess
import sys
from typing import Any

from demo import HOME, _airflow, _env

DAG_ID = "example_salesforce_bulk_extract"
ACCOUNTS = 120
INDUSTRIES = ("Banking", "Energy", "Technology", None)


def _accounts() -> list[dict[str, Any]]:
    out = []
    for i in range(ACCOUNTS):
        account: dict[str, Any] = {"Name": f"Demo Account {i:03d}", "External_Id__c": f"DEMO-{i:05d}"}
        if INDUSTRIES[i % 4] is not None:
            account["Industry"] = INDUSTRIES[i % 4]
        if i % 3:
            account["NumberOfEmployees"] = 10 * i
            account["AnnualRevenue"] = 2500.5 * i
        out.append(account)
    return out


async def _seed(emulator: Any) -> None:
    from airflow_provider_salesforce_bulk.client import (
        BulkIngestClient,
        ClientCredentialsAuth,
        SalesforceSession,
        TokenCache,
    )

    c = emulator.credentials
    auth = ClientCredentialsAuth(c.client_id, c.client_secret, emulator.base_url)
    async with SalesforceSession(auth, token_cache=TokenCache()) as session:
        async for result in BulkIngestClient(session).perform_operation(
            "insert", "Account", _accounts(), polling_interval=0.2
        ):
            print(f"Seeded the org: {result.job_info.number_records_processed} Accounts", flush=True)


def _xcom(task_id: str) -> dict[str, Any] | None:
    with sqlite3.connect(HOME / "airflow.db") as db:
        row = db.execute(
            "SELECT value FROM xcom WHERE dag_id = ? AND task_id = ? AND key = 'return_value' "
            "ORDER BY timestamp DESC LIMIT 1",
            (DAG_ID, task_id),
        ).fetchone()
    if row is None:
        return None
    value = row[0]
    data = json.loads(value) if isinstance(value, (str, bytes)) else value
    return data if isinstance(data, dict) else None


def main() -> int:
    from airflow_provider_salesforce_bulk.emulator.server import run_emulator

    HOME.mkdir(exist_ok=True)
    with run_emulator(records_per_second=200.0) as emulator:
        print(f"Salesforce emulator at {emulator.base_url}", flush=True)
        # The run's data interval starts before the seed, so its incremental query finds those Accounts.
        since = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
        since -= datetime.timedelta(seconds=1)
        asyncio.run(_seed(emulator))
        env = _env(emulator.airflow_connection())
        _airflow(env, "db", "migrate")
        try:
            _airflow(env, "dags", "test", DAG_ID, since.isoformat())
        except subprocess.CalledProcessError as exc:
            print(f"airflow dags test failed with exit code {exc.returncode}", file=sys.stderr)
        extract = _xcom("extract_accounts")
        load = _xcom("upsert_contacts")
        contacts = emulator.records("Contact")
    print("\n=== Summary pushed to XCom by extract_accounts ===")
    print(json.dumps(extract, indent=2))
    print("\n=== Summary pushed to XCom by upsert_contacts ===")
    print(json.dumps(load, indent=2))
    if extract is None or load is None:
        return 1
    primary = [c for c in contacts if str(c.get("External_Id__c") or "").startswith("PRIMARY-")]
    print(f"\nAccounts extracted: {extract['records']} into {len(extract['files'])} Parquet file(s)")
    print(f"Primary contacts now stored in the emulator: {len(primary)}")
    return 0 if extract["records"] == ACCOUNTS == len(primary) else 1


if __name__ == "__main__":
    sys.exit(main())
