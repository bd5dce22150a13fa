"""Issue 10 through dag.test(): SQL, Parquet and Arrow sources, field mapping, grouping by parent,
the limits check and lock-safe resubmission rounds, against the emulator over its socket.

Every load inserts or upserts by a unique external id, so a record stored twice would show.
"""

from __future__ import annotations

import collections
import csv
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_salesforce_bulk.emulator.server import RunningEmulator
from tests.airflow.helpers import conn_uri_json, load_dag_file
from tests.airflow.test_dag_e2e import _jobs, _xcom

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")


@pytest.fixture
def sf(emulator: RunningEmulator, monkeypatch: pytest.MonkeyPatch, airflow_db: object) -> RunningEmulator:
    monkeypatch.setenv("AIRFLOW_CONN_SF_E2E", conn_uri_json(emulator))
    return emulator


@pytest.fixture
def warehouse(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A SQLite database behind an ``AIRFLOW_CONN_`` sqlite connection (Airflow's sqlite provider)."""
    path = tmp_path / "warehouse.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE people (id INTEGER PRIMARY KEY, surname TEXT, ext TEXT, mail TEXT)")
        db.executemany(
            "INSERT INTO people VALUES (?, ?, ?, ?)",
            [(i, f'Sur, "{i}"', f"SQL-{i}", f"s{i}@example.com") for i in range(25)],
        )
    monkeypatch.setenv("AIRFLOW_CONN_WAREHOUSE", json.dumps({"conn_type": "sqlite", "host": str(path)}))
    return path


def _run(
    name: str, tmp_path: Path, args: str, *, prelude: str = "", operator: str = "SalesforceBulkOperator"
) -> Any:
    dag = load_dag_file(
        name,
        f"""
        import datetime
        import pyarrow as pa
        from airflow.sdk import DAG
        from airflow_provider_salesforce_bulk.operators.salesforce_bulk import SalesforceBulkOperator
        {prelude}
        start = datetime.datetime(2024, 1, 1)
        with DAG({name!r}, schedule=None, start_date=start, params={{"n": 25}}) as dag:
            {operator}(
                task_id="load", conn_id="sf_e2e", deferrable=True, poll_interval=0.2,
                results_path={str(tmp_path / name)!r}, retry_delay=datetime.timedelta(0), {args}
            )
        """,
    )
    return dag.test()


def _rows(path: str) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_sql_source_with_field_mapping_upserts_every_row_once(
    sf: RunningEmulator, warehouse: Path, tmp_path: Path
) -> None:
    dr = _run(
        "i10_sql",
        tmp_path,
        """operation="upsert", object_name="Contact", external_id_field="External_Id__c",
        sql="SELECT surname, ext, mail FROM people WHERE id < {{ params.n }} ORDER BY id",
        sql_conn_id="warehouse", max_records_per_job=10,
        field_mapping={"ext": "External_Id__c", "surname": "LastName", "mail": "Email"}""",
    )
    assert dr.state == "success"
    stored = sorted((r["External_Id__c"], r["LastName"], r["Email"]) for r in sf.records("Contact"))
    assert stored == sorted((f"SQL-{i}", f'Sur, "{i}"', f"s{i}@example.com") for i in range(25))
    summary = _xcom("i10_sql")
    assert summary["totals"]["succeeded"] == 25
    assert summary["totals"]["records"] == 25
    assert len(_jobs(sf)) == 3


def test_parquet_file_and_arrow_table_load_every_record_once(sf: RunningEmulator, tmp_path: Path) -> None:
    table = pa.table({"name": [f"P, {i}" for i in range(23)], "ext": [f"PQ-{i}" for i in range(23)]})
    pq.write_table(table, tmp_path / "accounts.parquet", row_group_size=5)
    dr = _run(
        "i10_parquet",
        tmp_path,
        f"""operation="insert", object_name="Account", source={str(tmp_path / "accounts.parquet")!r},
        field_mapping={{"name": "Name", "ext": "External_Id__c"}}, max_records_per_job=10""",
    )
    assert dr.state == "success"
    assert _xcom("i10_parquet")["totals"]["succeeded"] == 23
    dr = _run(
        "i10_table",
        tmp_path,
        """operation="insert", object_name="Account", max_records_per_job=4,
        records=pa.table({"Name": [f'T"{i}' for i in range(9)],
                          "External_Id__c": [f"TB-{i}" for i in range(9)],
                          "NumberOfEmployees": pa.array(list(range(9)), pa.int32())})""",
    )
    assert dr.state == "success"
    assert _xcom("i10_table")["totals"]["succeeded"] == 9
    stored = sorted((r["External_Id__c"], r["Name"]) for r in sf.records("Account"))
    expected = [(f"PQ-{i}", f"P, {i}") for i in range(23)] + [(f"TB-{i}", f'T"{i}') for i in range(9)]
    assert stored == sorted(expected)
    assert len(_jobs(sf)) == 3 + 3


def test_group_by_parent_puts_each_parent_in_one_job(sf: RunningEmulator, tmp_path: Path) -> None:
    titles = ["A", "B", "C", "D"]
    records = [{"LastName": f"G{i}", "External_Id__c": f"G-{i}", "Title": titles[i % 4]} for i in range(24)]
    dr = _run(
        "i10_group",
        tmp_path,
        f"""operation="upsert", object_name="Contact", external_id_field="External_Id__c",
        records={records!r}, group_by_parent="Title", max_records_per_job=6""",
    )
    assert dr.state == "success"
    summary = _xcom("i10_group")
    assert summary["totals"]["succeeded"] == 24
    per_job = [
        {row["Title"] for row in _rows(job["result_files"]["successful"])} for job in summary["jobs"].values()
    ]
    assert sorted(per_job, key=sorted) == [{"A"}, {"B"}, {"C"}, {"D"}]
    assert sorted(r["External_Id__c"] for r in sf.records("Contact")) == sorted(f"G-{i}" for i in range(24))


@pytest.mark.parametrize(
    ("case", "args"),
    [
        (
            "unknown_column",
            """sql="SELECT surname, ext FROM people", sql_conn_id="warehouse",
            field_mapping={"surname": "LastName", "external": "External_Id__c"}""",
        ),
        ("query_error", """sql="SELECT surname FROM no_such_table", sql_conn_id="warehouse" """),
        ("empty_result", """sql="SELECT surname, ext FROM people WHERE id < 0", sql_conn_id="warehouse" """),
        (
            "unsupported_type",
            """records=pa.table({"LastName": ["x"], "External_Id__c": ["E"], "Tags": pa.array([[1, 2]])})""",
        ),
        ("bad_rounds", """records=[{"LastName": "x", "External_Id__c": "E"}], resubmit_rounds=0"""),
        ("bad_limits_check", """records=[{"LastName": "x", "External_Id__c": "E"}], limits_check="maybe" """),
    ],
)
def test_bad_input_fails_before_any_job_without_retrying(
    sf: RunningEmulator, warehouse: Path, tmp_path: Path, case: str, args: str
) -> None:
    dr = _run(
        f"i10_bad_{case}",
        tmp_path,
        f"""operation="upsert", object_name="Contact", external_id_field="External_Id__c", retries=2,
        {args}""",
    )
    assert dr.state == "failed"
    # AirflowFailException: no retry for bad input.
    assert dr.get_task_instance("load").try_number == 1
    assert _jobs(sf) == []


def test_empty_result_may_be_allowed(sf: RunningEmulator, warehouse: Path, tmp_path: Path) -> None:
    dr = _run(
        "i10_allow_empty",
        tmp_path,
        """operation="insert", object_name="Contact", allow_empty=True,
        sql="SELECT surname AS LastName FROM people WHERE id < 0", sql_conn_id="warehouse" """,
    )
    assert dr.state == "success"
    assert _xcom("i10_allow_empty")["totals"]["records"] == 0
    assert _jobs(sf) == []


def test_limits_check_fails_before_any_job(sf: RunningEmulator, tmp_path: Path) -> None:
    sf.update_settings(daily_bulk_batches_max=2)
    records = [{"Name": f"L{i}", "External_Id__c": f"LIM-{i}"} for i in range(9)]
    args = f"""operation="insert", object_name="Account", records={records!r}, max_records_per_job=3"""
    dr = _run("i10_limits_fail", tmp_path, args + ', limits_check="fail", retries=2')
    assert dr.state == "failed"
    assert dr.get_task_instance("load").try_number == 1
    assert _jobs(sf) == []
    # "off" asks nothing; the org's allowance is enough for two of the three jobs only, so warn
    # is not tried here; with a larger allowance "warn" and "fail" load.
    sf.update_settings(daily_bulk_batches_max=100)
    dr = _run("i10_limits_ok", tmp_path, args + ', limits_check="fail"')
    assert dr.state == "success"
    assert len(sf.records("Account")) == 9


N_LOCK = 5_000


def _lock_args(rounds: int, extra: str = "") -> str:
    return f"""operation="insert", object_name="Account", max_records_per_job=1000,
        records=[{{"Name": f"Lock {{i}}", "External_Id__c": f"LK-{{i}}"}} for i in range({N_LOCK})],
        resubmit_rounds={rounds}, resubmit_backoff=0.1, {extra}"""


def _stored_once(sf: RunningEmulator) -> list[str]:
    stored = [r["External_Id__c"] for r in sf.records("Account")]
    assert len(stored) == len(set(stored))  # an insert sent twice would show as a duplicate
    return stored


def test_lock_failures_are_resubmitted_and_stored_exactly_once(sf: RunningEmulator, tmp_path: Path) -> None:
    sf.update_settings(lock_failure_rate=0.05, seed=5)
    dr = _run("i10_lock", tmp_path, _lock_args(6))
    assert dr.state == "success"
    stored = _stored_once(sf)
    assert sorted(stored) == sorted(f"LK-{i}" for i in range(N_LOCK))
    summary = _xcom("i10_lock")
    totals = summary["totals"]
    assert totals["records"] == N_LOCK
    assert totals["succeeded"] == len(stored) == N_LOCK
    assert totals["failed"] == 0
    assert totals["unprocessed"] == 0
    assert summary["failed_by_error_code"] == {}
    rounds = collections.Counter(job["round"] for job in summary["jobs"].values())
    assert rounds[1] == 5
    assert summary["rounds"] >= 2
    # Every record sent again is counted once, where it ended.
    first_round_failed = sum(
        job["failed"] + job.get("resubmitted", 0) for job in summary["jobs"].values() if job["round"] == 1
    )
    assert 100 < first_round_failed < 500
    assert totals["resubmitted"] >= first_round_failed
    assert len(_jobs(sf)) == len(summary["jobs"])
    later = [job for job in summary["jobs"].values() if job["round"] > 1]
    assert all("round-" in job["result_files"]["successful"] for job in later)
    resent_ok = sum(len(_rows(job["result_files"]["successful"])) for job in later)
    assert resent_ok == sum(job["succeeded"] for job in later)


def test_one_round_leaves_lock_failures_failed_and_counted_once(sf: RunningEmulator, tmp_path: Path) -> None:
    sf.update_settings(lock_failure_rate=0.05, seed=5)
    dr = _run("i10_lock_once", tmp_path, _lock_args(1, "max_failed_ratio=0.2"))
    assert dr.state == "success"
    stored = _stored_once(sf)
    summary = _xcom("i10_lock_once")
    totals = summary["totals"]
    assert totals["succeeded"] == len(stored)
    assert totals["failed"] == N_LOCK - len(stored) > 100
    assert "resubmitted" not in totals
    assert summary["failed_by_error_code"] == {"UNABLE_TO_LOCK_ROW": totals["failed"]}
    assert len(_jobs(sf)) == 5


def test_the_final_failed_results_file_holds_exactly_the_records_that_failed_for_good(
    sf: RunningEmulator, tmp_path: Path
) -> None:
    # Lock failures of round 1 are sent again in round 2 (the last), where most succeed; every 100th
    # record has no Name and fails for good in round 1. Round 1's own files keep what they held.
    sf.update_settings(lock_failure_rate=0.05, seed=7)
    args = f"""operation="insert", object_name="Account", max_records_per_job=1000,
        records=[{{"Name": "" if i % 100 == 0 else f"Lock {{i}}", "External_Id__c": f"LK-{{i}}"}}
                 for i in range({N_LOCK})],
        resubmit_rounds=2, resubmit_backoff=0.1, max_failed_ratio=0.5"""
    dr = _run("i20_final_failed", tmp_path, args)
    assert dr.state == "success"
    stored = set(_stored_once(sf))
    summary = _xcom("i20_final_failed")
    assert summary["rounds"] == 2
    final = _rows(summary["failed_results"])
    final_ids = [row["External_Id__c"] for row in final]
    assert (
        len(final_ids) == len(set(final_ids)) == summary["totals"]["failed"] == summary["failed_results_rows"]
    )
    assert set(final_ids) == {f"LK-{i}" for i in range(N_LOCK)} - stored, "exactly the records not stored"
    assert {f"LK-{i}" for i in range(0, N_LOCK, 100)} <= set(final_ids)
    round_one_locks = {
        row["External_Id__c"]
        for job in summary["jobs"].values()
        if job["round"] == 1
        for row in _rows(job["result_files"]["failed"])
        if row["sf__Error"].startswith("UNABLE_TO_LOCK_ROW")
    }
    assert round_one_locks & stored, "some lock failures of round 1 succeeded in round 2"
    assert not round_one_locks & stored & set(final_ids)


def test_a_long_backoff_waits_in_the_triggerer_not_in_the_worker(
    sf: RunningEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import time

    from airflow_provider_salesforce_bulk.operators import resubmit_rounds as module

    timers: list[float] = []
    real_timer = module.ResubmitBackoffTrigger

    def timer(moment: float, *args: Any, **kwargs: Any) -> Any:
        timers.append(round(moment - time.time(), 1))
        return real_timer(moment, *args, **kwargs)

    class NoLongSleep:
        """The operator module's ``time``, refusing to hold the worker for a backoff it could defer."""

        def __getattr__(self, name: str) -> Any:
            return getattr(time, name)

        def sleep(self, seconds: float) -> None:
            assert seconds < 0.2, f"the worker slept {seconds}s between rounds instead of deferring"
            time.sleep(seconds)

    monkeypatch.setattr(module, "_DEFER_BACKOFF_FROM", 0.2)
    monkeypatch.setattr(module, "ResubmitBackoffTrigger", timer)
    monkeypatch.setattr(module, "time", NoLongSleep())
    sf.update_settings(lock_failure_rate=0.05, seed=5)
    args = _lock_args(6).replace("resubmit_backoff=0.1", "resubmit_backoff=0.3")
    dr = _run("i10_lock_deferred_backoff", tmp_path, args)
    assert dr.state == "success"
    stored = _stored_once(sf)
    assert sorted(stored) == sorted(f"LK-{i}" for i in range(N_LOCK))
    summary = _xcom("i10_lock_deferred_backoff")
    assert summary["totals"]["succeeded"] == N_LOCK
    assert len(_jobs(sf)) == len(summary["jobs"])
    # One timer per round after the first, doubling: round 2 waits 0.3 s, round 3 0.6 s, ...
    assert len(timers) == summary["rounds"] - 1 >= 1
    assert timers == [0.3 * 2**i for i in range(len(timers))]


def test_a_retry_during_a_round_reattaches_to_its_jobs(sf: RunningEmulator, tmp_path: Path) -> None:
    # The worker is lost right after round 2 was sent (its jobs deferred on), on the first try only.
    prelude = """
        from airflow.providers.common.compat.sdk import TaskDeferred

        class Flaky(SalesforceBulkOperator):
            def execute_complete(self, context, event=None, **kwargs):
                try:
                    return super().execute_complete(context, event, **kwargs)
                except TaskDeferred:
                    if context["ti"].try_number == 1:
                        raise RuntimeError("worker lost after round 2 was sent")
                    raise
        """
    sf.update_settings(lock_failure_rate=0.05, seed=5)
    dr = _run("i10_lock_retry", tmp_path, _lock_args(6, "retries=1"), prelude=prelude, operator="Flaky")
    assert dr.state == "success"
    assert dr.get_task_instance("load").try_number == 2
    stored = _stored_once(sf)
    assert sorted(stored) == sorted(f"LK-{i}" for i in range(N_LOCK))
    summary = _xcom("i10_lock_retry")
    assert summary["totals"]["succeeded"] == N_LOCK
    assert summary["totals"]["failed"] == 0
    # No round was computed and sent twice: every job the org holds is in the summary once.
    assert len(_jobs(sf)) == len(summary["jobs"])


def test_bad_input_messages_say_what_and_where(sf: RunningEmulator, warehouse: Path, tmp_path: Path) -> None:
    from airflow.providers.common.compat.sdk import AirflowFailException

    from airflow_provider_salesforce_bulk.operators.salesforce_bulk import SalesforceBulkOperator

    pq.write_table(pa.table({"LastName": ["x"]}), tmp_path / "people.parquet")
    cases: list[tuple[dict[str, Any], str]] = [
        (
            {"sql": "SELECT surname FROM people", "sql_conn_id": "warehouse", "field_mapping": {"nope": "X"}},
            "field_mapping names the column 'nope'",
        ),
        (
            {"sql": "SELECT x FROM no_such_table", "sql_conn_id": "warehouse"},
            "the query 'SELECT x FROM no_such_table' failed on 'warehouse'",
        ),
        ({"sql": "SELECT surname FROM people WHERE id < 0", "sql_conn_id": "warehouse"}, "returned no rows"),
        ({"sql": "SELECT 1"}, "sql needs sql_conn_id"),
        ({"records": pa.table({"Tags": pa.array([[1, 2]])})}, "column 'Tags' has the Arrow type"),
        ({"records": [{"LastName": "x"}], "field_mapping": {"a": "B"}}, "field_mapping applies to sql"),
        ({"source": str(tmp_path / "people.parquet"), "field_mapping": {}}, "field_mapping must be"),
        ({"source": str(tmp_path / "people.parquet"), "source_format": "xlsx"}, "'parquet' or 'arrow'"),
        ({"records": [{"LastName": "x"}], "group_by_parent": " "}, "group_by_parent must be"),
        ({"records": [{"LastName": "x"}], "limits_check": "loud"}, "limits_check must be one of"),
        ({"records": [{"LastName": "x"}], "retry_error_codes": "UNABLE_TO_LOCK_ROW"}, "retry_error_codes"),
        ({"records": [{"LastName": "x"}], "retry_error_codes": ["lock"]}, "retry_error_codes holds 'lock'"),
        ({"records": [{"LastName": "x"}], "resubmit_rounds": 11}, "resubmit_rounds must be"),
        ({"records": [{"LastName": "x"}], "resubmit_backoff": float("nan")}, "resubmit_backoff must be"),
        ({"records": [{"LastName": "x"}], "allow_empty": "yes"}, "allow_empty must be True or False"),
    ]
    for kwargs, expected in cases:
        op = SalesforceBulkOperator(
            task_id="t", operation="insert", object_name="Contact", conn_id="sf_e2e", **kwargs
        )
        with pytest.raises(AirflowFailException, match=expected):
            op.execute({"ti": None, "task_state_store": None})
    assert _jobs(sf) == []


def test_a_dataframe_like_object_is_not_turned_into_a_list() -> None:
    from airflow_provider_salesforce_bulk.operators.salesforce_bulk import SalesforceBulkOperator

    table = pa.table({"LastName": ["a", "b"]})
    for records in (table, table.to_batches()[0], pa.RecordBatchReader.from_batches(table.schema, [])):
        op = SalesforceBulkOperator(task_id="t", operation="insert", object_name="Contact", records=records)
        assert "pyarrow" in op._source().description

    class FrameLike:
        """Iterates over its column names, as a pandas DataFrame does, and exports an Arrow stream."""

        def __iter__(self) -> Any:
            return iter(table.column_names)

        def __arrow_c_stream__(self, requested_schema: Any = None) -> Any:
            return table.__arrow_c_stream__(requested_schema)

    op = SalesforceBulkOperator(task_id="t", operation="insert", object_name="Contact", records=FrameLike())
    with op._source().open() as chunks:
        assert [chunk.data for chunk in chunks] == [b"LastName\na\nb\n"]


PANDAS_PRELUDE = """
        import pandas as pd

        def frame():
            n = 30
            return pd.DataFrame(
                {
                    "External_Id__c": [f"PD-{i}" for i in range(n)],
                    "Name": [None if i % 7 == 0 else f'Item {i}, "boxed"' for i in range(n)],
                    "Quantity__c": pd.array([None if i % 5 == 0 else i * 3 for i in range(n)], dtype="Int64"),
                    "Unit_Price__c": [float("nan") if i % 6 == 0 else i + 0.25 for i in range(n)],
                    "Active__c": [i % 2 == 0 for i in range(n)],
                    "Last_Counted__c": pd.to_datetime(
                        [None if i % 4 == 0 else f"2024-03-{i % 28 + 1:02d}T10:{i:02d}:05.250Z"
                         for i in range(n)],
                        utc=True,
                    ),
                    "Category__c": pd.Categorical(["Hardware" if i % 3 else "Spare Part" for i in range(n)]),
                }
            )
        """


def _pandas_expected(i: int) -> dict[str, Any]:
    """What the org stores for row ``i`` of ``frame()``, typed as the emulator returns records."""
    return {
        "Name": None if i % 7 == 0 else f'Item {i}, "boxed"',
        "Quantity__c": None if i % 5 == 0 else i * 3,
        "Unit_Price__c": None if i % 6 == 0 else i + 0.25,
        "Active__c": i % 2 == 0,
        "Last_Counted__c": None if i % 4 == 0 else f"2024-03-{i % 28 + 1:02d}T10:{i:02d}:05.250+0000",
        "Category__c": "Hardware" if i % 3 else "Spare Part",
    }


def test_a_pandas_dataframe_loads_directly_and_through_xcom(sf: RunningEmulator, tmp_path: Path) -> None:
    # A real pandas DataFrame (nullable Int64, NaN, NaT, tz-aware timestamps, a categorical), handed
    # over directly and, as most DAGs do, returned by an upstream task through XCom.
    dr = _run(
        "i10_pandas",
        tmp_path,
        'operation="insert", object_name="Warehouse_Item__c", max_records_per_job=8, records=frame()',
        prelude=PANDAS_PRELUDE,
    )
    assert dr.state == "success"
    assert _xcom("i10_pandas")["totals"]["succeeded"] == 30
    stored = {r["External_Id__c"]: r for r in sf.records("Warehouse_Item__c")}
    assert sorted(stored) == sorted(f"PD-{i}" for i in range(30))
    for i in range(30):
        record = stored[f"PD-{i}"]
        assert {name: record[name] for name in _pandas_expected(i)} == _pandas_expected(i), f"row {i}"
    assert len(_jobs(sf)) == 4

    sf.reset()
    dag = load_dag_file(
        "i10_pandas_xcom",
        f"""
        import datetime
        from airflow.sdk import DAG, task
        from airflow_provider_salesforce_bulk.operators.salesforce_bulk import SalesforceBulkOperator
        {PANDAS_PRELUDE}
        with DAG("i10_pandas_xcom", schedule=None, start_date=datetime.datetime(2024, 1, 1)) as dag:
            @task
            def extract():
                return frame()

            SalesforceBulkOperator(
                task_id="load", conn_id="sf_e2e", deferrable=True, poll_interval=0.2,
                results_path={str(tmp_path / "xcom")!r}, operation="upsert", object_name="Warehouse_Item__c",
                external_id_field="External_Id__c", records=extract(),
            )
        """,
    )
    dr = dag.test()  # type: ignore[attr-defined]
    assert dr.state == "success"
    assert _xcom("i10_pandas_xcom")["totals"]["succeeded"] == 30
    stored = {r["External_Id__c"]: r for r in sf.records("Warehouse_Item__c")}
    assert len(stored) == 30
    assert {name: stored["PD-9"][name] for name in _pandas_expected(9)} == _pandas_expected(9)


def test_the_sql_example_dag_upserts_the_query_result(
    emulator: RunningEmulator, monkeypatch: pytest.MonkeyPatch, airflow_db: object, tmp_path: Path
) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_SALESFORCE_BULK_DEFAULT", conn_uri_json(emulator))
    database = tmp_path / "example_warehouse.db"
    monkeypatch.setenv(
        "AIRFLOW_CONN_WAREHOUSE_SQLITE", json.dumps({"conn_type": "sqlite", "host": str(database)})
    )
    source = Path(__file__).parents[2] / "dags_examples" / "example_salesforce_bulk_sql.py"
    dag: Any = load_dag_file("example_salesforce_bulk_sql", source.read_text())
    assert dag.test().state == "success"
    stored = sorted(r["External_Id__c"] for r in emulator.records("Account"))
    assert stored == sorted(f"WH-{i:05d}" for i in range(1, 201, 2))
    assert _xcom("example_salesforce_bulk_sql", "upsert_accounts")["totals"]["succeeded"] == 100


def test_allow_na_marker_reaches_the_arrow_path(sf: RunningEmulator, tmp_path: Path) -> None:
    from airflow.providers.common.compat.sdk import AirflowFailException

    from airflow_provider_salesforce_bulk.operators.salesforce_bulk import SalesforceBulkOperator

    table = pa.table({"LastName": ["Na"], "External_Id__c": ["NA-1"], "Title": ["#N/A"]})
    settings: dict[str, Any] = {
        "task_id": "t",
        "operation": "insert",
        "object_name": "Contact",
        "conn_id": "sf_e2e",
        "records": table,
        "deferrable": False,
        "poll_interval": 0.2,
        "results_path": str(tmp_path / "na"),
    }
    with pytest.raises(AirflowFailException, match="allow_na_marker"):
        SalesforceBulkOperator(**settings).execute({"ti": None, "task_state_store": None})
    assert _jobs(sf) == []
    summary = SalesforceBulkOperator(**settings, allow_na_marker=True).execute(
        {"ti": None, "task_state_store": None}
    )
    assert summary["totals"]["succeeded"] == 1
    assert [r.get("Title") for r in sf.records("Contact")] == [None]


class _DictStore:
    """``task_state_store``'s get/set/delete on a dict (JSON round trip, as Airflow stores it)."""

    def __init__(self) -> None:
        self.values: dict[str, str] = {}

    def get(self, key: str, default: Any = None) -> Any:
        return json.loads(self.values[key]) if key in self.values else default

    def set(self, key: str, value: Any) -> None:
        self.values[key] = json.dumps(value)

    def delete(self, key: str) -> None:
        self.values.pop(key, None)


def test_rounds_in_the_worker_record_every_job_of_every_round(sf: RunningEmulator, tmp_path: Path) -> None:
    from airflow_provider_salesforce_bulk.operators.resubmit_rounds import ROUNDS_KEY
    from airflow_provider_salesforce_bulk.operators.salesforce_bulk import SalesforceBulkOperator

    sf.update_settings(lock_failure_rate=0.1, seed=3)
    store = _DictStore()
    op = SalesforceBulkOperator(
        task_id="t",
        operation="insert",
        object_name="Account",
        conn_id="sf_e2e",
        records=[{"Name": f"W{i}", "External_Id__c": f"W-{i}"} for i in range(1_000)],
        max_records_per_job=300,
        deferrable=False,
        poll_interval=0.2,
        resubmit_rounds=8,
        resubmit_backoff=0,
        results_path=str(tmp_path / "worker"),
    )
    summary = op.execute({"ti": None, "task_state_store": store})
    stored = _stored_once(sf)
    assert sorted(stored) == sorted(f"W-{i}" for i in range(1_000))
    assert summary["totals"]["succeeded"] == 1_000
    assert summary["totals"]["failed"] == 0
    rounds = store.get(ROUNDS_KEY)["rounds"]
    recorded = {job["job"] for r in rounds.values() for job in r["jobs"].values()}
    assert all(r["complete"] for r in rounds.values())
    assert all(job["phase"] == "closed" for r in rounds.values() for job in r["jobs"].values())
    later = {job_id for job_id, job in summary["jobs"].items() if job["round"] > 1}
    assert recorded == later
    assert len(_jobs(sf)) == len(summary["jobs"]) == 4 + len(later)


def test_limits_check_warn_loads_and_fail_refuses(sf: RunningEmulator, tmp_path: Path) -> None:
    # One job needs about 25 API requests by the estimate (create, upload, close, 20 polls, results):
    # more than the org has left, though this small load really takes fewer.
    sf.update_settings(daily_api_requests_max=24)
    records = [{"Name": f"W{i}", "External_Id__c": f"WARN-{i}"} for i in range(3)]
    args = f"""operation="insert", object_name="Account", records={records!r}, retries=2"""
    dr = _run("i10_api_fail", tmp_path, args + ', limits_check="fail"')
    assert dr.state == "failed"
    assert dr.get_task_instance("load").try_number == 1
    assert _jobs(sf) == []
    dr = _run("i10_api_warn", tmp_path, args + ', limits_check="warn"')
    assert dr.state == "success"
    assert sorted(r["External_Id__c"] for r in sf.records("Account")) == [f"WARN-{i}" for i in range(3)]
