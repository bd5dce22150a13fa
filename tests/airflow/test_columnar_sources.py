"""Columnar chunk sources: Parquet/Arrow files, tables and DataFrames, and SQL on a real SQLite database."""

from __future__ import annotations

import csv
import datetime
import io
import json
import sqlite3
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any, ClassVar

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from airflow_provider_salesforce_bulk.client import ChunkFormat, ChunkLimits, iter_arrow_chunks
from airflow_provider_salesforce_bulk.client.csv_format import CsvChunk
from airflow_provider_salesforce_bulk.client.errors import InputError
from airflow_provider_salesforce_bulk.client.serialize import iter_record_chunks
from airflow_provider_salesforce_bulk.emulator.server import RunningEmulator
from airflow_provider_salesforce_bulk.operators.columnar_sources import (
    DEFAULT_BATCH_ROWS,
    make_columnar_source,
)
from airflow_provider_salesforce_bulk.operators.sources import ChunkSource, SourceSpec, make_source
from tests.airflow.helpers import DictStore, conn_uri_json

CHUNK_LIMITS = ChunkLimits(max_size_bytes=20_000, max_records=700)
LIMITS: dict[str, Any] = {"limits": CHUNK_LIMITS, "chunk_format": ChunkFormat()}
ROWS = 5_000


def _table(rows: int = ROWS) -> pa.Table:
    return pa.table(
        {
            "LastName": [
                f"Last, {i}" if i % 5 == 0 else f'Say "{i}"' if i % 7 == 0 else f"L{i}" for i in range(rows)
            ],
            "External_Id__c": [f"EXT-{i}" for i in range(rows)],
            "NumberOfEmployees": pa.array([None if i % 11 == 0 else i for i in range(rows)], pa.int64()),
            "AnnualRevenue": [i * 1.25 for i in range(rows)],
            "IsActive__c": [i % 2 == 0 for i in range(rows)],
            "Founded__c": pa.array(
                [datetime.date(2000, 1, 1) + datetime.timedelta(days=i) for i in range(rows)]
            ),
            "Amount__c": pa.array([Decimal(i).scaleb(-2) for i in range(rows)], pa.decimal128(12, 2)),
        }
    )


def _chunks(source: ChunkSource) -> list[CsvChunk]:
    with source.open() as chunks:
        return list(chunks)


def _expected(table: pa.Table) -> list[CsvChunk]:
    return list(iter_record_chunks(table.to_pylist(), None, **LIMITS))


def _parse(chunks: list[CsvChunk]) -> list[list[str]]:
    rows: list[list[str]] = []
    for chunk in chunks:
        rows.extend(list(csv.reader(io.StringIO(chunk.data.decode(), newline=""), strict=True))[1:])
    return rows


def _check_accounting(chunks: list[CsvChunk], total: int) -> None:
    first = 0
    for chunk in chunks:
        assert chunk.first_record_index == first
        assert len(chunk.data) <= CHUNK_LIMITS.max_size_bytes
        assert 0 < chunk.record_count <= CHUNK_LIMITS.max_records
        first += chunk.record_count
    assert first == total


# -- files ------------------------------------------------------------------------------------------


def _write(table: pa.Table, path: Path) -> None:
    if path.suffix in (".parquet", ".pq", ".dat"):
        pq.write_table(table, path, row_group_size=800)
    elif path.suffix == ".arrows":
        with pa.ipc.new_stream(path, table.schema) as writer:
            writer.write_table(table, max_chunksize=900)
    else:
        with pa.ipc.new_file(path, table.schema) as writer:
            writer.write_table(table, max_chunksize=900)


@pytest.mark.parametrize("name", ["data.parquet", "data.pq", "data.arrow", "data.feather", "data.arrows"])
def test_files_give_the_dict_paths_chunks(tmp_path: Path, name: str) -> None:
    table = _table()
    _write(table, tmp_path / name)
    source = make_source(SourceSpec(source=str(tmp_path / name)), **LIMITS)
    assert source.uri == str(tmp_path / name)
    chunks = _chunks(source)
    assert chunks == _expected(table)
    _check_accounting(chunks, ROWS)
    assert _chunks(source) == chunks  # the operator's second pass reads the same


def test_source_format_overrides_the_extension_and_object_storage_paths_work(tmp_path: Path) -> None:
    from airflow.sdk import ObjectStoragePath

    table = _table(1_000)
    _write(table, tmp_path / "export.dat")
    path = ObjectStoragePath(f"file://{tmp_path / 'export.dat'}")
    source = make_columnar_source(SourceSpec(source=path, source_format="parquet"), **LIMITS)
    assert source.description.startswith("Parquet file")
    assert _chunks(source) == _expected(table)


def test_parquet_is_read_row_group_by_row_group(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write(_table(), tmp_path / "data.parquet")
    read: list[int] = []
    original = pq.ParquetFile.iter_batches

    def counting(self: pq.ParquetFile, *args: Any, **kwargs: Any) -> Iterator[pa.RecordBatch]:
        for batch in original(self, *args, **kwargs):
            read.append(batch.num_rows)
            yield batch

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", counting)
    source = make_columnar_source(SourceSpec(source=tmp_path / "data.parquet"), batch_rows=500, **LIMITS)
    with source.open() as chunks:
        first = next(chunks)
        # The byte limit ends the first chunk at 430 records: one batch of 500 rows was read for it.
        assert first.record_count == 430
        assert read == [500]


def test_bad_files_are_input_errors(tmp_path: Path) -> None:
    (tmp_path / "junk.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(InputError, match="is not a Parquet file"):
        _chunks(make_columnar_source(SourceSpec(source=tmp_path / "junk.parquet"), **LIMITS))
    (tmp_path / "junk.arrow").write_bytes(b"not arrow either")
    with pytest.raises(InputError, match="is not an Arrow IPC or Feather file"):
        _chunks(make_columnar_source(SourceSpec(source=tmp_path / "junk.arrow"), **LIMITS))
    with pytest.raises(InputError, match="does not exist"):
        make_columnar_source(SourceSpec(source=tmp_path / "missing.parquet"), **LIMITS)
    (tmp_path / "x.bin").write_bytes(b"")
    with pytest.raises(InputError, match="source_format='parquet' or 'arrow'"):
        make_columnar_source(SourceSpec(source=tmp_path / "x.bin"), **LIMITS)


def test_an_unsupported_column_type_fails_on_the_first_pass(tmp_path: Path) -> None:
    table = pa.table({"Name": ["a"], "Blob": pa.array([b"\x00"], pa.binary())})
    pq.write_table(table, tmp_path / "blob.parquet")
    with pytest.raises(InputError, match="column 'Blob' has the Arrow type binary"):
        _chunks(make_columnar_source(SourceSpec(source=tmp_path / "blob.parquet"), **LIMITS))


# -- tables and DataFrames ---------------------------------------------------------------------------------


class FrameLike:
    """A DataFrame stand-in: pandas and polars give a fresh Arrow C stream on each call."""

    def __init__(self, table: pa.Table) -> None:
        self.table = table
        self.shape = (table.num_rows, table.num_columns)

    def __arrow_c_stream__(self, requested_schema: Any = None) -> Any:
        return self.table.__arrow_c_stream__(requested_schema)


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda t: t, id="table"),
        pytest.param(FrameLike, id="dataframe-like"),
        pytest.param(lambda t: pa.RecordBatchReader.from_batches(t.schema, t.to_batches(600)), id="reader"),
    ],
)
def test_tables_as_records_give_the_dict_paths_chunks_on_every_pass(make: Any) -> None:
    table = _table()
    source = make_source(SourceSpec(records=make(table)), **LIMITS)
    assert _chunks(source) == _expected(table)
    # A RecordBatchReader is read once and spooled: the second pass reads the spool.
    assert _chunks(source) == _expected(table)


def test_a_table_given_as_records_is_written_in_the_whole_format() -> None:
    # allow_na_marker travels in the format with the rest: a table given as records honours it.
    table = pa.table({"Name": ["#N/A", "x"]})
    allowed = {"limits": CHUNK_LIMITS, "chunk_format": ChunkFormat(allow_na_marker=True)}
    source = make_source(SourceSpec(records=table), **allowed)
    assert [chunk.data for chunk in _chunks(source)] == [b"Name\n#N/A\nx\n"]
    refused = make_source(SourceSpec(records=table), **LIMITS)
    with pytest.raises(InputError, match="#N/A"):
        _chunks(refused)


def test_field_mapping_selects_and_renames_columns() -> None:
    table = _table(20)
    source = make_columnar_source(
        SourceSpec(records=table, field_mapping={"External_Id__c": "Ext__c", "LastName": "Name"}), **LIMITS
    )
    rows = _parse(_chunks(source))
    assert _chunks(source)[0].fieldnames() == ["Ext__c", "Name"]
    assert rows[:2] == [["EXT-0", "Last, 0"], ["EXT-1", "L1"]]


def test_field_mapping_naming_a_missing_column_fails_before_any_chunk() -> None:
    source = make_columnar_source(SourceSpec(records=_table(20), field_mapping={"Nope": "Name"}), **LIMITS)
    with pytest.raises(InputError, match="names the column 'Nope', which the source lacks") as info:
        _chunks(source)
    assert info.value.field == "Nope"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "exactly one of records and source or sql, got none"),
        ({"records": pa.table({"a": [1]}), "sql": "select 1"}, "got records, sql"),
        ({"sql": "select 1"}, "needs sql_conn_id"),
        ({"records": [{"a": 1}]}, "table must be a pyarrow Table"),
        ({"records": pa.table({"a": [1]}), "field_mapping": {"a": "X", "b": "x"}}, "maps both"),
        ({"records": pa.table({"a": [1]}), "batch_rows": 0}, "batch_rows"),
    ],
)
def test_bad_arguments(kwargs: dict[str, Any], message: str) -> None:
    batch_rows = kwargs.pop("batch_rows", DEFAULT_BATCH_ROWS)
    with pytest.raises(InputError, match=message):
        make_columnar_source(SourceSpec(**kwargs), batch_rows=batch_rows, **LIMITS)


# -- SQL on SQLite ------------------------------------------------------------------------------------------


@pytest.fixture
def database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "warehouse.db"
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE contacts (id INTEGER PRIMARY KEY, last_name TEXT, ext TEXT, score REAL, "
            "employees INTEGER, note TEXT)"
        )
        db.executemany(
            "INSERT INTO contacts VALUES (?, ?, ?, ?, ?, ?)",
            [
                (
                    i,
                    f"Last, {i}" if i % 3 == 0 else f'Q"{i}',
                    f"EXT-{i}",
                    i / 8,
                    None if i % 10 == 0 else i * 3,
                    None if i % 4 else f"line\nbreak {i}",
                )
                for i in range(ROWS)
            ],
        )
    monkeypatch.setenv("AIRFLOW_CONN_WAREHOUSE", json.dumps({"conn_type": "sqlite", "host": str(path)}))
    return path


def _sql_source(
    sql: str, *, batch_rows: int = DEFAULT_BATCH_ROWS, chunk_format: ChunkFormat | None = None, **spec: Any
) -> ChunkSource:
    return make_columnar_source(
        SourceSpec(sql=sql, sql_conn_id="warehouse", **spec),
        limits=CHUNK_LIMITS,
        chunk_format=chunk_format or ChunkFormat(),
        batch_rows=batch_rows,
    )


def _query_as_dicts(path: Path, sql: str) -> list[dict[str, Any]]:
    with sqlite3.connect(path) as db:
        cursor = db.execute(sql)
        names = [column[0] for column in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor]


def test_sql_rows_become_the_dict_paths_chunks(database: Path) -> None:
    sql = (
        "SELECT last_name AS LastName, ext AS External_Id__c, score, employees, note "
        "FROM contacts ORDER BY id"
    )
    source = _sql_source(sql, batch_rows=1_000)
    assert source.description == "SQL query on connection 'warehouse'"
    chunks = _chunks(source)
    assert chunks == list(iter_record_chunks(_query_as_dicts(database, sql), None, **LIMITS))
    _check_accounting(chunks, ROWS)
    rows = _parse(chunks)
    assert rows[0] == ["Last, 0", "EXT-0", "0.0", "", "line\nbreak 0"]
    assert rows[1] == ['Q"1', "EXT-1", "0.125", "3", ""]
    assert rows[4] == ['Q"4', "EXT-4", "0.5", "12", "line\nbreak 4"]


def test_sql_second_pass_reads_the_spool_not_the_database(database: Path) -> None:
    source = _sql_source("SELECT ext FROM contacts", batch_rows=700)
    first = _chunks(source)
    with sqlite3.connect(database) as db:
        db.execute("DELETE FROM contacts WHERE id < 100")
    assert _chunks(source) == first
    assert sum(chunk.record_count for chunk in first) == ROWS
    del source  # the spool goes with its source


def test_field_mapping_on_sql(database: Path) -> None:
    source = _sql_source(
        "SELECT ext, last_name FROM contacts ORDER BY id",
        field_mapping={"ext": "External_Id__c", "last_name": "LastName"},
    )
    chunks = _chunks(source)
    assert chunks[0].fieldnames() == ["External_Id__c", "LastName"]
    assert _parse(chunks)[1] == ["EXT-1", 'Q"1']


def test_sqlite_mixed_type_columns_are_written_value_by_value(database: Path) -> None:
    with sqlite3.connect(database) as db:
        db.execute("CREATE TABLE mixed (v)")
        db.executemany("INSERT INTO mixed VALUES (?)", [(1,), ("two, 2",), (3.5,), (None,), (-7,)])
    null_format = ChunkFormat(none_as="null")
    chunks = _chunks(_sql_source("SELECT v FROM mixed ORDER BY rowid", chunk_format=null_format))
    assert _parse(chunks) == [["1"], ["two, 2"], ["3.5"], ["#N/A"], ["-7"]]


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        (
            "SELECT nope FROM contacts",
            "the query 'SELECT nope FROM contacts' failed on 'warehouse': OperationalError: no such column",
        ),
        ("SELEC 1", "the query 'SELEC 1' failed"),
        ("CREATE TABLE t2 (a)", "returns no columns"),
        ("SELECT ext FROM contacts WHERE id < 0", "returned no rows"),
        ("SELECT x'00' AS blob", "column 'blob' has the Arrow type binary"),
    ],
)
def test_sql_bad_input_is_an_input_error_on_the_first_pass(database: Path, sql: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        _chunks(_sql_source(sql))


def test_an_empty_result_may_be_allowed(database: Path) -> None:
    assert _chunks(_sql_source("SELECT ext FROM contacts WHERE id < 0", allow_empty=True)) == []


def test_a_connection_that_is_not_sql_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_NOT_SQL", json.dumps({"conn_type": "fs", "extra": {"path": "/"}}))
    with pytest.raises(InputError, match="not a SQL") as info:
        _chunks(make_columnar_source(SourceSpec(sql="select 1", sql_conn_id="not_sql"), **LIMITS))
    assert info.value.field == "sql_conn_id"


def test_the_arrow_path_matches_on_the_same_table() -> None:
    table = _table()
    limits = CHUNK_LIMITS
    assert list(iter_arrow_chunks(table, None, limits.max_size_bytes, limits.max_records)) == _expected(table)


# -- through the operator, against the emulator --------------------------------------------------------------


@pytest.fixture
def sf(emulator: RunningEmulator, monkeypatch: pytest.MonkeyPatch, airflow_db: object) -> RunningEmulator:
    monkeypatch.setenv("AIRFLOW_CONN_SF_COLUMNAR", conn_uri_json(emulator))
    return emulator


def test_parquet_and_table_load_every_record_once(sf: RunningEmulator, tmp_path: Path) -> None:
    from airflow_provider_salesforce_bulk.operators.salesforce_bulk import SalesforceBulkOperator

    class _TI:
        dag_id, run_id, task_id, map_index = "d", "r", "t", -1
        pushed: ClassVar[dict[str, Any]] = {}

        def xcom_push(self, key: str, value: Any) -> None:
            self.pushed[key] = value

    contacts = pa.table(
        {"LastName": [f"P, {i}" for i in range(40)], "External_Id__c": [f"P{i}" for i in range(40)]}
    )
    pq.write_table(contacts, tmp_path / "contacts.parquet", row_group_size=7)
    more = pa.table(
        {"LastName": [f'T"{i}' for i in range(15)], "External_Id__c": [f"T{i}" for i in range(15)]}
    )
    for name, kwargs, count in (
        ("parquet", {"source": str(tmp_path / "contacts.parquet")}, 40),
        ("table", {"records": more}, 15),
    ):
        op = SalesforceBulkOperator(
            task_id="t",
            operation="upsert",
            object_name="Contact",
            external_id_field="External_Id__c",
            conn_id="sf_columnar",
            deferrable=False,
            poll_interval=0.2,
            max_records_per_job=10,
            results_path=str(tmp_path / f"res_{name}"),
            **kwargs,
        )
        summary = op.execute({"ti": _TI(), "task_state_store": DictStore()})
        assert summary["totals"]["succeeded"] == count
    stored = sorted((r["External_Id__c"], r["LastName"]) for r in sf.records("Contact"))
    expected = [(f"P{i}", f"P, {i}") for i in range(40)] + [(f"T{i}", f'T"{i}') for i in range(15)]
    assert stored == sorted(expected)
