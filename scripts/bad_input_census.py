"""Count the bad inputs the operators refuse clearly before any job: the figure of issue 15, §3.

Runs a catalogue of bad inputs (the cases of the bad-input test suites of the ingest operator, its
columnar and SQL sources and the query operator, and the holes issue 15 lists) through
``SalesforceBulkOperator.execute`` / ``SalesforceBulkQueryOperator.execute`` against an emulator over
its socket, and classifies each:

- ``clear``: an ``AirflowFailException`` (no Airflow retry) and the org holds no new job;
- ``after_jobs``: the task failed, but only after creating jobs (Failed jobs, records loaded...);
- ``retried``: an error Airflow would retry (a raw or retryable exception) before any job;
- ``loaded``: no error at all.

Usage: ``python scripts/bad_input_census.py [--verbose]``. To count another checkout's code, put it first
on the path: ``PYTHONPATH=/path/to/checkout python scripts/bad_input_census.py``.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sqlite3
import sys
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

HOME = Path(tempfile.mkdtemp(prefix="sf-bulk-census-"))
os.environ.setdefault("AIRFLOW_HOME", str(HOME))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ.setdefault("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", f"sqlite:///{HOME / 'airflow.db'}")
os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "ERROR")
warnings.simplefilter("ignore")

import pandas as pd  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

Case = tuple[str, str, Callable[[], Any]]


class _Store:
    def __init__(self) -> None:
        self.data: dict[str, Any] = {}

    def get(self, key: str, default: Any = None) -> Any:
        return json.loads(json.dumps(self.data.get(key, default)))

    def set(self, key: str, value: Any) -> None:
        self.data[key] = json.loads(json.dumps(value))

    def delete(self, key: str) -> None:
        self.data.pop(key, None)


def _files(tmp: Path) -> dict[str, str]:
    people = tmp / "people.parquet"
    pq.write_table(pa.table({"LastName": ["x", "y"], "ext": ["E1", "E2"]}), people)
    flipped = tmp / "flipped.parquet"
    values = [f"CHECKSUMMED-{i:06d}" for i in range(300)]
    pq.write_table(
        pa.table({"LastName": values}),
        flipped,
        compression="NONE",
        write_page_checksum=True,
        use_dictionary=False,
    )
    data = bytearray(flipped.read_bytes())
    data[data.index(b"CHECKSUMMED-000150") + 16] ^= 0x01
    flipped.write_bytes(bytes(data))
    corrupt = tmp / "corrupt.parquet"
    corrupt.write_bytes(b"PAR1 this is not parquet")
    csv_unknown = tmp / "unknown.csv"
    csv_unknown.write_text("LastName,Nmber__c\nx,1\n")
    csv_quote = tmp / "quote.csv"
    csv_quote.write_text('LastName\n"x\n')
    csv_delete = tmp / "delete.csv"
    csv_delete.write_text("Id,LastName\n003000000000001AAA,x\n")
    ndjson = tmp / "bad.ndjson"
    ndjson.write_text('{"LastName": "x"}\n{not json\n')
    db = tmp / "warehouse.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE people (id INTEGER PRIMARY KEY, surname TEXT, ext TEXT)")
        conn.executemany("INSERT INTO people VALUES (?, ?, ?)", [(i, f"S{i}", f"E{i}") for i in range(25)])
    os.environ["AIRFLOW_CONN_WAREHOUSE"] = json.dumps({"conn_type": "sqlite", "host": str(db)})
    return {
        "people": str(people),
        "flipped": str(flipped),
        "corrupt": str(corrupt),
        "csv_unknown": str(csv_unknown),
        "csv_quote": str(csv_quote),
        "csv_delete": str(csv_delete),
        "ndjson": str(ndjson),
    }


def _cases(files: dict[str, str]) -> list[tuple[str, str, dict[str, Any]]]:
    """(area, name, operator kwargs); ``conn`` selects the connection, ``query`` the query operator."""
    one = [{"LastName": "x"}]
    sql = {"sql_conn_id": "warehouse"}
    overflow = "CASE WHEN id = 15 THEN abs(-9223372036854775807 - 1) END"
    return [
        # -- ingest operator: settings -------------------------------------------------------------
        ("ingest", "unknown operation", {"operation": "merge", "records": one}),
        ("ingest", "upsert without external id", {"operation": "upsert", "records": one}),
        ("ingest", "bad delimiter", {"records": one, "column_delimiter": "COLON"}),
        ("ingest", "bad line ending", {"records": one, "line_ending": "CR"}),
        ("ingest", "bad none_as", {"records": one, "none_as": "zero"}),
        ("ingest", "max_records_per_job 0", {"records": one, "max_records_per_job": 0}),
        ("ingest", "max_bytes_per_job too large", {"records": one, "max_bytes_per_job": 10**12}),
        ("ingest", "max_failed_ratio 2", {"records": one, "max_failed_ratio": 2}),
        ("ingest", "max_failed_records -1", {"records": one, "max_failed_records": -1}),
        ("ingest", "poll_interval nan", {"records": one, "poll_interval": float("nan")}),
        ("ingest", "timeout 0", {"records": one, "timeout": 0}),
        ("ingest", "no records nor source", {}),
        ("ingest", "records and source", {"records": one, "source": files["people"]}),
        ("ingest", "group_by_parent blank", {"records": one, "group_by_parent": " "}),
        ("ingest", "limits_check loud", {"records": one, "limits_check": "loud"}),
        (
            "ingest",
            "resubmit_error_codes a string",
            {"records": one, "resubmit_error_codes": "UNABLE_TO_LOCK_ROW"},
        ),
        ("ingest", "resubmit_error_codes lower case", {"records": one, "resubmit_error_codes": ["lock"]}),
        ("ingest", "resubmit_rounds 11", {"records": one, "resubmit_rounds": 11}),
        ("ingest", "resubmit_backoff nan", {"records": one, "resubmit_backoff": float("nan")}),
        ("ingest", "allow_empty 'yes'", {"records": one, "allow_empty": "yes"}),
        ("ingest", "field_mapping on records", {"records": one, "field_mapping": {"a": "B"}}),
        # -- ingest operator: data -------------------------------------------------------------------
        ("ingest", "record not a dict", {"records": ["x"]}),
        ("ingest", "value a nested dict", {"records": [{"LastName": {"a": 1}}]}),
        ("ingest", "NUL in a value", {"records": [{"LastName": "a\x00b"}]}),
        ("ingest", "#N/A text", {"records": [{"LastName": "#N/A"}]}),
        (
            "ingest",
            "delete with other columns",
            {"operation": "delete", "records": [{"Id": "003000000000001AAA", "LastName": "x"}]},
        ),
        ("ingest", "delete CSV with other columns", {"operation": "delete", "source": files["csv_delete"]}),
        ("ingest", "unknown column in records", {"records": [{"LastName": "x", "Nmber__c": 1}]}),
        ("ingest", "unknown column in CSV", {"source": files["csv_unknown"]}),
        ("ingest", "unknown object", {"object_name": "Contactt", "records": one}),
        (
            "ingest",
            "external id field unknown",
            {
                "operation": "upsert",
                "external_id_field": "No_Such__c",
                "records": [{"LastName": "x", "No_Such__c": "a"}],
            },
        ),
        ("ingest", "CSV malformed quoting", {"source": files["csv_quote"]}),
        ("ingest", "NDJSON bad line", {"source": files["ndjson"]}),
        ("ingest", "missing file", {"source": "/nonexistent/file.csv"}),
        # -- columnar and SQL sources ----------------------------------------------------------------
        (
            "columnar",
            "field_mapping column missing",
            {"source": files["people"], "field_mapping": {"nope": "LastName"}},
        ),
        (
            "columnar",
            "field_mapping target unknown",
            {"source": files["people"], "field_mapping": {"LastName": "LastName", "ext": "Extrnal_Id__c"}},
        ),
        ("columnar", "field_mapping empty", {"source": files["people"], "field_mapping": {}}),
        ("columnar", "unknown source_format", {"source": files["people"], "source_format": "xlsx"}),
        ("columnar", "corrupt Parquet", {"source": files["corrupt"]}),
        ("columnar", "Parquet page checksum fails", {"source": files["flipped"]}),
        (
            "columnar",
            "Arrow list column",
            {"records": pa.table({"LastName": ["x"], "Tags": pa.array([[1, 2]])})},
        ),
        (
            "columnar",
            "DataFrame column mixing types",
            {"records": pd.DataFrame({"LastName": ["a", "b"], "NumberOfEmployees": [1, "x"]})},
        ),
        (
            "columnar",
            "timestamp past 9999",
            {
                "records": pa.table(
                    {"LastName": ["x"], "Birthdate": pa.array([253402300800 * 10**6], pa.timestamp("us"))}
                )
            },
        ),
        ("columnar", "sql without sql_conn_id", {"sql": "SELECT 1"}),
        ("columnar", "sql_conn_id without sql", {"records": one, "sql_conn_id": "warehouse"}),
        ("columnar", "sql unknown connection", {"sql": "SELECT 1", "sql_conn_id": "no_such_conn"}),
        ("columnar", "sql unknown table", {"sql": "SELECT x FROM no_such_table", **sql}),
        ("columnar", "sql syntax error", {"sql": "SELEC 1", **sql}),
        ("columnar", "sql not a SELECT", {"sql": "CREATE TABLE t2 (a)", **sql}),
        (
            "columnar",
            "sql empty result",
            {"sql": "SELECT surname AS LastName FROM people WHERE id < 0", **sql},
        ),
        ("columnar", "sql blob column", {"sql": "SELECT x'00' AS LastName", **sql}),
        (
            "columnar",
            "sql error while fetching",
            {"sql": f"SELECT surname AS LastName, {overflow} AS n FROM people", **sql},  # noqa: S608
        ),
        (
            "columnar",
            "sql field_mapping column missing",
            {"sql": "SELECT surname FROM people", "field_mapping": {"nope": "LastName"}, **sql},
        ),
        ("columnar", "sql parameters without sql", {"records": one, "parameters": [1]}),
        # -- credentials -----------------------------------------------------------------------------
        ("ingest", "wrong client secret", {"records": one, "conn": "invalid_client"}),
        ("ingest", "unknown client id", {"records": one, "conn": "invalid_client_id"}),
        ("ingest", "wrong password (OAuth)", {"records": one, "conn": "invalid_grant"}),
        ("ingest", "wrong password (SOAP)", {"records": one, "conn": "INVALID_LOGIN"}),
        ("ingest", "connection without secret", {"records": one, "conn": "incomplete"}),
        # -- query operator --------------------------------------------------------------------------
        ("query", "SOQL with an unknown field", {"query": "SELECT Nme FROM Account"}),
        ("query", "SOQL with an unknown object", {"query": "SELECT Id FROM Acount"}),
        ("query", "SOQL syntax error", {"query": "SELEC Id FROM Account"}),
        ("query", "SOQL empty", {"query": " "}),
        ("query", "bad output_format", {"query": "SELECT Id FROM Account", "output_format": "xlsx"}),
        ("query", "records_per_file 0", {"query": "SELECT Id FROM Account", "records_per_file": 0}),
        ("query", "bad operation", {"query": "SELECT Id FROM Account", "operation": "queryEverything"}),
        ("query", "timeout nan", {"query": "SELECT Id FROM Account", "timeout": float("nan")}),
        ("query", "wrong client secret", {"query": "SELECT Id FROM Account", "conn": "invalid_client"}),
        ("query", "wrong password (SOAP)", {"query": "SELECT Id FROM Account", "conn": "INVALID_LOGIN"}),
    ]


def _connections(base_url: str, creds: Any) -> dict[str, str]:
    def conn(extra: dict[str, Any], **fields: Any) -> str:
        return json.dumps({"conn_type": "salesforce_bulk", "host": base_url, **fields, "extra": extra})

    good = {
        "auth_type": "client_credentials",
        "client_id": creds.client_id,
        "client_secret": creds.client_secret,
    }
    return {
        "good": conn(good),
        "invalid_client": conn({**good, "client_secret": "wrong"}),
        "invalid_client_id": conn({**good, "client_id": "nobody"}),
        "invalid_grant": conn(
            {"auth_type": "password", "client_id": creds.client_id, "client_secret": creds.client_secret},
            login=creds.username,
            password="wrong",  # noqa: S106 - a wrong password on purpose
        ),
        "INVALID_LOGIN": conn({"auth_type": "soap_login"}, login=creds.username, password="wrong"),  # noqa: S106
        "incomplete": conn({"auth_type": "client_credentials", "client_id": creds.client_id}),
    }


def _job_count(sf: Any) -> int:
    store = sf.emulator.store
    ingest = len(store.list_jobs(0, 100_000))
    try:
        query = int(store.query("SELECT COUNT(*) FROM query_jobs")[0][0])
    except Exception:
        query = 0
    return ingest + query


def _run_case(sf: Any, conns: dict[str, str], tmp: Path, kwargs: dict[str, Any]) -> tuple[str, str]:
    from airflow.providers.common.compat.sdk import AirflowFailException

    from airflow_provider_salesforce_bulk.operators.salesforce_bulk import SalesforceBulkOperator
    from airflow_provider_salesforce_bulk.operators.salesforce_bulk_query import SalesforceBulkQueryOperator

    kwargs = dict(kwargs)
    os.environ["AIRFLOW_CONN_SF_CENSUS"] = conns[kwargs.pop("conn", "good")]
    common = {
        "task_id": "t",
        "conn_id": "sf_census",
        "deferrable": False,
        "poll_interval": 0.1,
        "timeout": 60,
    }
    try:
        if "query" in kwargs:
            soql = kwargs.pop("query")
            op: Any = SalesforceBulkQueryOperator(
                soql=soql, output_path=str(tmp / "out"), **{**common, **kwargs}
            )
        else:
            kwargs.setdefault("operation", "insert")
            kwargs.setdefault("object_name", "Contact")
            op = SalesforceBulkOperator(results_path=str(tmp / "results"), **{**common, **kwargs})
    except Exception as exc:  # refused when the DAG file is parsed: before any job, never retried
        return "clear", f"at parse: {type(exc).__name__}: {str(exc)[:130]}"
    before = _job_count(sf)
    try:
        op.execute({"ti": None, "task_state_store": _Store()})
    except AirflowFailException as exc:
        outcome = "clear" if _job_count(sf) == before else "after_jobs"
        return outcome, str(exc)[:160]
    except Exception as exc:
        outcome = "retried" if _job_count(sf) == before else "after_jobs"
        return outcome, f"{type(exc).__name__}: {str(exc)[:140]}"
    return ("loaded" if _job_count(sf) == before else "after_jobs"), "no error"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--verbose", action="store_true", help="print every case and its outcome")
    args = parser.parse_args()
    from airflow_provider_salesforce_bulk.emulator.server import run_emulator

    tmp = Path(tempfile.mkdtemp(prefix="sf-bulk-census-data-"))
    files = _files(tmp)
    counts: collections.Counter[tuple[str, str]] = collections.Counter()
    with run_emulator(db=":memory:", records_per_second=None) as sf:
        conns = _connections(sf.base_url, sf.credentials)
        for area, name, kwargs in _cases(files):
            outcome, detail = _run_case(sf, conns, tmp, kwargs)
            counts[(area, outcome)] += 1
            if args.verbose or outcome != "clear":
                print(f"{area:9} {outcome:10} {name:34} {detail}")
    areas = sorted({area for area, _ in counts})
    total = sum(counts.values())
    clear = sum(n for (_, outcome), n in counts.items() if outcome == "clear")
    for area in areas:
        tried = sum(n for (a, _), n in counts.items() if a == area)
        print(f"{area}: {counts[(area, 'clear')]} of {tried} clear before any job")
    print(f"total: {clear} of {total} bad inputs get a clear error (no retry) before any job")
    return 0


if __name__ == "__main__":
    sys.exit(main())
