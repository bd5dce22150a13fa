"""Fault suite: 100,000 records through the operator under every emulator fault, with Airflow's retries.

Each run loads the same records with ``insert`` (an upsert would hide a chunk loaded twice) through
``SalesforceBulkOperator`` in ``dag.test()``: deferred, ``retries`` tries, the emulator in a process of
its own with one kind of fault switched on and a seed. After the run it compares three things:
the input, what the org holds (from the emulator's admin endpoint) and the task's summary (XCom).

Per run it prints: records in, stored, duplicated, missing (neither stored nor reported failed or
unprocessed by the summary), the summary's own mismatch with the org, jobs and tries. The goal is 0
duplicated and 0 unaccounted in every run; a task may end failed only loudly (a Failed job, or
failures beyond the threshold), and then its summary must still equal the org.
"""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from pathlib import Path
from typing import Any

from benchmarks._support import emulator_process

RECORDS = int(os.environ.get("SF_BULK_FAULT_RECORDS", "100000"))
PER_JOB = RECORDS // 10
SEEDS = tuple(int(s) for s in os.environ.get("SF_BULK_FAULT_SEEDS", "1,2,3").split(","))
RETRIES = 5
CONN_ID = "sf_faults"
_MARK = "BENCH_FAULTS_OUTCOME "

# One kind of fault per scenario, each strong enough to hit most runs many times.
SCENARIOS: dict[str, dict[str, Any]] = {
    "none": {},
    "http_503_500": {"error_503_rate": 0.08, "error_500_rate": 0.04},
    "dropped_connections": {"drop_rate": 0.08},
    "latency": {"latency_seconds": 0.15},
    "session_expiry": {"session_expiry_every_seconds": 1.5},
    "lock_errors": {"lock_failure_rate": 0.01},
    "failing_jobs": {"job_failure_rate": 0.25},
    "lost_close_answers": {"lost_close_rate": 0.5},
}


def _admin(base_url: str, path: str, payload: Any = None) -> Any:
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(  # noqa: S310 - loopback emulator
        f"{base_url}/__emulator__/{path}",
        data=data,
        method="GET" if data is None else "POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=120) as response:  # noqa: S310
        body = response.read()
    return json.loads(body) if body else None


def write_input(path: Path, n: int) -> None:
    with path.open("w") as out:
        for i in range(n):
            out.write(json.dumps({"LastName": f"Fault {i}", "External_Id__c": f"F-{i}"}) + "\n")


_DAG = """
import datetime
from airflow.sdk import DAG
from airflow_provider_salesforce_bulk.operators.salesforce_bulk import SalesforceBulkOperator

with DAG({dag_id!r}, schedule=None, start_date=datetime.datetime(2024, 1, 1)) as dag:
    SalesforceBulkOperator(
        task_id="load", operation="insert", object_name="Contact", conn_id={conn_id!r},
        source={source!r}, max_records_per_job={per_job}, deferrable=True, poll_interval=0.5,
        max_failed_ratio=0.05, results_path={results!r}, timeout=900, resubmit_backoff=1,
        retries={retries}, retry_delay=datetime.timedelta(0),
    )
"""


def child(dag_file: str, dag_id: str) -> None:
    """Run one DAG with dag.test() and print its outcome as one JSON line."""
    import importlib.util

    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    spec = importlib.util.spec_from_file_location(f"bench_faults_{dag_id}", dag_file)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    started = time.perf_counter()
    dr = module.dag.test()
    seconds = time.perf_counter() - started
    ti = dr.get_task_instance("load")
    with create_session() as session:
        raw = session.scalars(
            select(XComModel.value).where(
                XComModel.dag_id == dag_id, XComModel.task_id == "load", XComModel.key == "return_value"
            )
        ).first()
    summary = json.loads(raw) if isinstance(raw, str) else raw
    outcome = {"state": str(dr.state), "tries": ti.try_number, "summary": summary, "seconds": seconds}
    print(_MARK + json.dumps(outcome, default=str), flush=True)


def _run(
    env: dict[str, str], work: Path, base_url: str, name: str, seed: int, source: Path
) -> dict[str, Any]:
    _admin(base_url, "reset", {})
    _admin(base_url, "settings", {**{"seed": seed}, **SCENARIOS[name]})
    dag_id = f"faults_{name}_{seed}"
    dag_file = work / "dags" / f"{dag_id}.py"
    dag_file.write_text(
        textwrap.dedent(
            _DAG.format(
                dag_id=dag_id,
                conn_id=CONN_ID,
                source=str(source),
                per_job=PER_JOB,
                results=str(work / "results" / dag_id),
                retries=RETRIES,
            )
        )
    )
    log = work / f"{dag_id}.log"
    with log.open("w") as output:
        out = subprocess.run(  # noqa: S603 - this module, in a child
            [sys.executable, "-m", "benchmarks.bench_faults", "--child", str(dag_file), dag_id],
            check=False,
            stdout=output,
            stderr=subprocess.STDOUT,
            env=env,
            timeout=1800,
        )
    # Faults off before reading the org, so the count itself cannot fail.
    _admin(base_url, "settings", {key: _off(value) for key, value in SCENARIOS[name].items()})
    lines = [line[len(_MARK) :] for line in log.read_text().splitlines() if line.startswith(_MARK)]
    if out.returncode != 0 or not lines:
        tail = log.read_text()[-4000:]
        raise RuntimeError(f"{name} seed {seed}: the child failed ({out.returncode}):\n{tail}")
    outcome = dict(json.loads(lines[-1]))
    stored = [r.get("External_Id__c") for r in _admin(base_url, "records/Contact")]
    counts = collections.Counter(stored)
    summary = outcome["summary"] or {}
    totals = summary.get("totals") or {}
    unique = len(counts)
    duplicated = sum(c - 1 for c in counts.values())
    reported_not_stored = int(totals.get("failed", 0)) + int(totals.get("unprocessed", 0))
    outcome.update(
        name=name,
        seed=seed,
        records=RECORDS,
        stored=len(stored),
        duplicated=duplicated,
        missing=RECORDS - unique - reported_not_stored,
        summary_vs_org=int(totals.get("succeeded", -1)) - len(stored),
        summary_records=int(totals.get("records", -1)),
        jobs=int(totals.get("jobs", 0)),
        log=str(log),
    )
    return outcome


def _off(value: Any) -> Any:
    if isinstance(value, bool):
        return False
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return 0.0 if isinstance(value, float) else 0
    return None


def main() -> bool:
    from airflow_provider_salesforce_bulk.emulator.credentials import Credentials

    work = Path(tempfile.mkdtemp(prefix="bench-faults-"))
    (work / "dags").mkdir()
    env = dict(os.environ)
    env["AIRFLOW_HOME"] = str(work / "airflow_home")
    env["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
    env["AIRFLOW__CORE__DAGS_FOLDER"] = str(work / "dags")
    env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{work / 'airflow.db'}"
    env["AIRFLOW__LOGGING__LOGGING_LEVEL"] = "INFO"
    subprocess.run(  # noqa: S603
        [str(Path(sys.executable).with_name("airflow")), "db", "migrate"],
        check=True,
        capture_output=True,
        env=env,
    )
    source = work / "records.ndjson"
    write_input(source, RECORDS)
    creds = Credentials()
    ok = True
    rows: list[dict[str, Any]] = []
    with emulator_process() as base_url:
        env[f"AIRFLOW_CONN_{CONN_ID.upper()}"] = creds.airflow_connection(base_url)
        for name in SCENARIOS:
            for seed in SEEDS:
                r = _run(env, work, base_url, name, seed, source)
                rows.append(r)
                good = r["duplicated"] == 0 and r["missing"] == 0 and r["summary_vs_org"] == 0
                ok = ok and good
                print(
                    f"{name:>20} seed {seed}: {r['records']:,} in, {r['stored']:,} stored, "
                    f"{r['duplicated']} duplicated, {r['missing']} missing, "
                    f"summary-org {r['summary_vs_org']:+d}, "
                    f"{r['jobs']} jobs, {r['tries']} tries, task {r['state']}, {r['seconds']:.0f}s"
                    + ("" if good else f"  <-- FAILS THE GOAL (log: {r['log']})"),
                    flush=True,
                )
    verdict = "met" if ok else "NOT met"
    print(f"goal: 0 duplicated, 0 missing, summary equal to the org in every run: {verdict}")
    return ok


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3])
    else:
        sys.exit(0 if main() else 1)
