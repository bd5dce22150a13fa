"""The whole worker process's peak memory of a load, by size of the input (issue 15 §4).

``SalesforceBulkOperator`` inserts typed Warehouse_Item__c rows (the eight mixed columns of
``bench_operator_parquet``: identifier-like strings, a sometimes-quoted name, an integer with nulls,
a float, a boolean, a UTC timestamp, a picklist, an email) from a Parquet file, a SQL query (SQLite),
a CSV file and an NDJSON file, with the operator's default chunk limits. Each load runs through
``dag.test()`` in a process of its own, as ``airflow dags test`` does: Airflow, ``execute``, the
trigger's wait (inline) and ``execute_complete`` (result files) all in that one process, so its peak
RSS (``VmHWM``) is the figure a worker would show. The emulator runs in another process at instant
speed, so the run measures the worker, not the emulator.

Per source it prints the peak RSS at each size and its difference to the run of ``BASE_ROWS``
(2,000) rows. Goal: at most ``GOAL_MB`` (150 MB) above the 2,000-row run at every size.

``BENCH_RSS_ROWS`` sets the sizes (comma-separated; default ``1000000``; ``1000000,5000000`` for the
issue's full check: expect a quarter of an hour or more a source at 5,000,000 rows on a two-core
machine; on a machine at load 15, 1,000,000 rows took 3 to 10 minutes a source) and
``BENCH_RSS_SOURCES`` the sources (default ``parquet,sql,csv,ndjson,csv_grouped``). ``csv_grouped`` is
the CSV file loaded with ``group_by_parent="Supplier_Email__c"`` (1,024 values, as a parent's id): the
records go through the grouping's SQLite spool before they are staged.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import orjson

from benchmarks._dag_runs import admin, airflow_env, run_dag
from benchmarks._support import emulator_process
from benchmarks.bench_operator_memory import FIELDS
from benchmarks.bench_operator_parquet import make_table

BASE_ROWS = 2_000
SIZES = tuple(int(n) for n in os.environ.get("BENCH_RSS_ROWS", "1000000").split(","))
SOURCES = tuple(os.environ.get("BENCH_RSS_SOURCES", "parquet,sql,csv,ndjson,csv_grouped").split(","))
GROUPED = "csv_grouped"
PARENT = "Supplier_Email__c"
GOAL_MB = 150.0
OBJECT = "Warehouse_Item__c"
CONN_ID = "sf_bench_rss"
SQL_CONN_ID = "bench_rss_warehouse"
SLICE_ROWS = 250_000
# The typed rows of the operator benches: one column list for all of them.
COLUMNS = tuple(FIELDS)


# -- the inputs, written slice by slice ---------------------------------------------------------------


def _slices(n: int) -> Any:
    for start in range(0, n, SLICE_ROWS):
        yield make_table(min(SLICE_ROWS, n - start), start)


def _text_timestamps(table: Any) -> Any:
    """The timestamp column as Salesforce's ISO text, for the formats that carry text."""
    import pyarrow as pa
    import pyarrow.compute as pc

    seconds = table["Last_Counted__c"].cast(pa.timestamp("s", tz="UTC"))
    text = pc.strftime(seconds, format="%Y-%m-%dT%H:%M:%SZ")
    return table.set_column(table.schema.get_field_index("Last_Counted__c"), "Last_Counted__c", text)


def _write_parquet(path: Path, n: int) -> None:
    import pyarrow.parquet as pq

    writer = None
    for table in _slices(n):
        writer = writer or pq.ParquetWriter(path, table.schema)
        writer.write_table(table, row_group_size=100_000)
    assert writer is not None
    writer.close()


def _write_csv(path: Path, n: int) -> None:
    import pyarrow.csv as pacsv

    options = pacsv.WriteOptions(quoting_style="needed")
    writer = None
    for table in _slices(n):
        table = _text_timestamps(table)
        writer = writer or pacsv.CSVWriter(path, table.schema, write_options=options)
        writer.write_table(table)
    assert writer is not None
    writer.close()


def _write_ndjson(path: Path, n: int) -> None:
    with path.open("wb") as out:
        for table in _slices(n):
            out.writelines(orjson.dumps(row) + b"\n" for row in _text_timestamps(table).to_pylist())


def _write_sqlite(path: Path, n: int) -> None:
    with sqlite3.connect(path) as db:
        # Columns without a type: SQLite keeps every value as given (no affinity conversions).
        db.execute(f"CREATE TABLE items ({', '.join(COLUMNS)})")
        for table in _slices(n):
            rows = _text_timestamps(table).to_pylist()
            db.executemany(
                f"INSERT INTO items VALUES ({', '.join('?' * len(COLUMNS))})",  # noqa: S608 - our own columns
                (
                    tuple(("true" if v else "false") if isinstance(v, bool) else v for v in r.values())
                    for r in rows
                ),
            )


_WRITERS = {"parquet": _write_parquet, "csv": _write_csv, "ndjson": _write_ndjson, "sql": _write_sqlite}


def write_input(source: str, directory: Path, n: int) -> Path:
    """``n`` rows as ``source`` reads them: a file, or a SQLite database for ``sql``."""
    fmt = "csv" if source == GROUPED else source
    path = directory / f"items_{n}.{'db' if fmt == 'sql' else fmt}"
    _WRITERS[fmt](path, n)
    return path


# -- one load -----------------------------------------------------------------------------------------

_DAG = """
import datetime
from airflow.sdk import DAG
from airflow_provider_salesforce_bulk.operators.salesforce_bulk import SalesforceBulkOperator

with DAG({dag_id!r}, schedule=None, start_date=datetime.datetime(2024, 1, 1)) as dag:
    SalesforceBulkOperator(
        task_id="load", operation="insert", object_name={object!r}, conn_id={conn_id!r},
        {source}, deferrable=True, poll_interval=1, results_path={results!r}, timeout={timeout},
    )
"""


def _load(env: dict[str, str], work: Path, base_url: str, source: str, path: Path, n: int) -> dict[str, Any]:
    admin(base_url, "reset", {})
    dag_id = f"load_rss_{source}_{n}"
    if source == "sql":
        query = f"SELECT {', '.join(COLUMNS)} FROM items"  # noqa: S608 - our own columns
        source_arg = f"sql={query!r}, sql_conn_id={SQL_CONN_ID!r}"
    else:
        source_arg = f"source={str(path)!r}"
        if source == GROUPED:
            source_arg += f", group_by_parent={PARENT!r}"
    results = work / "results" / dag_id
    dag_file = work / "dags" / f"{dag_id}.py"
    dag_file.write_text(
        textwrap.dedent(
            _DAG.format(
                dag_id=dag_id,
                object=OBJECT,
                conn_id=CONN_ID,
                source=source_arg,
                results=str(results),
                timeout=int(1800 + n / 400),
            )
        )
    )
    child_env = dict(env)
    child_env[f"AIRFLOW_CONN_{SQL_CONN_ID.upper()}"] = json.dumps({"conn_type": "sqlite", "host": str(path)})
    # A busy two-core machine loads about 2,000 rows a second end to end; give each run five times that.
    outcome = run_dag(child_env, dag_file, dag_id, work / f"{dag_id}.log", timeout=1800 + n / 400)
    totals = (outcome["summary"] or {}).get("totals") or {}
    if outcome["state"] != "success" or int(totals.get("succeeded", -1)) != n:
        raise RuntimeError(f"{source} {n:,}: the load did not store every row ({totals}); see {dag_id}.log")
    shutil.rmtree(results, ignore_errors=True)
    return outcome


def main() -> bool:
    from airflow_provider_salesforce_bulk.emulator.credentials import Credentials

    work = Path(tempfile.mkdtemp(prefix="bench-load-rss-"))
    env = airflow_env(work)
    env["AIRFLOW__LOGGING__LOGGING_LEVEL"] = "WARNING"
    ok = True
    try:
        with emulator_process() as base_url:
            env[f"AIRFLOW_CONN_{CONN_ID.upper()}"] = Credentials().airflow_connection(base_url)
            for source in SOURCES:
                base = 0.0
                for n in (BASE_ROWS, *SIZES):
                    started = time.perf_counter()
                    path = write_input(source, work, n)
                    written = time.perf_counter() - started
                    size_mb = path.stat().st_size / 1e6
                    r = _load(env, work, base_url, source, path, n)
                    path.unlink()
                    peak = float(r["peak_rss_mb"])
                    jobs = int(r["summary"]["totals"].get("jobs", 0))
                    line = (
                        f"{source:>7} {n:>9,} rows ({size_mb:,.0f} MB, written in {written:.0f}s): "
                        f"peak RSS {peak:,.0f} MB"
                    )
                    if n == BASE_ROWS:
                        base = peak
                    else:
                        good = peak - base <= GOAL_MB
                        ok = ok and good
                        line += f", {peak - base:+,.0f} MB vs {BASE_ROWS:,} rows" + (
                            "" if good else f"  <-- above the goal (+{GOAL_MB:.0f} MB)"
                        )
                    print(f"{line}; {jobs} jobs, {r['seconds']:.0f}s", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(
        f"goal: peak RSS at most {GOAL_MB:.0f} MB above the {BASE_ROWS:,}-row run at "
        f"{', '.join(f'{n:,}' for n in SIZES)} rows, for {', '.join(SOURCES)}: {'met' if ok else 'NOT met'}"
    )
    return ok


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
