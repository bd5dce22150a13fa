"""Bad input known in advance is refused before any job, naming what and where: a DataFrame column mixing
types, a column or field_mapping target the object does not have (the object's describe), a SQL error
while fetching (the query and the rows read), a Parquet page whose checksum does not match. Through
dag.test() against the emulator over its socket where Airflow's retry matters.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from airflow_provider_salesforce_bulk.client import ChunkFormat, ChunkLimits, InputError
from airflow_provider_salesforce_bulk.emulator.server import RunningEmulator
from airflow_provider_salesforce_bulk.operators.columnar_sources import (
    DEFAULT_BATCH_ROWS,
    SqlSourceError,
    make_columnar_source,
)
from airflow_provider_salesforce_bulk.operators.source_spec import SourceSpec
from airflow_provider_salesforce_bulk.operators.sql_source import is_query_fault
from tests.airflow.helpers import load_dag_file
from tests.airflow.test_dag_e2e import _jobs

LIMITS: dict[str, Any] = {
    "limits": ChunkLimits(max_size_bytes=100_000, max_records=1_000),
    "chunk_format": ChunkFormat(),
}


@pytest.fixture
def sf(emulator: RunningEmulator, monkeypatch: pytest.MonkeyPatch, airflow_db: object) -> RunningEmulator:
    monkeypatch.setenv("AIRFLOW_CONN_SF_GUARDS", emulator.airflow_connection())
    return emulator


def _run(name: str, tmp_path: Path, args: str, *, prelude: str = "") -> Any:
    return load_dag_file(
        name,
        f"""
        import datetime
        import pandas as pd
        from airflow.sdk import DAG
        from airflow_provider_salesforce_bulk.operators.salesforce_bulk import SalesforceBulkOperator
        {prelude}
        with DAG({name!r}, schedule=None, start_date=datetime.datetime(2024, 1, 1)) as dag:
            SalesforceBulkOperator(
                task_id="load", conn_id="sf_guards", deferrable=True, poll_interval=0.2, retries=2,
                retry_delay=datetime.timedelta(0), results_path={str(tmp_path / name)!r}, {args}
            )
        """,
    ).test()


def _chunks(*, batch_rows: int = DEFAULT_BATCH_ROWS, **spec: Any) -> list[Any]:
    with make_columnar_source(SourceSpec(**spec), batch_rows=batch_rows, **LIMITS).open() as chunks:
        return list(chunks)


# -- a DataFrame column mixing types ------------------------------------------------------------------


def test_a_dataframe_column_mixing_types_is_an_input_error_naming_it() -> None:
    frame = pd.DataFrame({"Name": ["a", "b", "c"], "NumberOfEmployees": [1, "two", 3]})
    with pytest.raises(InputError, match="column 'NumberOfEmployees' cannot be converted") as info:
        _chunks(records=frame)
    assert info.value.field == "NumberOfEmployees"


def test_a_dataframe_column_mixing_types_fails_the_task_before_any_job(
    sf: RunningEmulator, tmp_path: Path
) -> None:
    dr = _run(
        "guard_mixed",
        tmp_path,
        """operation="insert", object_name="Account",
        records=pd.DataFrame({"Name": ["a", "b"], "NumberOfEmployees": [1, "x"]})""",
    )
    assert dr.state == "failed"
    assert dr.get_task_instance("load").try_number == 1
    assert _jobs(sf) == []


# -- columns the object does not have ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("case", "args"),
    [
        ("mapping_target", """field_mapping={"name": "Name", "ext": "Extrnal_Id__c"}"""),
        ("records_column", """records=[{"Name": "a", "Nmber_Of_Employees": 3}]"""),
        (
            "external_id",
            """operation="upsert", external_id_field="No_Such__c",
            records=[{"Name": "a", "No_Such__c": "x"}]""",
        ),
    ],
)
def test_a_column_the_object_lacks_fails_the_task_before_any_job(
    sf: RunningEmulator, tmp_path: Path, case: str, args: str
) -> None:
    path = tmp_path / "accounts.parquet"
    pq.write_table(
        pa.table({"name": [f"A{i}" for i in range(30)], "ext": [f"E{i}" for i in range(30)]}), path
    )
    if case == "mapping_target":
        args = f"source={str(path)!r}, max_records_per_job=10, " + args
    if "operation=" not in args:
        args = 'operation="insert", ' + args
    dr = _run(f"guard_column_{case}", tmp_path, f'object_name="Account", {args}')
    assert dr.state == "failed"
    assert dr.get_task_instance("load").try_number == 1  # bad input: no retry
    assert _jobs(sf) == []  # before: one Failed job per chunk


def test_the_refusal_names_the_column_its_target_and_a_close_field(
    sf: RunningEmulator, tmp_path: Path
) -> None:
    from airflow.providers.common.compat.sdk import AirflowFailException

    from airflow_provider_salesforce_bulk.operators.salesforce_bulk import SalesforceBulkOperator
    from tests.airflow.helpers import DictStore

    path = tmp_path / "accounts.parquet"
    pq.write_table(pa.table({"name": ["a"], "ext": ["e"]}), path)
    op = SalesforceBulkOperator(
        task_id="load",
        conn_id="sf_guards",
        operation="insert",
        object_name="Account",
        source=str(path),
        field_mapping={"name": "Name", "ext": "Extrnal_Id__c"},
        results_path=str(tmp_path),
    )
    with pytest.raises(AirflowFailException) as info:
        op.execute({"ti": None, "task_state_store": DictStore()})
    assert (
        "field_mapping maps the column 'ext' to 'Extrnal_Id__c', which Account does not have "
        "(did you mean 'External_Id__c'?)"
    ) in str(info.value)
    # A relationship column is checked up to its relationship; a good mapping loads.
    op = SalesforceBulkOperator(
        task_id="load",
        conn_id="sf_guards",
        operation="insert",
        object_name="Contact",
        records=[{"LastName": "c", "Account.External_Id__c": None}],
        results_path=str(tmp_path),
    )
    assert op.execute({"ti": None, "task_state_store": DictStore()})["totals"]["succeeded"] == 1


# -- SQL errors while fetching -----------------------------------------------------------------------


def test_a_sql_error_while_fetching_names_the_query_and_the_rows_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "warehouse.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE people (id INTEGER PRIMARY KEY, surname TEXT)")
        db.executemany("INSERT INTO people VALUES (?, ?)", [(i, f"S{i}") for i in range(25)])
    monkeypatch.setenv("AIRFLOW_CONN_WAREHOUSE", json.dumps({"conn_type": "sqlite", "host": str(path)}))
    # SQLite computes rows as they are fetched: row 15 overflows, in the second batch of 10.
    sql = (
        "SELECT surname AS LastName, CASE WHEN id = 15 THEN abs(-9223372036854775807 - 1) END AS n "
        "FROM people ORDER BY id"
    )
    with pytest.raises((InputError, SqlSourceError)) as info:
        _chunks(sql=sql, sql_conn_id="warehouse", batch_rows=10)
    message = str(info.value)
    assert f"the query {' '.join(sql.split())!r}" in message
    assert "after 10 rows were read" in message
    assert "integer overflow" in message


def _overflowing_warehouse(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A SQLite warehouse and a query whose row 15 overflows while it is fetched (the query's fault)."""
    path = tmp_path / "overflow.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE people (id INTEGER PRIMARY KEY, surname TEXT)")
        db.executemany("INSERT INTO people VALUES (?, ?)", [(i, f"S{i}") for i in range(25)])
    monkeypatch.setenv("AIRFLOW_CONN_OVERFLOW", json.dumps({"conn_type": "sqlite", "host": str(path)}))
    return (
        "SELECT surname AS LastName, CASE WHEN id = 15 THEN abs(-9223372036854775807 - 1) END AS n "
        "FROM people ORDER BY id"
    )


def test_a_query_failing_mid_fetch_fails_the_task_without_a_retry(
    sf: RunningEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sql = _overflowing_warehouse(tmp_path, monkeypatch)
    dr = _run(
        "guard_sql_fetch",
        tmp_path,
        f"""operation="insert", object_name="Contact", sql={sql!r}, sql_conn_id="overflow",
        field_mapping={{"LastName": "LastName"}}""",
    )
    assert dr.state == "failed"
    # Python 3.11+ tells SQLite's statement errors (SQLITE_ERROR) from a lock or an I/O error by their
    # code; without it an OperationalError mid-fetch may be the connection's, so it is retried.
    assert dr.get_task_instance("load").try_number == (1 if sys.version_info >= (3, 11) else 3)
    assert _jobs(sf) == []


def test_sql_errors_mid_fetch_are_sorted_by_whose_fault_they_are(tmp_path: Path) -> None:
    path = tmp_path / "faults.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE t (id INTEGER)")
        db.execute("INSERT INTO t VALUES (1)")
    caught: dict[str, BaseException] = {}
    with contextlib.closing(sqlite3.connect(path)) as db:
        with pytest.raises(sqlite3.OperationalError) as overflow:
            db.execute("SELECT abs(-9223372036854775807 - 1) FROM t").fetchall()
        caught["overflow"] = overflow.value
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # a writer holds the database: a reader is refused at once
    try:
        with contextlib.closing(sqlite3.connect(path, timeout=0)) as db:
            with pytest.raises(sqlite3.OperationalError, match="locked") as locked:
                db.execute("SELECT id FROM t").fetchall()
            caught["locked"] = locked.value
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    # A statement's error is the query's (on 3.11+, where its SQLite code is known); a lock never is.
    assert is_query_fault(caught["overflow"]) is (sys.version_info >= (3, 11))
    assert not is_query_fault(caught["locked"])
    # The DB-API 2.0 classes decide for every driver.
    assert is_query_fault(sqlite3.ProgrammingError("bad parameter"))
    assert is_query_fault(sqlite3.DataError("bad value"))
    assert is_query_fault(sqlite3.IntegrityError("constraint"))
    assert not is_query_fault(sqlite3.InterfaceError("connection closed"))
    assert not is_query_fault(sqlite3.DatabaseError("unclassified"))


# -- Parquet page checksums --------------------------------------------------------------------------


def _flipped_parquet(path: Path, rows: int = 300) -> None:
    """A Parquet file written with page checksums, then one byte of its data pages changed."""
    values = [f"CHECKSUMMED-{i:06d}" for i in range(rows)]
    table = pa.table({"Name": values})
    pq.write_table(table, path, compression="NONE", write_page_checksum=True, use_dictionary=False)
    data = bytearray(path.read_bytes())
    at = data.index(b"CHECKSUMMED-000150")
    data[at + len("CHECKSUMMED-0001")] ^= 0x01  # "...000150" becomes "...000140": still a valid value
    path.write_bytes(bytes(data))


def test_a_parquet_page_whose_checksum_fails_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "flipped.parquet"
    _flipped_parquet(path)
    # Without verification the flipped value reads back as good data.
    assert "CHECKSUMMED-000140" in pq.read_table(path).column("Name").to_pylist()[140:151]
    with pytest.raises(InputError, match=r"flipped\.parquet could not be read: .*CRC"):
        _chunks(source=str(path))


def test_a_flipped_parquet_file_fails_the_task_before_any_job(sf: RunningEmulator, tmp_path: Path) -> None:
    path = tmp_path / "flipped.parquet"
    _flipped_parquet(path)
    dr = _run(
        "guard_parquet_crc", tmp_path, f"""operation="insert", object_name="Account", source={str(path)!r}"""
    )
    assert dr.state == "failed"
    assert dr.get_task_instance("load").try_number == 1
    assert _jobs(sf) == []
    assert sf.records("Account") == []
    # The same data written without damage loads.
    good = tmp_path / "good.parquet"
    pq.write_table(pa.table({"Name": ["a", "b"]}), good, write_page_checksum=True)
    dr = _run(
        "guard_parquet_ok", tmp_path, f"""operation="insert", object_name="Account", source={str(good)!r}"""
    )
    assert dr.state == "success"
    assert sorted(r["Name"] for r in sf.records("Account")) == ["a", "b"]
