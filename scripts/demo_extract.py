"""``make demo-extract``: the extract ETL round trip DAG against the local Salesforce emulator.

Starts the emulator, loads some Accounts into it (the org's data: the emulator starts empty), runs
``example_salesforce_bulk_extract`` with ``airflow dags test`` (an incremental query of the changed
Accounts to Parquet, a primary Contact derived for each, upserted back), prints both summaries from
XCom and what the emulator holds, then runs it again with nothing new (an empty extract, no load job),
and stops the emulator. Same private ``./airflow_home`` as ``make demo``; the task's watermark is
deleted first, since every demo starts a fresh, empty org.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
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


def _xcom(task_id: str, dag_id: str = DAG_ID) -> dict[str, Any] | None:
    with sqlite3.connect(HOME / "airflow.db") as db:
        row = db.execute(
            "SELECT value FROM xcom WHERE dag_id = ? AND task_id = ? AND key = 'return_value' "
            "ORDER BY timestamp DESC LIMIT 1",
            (dag_id, task_id),
        ).fetchone()
    if row is None:
        return None
    value = row[0]
    data = json.loads(value) if isinstance(value, (str, bytes)) else value
    return data if isinstance(data, dict) else None


def _run_dag(env: dict[str, str], dag_id: str = DAG_ID) -> bool:
    try:
        _airflow(env, "dags", "test", dag_id)
    except subprocess.CalledProcessError as exc:
        print(f"airflow dags test failed with exit code {exc.returncode}", file=sys.stderr)
        return False
    return True


def main() -> int:
    from airflow_provider_salesforce_bulk.emulator.server import run_emulator
    from airflow_provider_salesforce_bulk.operators.watermark import WatermarkStore

    HOME.mkdir(exist_ok=True)
    with run_emulator(records_per_second=200.0) as emulator:
        print(f"Salesforce emulator at {emulator.base_url}", flush=True)
        asyncio.run(_seed(emulator))
        # An incremental run reads up to the whole second before it starts.
        time.sleep(2.1)
        env = _env(emulator.airflow_connection())
        _airflow(env, "db", "migrate")
        key = WatermarkStore(DAG_ID, "extract_accounts").variable_key()
        subprocess.run(  # noqa: S603 - a fresh org: start without a mark (absent on a first demo)
            [str(Path(sys.executable).with_name("airflow")), "variables", "delete", key], env=env, check=False
        )
        first = _run_dag(env)
        extract = _xcom("extract_accounts")
        load = _xcom("upsert_contacts")
        contacts = emulator.records("Contact")
        jobs_before = len(emulator.emulator.store.list_jobs(0, 10_000))
        print("\n=== A second run with nothing new ===", flush=True)
        second = _run_dag(env)
        empty = _xcom("extract_accounts")
        jobs_after = len(emulator.emulator.store.list_jobs(0, 10_000))
    print("\n=== Summary pushed to XCom by extract_accounts ===")
    print(json.dumps(extract, indent=2))
    print("\n=== Summary pushed to XCom by upsert_contacts ===")
    print(json.dumps(load, indent=2))
    print("\n=== Summary of the second extract (nothing new) ===")
    print(json.dumps(empty, indent=2))
    if extract is None or load is None or empty is None or not (first and second):
        return 1
    primary = [c for c in contacts if str(c.get("External_Id__c") or "").startswith("PRIMARY-")]
    print(f"\nAccounts extracted: {extract['records']} into {len(extract['files'])} Parquet file(s)")
    print(f"Primary contacts now stored in the emulator: {len(primary)}")
    print(
        f"Second run: {empty['records']} Accounts extracted, {jobs_after - jobs_before} load job(s) created"
    )
    ok = extract["records"] == ACCOUNTS == len(primary)
    return 0 if ok and empty["records"] == 0 and jobs_after == jobs_before else 1


if __name__ == "__main__":
    sys.exit(main())
