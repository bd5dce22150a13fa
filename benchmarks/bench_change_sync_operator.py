"""Change-only sync against a plain full upsert, through ``SalesforceBulkOperator`` (what a worker runs).

The same 1,000,000 rows as :mod:`.bench_change_sync` (1% changed), as a Parquet file given as the
operator's ``source`` (a warehouse table: the realistic case). Every run is in a child process of its
own with its own CPU clock, and the emulator in another (instant speed):

- full: ``operation="upsert"`` of the changed file, every row sent;
- seed: ``changes_only=True`` on the unchanged file (every row new): creates the state, not reported
  beside the others;
- sync: ``changes_only=True`` on the changed file against the seeded state (``delete_missing=True``,
  nothing absent): only the changed rows sent.

Worker CPU is the task process's: ``execute`` (reading the input, the comparison, staging, the jobs'
uploads) plus ``execute_complete`` (the result files, the state's advance), measured with
``time.process_time`` (every thread). The trigger runs in the same child between the two halves, as
the triggerer would, and its CPU is measured apart and NOT counted as the worker's (it runs in the
triggerer process, shared by every deferred task); it is printed beside. Libraries are imported
before the clock (a worker has them loaded); nothing else is warmed. Goals (issue 18): >= 10x less
worker CPU and >= 50x fewer records sent. ``CHANGE_SYNC_OPERATOR_ROWS`` sets the size;
``CHANGE_SYNC_PROFILE=<file>`` writes a cProfile of the sync run's worker halves.

The floor follows: the same runs at 1,000 rows (what a run costs whatever its size) and the CPU of
reading the input's rows and nothing else. A change-only run can cost no less than their sum, so the
full upsert's CPU over it is the most the CPU ratio can reach at the size measured, with a comparison
and a state advance that cost nothing.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._support import TaskStateStore, emulator_process, peak_rss_mb

ROWS = int(os.environ.get("CHANGE_SYNC_OPERATOR_ROWS", "1000000"))
FIXED_ROWS = 1_000  # a run this small costs (nearly) only what every run costs
CPU_GOAL = 10.0
SENT_GOAL = 50.0
CONN_ID = "sf_bench_change_sync"
OBJECT = "Warehouse_Item__c"
EXTERNAL_ID = "External_Id__c"


class _TI:
    dag_id, task_id, map_index, try_number = "bench_change_sync", "load", -1, 1

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id

    def xcom_push(self, key: str, value: Any) -> None:
        pass


def _operator(mode: str, source: str, work: Path) -> Any:
    from airflow_provider_salesforce_bulk.operators.salesforce_bulk import SalesforceBulkOperator

    sync: dict[str, Any] = {}
    if mode != "full":
        sync = {"changes_only": True, "sync_state_path": str(work / "state"), "delete_missing": True}
    return SalesforceBulkOperator(
        task_id="load",
        operation="upsert",
        object_name=OBJECT,
        external_id_field=EXTERNAL_ID,
        conn_id=CONN_ID,
        source=source,
        deferrable=True,
        poll_interval=0.5,
        results_path=str(work / f"results-{mode}"),
        staging_path=str(work / f"staging-{mode}"),
        **sync,
    )


def _timed(call: Any, profile: Any) -> tuple[Any, float, float]:
    """``call()``'s value (or the deferral it raised), its CPU and wall seconds."""
    from airflow.providers.common.compat.sdk import TaskDeferred

    cpu, wall = time.process_time(), time.perf_counter()
    if profile is not None:
        profile.enable()
    try:
        value = call()
    except TaskDeferred as deferred:  # the first half ends by deferring
        value = deferred
    finally:
        if profile is not None:
            profile.disable()
    return value, time.process_time() - cpu, time.perf_counter() - wall


def _phases() -> dict[str, float]:
    """The CPU seconds of the engine's two phases, timed where the operator calls them."""
    from airflow_provider_salesforce_bulk import sync
    from airflow_provider_salesforce_bulk.sync import advance, diff

    spent = {"compare": 0.0, "advance": 0.0}

    def timed(name: str, call: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            cpu = time.process_time()
            try:
                return call(*args, **kwargs)
            finally:
                spent[name] += time.process_time() - cpu

        return wrapper

    # The package resolves these names lazily; set on it, they are what the operator finds.
    sync.plan_sync = timed("compare", diff.plan_sync)  # type: ignore[attr-defined]
    sync.advance_state = timed("advance", advance.advance_state)  # type: ignore[attr-defined]
    return spent


def _load(mode: str, source: str, work: Path) -> dict[str, Any]:
    """One operator run; the worker's CPU and wall of its two halves, the trigger's apart."""
    from airflow.providers.common.compat.sdk import TaskDeferred

    phases = _phases()

    profile = None
    if mode == "sync" and os.environ.get("CHANGE_SYNC_PROFILE"):
        import cProfile

        profile = cProfile.Profile()
    op = _operator(mode, source, work)
    context: dict[str, Any] = {"ti": _TI(f"run-{mode}"), "task_state_store": TaskStateStore()}
    out: dict[str, Any] = {"trigger_cpu": 0.0, "trigger_s": 0.0, "complete_cpu": 0.0, "complete_s": 0.0}
    value, out["execute_cpu"], out["execute_s"] = _timed(lambda: op.execute(context), profile)
    if isinstance(value, TaskDeferred):
        trigger, kwargs = value.trigger, dict(value.kwargs or {})

        async def wait() -> dict[str, Any]:
            async for event in trigger.run():
                return dict(event.payload)
            raise AssertionError("the trigger ended without an event")

        # The triggerer's part: measured, not the worker's.
        event, out["trigger_cpu"], out["trigger_s"] = _timed(lambda: asyncio.run(wait()), None)
        value, out["complete_cpu"], out["complete_s"] = _timed(
            lambda: op.execute_complete(context, event, **kwargs), profile
        )
    if profile is not None:
        profile.dump_stats(os.environ["CHANGE_SYNC_PROFILE"])
    totals, section = value["totals"], value.get("sync") or {}
    assert totals["failed"] == 0, totals
    out.update(
        sent=totals["records"] + section.get("to_delete", 0),
        jobs=len(value["jobs"]) + len(section.get("delete_jobs", [])),
        sync=section,
        phases=phases,
    )
    return out


def _read(source: str) -> dict[str, Any]:
    """The CPU of reading every row of the input and nothing else: what any comparison costs at least.

    Read twice, the second timed: pyarrow's first-use costs (its thread pool, its allocator) are paid
    by the fixed-cost run too, and would count twice."""
    import pyarrow.parquet as pq

    def read() -> int:
        return sum(batch.num_rows for batch in pq.ParquetFile(source).iter_batches(batch_size=65_536))

    read()
    cpu = time.process_time()
    rows = read()
    return {"read_cpu": time.process_time() - cpu, "rows": rows}


def child(mode: str, source: str, work: str) -> None:
    # Loaded before the clock, as in a worker (pandas too: pyarrow's compute loads it on first use,
    # in both runs alike, which is no cost of either).
    import duckdb  # noqa: F401
    import pandas  # noqa: F401
    import pyarrow.parquet  # noqa: F401

    import airflow_provider_salesforce_bulk.operators.salesforce_bulk
    import airflow_provider_salesforce_bulk.sync.advance
    import airflow_provider_salesforce_bulk.sync.diff  # noqa: F401

    out = _read(source) if mode == "read" else _load(mode, source, Path(work))
    out["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(out))


def _run(env: dict[str, str], mode: str, source: Path, work: Path) -> dict[str, Any]:
    argv = [sys.executable, "-m", "benchmarks.bench_change_sync_operator", "--child", mode, str(source)]
    out = subprocess.run([*argv, str(work)], check=False, capture_output=True, text=True, env=env)  # noqa: S603
    if out.returncode != 0:
        raise RuntimeError(f"the {mode} run failed:\n{out.stderr[-4000:]}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def _report(mode: str, f: dict[str, Any]) -> None:
    section = f["sync"]
    extra = ""
    if section:
        extra = (
            f"; {section['records_read']:,} read, {section['unchanged']:,} unchanged, {section['changed']:,} "
            f"changed, {section['new']:,} new, state v{section['version_before']} -> v{section['version']}; "
            f"of the worker CPU: comparison (reading the input included) {f['phases']['compare']:.2f}s, "
            f"state advance {f['phases']['advance']:.2f}s"
        )
    print(
        f"{mode:>5}: {f['sent']:>9,} records sent in {f['jobs']} jobs, worker CPU "
        f"{f['execute_cpu'] + f['complete_cpu']:.2f}s = execute {f['execute_cpu']:.2f}s + execute_complete "
        f"{f['complete_cpu']:.2f}s, wall {f['execute_s'] + f['complete_s']:.2f}s (+ trigger wait "
        f"{f['trigger_s']:.2f}s, triggerer CPU {f['trigger_cpu']:.2f}s not counted), peak RSS "
        f"{f['peak_rss_mb']:.0f} MB{extra}",
        flush=True,
    )


def _measure(rows: int, work: Path, env: dict[str, str], report: bool) -> dict[str, Any]:
    """The full, seed and sync runs of ``rows`` rows (1% changed), and the read of the input alone."""
    from benchmarks import bench_change_sync

    bench_change_sync.ROWS = rows  # the shared writer's size
    folder = work / f"rows-{rows}"
    folder.mkdir()
    base, changed = folder / "base.parquet", folder / "changed.parquet"
    bench_change_sync.write_parquet(str(base), changed=False)
    bench_change_sync.write_parquet(str(changed), changed=True)
    runs: dict[str, dict[str, Any]] = {}
    for mode, source in (("full", changed), ("seed", base), ("sync", changed), ("read", changed)):
        runs[mode] = _run(env, mode, source, folder)
        if report and mode in ("full", "sync"):
            _report(mode, runs[mode])
    return runs


def _cpu(f: dict[str, Any]) -> float:
    return float(f["execute_cpu"] + f["complete_cpu"])


def main() -> bool:
    from airflow_provider_salesforce_bulk.emulator.credentials import Credentials

    with tempfile.TemporaryDirectory(prefix="bench-change-sync-op-") as folder:
        work = Path(folder)
        env = dict(os.environ)
        env.setdefault("AIRFLOW_HOME", str(work / "airflow_home"))
        env.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
        env["AIRFLOW__LOGGING__LOGGING_LEVEL"] = "WARNING"
        with emulator_process() as base_url:
            env[f"AIRFLOW_CONN_{CONN_ID.upper()}"] = Credentials().airflow_connection(base_url)
            runs = _measure(ROWS, work, env, report=True)
            fixed = _measure(FIXED_ROWS, work, env, report=False)
    full, sync = runs["full"], runs["sync"]

    def wall(f: dict[str, Any]) -> float:
        return float(f["execute_s"] + f["trigger_s"] + f["complete_s"])

    cpu_ratio = _cpu(full) / _cpu(sync)
    sent_ratio = full["sent"] / max(sync["sent"], 1)
    print(
        f"Operator, Parquet source, {ROWS:,} rows, 1% changed: change-only vs full upsert: {cpu_ratio:.1f}x "
        f"less worker CPU (goal {CPU_GOAL:g}x), {sent_ratio:.0f}x fewer records sent (goal {SENT_GOAL:g}x), "
        f"{wall(full) / wall(sync):.1f}x less wall (trigger wait included), jobs {full['jobs']} vs "
        f"{sync['jobs']}"
    )
    # What any run costs whatever its size (Airflow's first use of object storage, the job's requests,
    # the plan store, the state's files), and reading the input: a change-only run can cost no less, so
    # the full upsert's CPU over their sum is the most the CPU ratio can reach at this size.
    least = _cpu(fixed["sync"]) + runs["read"]["read_cpu"]
    print(
        f"Floor: a change-only run of {FIXED_ROWS:,} rows ({FIXED_ROWS // 100:,} changed) costs "
        f"{_cpu(fixed['sync']):.2f}s of worker CPU (full upsert {_cpu(fixed['full']):.2f}s), reading the "
        f"{ROWS:,} rows alone {runs['read']['read_cpu']:.2f}s: the CPU ratio can reach at most "
        f"{_cpu(full) / least:.1f}x at this size, with a comparison and a state advance costing nothing"
    )
    return cpu_ratio >= CPU_GOAL and sent_ratio >= SENT_GOAL


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        sys.exit(0 if main() else 1)
