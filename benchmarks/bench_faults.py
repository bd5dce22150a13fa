"""Fault suite: records through the operator under every emulator fault, and after a kill with the input
changed before the retry, with Airflow's retries.

Each fault run loads the same 100,000 records with ``insert`` (an upsert would hide a chunk loaded
twice) through ``SalesforceBulkOperator`` in ``dag.test()``: deferred, ``retries`` tries, the emulator
in a process of its own with one kind of fault switched on and a seed. The records carry no unique
field: ``LastName`` holds each record's own key and the org does not keep it unique, so a record sent
twice is stored twice (with a unique ``External_Id__c`` the org would refuse the second copy with
DUPLICATE_VALUE and the bench could never see it). After the run it compares three things: the input,
what the org holds (from the emulator's admin endpoint), counted by that key, and the task's summary.

Per run it prints: records in, stored, duplicated, missing (neither stored nor reported failed or
unprocessed by the summary), the summary's own mismatch with the org, jobs and tries. The goal is 0
duplicated and 0 unaccounted in every run; a task may end failed only loudly (a Failed job, or
failures beyond the threshold), and then its summary must still equal the org.

Then the kill-then-change runs of :mod:`benchmarks._kill_then_change` (issue 15 §1), with a verdict
each: "exactly once", "failed loudly before any new job" (naming the chunk that changed), or
DUPLICATED/MISSING. ``SF_BULK_FAULT_SCENARIOS`` picks scenarios by name (both kinds, comma-separated);
``SF_BULK_FAULT_RECORDS`` and ``SF_BULK_CHANGE_ROWS`` set the sizes.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any

from benchmarks import _kill_then_change as changes
from benchmarks._dag_runs import admin, airflow_env, run_dag
from benchmarks._fault_count import EXACTLY_ONCE, FAILED_LOUDLY, count_load, stored_keys
from benchmarks._support import emulator_process

RECORDS = int(os.environ.get("SF_BULK_FAULT_RECORDS", "100000"))
PER_JOB = RECORDS // 10
SEEDS = tuple(int(s) for s in os.environ.get("SF_BULK_FAULT_SEEDS", "1,2,3").split(","))
RETRIES = 5
CONN_ID = "sf_faults"
KEY_FIELD = "LastName"

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
_CHOSEN = os.environ.get("SF_BULK_FAULT_SCENARIOS")
CHOSEN = None if not _CHOSEN else set(_CHOSEN.split(","))


def _key(i: int) -> str:
    return f"F-{i}"


def write_input(path: Path, n: int) -> None:
    """``n`` Contacts whose only key is ``LastName``, a field the org does not keep unique."""
    with path.open("w") as out:
        for i in range(n):
            out.write(json.dumps({"LastName": _key(i), "FirstName": "Fault"}) + "\n")


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


def _run(
    env: dict[str, str], work: Path, base_url: str, name: str, seed: int, source: Path
) -> dict[str, Any]:
    admin(base_url, "reset", {})
    admin(base_url, "settings", {**{"seed": seed}, **SCENARIOS[name]})
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
    try:
        outcome = run_dag(env, dag_file, dag_id, log)
    finally:
        # Faults off before reading the org, so the count itself cannot fail.
        admin(base_url, "settings", {key: _off(value) for key, value in SCENARIOS[name].items()})
    summary = outcome["summary"] or {}
    totals = summary.get("totals") or {}
    reported_not_stored = int(totals.get("failed", 0)) + int(totals.get("unprocessed", 0))
    stored = stored_keys(admin(base_url, "records/Contact"), KEY_FIELD)
    count = count_load(stored, [{_key(i) for i in range(RECORDS)}], reported_not_stored)
    outcome.update(
        name=name,
        seed=seed,
        records=RECORDS,
        stored=count.stored,
        duplicated=count.duplicated,
        missing=count.missing + count.extra,
        summary_vs_org=int(totals.get("succeeded", -1)) - count.stored,
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


def _faults(env: dict[str, str], work: Path, base_url: str) -> bool:
    chosen = [name for name in SCENARIOS if CHOSEN is None or name in CHOSEN]
    source = work / "records.ndjson"
    if chosen:
        write_input(source, RECORDS)
    ok = True
    for name in chosen:
        for seed in SEEDS:
            r = _run(env, work, base_url, name, seed, source)
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
    return ok


def _kill_then_change(env: dict[str, str], work: Path, base_url: str) -> bool:
    chosen = [name for name in changes.SCENARIOS if CHOSEN is None or name in CHOSEN]
    if not chosen:
        return True
    print(
        f"kill-then-change: {changes.ROWS:,} records, {changes.PER_JOB:,} a job, the first try killed "
        f"with {changes.KILL_AFTER_JOBS} jobs created, the input changed before the retry:"
    )
    ok = True
    for name in chosen:
        r = changes.run(env, work, base_url, CONN_ID, name)
        c = r["count"]
        good = r["verdict"] in (EXACTLY_ONCE, FAILED_LOUDLY)
        ok = ok and good
        org = "-" if r["summary_vs_org"] is None else f"{r['summary_vs_org']:+d}"
        print(
            f"{name:>20}: {c.stored:,} stored, {c.duplicated:,} duplicated, {c.missing:,} missing"
            f"{'' if not c.extra else f', {c.extra:,} not in the input'}, summary-org {org}, "
            f"{r['new_jobs']} jobs after the kill, {r['tries']} tries, task {r['state']}, "
            f"{r['seconds']:.0f}s: {r['verdict']}"
            + ("" if good else f"  <-- FAILS THE GOAL (log: {r['log']})"),
            flush=True,
        )
        if r["failure"] and (not good or r["verdict"] == FAILED_LOUDLY):
            print(f"{'':>22}the retry said: {r['failure']}")
    return ok


def main() -> bool:
    from airflow_provider_salesforce_bulk.emulator.credentials import Credentials

    work = Path(tempfile.mkdtemp(prefix="bench-faults-"))
    env = airflow_env(work)
    with emulator_process() as base_url:
        env[f"AIRFLOW_CONN_{CONN_ID.upper()}"] = Credentials().airflow_connection(base_url)
        changed_ok = _kill_then_change(env, work, base_url)
        faults_ok = _faults(env, work, base_url)
    print(
        "goal: 0 duplicated, 0 missing, summary equal to the org in every fault run: "
        + ("met" if faults_ok else "NOT met")
    )
    print(
        "goal: every kill-then-change run exactly once or failed loudly before any new job: "
        + ("met" if changed_ok else "NOT met")
    )
    return faults_ok and changed_ok


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
