"""``make demo``: the example ETL DAG against the local Salesforce emulator, with ``airflow dags test``.

Starts the emulator on a free loopback port, points the ``salesforce_bulk_default`` connection at
it (``AIRFLOW_CONN_SALESFORCE_BULK_DEFAULT``), migrates a private SQLite metadata DB in
``./airflow_home`` (git-ignored), runs the DAG in one process, prints the summary from XCom and where
the result files are, and stops the emulator.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HOME = REPO / "airflow_home"
DAG_ID = "example_salesforce_bulk_etl"


def _env(conn: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "AIRFLOW_HOME": str(HOME),
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags_examples"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{HOME / 'airflow.db'}",
            "AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE": "True",
            "AIRFLOW_CONN_SALESFORCE_BULK_DEFAULT": conn,
        }
    )
    return env


def _airflow(env: dict[str, str], *args: str) -> None:
    airflow = Path(sys.executable).with_name("airflow")
    print(f"$ airflow {' '.join(args)}", flush=True)
    subprocess.run([str(airflow), *args], env=env, check=True)  # noqa: S603


def _summary() -> dict[str, object] | None:
    import sqlite3

    with sqlite3.connect(HOME / "airflow.db") as db:
        row = db.execute(
            "SELECT value FROM xcom WHERE dag_id = ? AND task_id = 'upsert_contacts' "
            "AND key = 'return_value' ORDER BY timestamp DESC LIMIT 1",
            (DAG_ID,),
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
        conn = emulator.airflow_connection()
        print(f"Salesforce emulator at {emulator.base_url}", flush=True)
        env = _env(conn)
        _airflow(env, "db", "migrate")
        try:
            _airflow(env, "dags", "test", DAG_ID)
        except subprocess.CalledProcessError as exc:
            print(f"airflow dags test failed with exit code {exc.returncode}", file=sys.stderr)
        summary = _summary()
        stored = len(emulator.records("Contact"))
    print("\n=== Summary pushed to XCom by upsert_contacts ===")
    print(json.dumps(summary, indent=2))
    if summary is None:
        return 1
    print(f"\nContacts now stored in the emulator: {stored}")
    print(f"Result files (successful, failed, unprocessed per job): {summary['results_path']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
