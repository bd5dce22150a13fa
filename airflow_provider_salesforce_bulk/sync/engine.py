"""The embedded engine the diff and the advance run in: DuckDB, one thread, bounded memory, spilling.

Why DuckDB rather than code of ours: the comparison is a full outer join of the input with the state
and the advance an anti join, a union and a sort; DuckDB runs them in C++, hashes each row's line
(``md5_number``) as the batch is copied in, and spills its tables, hash tables and sorts to
``workdir`` past ``memory_limit``, so 5,000,000 rows cost C-level CPU per row and bounded memory. The
Python external sort and merge this replaced spent 25 s of CPU on 1,000,000 rows; a hash-partitioned
join of our own in Arrow would be the same work with its spilling, partitioning and sorting to keep
correct. Measured limits of DuckDB 1.5 that the queries avoid: ``count(DISTINCT)``, ``NOT IN``
subqueries, a join streamed straight into a sorted result, and scans of Arrow data (which keep every
batch read alive) do not stay within ``memory_limit``.

The engine never reads the state's location: the state is fetched to ``workdir`` and checked first
(:func:`~.state.fetch_state`); every file it reads is this process's own.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from typing import Any

import pyarrow as pa

MEMORY_LIMIT = "128MB"
_BLOCK = 65_536


@contextlib.contextmanager
def connect(workdir: str) -> Iterator[Any]:
    """A private in-memory DuckDB that spills to ``workdir``."""
    import duckdb

    spill = os.path.join(workdir, "duckdb-spill")
    os.makedirs(spill, exist_ok=True)
    con = duckdb.connect(
        ":memory:",
        config={
            "threads": 1,
            "memory_limit": MEMORY_LIMIT,
            "temp_directory": spill,
            # Every result whose order matters says ORDER BY; without it DuckDB may stream with less memory.
            "preserve_insertion_order": False,
        },
    )
    try:
        yield con
    finally:
        con.close()


def sql_path(path: str) -> str:
    """A local path as an SQL string literal."""
    return "'" + path.replace("'", "''") + "'"


def insert(con: Any, table: str, data: pa.Table | pa.RecordBatch, select: str = "*") -> None:
    """Append Arrow data to a DuckDB table, as ``SELECT <select> FROM`` it.

    Copied into DuckDB's own storage (which spills), batch by batch: a query scanning Arrow data
    keeps every batch it read alive until it ends (its strings point into them), which would hold
    the whole input in memory.
    """
    con.register("arrow_batch", data)
    try:
        con.execute(f"INSERT INTO {table} SELECT {select} FROM arrow_batch")  # noqa: S608 - our constants
    finally:
        con.unregister("arrow_batch")


def insert_rows(con: Any, table: str, schema: pa.Schema, rows: Iterable[tuple[Any, ...]]) -> None:
    """Append Python tuples to a DuckDB table, a block at a time."""
    block: list[tuple[Any, ...]] = []
    for row in rows:
        block.append(row)
        if len(block) == _BLOCK:
            insert(con, table, _batch(schema, block))
            block = []
    insert(con, table, _batch(schema, block))


def _batch(schema: pa.Schema, block: list[tuple[Any, ...]]) -> pa.RecordBatch:
    columns = list(zip(*block, strict=True)) if block else [() for _ in schema]
    arrays = [pa.array(list(values), field.type) for values, field in zip(columns, schema, strict=True)]
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def reader(con: Any, query: str, schema: pa.Schema) -> Iterator[pa.RecordBatch]:
    """A query's result as record batches of ``schema`` (cast: DuckDB's own Arrow types may differ)."""
    for batch in con.execute(query).to_arrow_reader(_BLOCK):
        yield pa.RecordBatch.from_arrays(
            [batch.column(i).cast(field.type) for i, field in enumerate(schema)], schema=schema
        )
