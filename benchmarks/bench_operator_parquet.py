"""End to end through the operator: a Parquet file against the same records as Python dicts.

``SalesforceBulkOperator`` inserts 1,000,000 records of eight mixed columns (two identifier-like
strings, a name that is sometimes quoted, an integer with nulls, a float, a boolean, a UTC timestamp
and a picklist) into the emulator, which runs in a process of its own at instant speed. Once from a
Parquet file (``source=``, the Arrow path), once from the same records as a list of dicts
(``records=``, the dict path; built from the same file with ``to_pylist`` before the clock starts,
as a list arriving by XCom would be).

Each run is in a child process, so the figures are the worker's alone: the CPU seconds
(``time.process_time``, every thread of the process) of ``execute`` (the validation pass over all
records, then the submission: one job per chunk, uploads, closes) and of ``execute_complete`` (the
three result files of every job streamed to local files). The trigger's wait between them is the
triggerer's work, not the worker's, and is not counted; nor is the emulator's processing. A warm-up
load of 1,000 records in each child takes the imports and first-use caches out of the figures.

Target (issue 10): the Parquet path's worker CPU at most 0.5 times the dict path's.
``BENCH_PARQUET_ROWS`` sets the number of records (1,000,000 by default), to compare peak memory
across sizes: past one full chunk (``max_bytes_per_job``) it is bounded by the chunk, not the file.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._support import TaskStateStore, emulator_process, peak_rss_mb

ROWS = int(os.environ.get("BENCH_PARQUET_ROWS", "1000000"))
WARM_UP_ROWS = 1_000
TARGET_RATIO = 0.5
OBJECT = "Warehouse_Item__c"
CONN_ID = "sf_bench_parquet"
ROW_GROUP_ROWS = 100_000


def make_table(n: int, start: int = 0) -> Any:
    """``n`` Warehouse_Item__c records (numbered from ``start``) as an Arrow table of eight typed columns."""
    import pyarrow as pa
    import pyarrow.compute as pc

    index = pa.array(range(start, start + n), pa.int64())
    text = index.cast(pa.string())
    names = pc.binary_join_element_wise("Item ", text, "")
    # Every 8th name needs quotes, as a name with a comma or a quote does.
    quoted = pc.equal(pc.bit_wise_and(index, 7), 0)
    names = pc.if_else(quoted, pc.binary_join_element_wise(names, ', "boxed"', ""), names)
    categories = pa.array(["Hardware", "Software", "Consumable", "Spare Part"])
    first_counted = datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc).timestamp() * 1_000_000
    return pa.table(
        {
            "External_Id__c": pc.binary_join_element_wise("WI-", text, ""),
            "Name": names,
            "Quantity__c": pc.if_else(
                pc.equal(pc.bit_wise_and(index, 15), 0), None, pc.bit_wise_and(index, 511)
            ),
            "Unit_Price__c": pc.add(pc.bit_wise_and(index, 1023).cast(pa.float64()), 0.25),
            "Active__c": pc.equal(pc.bit_wise_and(index, 1), 0),
            "Last_Counted__c": pc.add(pc.multiply(index, 61_000_000), int(first_counted)).cast(
                pa.timestamp("us", tz="UTC")
            ),
            "Category__c": pc.take(categories, pc.bit_wise_and(index, 3)),
            "Supplier_Email__c": pc.binary_join_element_wise(
                "supplier", pc.bit_wise_and(index, 1023).cast(pa.string()), "@example.com", ""
            ),
        }
    )


def write_parquet(path: Path, n: int) -> None:
    import pyarrow.parquet as pq

    pq.write_table(make_table(n), path, row_group_size=ROW_GROUP_ROWS)


# -- one load, in a child process --------------------------------------------------------------------


class _TI:
    dag_id, run_id, task_id, map_index, try_number = "bench", "run", "load", -1, 1

    def xcom_push(self, key: str, value: Any) -> None:
        pass


def _load(path: str, records: list[dict[str, Any]] | None, results: Path, n: int) -> dict[str, float]:
    """One operator run; the worker's CPU and wall seconds of its two halves."""
    from airflow.providers.common.compat.sdk import TaskDeferred

    from airflow_provider_salesforce_bulk.operators.salesforce_bulk import SalesforceBulkOperator

    source: dict[str, Any] = {"records": records} if records is not None else {"source": path}
    op = SalesforceBulkOperator(
        task_id="load",
        operation="insert",
        object_name=OBJECT,
        conn_id=CONN_ID,
        deferrable=True,
        poll_interval=0.5,
        results_path=str(results),
        **source,
    )
    context: dict[str, Any] = {"ti": _TI(), "task_state_store": TaskStateStore()}
    cpu, wall = time.process_time(), time.perf_counter()
    try:
        op.execute(context)
    except TaskDeferred as deferred:
        trigger, kwargs = deferred.trigger, dict(deferred.kwargs or {})
    else:
        raise AssertionError("execute did not defer")
    out = {"submit_cpu": time.process_time() - cpu, "submit_s": time.perf_counter() - wall}

    async def wait() -> dict[str, Any]:
        async for event in trigger.run():
            return dict(event.payload)
        raise AssertionError("the trigger ended without an event")

    event = asyncio.run(wait())  # the triggerer's part: not counted
    cpu, wall = time.process_time(), time.perf_counter()
    summary = op.execute_complete(context, event, **kwargs)
    out["complete_cpu"] = time.process_time() - cpu
    out["complete_s"] = time.perf_counter() - wall
    totals = summary["totals"]
    assert (totals["records"], totals["succeeded"]) == (n, n), totals
    out["jobs"] = len(summary["jobs"])
    return out


def child(path_kind: str, parquet: str, warm_up: str, results_dir: str) -> None:
    import pyarrow.parquet as pq

    base_url = os.environ["BENCH_EMULATOR_URL"]
    dicts = path_kind == "dicts"
    results = Path(results_dir)
    # The warm-up loads the other file's records (other ids), so both runs insert new records.
    warm_records = pq.read_table(warm_up).to_pylist() if dicts else None
    _load(warm_up, warm_records, results / "warm-up", WARM_UP_ROWS)
    _reset(base_url)
    records = None
    prepare_cpu = 0.0
    if dicts:
        cpu = time.process_time()
        records = pq.read_table(parquet).to_pylist()
        prepare_cpu = time.process_time() - cpu
    out = _load(parquet, records, results / "load", ROWS)
    out["prepare_cpu"] = prepare_cpu
    out["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(out))


def _reset(base_url: str) -> None:
    import httpx

    httpx.post(f"{base_url}/__emulator__/reset", timeout=120).raise_for_status()


def _run_child(env: dict[str, str], kind: str, work: Path, parquet: Path, warm_up: Path) -> dict[str, Any]:
    results = work / f"results-{kind}"
    argv = [sys.executable, "-m", "benchmarks.bench_operator_parquet", "--child", kind, str(parquet)]
    argv += [str(warm_up), str(results)]
    out = subprocess.run(argv, check=False, capture_output=True, text=True, env=env)  # noqa: S603
    if out.returncode != 0:
        raise RuntimeError(f"{kind}: the child failed:\n{out.stderr[-3000:]}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> bool:
    from airflow_provider_salesforce_bulk.emulator.credentials import Credentials

    work = Path(tempfile.mkdtemp(prefix="bench-operator-parquet-"))
    parquet, warm_up = work / "items.parquet", work / "warm-up.parquet"
    started = time.perf_counter()
    write_parquet(parquet, ROWS)
    write_parquet(warm_up, WARM_UP_ROWS)
    print(
        f"{ROWS:,} records x 8 columns written in {time.perf_counter() - started:.1f}s "
        f"({parquet.stat().st_size / 1e6:.0f} MB of Parquet)"
    )
    env = dict(os.environ)
    env.setdefault("AIRFLOW_HOME", str(work / "airflow_home"))
    env.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    env["AIRFLOW__LOGGING__LOGGING_LEVEL"] = "WARNING"
    figures: dict[str, dict[str, Any]] = {}
    try:
        with emulator_process() as base_url:
            env["BENCH_EMULATOR_URL"] = base_url
            env[f"AIRFLOW_CONN_{CONN_ID.upper()}"] = Credentials().airflow_connection(base_url)
            for kind in ("parquet", "dicts"):
                _reset(base_url)
                f = figures[kind] = _run_child(env, kind, work, parquet, warm_up)
                extra = (
                    f", dicts built in {f['prepare_cpu']:.1f} CPU s (not counted)" if kind == "dicts" else ""
                )
                print(
                    f"{kind:>7}: worker CPU {f['submit_cpu'] + f['complete_cpu']:6.1f}s = execute "
                    f"{f['submit_cpu']:.1f}s + execute_complete {f['complete_cpu']:.1f}s (wall "
                    f"{f['submit_s']:.1f}s + {f['complete_s']:.1f}s), {f['jobs']} jobs, "
                    f"peak RSS {f['peak_rss_mb']:.0f} MB{extra}",
                    flush=True,
                )
    finally:
        for p in sorted(work.rglob("*"), reverse=True):
            if p.is_file():
                p.unlink()
            elif p.is_dir():
                p.rmdir()
        work.rmdir()

    def cpu(kind: str) -> float:
        return float(figures[kind]["submit_cpu"] + figures[kind]["complete_cpu"])

    ratio = cpu("parquet") / cpu("dicts")
    submit_ratio = figures["parquet"]["submit_cpu"] / figures["dicts"]["submit_cpu"]
    print(
        f"Parquet / dicts worker CPU: {ratio:.2f}x (target <= {TARGET_RATIO}x); "
        f"execute alone {submit_ratio:.2f}x"
    )
    return ratio <= TARGET_RATIO


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5])
    else:
        sys.exit(0 if main() else 1)
