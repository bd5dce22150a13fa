"""The Arrow path: ``iter_arrow_chunks`` against the dict path and ``pyarrow.csv.write_csv``; SQL memory.

Speed (issue 10): 1,000,000 rows of eight mixed columns (two strings, some quoted, an integer with
nulls, a float, a boolean, a date, a timestamp, a decimal) as one Arrow table. Targets: at least 5
times the dict path (``iter_record_chunks`` on the same rows as dicts; its rate is measured on the
first 200,000 of them, materialized as dicts before the clock starts, since 1,000,000 dicts would
take most of a gigabyte) and at least 0.5 times ``pyarrow.csv.write_csv`` writing the same table
into memory (which quotes every string and makes no chunks). Rows per second, best of two runs.

Memory: the SQL source reads a SQLite table through Airflow's sqlite provider, every chunk of both
of the operator's passes (the query, spooled, then the spool), 200,000, 500,000 and 1,000,000 rows,
each in a process of its own, 10 MB per chunk. Target: peak RSS at 1,000,000 rows within 1.1 times
the peak at 200,000.
"""

from __future__ import annotations

import datetime
import io
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._support import best_of

ROWS = 1_000_000
DICT_ROWS = 200_000
RUNS = 2
TARGET_VS_DICT = 5.0
TARGET_VS_WRITE_CSV = 0.5
# 500,000 shows where the peak levels off: the allocator keeps a chunk or two more after the first.
SQL_SIZES = (200_000, 500_000, 1_000_000)
TARGET_RSS_RATIO = 1.1
CONN_ID = "bench_arrow_sqlite"
MAX_SIZE_BYTES = 10_000_000


def make_table(n: int = ROWS) -> Any:
    import pyarrow as pa
    import pyarrow.compute as pc

    index = pa.array(range(n), pa.int64())
    text = index.cast(pa.string())
    names = pc.binary_join_element_wise("Account ", text, "")
    # Every 50th name needs quotes, as a company name with a comma would.
    quoted = pc.equal(pc.bit_wise_and(index, 63), 0)
    names = pc.if_else(quoted, pc.binary_join_element_wise(names, ", Inc.", ""), names)
    base_day = datetime.date(2000, 1, 1).toordinal() - datetime.date(1970, 1, 1).toordinal()
    return pa.table(
        {
            "Name": names,
            "External_Id__c": pc.binary_join_element_wise("EXT-", text, ""),
            "NumberOfEmployees": pc.if_else(pc.equal(pc.bit_wise_and(index, 7), 0), None, index),
            "AnnualRevenue": pc.multiply(index.cast(pa.float64()), 1.37),
            "IsActive__c": pc.equal(pc.bit_wise_and(index, 1), 0),
            "Founded__c": pc.add(pc.bit_wise_and(index, 8191), base_day).cast(pa.int32()).view(pa.date32()),
            "LastSeen__c": pc.add(pc.multiply(index, 13_123_457), 1_600_000_000_000_000).view(
                pa.timestamp("us")
            ),
            "Amount__c": pc.multiply(index, 0.37).cast(pa.decimal128(14, 2), safe=False),
        }
    )


def speed() -> bool:
    import pyarrow.csv as pa_csv

    from airflow_provider_salesforce_bulk.client import ChunkLimits, iter_arrow_chunks
    from airflow_provider_salesforce_bulk.client.serialize import iter_record_chunks

    started = time.perf_counter()
    table = make_table()
    rows = table.slice(0, DICT_ROWS).to_pylist()
    print(
        f"{ROWS:,} rows built in {time.perf_counter() - started:.1f}s ({table.nbytes / 1e6:.0f} MB of Arrow)"
    )

    def arrow() -> int:
        return sum(len(chunk.data) for chunk in iter_arrow_chunks(table, max_size_bytes=MAX_SIZE_BYTES))

    def dicts() -> int:
        limits = ChunkLimits(max_size_bytes=MAX_SIZE_BYTES)
        return sum(len(chunk.data) for chunk in iter_record_chunks(rows, limits=limits))

    def write_csv() -> int:
        out = io.BytesIO()
        pa_csv.write_csv(table, out)
        return len(out.getbuffer())

    arrow_s, arrow_bytes = best_of(RUNS, arrow)
    csv_s, csv_bytes = best_of(RUNS, write_csv)
    dict_s, _ = best_of(RUNS, dicts)
    arrow_rate, csv_rate, dict_rate = ROWS / arrow_s, ROWS / csv_s, DICT_ROWS / dict_s
    print(f"iter_arrow_chunks   {arrow_rate:>12,.0f} rows/s  ({arrow_bytes / 1e6:.0f} MB of CSV chunks)")
    print(f"iter_record_chunks  {dict_rate:>12,.0f} rows/s  (dict path, rate on {DICT_ROWS:,} rows)")
    print(f"pyarrow write_csv   {csv_rate:>12,.0f} rows/s  ({csv_bytes / 1e6:.0f} MB, every string quoted)")
    vs_dict, vs_csv = arrow_rate / dict_rate, arrow_rate / csv_rate
    print(
        f"ratios: {vs_dict:.1f}x the dict path (target >= {TARGET_VS_DICT}x), "
        f"{vs_csv:.2f}x write_csv (target >= {TARGET_VS_WRITE_CSV}x)"
    )
    return vs_dict >= TARGET_VS_DICT and vs_csv >= TARGET_VS_WRITE_CSV


# -- SQL source memory, one process per size ------------------------------------------------------------


def make_database(path: Path, n: int) -> None:
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE accounts (id INTEGER PRIMARY KEY, name TEXT, ext TEXT, employees INTEGER, "
            "revenue REAL, active INTEGER, founded TEXT, note TEXT)"
        )
        db.executemany(
            "INSERT INTO accounts VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                (
                    i,
                    f"Account {i}, Inc." if i % 50 == 0 else f"Account {i}",
                    f"EXT-{i:09d}",
                    None if i % 8 == 0 else i,
                    i * 1.37,
                    i % 2,
                    f"20{i % 25:02d}-01-{i % 28 + 1:02d}",
                    None if i % 3 else f'note "{i}"',
                )
                for i in range(n)
            ),
        )


def child(rows: int) -> None:
    from airflow_provider_salesforce_bulk.client import ChunkFormat, ChunkLimits
    from airflow_provider_salesforce_bulk.operators.columnar_sources import make_columnar_source
    from airflow_provider_salesforce_bulk.operators.source_spec import SourceSpec
    from benchmarks._support import peak_rss_mb

    def run(limit: int) -> tuple[int, int]:
        source = make_columnar_source(
            SourceSpec(
                sql="SELECT name, ext, employees, revenue, active, founded, note FROM accounts LIMIT ?",
                parameters=(limit,),
                sql_conn_id=CONN_ID,
            ),
            limits=ChunkLimits(max_size_bytes=MAX_SIZE_BYTES),
            chunk_format=ChunkFormat(),
        )
        totals = []
        for _ in range(2):  # the operator's validation pass, then its submission pass (from the spool)
            with source.open() as chunks:
                totals.append(sum(chunk.record_count for chunk in chunks))
        assert totals == [limit, limit], totals
        return totals[0], len(source.description)

    run(1_000)  # warm-up: imports and caches, not data
    started = time.perf_counter()
    run(rows)
    print(json.dumps({"rows": rows, "seconds": time.perf_counter() - started, "peak_rss_mb": peak_rss_mb()}))


def memory() -> bool:
    work = Path(tempfile.mkdtemp(prefix="bench-arrow-"))
    database = work / "warehouse.db"
    started = time.perf_counter()
    make_database(database, max(SQL_SIZES))
    print(f"SQLite table of {max(SQL_SIZES):,} rows written in {time.perf_counter() - started:.1f}s")
    env = dict(os.environ)
    env.setdefault("AIRFLOW_HOME", str(work / "airflow_home"))
    env["AIRFLOW__LOGGING__LOGGING_LEVEL"] = "WARNING"
    env[f"AIRFLOW_CONN_{CONN_ID.upper()}"] = json.dumps({"conn_type": "sqlite", "host": str(database)})
    figures = {}
    try:
        for rows in SQL_SIZES:
            argv = [sys.executable, "-m", "benchmarks.bench_arrow", "--child", str(rows)]
            out = subprocess.run(argv, check=False, capture_output=True, text=True, env=env)  # noqa: S603
            if out.returncode != 0:
                raise RuntimeError(f"SQL {rows:,}: the child failed:\n{out.stderr[-3000:]}")
            figures[rows] = json.loads(out.stdout.strip().splitlines()[-1])
            f = figures[rows]
            print(
                f"SQL source {rows:>9,} rows, two passes: {f['seconds']:.1f}s, "
                f"peak RSS {f['peak_rss_mb']:.0f} MB",
                flush=True,
            )
    finally:
        for path in work.rglob("*"):
            if path.is_file():
                path.unlink()
    small, large = figures[min(SQL_SIZES)]["peak_rss_mb"], figures[max(SQL_SIZES)]["peak_rss_mb"]
    ratio = large / small
    print(
        f"peak RSS ratio {max(SQL_SIZES):,} / {min(SQL_SIZES):,} rows: {ratio:.2f} "
        f"(target <= {TARGET_RSS_RATIO})"
    )
    return ratio <= TARGET_RSS_RATIO


def main() -> bool:
    fast = speed()
    flat = memory()
    return fast and flat


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        child(int(sys.argv[2]))
    else:
        sys.exit(0 if main() else 1)
