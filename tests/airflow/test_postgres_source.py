"""The SQL source against a real PostgreSQL, through dag.test() into the emulator over its socket.

A cluster of Debian's ``postgresql`` server is started in a temporary directory for this module
(skipped, with the reason, when the binaries are missing or it cannot start). The table holds
20,000 rows of mixed types: text with quotes, commas, newlines and non-ASCII, integers, numerics,
doubles, dates, ``timestamptz`` in a non-UTC session time zone, booleans and NULLs. The load goes
through the postgres provider's ``PostgresHook`` (a common-sql ``DbApiHook``) as a user's would, and
the server's statement log shows how the rows were read.
"""

from __future__ import annotations

import datetime
import decimal
import json
import re
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_salesforce_bulk.emulator.server import RunningEmulator, run_emulator
from tests.airflow.helpers import conn_uri_json, load_dag_file
from tests.airflow.postgres_cluster import PostgresCluster, PostgresUnavailable, postgres_cluster
from tests.airflow.test_dag_e2e import _jobs, _xcom

pytest.importorskip("pyarrow")
psycopg = pytest.importorskip("psycopg")
pytest.importorskip("airflow.providers.postgres.hooks.postgres")

N = 20_000  # rows in the table, all selected by SELECT
PER_JOB = 7_000  # three jobs: records meet two chunk edges
FETCH_ROWS = 10_000  # the source's batch size: each FETCH asks the server for this many rows
OBJECT = "Pg_Row__c"
BERLIN = "Europe/Berlin"  # the session time zone: timestamptz values arrive as Berlin times
SPECIAL = 'He said "hi", left;\nnext line\r\nZoë — 東京 🚀 \\ tab\there'

SELECT = """
SELECT name AS "Name", ext AS "External_Id__c", qty AS "Quantity__c", price AS "Price__c",
       ratio AS "Ratio__c", due AS "Due__c", seen_at AS "Seen_At__c", active AS "Active__c",
       notes AS "Notes__c"
FROM pg_rows WHERE id < 20000 ORDER BY id
"""


def _row(i: int) -> tuple[Any, ...]:
    """Row ``i`` of the table (id, name, ext, qty, price, ratio, due, seen_at, active, notes)."""
    name = SPECIAL if i % 1000 == 0 else f"Name, {i}" if i % 2 else f"Ñame «{i}»"
    qty = None if i % 7 == 0 else (i * 37) % 100_000 - 50_000
    price = None if i % 11 == 0 else decimal.Decimal(i * 13 % 1_000_000) / 100
    # Exact binary fractions, a tiny one and the largest a Number(18, 8) field holds (a larger one is
    # NUMBER_OUTSIDE_VALID_RANGE, as in a real org): written without an exponent.
    ratio = (
        None if i % 9 == 0 else (1e-7 if i % 97 == 0 else 9_999_999_999.5 if i % 89 == 0 else i / 8 - 999.5)
    )
    due = None if i % 13 == 0 else datetime.date(1990, 1, 1) + datetime.timedelta(days=i)
    seen_at = (
        None
        if i % 17 == 0
        else datetime.datetime(2024, 3, 31, 0, 30, tzinfo=datetime.timezone.utc)
        + datetime.timedelta(minutes=7 * i, milliseconds=i % 1000)
    )
    active = None if i % 19 == 0 else i % 3 == 0
    notes = None if i % 2 == 0 else f"line 1 of {i}\nline 2 \"quoted\", 'single'" if i % 5 else SPECIAL
    return (i, name, f"PG-{i}", qty, price, ratio, due, seen_at, active, notes)


def _expected(i: int) -> dict[str, Any]:
    """What the org stores for row ``i``, typed as the emulator returns records."""
    _, name, ext, qty, price, ratio, due, seen_at, active, notes = _row(i)
    return {
        "Name": name,
        "External_Id__c": ext,
        "Quantity__c": qty,
        "Price__c": None if price is None else float(price),
        "Ratio__c": ratio,
        "Due__c": None if due is None else due.isoformat(),
        "Seen_At__c": None
        if seen_at is None
        else seen_at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{seen_at.microsecond // 1000:03d}+0000",
        "Active__c": active,
        "Notes__c": notes,
    }


@pytest.fixture(scope="module")
def cluster() -> Iterator[PostgresCluster]:
    try:
        with postgres_cluster(f"timezone={BERLIN}") as running:
            _fill(running)
            yield running
    except PostgresUnavailable as exc:
        pytest.skip(f"PostgreSQL is not available: {exc}")


def _fill(cluster: PostgresCluster) -> None:
    with psycopg.connect(
        host=cluster.host, port=cluster.port, user=cluster.user, dbname=cluster.dbname
    ) as conn:
        conn.execute(
            """CREATE TABLE pg_rows (
                id integer PRIMARY KEY, name text NOT NULL, ext text NOT NULL, qty integer,
                price numeric(12, 2), ratio double precision, due date, seen_at timestamptz,
                active boolean, notes text)"""
        )
        with conn.cursor().copy("COPY pg_rows FROM STDIN") as copy:
            for i in range(N):
                copy.write_row(_row(i))


@pytest.fixture
def warehouse(cluster: PostgresCluster, monkeypatch: pytest.MonkeyPatch) -> PostgresCluster:
    """``pg_warehouse``: an Airflow postgres connection to the cluster."""
    conn = {
        "conn_type": "postgres",
        "host": cluster.host,
        "port": cluster.port,
        "login": cluster.user,
        "schema": cluster.dbname,
    }
    monkeypatch.setenv("AIRFLOW_CONN_PG_WAREHOUSE", json.dumps(conn))
    return cluster


@pytest.fixture
def sf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, airflow_db: object) -> Iterator[RunningEmulator]:
    """The emulator with the default org plus an object holding a field of every type in the table."""
    schema = json.loads(
        resources.files("airflow_provider_salesforce_bulk.emulator")
        .joinpath("default_schema.json")
        .read_text("utf-8")
    )
    schema["objects"][OBJECT] = {
        "keyPrefix": "a0P",
        "fields": {
            "Name": {"type": "string", "length": 255},
            "External_Id__c": {"type": "string", "length": 64, "externalId": True, "unique": True},
            "Quantity__c": {"type": "number", "scale": 0},
            "Price__c": {"type": "currency", "scale": 2},
            "Ratio__c": {"type": "number", "scale": 8},
            "Due__c": {"type": "date"},
            "Seen_At__c": {"type": "datetime"},
            "Active__c": {"type": "boolean"},
            "Notes__c": {"type": "textarea", "length": 32000},
        },
    }
    path = tmp_path / "schema.json"
    path.write_text(json.dumps(schema), encoding="utf-8")
    with run_emulator(schema_path=str(path)) as running:
        monkeypatch.setenv("AIRFLOW_CONN_SF_E2E", conn_uri_json(running))
        yield running


def _run(name: str, tmp_path: Path, sql: str, *, retries: int = 0) -> Any:
    dag: Any = load_dag_file(
        name,
        f"""
        import datetime
        from airflow.sdk import DAG
        from airflow_provider_salesforce_bulk.operators.salesforce_bulk import SalesforceBulkOperator

        with DAG({name!r}, schedule=None, start_date=datetime.datetime(2024, 1, 1)) as dag:
            SalesforceBulkOperator(
                task_id="load", conn_id="sf_e2e", operation="insert", object_name={OBJECT!r},
                sql={sql!r}, sql_conn_id="pg_warehouse", max_records_per_job={PER_JOB},
                deferrable=True, poll_interval=0.2, results_path={str(tmp_path / name)!r},
                retries={retries}, retry_delay=datetime.timedelta(0),
            )
        """,
    )
    return dag.test()


def _statements(cluster: PostgresCluster, since: int) -> list[str]:
    """The statements the server logged after byte ``since`` of its log (simple and extended protocol)."""
    return re.findall(
        r"LOG:  (?:statement|execute [^:]*): (.*?)(?=\n\S|\Z)", cluster.log()[since:], re.DOTALL
    )


def test_every_row_is_stored_once_with_its_values(
    sf: RunningEmulator, warehouse: PostgresCluster, tmp_path: Path
) -> None:
    log_start = len(warehouse.log())
    dr = _run("pg_load", tmp_path, SELECT)
    assert dr.state == "success"

    stored = sf.records(OBJECT)
    assert len(stored) == N
    by_ext = {record["External_Id__c"]: record for record in stored}
    assert len(by_ext) == N  # nobody twice
    fields = list(_expected(0))
    for i in range(N):
        record = by_ext[f"PG-{i}"]
        assert {name: record[name] for name in fields} == _expected(i), f"row {i}"

    summary = _xcom("pg_load")
    assert summary["totals"]["records"] == N
    assert summary["totals"]["succeeded"] == N
    assert summary["totals"]["failed"] == 0
    assert summary["totals"]["unprocessed"] == 0
    jobs = _jobs(sf)
    assert len(jobs) == 3
    assert sum(job["processed"] for job in jobs) == N
    assert sum(job["failed"] for job in jobs) == 0

    # Read through one server-side cursor, in batches, once: the query is declared as a cursor
    # (never run plainly, which would hand the whole result to the client), rows are fetched
    # FETCH_ROWS at a time, and the submission reads the spool instead of querying again.
    statements = _statements(warehouse, log_start)
    declares = [s for s in statements if s.startswith("DECLARE")]
    assert len(declares) == 1, statements
    assert re.match(r'DECLARE "?salesforce_bulk_source"? .*CURSOR .*FROM pg_rows', declares[0], re.DOTALL)
    assert not [s for s in statements if "pg_rows" in s and not s.startswith("DECLARE")]
    fetches = [int(m) for s in statements for m in re.findall(r"^FETCH FORWARD (\d+)", s)]
    assert fetches == [FETCH_ROWS] * (N // FETCH_ROWS + 1)


@pytest.mark.parametrize(
    ("case", "sql", "error"),
    [
        # Refused by the server when the cursor is declared: the query's fault, never retried.
        (
            "query_error",
            'SELECT name AS "Name" FROM no_such_table',
            "AirflowFailException: Bad input (SQL query on connection 'pg_warehouse'): the query "
            """'SELECT name AS "Name" FROM no_such_table' failed on 'pg_warehouse': UndefinedTable: """
            'relation "no_such_table" does not exist',
        ),
        (
            "empty_result",
            SELECT.replace(f"id < {N}", "id < 0"),
            "AirflowFailException: Bad input (SQL query on connection 'pg_warehouse'): the query on "
            "'pg_warehouse' returned no rows (pass allow_empty to load nothing instead)",
        ),
        # Fails only in the second batch, after 10,000 rows were read: still before any job, as the
        # whole result is read and checked before the first job is created; and the same query
        # would fail again, so no retry.
        (
            "error_mid_stream",
            SELECT.replace('AS "Name"', 'AS "Name", 1 / (id - 15000) AS "Quantity__c"').replace(
                'qty AS "Quantity__c", ', ""
            ),
            # The query is named (cut to 200 characters), then how many rows were read.
            "...' failed on 'pg_warehouse' after 10000 rows were read: DivisionByZero: division by zero",
        ),
    ],
)
def test_a_bad_query_fails_before_any_job(
    sf: RunningEmulator,
    warehouse: PostgresCluster,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    case: str,
    sql: str,
    error: str,
) -> None:
    log_start = len(warehouse.log())
    dr = _run(f"pg_bad_{case}", tmp_path, sql, retries=2)
    assert dr.state == "failed"
    assert dr.get_task_instance("load").try_number == 1  # bad input: no retry
    assert _jobs(sf) == []
    assert sf.records(OBJECT) == []
    assert 'DECLARE "salesforce_bulk_source"' in warehouse.log()[log_start:]
    output = capsys.readouterr()
    assert error in output.out + output.err


def test_a_connection_lost_mid_stream_is_retried_and_loads_once(
    sf: RunningEmulator, warehouse: PostgresCluster, tmp_path: Path
) -> None:
    # The server ends the session while the 15,000th row is computed, on the first try only
    # (a sequence is not rolled back with the session): a connection fault, worth a retry.
    with psycopg.connect(
        host=warehouse.host, port=warehouse.port, user=warehouse.user, dbname=warehouse.dbname
    ) as conn:
        conn.execute("DROP SEQUENCE IF EXISTS kill_seq")
        conn.execute("CREATE SEQUENCE kill_seq")
        conn.execute(
            """CREATE OR REPLACE FUNCTION kill_once() RETURNS boolean AS $$
            BEGIN
                IF nextval('kill_seq') = 1 THEN PERFORM pg_terminate_backend(pg_backend_pid()); END IF;
                RETURN true;
            END $$ LANGUAGE plpgsql"""
        )
    sql = SELECT.replace(
        'notes AS "Notes__c"',
        'CASE WHEN id = 15000 AND NOT kill_once() THEN NULL ELSE notes END AS "Notes__c"',
    )
    log_start = len(warehouse.log())
    dr = _run("pg_lost_connection", tmp_path, sql, retries=1)
    assert dr.state == "success"
    assert dr.get_task_instance("load").try_number == 2
    assert "terminating connection due to administrator command" in warehouse.log()[log_start:]
    stored = sf.records(OBJECT)
    assert sorted(record["External_Id__c"] for record in stored) == sorted(f"PG-{i}" for i in range(N))
    assert {r["External_Id__c"]: r["Notes__c"] for r in stored} == {
        f"PG-{i}": _expected(i)["Notes__c"] for i in range(N)
    }
    summary = _xcom("pg_lost_connection")
    assert (summary["totals"]["records"], summary["totals"]["succeeded"]) == (N, N)
    assert len(_jobs(sf)) == 3
