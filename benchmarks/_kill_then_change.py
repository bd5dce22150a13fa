"""The fault bench's kill-then-change runs (issue 15 §1): a worker dies after some of its jobs exist,
then, before Airflow's retry, the input changes as it does in real pipelines.

Each scenario loads ``ROWS`` Contacts by ``insert`` (``LastName`` holds the record's own key and is not
unique in the org, so a record sent twice is stored twice), ``PER_JOB`` records a job, deferrable,
``retries=1``, through ``dag.test()``. The first try dies when it is about to create job
``KILL_AFTER_JOBS + 1``: the input is changed, then the try ends with nothing it would still do (its
abort is refused, as a killed process sends none), as ``tests/airflow/test_reattach.py`` simulates a
kill. The retry then runs on the changed input.

- ``parquet_rewritten``: the Parquet file is written again with its rows in another order;
- ``sql_reordered``: a query without ``ORDER BY`` returns its rows in another order (SQLite);
- ``sql_row_on_top``: a query with ``ORDER BY`` gets one new row sorting first;
- ``records_regenerated``: ``records=`` (what an upstream task's XCom holds) comes back in another order.

A run passes when every record is stored once (task green, summary equal to the org) or when the
retry failed before creating any job, naming the chunk that changed (nothing sent twice, nothing
skipped silently). Anything else is DUPLICATED/MISSING.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sqlite3
import textwrap
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from benchmarks._dag_runs import admin, run_dag
from benchmarks._fault_count import count_load, stored_keys, verdict

ROWS = int(os.environ.get("SF_BULK_CHANGE_ROWS", "20000"))
PER_JOB = max(1, ROWS // 10)
KILL_AFTER_JOBS = 3
KEY_FIELD = "LastName"
SQL_CONN_ID = "bench_warehouse"
SCENARIOS = ("parquet_rewritten", "sql_reordered", "sql_row_on_top", "records_regenerated")
# The row a source gains at the top: sorts before every "K-<digits>" key ("(" < "0").
NEW_TOP_KEY = "K-(new)"


class WorkerKilled(RuntimeError):
    """The first try's end: what a SIGKILL leaves (jobs created, nothing aborted, nothing cleaned)."""


# -- the inputs -------------------------------------------------------------------------------------


def _key(i: int) -> str:
    return f"K-{i:07d}"


def _rows(seed: int | None) -> list[tuple[str, str]]:
    rows = [(_key(i), f"Changed {i}") for i in range(ROWS)]
    if seed is not None:
        random.Random(seed).shuffle(rows)
    return rows


def _write_parquet(path: Path, rows: list[tuple[str, str]]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"LastName": [k for k, _ in rows], "FirstName": [f for _, f in rows]})
    tmp = path.with_suffix(".tmp")
    pq.write_table(table, tmp, row_group_size=max(1, ROWS // 4))
    tmp.replace(path)  # as an upstream task replaces its output


def _write_table(path: Path, rows: list[tuple[str, str]]) -> None:
    with sqlite3.connect(path) as db:
        db.execute("DROP TABLE IF EXISTS people")
        # No primary key: a scan without ORDER BY returns rows in the order they were inserted.
        db.execute("CREATE TABLE people (k TEXT, first TEXT)")
        db.executemany("INSERT INTO people VALUES (?, ?)", rows)


def _write_records(path: Path, rows: list[tuple[str, str]]) -> None:
    path.write_text(json.dumps([{"LastName": k, "FirstName": f} for k, f in rows]))


def build(scenario: str, directory: Path) -> None:
    """The input the first try reads."""
    directory.mkdir(parents=True, exist_ok=True)
    if scenario == "parquet_rewritten":
        _write_parquet(directory / "people.parquet", _rows(None))
    elif scenario.startswith("sql_"):
        _write_table(directory / "warehouse.db", _rows(None))
    else:
        _write_records(directory / "records.json", _rows(None))


def change(scenario: str, directory: Path) -> None:
    """The input as the retry finds it."""
    if scenario == "parquet_rewritten":
        _write_parquet(directory / "people.parquet", _rows(seed=15))
    elif scenario == "sql_reordered":
        _write_table(directory / "warehouse.db", _rows(seed=15))
    elif scenario == "sql_row_on_top":
        with sqlite3.connect(directory / "warehouse.db") as db:
            db.execute("INSERT INTO people VALUES (?, ?)", (NEW_TOP_KEY, "Arrived"))
    else:
        _write_records(directory / "records.json", _rows(seed=15))


def keys(scenario: str, directory: Path) -> set[str]:
    """The keys the input holds now."""
    if scenario == "parquet_rewritten":
        import pyarrow.parquet as pq

        return {str(k) for k in pq.read_table(directory / "people.parquet")["LastName"].to_pylist()}
    if scenario.startswith("sql_"):
        with sqlite3.connect(directory / "warehouse.db") as db:
            return {str(k) for (k,) in db.execute("SELECT k FROM people")}
    return {r["LastName"] for r in json.loads((directory / "records.json").read_text())}


def _source(scenario: str, directory: Path) -> str:
    if scenario == "parquet_rewritten":
        return f"source={str(directory / 'people.parquet')!r}"
    if scenario.startswith("sql_"):
        sql = "SELECT k AS LastName, first AS FirstName FROM people"
        if scenario == "sql_row_on_top":
            sql += " ORDER BY k"
        return f"sql={sql!r}, sql_conn_id={SQL_CONN_ID!r}"
    return "records=[]"  # set from the file at each try, as a rendered XCom would be


# -- in the child: the operator whose first try is killed --------------------------------------------


def execute(op: Any, context: Mapping[str, Any], run: Callable[[Any], Any], scenario: str, where: str) -> Any:
    """``op.execute`` (``run``), killed in its first try before job ``KILL_AFTER_JOBS + 1``."""
    from airflow_provider_salesforce_bulk.client import BulkIngestClient

    directory = Path(where)
    if scenario == "records_regenerated":
        op.records = json.loads((directory / "records.json").read_text())
    if context["ti"].try_number > 1:
        return noting_failure(directory, run, context)
    originals = BulkIngestClient.create_job_from_spec, BulkIngestClient.abort_job
    created = 0

    async def refuse(client: Any, job_id: str) -> Any:
        raise WorkerKilled(f"a killed worker aborts nothing ({job_id})")

    async def create(client: Any, spec: Any) -> Any:
        nonlocal created
        created += 1
        if created <= KILL_AFTER_JOBS:
            return await originals[0](client, spec)
        ids = [job.id async for job in client.list_jobs()]
        (directory / "jobs_at_kill.json").write_text(json.dumps(ids))
        change(scenario, directory)
        BulkIngestClient.abort_job = refuse
        raise WorkerKilled(f"worker killed with {len(ids)} jobs created")

    BulkIngestClient.create_job_from_spec = create
    try:
        return run(context)
    finally:
        BulkIngestClient.create_job_from_spec, BulkIngestClient.abort_job = originals


def noting_failure(directory: Path, run: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``run(*args)``; an exception's text is kept for the bench (its verdict reads it)."""
    try:
        return run(*args, **kwargs)
    except Exception as exc:
        with (directory / "failure.txt").open("a") as out:
            out.write(f"{type(exc).__name__}: {exc}\n")
        raise


_DAG = """
import datetime
from airflow.sdk import DAG
from airflow_provider_salesforce_bulk.operators.salesforce_bulk import SalesforceBulkOperator
from benchmarks import _kill_then_change as bench

class KilledThenChanged(SalesforceBulkOperator):
    def execute(self, context):
        return bench.execute(self, context, super().execute, {scenario!r}, {where!r})

    def execute_complete(self, context, event=None, **kwargs):
        run = super().execute_complete
        return bench.noting_failure(bench.Path({where!r}), run, context, event, **kwargs)

with DAG({dag_id!r}, schedule=None, start_date=datetime.datetime(2024, 1, 1)) as dag:
    KilledThenChanged(
        task_id="load", operation="insert", object_name="Contact", conn_id={conn_id!r},
        {source}, max_records_per_job={per_job}, deferrable=True, poll_interval=0.5,
        results_path={results!r}, timeout=900, retries=1, retry_delay=datetime.timedelta(0),
    )
"""


# -- in the bench: one scenario ------------------------------------------------------------------------


def _job_ids(base_url: str, client_id: str, client_secret: str) -> list[str]:
    from airflow_provider_salesforce_bulk.client import (
        BulkIngestClient,
        ClientCredentialsAuth,
        SalesforceSession,
    )

    async def listed() -> list[str]:
        async with SalesforceSession(ClientCredentialsAuth(client_id, client_secret, base_url)) as session:
            return [job.id async for job in BulkIngestClient(session).list_jobs()]

    return asyncio.run(listed())


def run(env: dict[str, str], work: Path, base_url: str, conn_id: str, scenario: str) -> dict[str, Any]:
    """One scenario against a reset emulator; its counts and verdict."""
    from airflow_provider_salesforce_bulk.emulator.credentials import Credentials

    admin(base_url, "reset", {})
    directory = work / "changes" / scenario
    build(scenario, directory)
    first_keys = keys(scenario, directory)
    dag_id = f"kill_then_change_{scenario}"
    dag_file = work / "dags" / f"{dag_id}.py"
    dag_file.write_text(
        textwrap.dedent(
            _DAG.format(
                dag_id=dag_id,
                scenario=scenario,
                where=str(directory),
                conn_id=conn_id,
                source=_source(scenario, directory),
                per_job=PER_JOB,
                results=str(work / "results" / dag_id),
            )
        )
    )
    child_env = dict(env)
    child_env[f"AIRFLOW_CONN_{SQL_CONN_ID.upper()}"] = json.dumps(
        {"conn_type": "sqlite", "host": str(directory / "warehouse.db")}
    )
    log = work / f"{dag_id}.log"
    outcome = run_dag(child_env, dag_file, dag_id, log)
    killed_at = directory / "jobs_at_kill.json"
    if not killed_at.exists():
        raise RuntimeError(f"{scenario}: the first try was never killed, see {log}")
    creds = Credentials()
    jobs = set(_job_ids(base_url, creds.client_id, creds.client_secret))
    new_jobs = len(jobs - set(json.loads(killed_at.read_text())))
    summary = outcome["summary"] or {}
    totals = summary.get("totals") or {}
    reported_not_stored = int(totals.get("failed", 0)) + int(totals.get("unprocessed", 0))
    stored = stored_keys(admin(base_url, "records/Contact"), KEY_FIELD)
    claimed = int(totals["records"]) if "records" in totals else None
    count = count_load(stored, [first_keys, keys(scenario, directory)], reported_not_stored, claimed)
    failure_file = directory / "failure.txt"
    failure = failure_file.read_text().strip().splitlines()[-1] if failure_file.exists() else None
    summary_vs_org = int(totals["succeeded"]) - count.stored if "succeeded" in totals else None
    succeeded = outcome["state"] == "success"
    return {
        **outcome,
        "name": scenario,
        "count": count,
        "new_jobs": new_jobs,
        "summary_vs_org": summary_vs_org,
        "failure": failure,
        "verdict": verdict(
            count,
            succeeded=succeeded,
            summary_vs_org=summary_vs_org,
            new_jobs_after_kill=new_jobs,
            failure=failure,
        ),
        "log": str(log),
    }
