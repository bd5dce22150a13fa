"""Peak memory of the operator's worker side does not grow with the data.

``SalesforceBulkOperator.execute`` (deferrable) is run on a generated NDJSON file and a CSV file of
200,000 and 1,000,000 records (8 fields, 10 MB per job) against the emulator started in its own
process: the settings check, the validation pass over the whole input, the NDJSON field inference
pass, and the submission (one job per chunk, each id stored in a task state store before its
upload), up to the ``TaskDeferred`` it ends with. No scheduler: a stand-in ``ti`` and state store.
Then, for the CSV loads, the jobs are waited for and ``execute_complete`` streams the successful,
failed and unprocessed results of every job to local files; its peak is measured on its own.

Each format and size runs in its own process so the figures do not mix: peak traced Python memory
(tracemalloc, started after the imports) and peak RSS (which includes Airflow's imports). Target:
the traced peak for 1,000,000 records is within 1.1 times the peak for 200,000, for each format and
for the result streaming.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import orjson

from benchmarks._support import TaskStateStore, emulator_process, peak_rss_mb

TARGET_RATIO = 1.1
SIZES = (200_000, 1_000_000)
FORMATS = tuple(os.environ.get("BENCH_FORMATS", "ndjson,csv").split(","))
MAX_BYTES_PER_JOB = 10_000_000
OBJECT = "Warehouse_Item__c"
FIELDS = [
    "External_Id__c",
    "Name",
    "Quantity__c",
    "Unit_Price__c",
    "Active__c",
    "Last_Counted__c",
    "Category__c",
    "Supplier_Email__c",
]
CATEGORIES = ("Hardware", "Software", "Consumable", "Spare Part")
CONN_ID = "sf_bench_memory"


def _record(i: int) -> dict[str, Any]:
    return {
        "External_Id__c": f"WI-{i:09d}",
        "Name": f'Item "{i}", boxed' if i % 7 == 0 else f"Item {i}",
        "Quantity__c": i % 500,
        "Unit_Price__c": (i % 997) + 0.25,
        "Active__c": i % 2 == 0,
        "Last_Counted__c": "2024-01-01T08:30:00.000Z",
        "Category__c": CATEGORIES[i % 4],
        "Supplier_Email__c": f"supplier{i % 1000}@example.com",
    }


def _csv_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value)
    if any(c in text for c in ',"\n\r'):
        return '"' + text.replace('"', '""') + '"'
    return text


def write_inputs(directory: Path, n: int, paths: dict[str, Path] | None = None) -> dict[str, Path]:
    """The same n records as NDJSON and as CSV (LF, the job's format)."""
    if paths is None:
        paths = {"ndjson": directory / f"items_{n}.ndjson", "csv": directory / f"items_{n}.csv"}
    nd_path = paths.get("ndjson", Path(os.devnull))
    csv_path = paths.get("csv", Path(os.devnull))
    with nd_path.open("wb") as nd, csv_path.open("w", encoding="utf-8", newline="") as cs:
        cs.write(",".join(FIELDS) + "\n")
        for i in range(n):
            record = _record(i)
            nd.write(orjson.dumps(record) + b"\n")
            cs.write(",".join(_csv_value(record[f]) for f in FIELDS) + "\n")
    return paths


# -- the emulator, in its own process -------------------------------------------------------------


def _reset_emulator(base_url: str) -> None:
    import httpx

    httpx.post(f"{base_url}/__emulator__/reset", timeout=60).raise_for_status()


# -- one measurement, in a child process ----------------------------------------------------------


class _TI:
    dag_id, run_id, task_id, map_index, try_number = "bench", "run", "load", -1, 1

    def __init__(self) -> None:
        self.pushed: dict[str, Any] = {}

    def xcom_push(self, key: str, value: Any) -> None:
        self.pushed[key] = value


def _rss_mb() -> float:
    return peak_rss_mb()


def child(fmt: str, path: str, n: int, results_dir: str | None) -> None:
    import asyncio

    from airflow.providers.common.compat.sdk import TaskDeferred

    from airflow_provider_salesforce_bulk.operators.salesforce_bulk import SalesforceBulkOperator

    def operator(source: str, results: str | None) -> SalesforceBulkOperator:
        return SalesforceBulkOperator(
            task_id="load",
            operation="upsert",
            object_name=OBJECT,
            external_id_field="External_Id__c",
            conn_id=CONN_ID,
            source=source,
            max_bytes_per_job=MAX_BYTES_PER_JOB,
            deferrable=True,
            poll_interval=0.5,
            results_path=results,
        )

    async def wait(trigger: Any) -> dict[str, Any]:
        async for event in trigger.run():
            return dict(event.payload)
        raise AssertionError("no event")

    def submit(op: SalesforceBulkOperator, context: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        try:
            op.execute(context)
        except TaskDeferred as deferred:
            return deferred.trigger, dict(deferred.kwargs or {})
        raise AssertionError("execute did not defer")

    # Warm-up on a small file of the same format: Airflow, fsspec and the client import modules and
    # fill caches on first use; that is a constant cost, not memory that grows with the data.
    warm = Path(path).with_name(f"warm-up.{fmt}")
    write_inputs(warm.parent, 1_000, {fmt: warm})
    warm_op = operator(str(warm), f"{results_dir}-warm-up" if results_dir else None)
    warm_context: dict[str, Any] = {"ti": _TI(), "task_state_store": TaskStateStore()}
    warm_trigger, warm_kwargs = submit(warm_op, warm_context)
    if results_dir is not None:
        warm_op.execute_complete(warm_context, asyncio.run(wait(warm_trigger)), **warm_kwargs)

    op = operator(path, results_dir)
    context: dict[str, Any] = {"ti": _TI(), "task_state_store": TaskStateStore()}
    out: dict[str, Any] = {"format": fmt, "n": n}
    tracemalloc.start()
    started = time.perf_counter()
    trigger, kwargs = submit(op, context)
    out["submit_s"] = time.perf_counter() - started
    out["submit_peak_mb"] = tracemalloc.get_traced_memory()[1] / 1e6
    out["submit_rss_mb"] = _rss_mb()
    out["jobs"] = len(trigger.job_ids)
    assert sum(kwargs["record_counts"].values()) == n, (kwargs["record_counts"], n)
    if results_dir is not None:
        tracemalloc.stop()  # the wait is the trigger's part, not measured here
        event = asyncio.run(wait(trigger))
        tracemalloc.start()
        started = time.perf_counter()
        summary = op.execute_complete(context, event, **kwargs)
        out["results_s"] = time.perf_counter() - started
        out["results_peak_mb"] = tracemalloc.get_traced_memory()[1] / 1e6
        out["results_rss_mb"] = _rss_mb()
        assert summary["totals"]["succeeded"] == n, summary["totals"]
        out["results_mb_written"] = (
            sum(f.stat().st_size for f in Path(results_dir).rglob("*.csv") if f.is_file()) / 1e6
        )
    print(json.dumps(out))


def _run_child(env: dict[str, str], fmt: str, path: Path, n: int, results_dir: Path | None) -> dict[str, Any]:
    argv = [sys.executable, "-m", "benchmarks.bench_operator_memory", "--child", fmt, str(path), str(n)]
    if results_dir is not None:
        argv.append(str(results_dir))
    out = subprocess.run(argv, check=False, capture_output=True, text=True, env=env)  # noqa: S603
    if out.returncode != 0:
        raise RuntimeError(f"{fmt} {n:,}: the child failed:\n{out.stderr[-3000:]}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> bool:
    from airflow_provider_salesforce_bulk.emulator.credentials import Credentials

    work = Path(tempfile.mkdtemp(prefix="bench-operator-memory-"))
    creds = Credentials()
    env = dict(os.environ)
    env.setdefault("AIRFLOW_HOME", str(work / "airflow_home"))
    env.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    env["AIRFLOW__LOGGING__LOGGING_LEVEL"] = "WARNING"
    started = time.perf_counter()
    inputs = {n: write_inputs(work, n) for n in SIZES}
    print(
        f"inputs written in {time.perf_counter() - started:.1f}s: "
        + ", ".join(
            f"{p.name} {p.stat().st_size / 1e6:.0f} MB" for files in inputs.values() for p in files.values()
        )
    )
    figures: dict[tuple[str, int], dict[str, Any]] = {}
    try:
        with emulator_process() as base_url:
            env[f"AIRFLOW_CONN_{CONN_ID.upper()}"] = creds.airflow_connection(base_url)
            for fmt in FORMATS:
                for n in SIZES:
                    _reset_emulator(base_url)
                    results = work / f"results_{fmt}_{n}" if fmt == "csv" else None
                    f = figures[fmt, n] = _run_child(env, fmt, inputs[n][fmt], n, results)
                    line = (
                        f"{fmt:>6} {n:>9,} records: {f['jobs']} jobs, submit peak traced "
                        f"{f['submit_peak_mb']:.1f} MB, peak RSS {f['submit_rss_mb']:.0f} MB, "
                        f"{f['submit_s']:.1f}s"
                    )
                    if results is not None:
                        line += (
                            f"; results ({f['results_mb_written']:.0f} MB written) peak traced "
                            f"{f['results_peak_mb']:.1f} MB, peak RSS {f['results_rss_mb']:.0f} MB, "
                            f"{f['results_s']:.1f}s"
                        )
                    print(line, flush=True)
    finally:
        for p in work.rglob("*"):
            if p.is_file():
                p.unlink()

    ok = True
    small, large = SIZES
    checks = [(f"{fmt} submit", "submit") for fmt in FORMATS] + [("csv results", "results")]
    for label, phase in checks:
        fmt = label.split()[0]
        a, b = figures[fmt, small], figures[fmt, large]
        ratio = b[f"{phase}_peak_mb"] / a[f"{phase}_peak_mb"]
        rss_ratio = b[f"{phase}_rss_mb"] / a[f"{phase}_rss_mb"]
        print(
            f"{label}: peak {large:,} / {small:,} records: traced {ratio:.2f}x, RSS {rss_ratio:.2f}x "
            f"(target traced <= {TARGET_RATIO}x)"
        )
        ok = ok and ratio <= TARGET_RATIO
    return ok


if __name__ == "__main__":
    if len(sys.argv) >= 5 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5] if len(sys.argv) > 5 else None)
    else:
        sys.exit(0 if main() else 1)
