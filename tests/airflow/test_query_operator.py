"""SalesforceBulkQueryOperator end to end with dag.test() against the emulator, and the query trigger."""

from __future__ import annotations

import asyncio
import csv
import datetime
import json
import time
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_salesforce_bulk.client import (
    BulkIngestClient,
    BulkQueryClient,
    ClientCredentialsAuth,
    SalesforceSession,
    TokenCache,
)
from airflow_provider_salesforce_bulk.emulator.server import RunningEmulator
from airflow_provider_salesforce_bulk.triggers.salesforce_bulk import SalesforceBulkJobTrigger
from tests.airflow.helpers import TI, SupervisorComms, conn_uri_json, load_dag_file

FIELDS = ["Id", "External_Id__c", "Name", "NumberOfEmployees", "AnnualRevenue", "Description"]
SOQL = "SELECT Id, External_Id__c, Name, NumberOfEmployees, AnnualRevenue, Description FROM Account"


def _session(sf: RunningEmulator) -> SalesforceSession:
    c = sf.credentials
    return SalesforceSession(
        ClientCredentialsAuth(c.client_id, c.client_secret, sf.base_url), token_cache=TokenCache()
    )


def _accounts(start: int, n: int) -> list[dict[str, Any]]:
    out = []
    for i in range(start, start + n):
        record: dict[str, Any] = {"External_Id__c": f"ACC-{i:04d}", "Name": f"Account, {i}"}
        if i % 3:
            record["NumberOfEmployees"] = i * 7
            record["AnnualRevenue"] = i * 1000.25
        if i % 4 == 0:
            record["Description"] = f'line one, "quoted" {i}\nline two é 中文'
        out.append(record)
    return out


def _run(sf: RunningEmulator, operation: str, records: list[dict[str, Any]]) -> None:
    async def go() -> None:
        async with _session(sf) as session:
            ingest = BulkIngestClient(session)
            async for result in ingest.perform_operation(
                operation, "Account", records, polling_interval=0.05
            ):
                assert result.job_info.state == "JobComplete"
                assert result.job_info.number_records_failed == 0

    asyncio.run(go())


def _query_jobs(sf: RunningEmulator) -> list[dict[str, Any]]:
    return sf.emulator.query_jobs.list_jobs(0, 1000)


@pytest.fixture
def sf(emulator: RunningEmulator, monkeypatch: pytest.MonkeyPatch, airflow_db: object) -> RunningEmulator:
    monkeypatch.setenv("AIRFLOW_CONN_SF_QUERY", conn_uri_json(emulator))
    return emulator


def _dag(name: str, operator_args: str, *, retries: int = 0, flaky: bool = False) -> Any:
    operator = "SalesforceBulkQueryOperator"
    prelude = ""
    if flaky:
        # Lose the worker right after the query job was submitted, on the first try only.
        prelude = """
        from airflow.providers.common.compat.sdk import TaskDeferred

        class Flaky(SalesforceBulkQueryOperator):
            def execute(self, context):
                try:
                    return super().execute(context)
                except TaskDeferred:
                    if context["ti"].try_number == 1:
                        raise RuntimeError("worker lost after the submit")
                    raise
        """
        operator = "Flaky"
    return load_dag_file(
        name,
        f"""
        import datetime
        from airflow.sdk import DAG
        from airflow_provider_salesforce_bulk.operators import salesforce_bulk_query
        SalesforceBulkQueryOperator = salesforce_bulk_query.SalesforceBulkQueryOperator
        {prelude}
        with DAG({name!r}, schedule=None, start_date=datetime.datetime(2024, 1, 1)) as dag:
            {operator}(
                task_id="extract", conn_id="sf_query", deferrable=True, poll_interval=0.2,
                retries={retries}, retry_delay=datetime.timedelta(0), {operator_args}
            )
        """,
    )


def _xcom(dag_id: str) -> Any:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        row = session.scalars(
            select(XComModel.value).where(
                XComModel.dag_id == dag_id, XComModel.task_id == "extract", XComModel.key == "return_value"
            )
        ).first()
    return json.loads(row) if isinstance(row, str) else row


def _csv_rows(paths: list[str]) -> list[dict[str, str]]:
    rows: list[dict[str, str]] = []
    for path in paths:
        with open(path, newline="", encoding="utf-8") as f:
            rows.extend(csv.DictReader(f))
    return rows


def _as_csv(value: Any) -> str:
    """A stored value as Salesforce writes it in a query result (Java's double text for numbers)."""
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _check_files(summary: dict[str, Any], counts: list[int]) -> list[str]:
    paths = [f["path"] for f in summary["files"]]
    assert [f["records"] for f in summary["files"]] == counts
    for f in summary["files"]:
        assert Path(f["path"]).stat().st_size == f["bytes"] > 0
    return paths


def test_csv_extract_holds_exactly_the_org_records(sf: RunningEmulator, tmp_path: Path) -> None:
    _run(sf, "insert", _accounts(0, 25))
    out = tmp_path / "out"
    dag = _dag("q_csv", f"soql={SOQL!r}, output_path={str(out)!r}, records_per_file=10")
    dr = dag.test()
    assert dr.state == "success"
    summary = _xcom("q_csv")
    (job,) = _query_jobs(sf)
    assert summary["job_id"] == job["id"]
    assert summary["state"] == "JobComplete"
    assert summary["records"] == 25
    assert summary["object"] == "Account"
    assert summary["seconds"] >= 0
    paths = _check_files(summary, [10, 10, 5])
    assert [Path(p).name for p in paths] == ["part-00000.csv", "part-00001.csv", "part-00002.csv"]
    expected = [{name: _as_csv(record[name]) for name in FIELDS} for record in sf.records("Account")]
    assert _csv_rows(paths) == expected
    assert expected[4]["Description"] == 'line one, "quoted" 4\nline two é 中文'


def test_parquet_extract_holds_exactly_the_org_records(sf: RunningEmulator) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    _run(sf, "insert", _accounts(0, 23))
    dag = _dag("q_parquet", f"soql={SOQL!r}, output_format='parquet', records_per_file=10")
    dr = dag.test()
    assert dr.state == "success"
    summary = _xcom("q_parquet")
    paths = _check_files(summary, [10, 10, 3])
    # The default folder: $AIRFLOW_HOME/salesforce_bulk_extracts/<dag>/<run>/<task>.
    assert "/salesforce_bulk_extracts/q_parquet/" in summary["output_path"]
    assert summary["output_path"].endswith("/extract")
    tables = [pq.read_table(p) for p in paths]
    assert [str(t) for t in tables[0].schema.types] == [
        "string",
        "string",
        "string",
        "int64",
        "double",
        "string",
    ]
    rows = [row for table in tables for row in table.to_pylist()]
    assert rows == [{name: record[name] for name in FIELDS} for record in sf.records("Account")]


def test_a_templated_filter_still_renders(sf: RunningEmulator, tmp_path: Path) -> None:
    _run(sf, "insert", _accounts(0, 5))
    time.sleep(1.2)
    since = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    time.sleep(1.2)
    _run(sf, "insert", _accounts(100, 4))
    soql = "SELECT Id, External_Id__c FROM Account WHERE SystemModstamp > {{ data_interval_start | ts }}"
    dag = _dag("q_incremental", f"soql={soql!r}, output_path={str(tmp_path)!r}")
    dr = dag.test(logical_date=since)
    assert dr.state == "success"
    assert dr.data_interval_start == since
    summary = _xcom("q_incremental")
    rows = _csv_rows([f["path"] for f in summary["files"]])
    assert [r["External_Id__c"] for r in rows] == [f"ACC-{i:04d}" for i in range(100, 104)]
    (job,) = _query_jobs(sf)
    assert since.isoformat() in job["query"]


def test_include_deleted_runs_query_all(sf: RunningEmulator, tmp_path: Path) -> None:
    _run(sf, "insert", _accounts(0, 6))
    stored = sf.records("Account")
    _run(sf, "delete", [{"Id": stored[1]["Id"]}, {"Id": stored[4]["Id"]}])
    soql = "SELECT Id, IsDeleted FROM Account"
    dag = _dag("q_all", f"soql={soql!r}, output_path={str(tmp_path / 'all')!r}, include_deleted=True")
    assert dag.test().state == "success"
    rows = _csv_rows([f["path"] for f in _xcom("q_all")["files"]])
    assert {r["Id"]: r["IsDeleted"] for r in rows} == {
        r["Id"]: "true" if i in (1, 4) else "false" for i, r in enumerate(stored)
    }
    dag = _dag("q_live", f"soql={soql!r}, output_path={str(tmp_path / 'live')!r}")
    assert dag.test().state == "success"
    rows = _csv_rows([f["path"] for f in _xcom("q_live")["files"]])
    assert [r["Id"] for r in rows] == [r["Id"] for i, r in enumerate(stored) if i not in (1, 4)]
    assert [j["operation"] for j in _query_jobs(sf)] == ["queryAll", "query"]


def test_retry_reattaches_to_the_same_query_job(sf: RunningEmulator, tmp_path: Path) -> None:
    _run(sf, "insert", _accounts(0, 12))
    # Slow enough that the first try defers (and is lost) while the job still runs.
    sf.update_settings(records_per_second=4.0)
    dag = _dag("q_retry", f"soql={SOQL!r}, output_path={str(tmp_path)!r}", retries=1, flaky=True)
    dr = dag.test()
    assert dr.state == "success"
    assert dr.get_task_instance("extract").try_number == 2
    (job,) = _query_jobs(sf)  # no second job
    summary = _xcom("q_retry")
    assert summary["job_id"] == job["id"]
    assert summary["records"] == 12
    assert len(_csv_rows([f["path"] for f in summary["files"]])) == 12


def test_bad_soql_fails_before_any_job_or_deferral(sf: RunningEmulator, tmp_path: Path) -> None:
    from airflow.providers.common.compat.sdk import AirflowFailException

    from airflow_provider_salesforce_bulk.operators.salesforce_bulk_query import SalesforceBulkQueryOperator

    store = _DictStore()
    op = SalesforceBulkQueryOperator(
        task_id="extract", soql="SELECT Id, Nope__c FROM Account", conn_id="sf_query", deferrable=True
    )
    with pytest.raises(AirflowFailException, match=r"(?s)refused the query.*INVALID_FIELD.*Nope__c"):
        op.execute({"ti": _TI(), "task_state_store": store})
    assert _query_jobs(sf) == []
    assert set(store.data) == {"salesforce_bulk_try"}  # which try runs; no job plan
    for kwargs, field in [
        ({"soql": "  "}, "soql"),
        ({"soql": SOQL, "output_format": "xlsx"}, "output_format"),
        ({"soql": SOQL, "records_per_file": 0}, "records_per_file"),
        ({"soql": SOQL, "poll_interval": float("nan")}, "poll_interval"),
        ({"soql": SOQL, "timeout": -1}, "timeout"),
    ]:
        op = SalesforceBulkQueryOperator(task_id="extract", conn_id="sf_query", **kwargs)
        with pytest.raises(AirflowFailException, match=field):
            op.execute({"ti": _TI(), "task_state_store": store})
    assert _query_jobs(sf) == []
    dag = _dag("q_bad", "soql='SELECT Id FROM Acount'")
    assert dag.test().state == "failed"
    assert _query_jobs(sf) == []


def test_failed_query_job_fails_the_task_after_the_summary(sf: RunningEmulator, tmp_path: Path) -> None:
    _run(sf, "insert", _accounts(0, 5))
    sf.update_settings(job_failure_rate=1.0)
    dag = _dag("q_failed", f"soql={SOQL!r}, output_path={str(tmp_path)!r}")
    dr = dag.test()
    assert dr.state == "failed"
    assert str(dr.get_task_instance("extract").state) == "failed"
    summary = _xcom("q_failed")
    assert summary["state"] == "Failed"
    assert "QUERY_TIMEOUT" in summary["error_message"]
    assert summary["files"] == []
    assert list(tmp_path.iterdir()) == []


def test_a_retry_after_a_failed_job_runs_a_new_query(sf: RunningEmulator, tmp_path: Path) -> None:
    from airflow_provider_salesforce_bulk.operators.salesforce_bulk_query import SalesforceBulkQueryOperator

    _run(sf, "insert", _accounts(0, 5))
    store = _DictStore()
    op = SalesforceBulkQueryOperator(
        task_id="extract",
        soql=SOQL,
        conn_id="sf_query",
        deferrable=False,
        poll_interval=0.1,
        output_path=tmp_path,
    )
    sf.update_settings(job_failure_rate=1.0)
    ti = _TI()
    with pytest.raises(Exception, match="ended Failed"):
        op.execute({"ti": ti, "task_state_store": store})
    assert ti.pushed["return_value"]["state"] == "Failed"
    sf.update_settings(job_failure_rate=0.0)
    summary = op.execute({"ti": ti, "task_state_store": store})
    assert summary["records"] == 5
    assert [j["state"] for j in _query_jobs(sf)] == ["Failed", "JobComplete"]
    assert set(store.data) == {"salesforce_bulk_try"}  # done, no job plan: a clear runs the query again


def test_a_stored_job_is_reattached_only_for_the_same_query(sf: RunningEmulator, tmp_path: Path) -> None:
    from airflow_provider_salesforce_bulk.operators.salesforce_bulk_query import (
        QUERY_STATE_KEY,
        SalesforceBulkQueryOperator,
    )

    _run(sf, "insert", _accounts(0, 4))
    store = _DictStore()

    def run(soql: str) -> dict[str, Any]:
        op = SalesforceBulkQueryOperator(
            task_id="extract",
            soql=soql,
            conn_id="sf_query",
            deferrable=False,
            poll_interval=0.1,
            output_path=tmp_path,
        )
        summary: dict[str, Any] = op.execute({"ti": _TI(), "task_state_store": store})
        return summary

    first = run(SOQL)
    # As a try that died after the job completed but before it finished would leave it.
    plan = {"job_id": first["job_id"], "instance_url": sf.base_url, "submitted_at": time.time()}
    from airflow_provider_salesforce_bulk.operators.query_job import fingerprint as _fingerprint

    store.data[QUERY_STATE_KEY] = {**plan, "query": _fingerprint("query", SOQL)}
    again = run(SOQL)
    assert again["job_id"] == first["job_id"]
    assert again["records"] == 4
    assert len(_query_jobs(sf)) == 1
    store.data[QUERY_STATE_KEY] = {**plan, "query": _fingerprint("query", "SELECT Id FROM Account")}
    changed = run(SOQL)
    assert changed["job_id"] != first["job_id"]
    store.data[QUERY_STATE_KEY] = {**plan, "job_id": "../../etc", "query": _fingerprint("query", SOQL)}
    assert run(SOQL)["records"] == 4  # a corrupt plan is ignored, never used in a path
    assert len(_query_jobs(sf)) == 3


def test_timeout_event_pushes_the_summary_then_fails(tmp_path: Path) -> None:
    from airflow.providers.common.compat.sdk import AirflowException

    from airflow_provider_salesforce_bulk.operators.salesforce_bulk_query import SalesforceBulkQueryOperator

    op = SalesforceBulkQueryOperator(task_id="extract", soql=SOQL, conn_id="sf_query", output_path=tmp_path)
    job = {"id": "7505e0000000001AAA", "state": "Aborted", "object": "Account", "numberRecordsProcessed": 7}
    event = {
        "status": "timeout",
        "message": "1 of 1 job(s) not finished by the deadline; aborted them",
        "jobs": {},
    }
    ti = _TI()
    with pytest.raises(AirflowException, match=r"deadline.*7505e0000000001AAA"):
        op.execute_complete({"ti": ti, "task_state_store": _DictStore()}, {**event, "jobs": {job["id"]: job}})
    assert ti.pushed["return_value"]["state"] == "Aborted"
    assert ti.pushed["return_value"]["records"] == 7
    assert list(tmp_path.iterdir()) == []
    for bad in ({"status": "success", "jobs": {"../x": {"id": "../x"}}}, None, {"status": "odd"}):
        with pytest.raises(AirflowException):
            op.execute_complete({"ti": ti, "task_state_store": _DictStore()}, bad)


def test_fewer_pages_on_a_rerun_leave_no_stale_parts(sf: RunningEmulator, tmp_path: Path) -> None:
    from airflow_provider_salesforce_bulk.operators.salesforce_bulk_query import SalesforceBulkQueryOperator

    _run(sf, "insert", _accounts(0, 5))
    (tmp_path / "part-00007.csv").write_text("stale")
    (tmp_path / "notes.txt").write_text("mine")
    op = SalesforceBulkQueryOperator(
        task_id="extract",
        soql=SOQL,
        conn_id="sf_query",
        deferrable=False,
        poll_interval=0.1,
        output_path=tmp_path,
    )
    op.execute({"ti": _TI(), "task_state_store": _DictStore()})
    # Published: the earlier parts gone, this extract's part, its manifest and _SUCCESS; other files kept.
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "_SUCCESS",
        "_manifest.json",
        "notes.txt",
        "part-00000.csv",
    ]


@pytest.mark.parametrize("output_format", ["csv", "parquet"])
def test_object_storage_output(
    sf: RunningEmulator, output_format: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Any ObjectStoragePath: here fsspec's in-memory store, attached as Airflow attaches s3 or gcs."""
    pq = pytest.importorskip("pyarrow.parquet")
    import io
    import threading

    from airflow.sdk.io import attach
    from fsspec.implementations.memory import MemoryFileSystem

    from airflow_provider_salesforce_bulk.operators.salesforce_bulk_query import SalesforceBulkQueryOperator

    class Recording(MemoryFileSystem):  # type: ignore[misc]
        def open(self, path: str, *args: Any, **kwargs: Any) -> Any:
            if "/_staging/" in path:  # the pages (the probe and the markers are written off any loop)
                threads.append(threading.current_thread().name)
            return super().open(path, *args, **kwargs)

    threads: list[str] = []
    fs = Recording()
    # A store of this test's own: Airflow caches stores by protocol, so each run takes a new one.
    monkeypatch.setattr("airflow.sdk.io.store._STORE_CACHE", {})
    attach("memory", fs=fs)
    _run(sf, "insert", _accounts(0, 12))
    op = SalesforceBulkQueryOperator(
        task_id="extract",
        soql=SOQL,
        conn_id="sf_query",
        deferrable=False,
        poll_interval=0.1,
        output_path=f"memory://extracts/{output_format}",
        output_format=output_format,
        records_per_file=5,
    )
    summary = op.execute({"ti": _TI(), "task_state_store": _DictStore()})
    # Airflow 3.1 writes memory:/// (an empty bucket) where 3.3 writes memory://.
    summary = json.loads(json.dumps(summary).replace("memory:///", "memory://"))
    assert summary["output_path"] == f"memory://extracts/{output_format}"
    assert [f["path"] for f in summary["files"]] == [
        f"memory://extracts/{output_format}/part-0000{n}.{output_format}" for n in range(3)
    ]
    names = [r["External_Id__c"] for r in sf.records("Account")]
    got: list[str] = []
    for f in summary["files"]:
        data = fs.cat_file(f"/extracts/{output_format}/{f['path'].rsplit('/', 1)[1]}")
        assert len(data) == f["bytes"]
        if output_format == "csv":
            got += [r["External_Id__c"] for r in csv.DictReader(io.StringIO(data.decode()))]
        else:
            got += [r["External_Id__c"] for r in pq.read_table(io.BytesIO(data)).to_pylist()]
    assert got == names
    listed = sorted(p.rsplit("/", 1)[1] for p in fs.find(f"/extracts/{output_format}"))
    assert listed == ["_SUCCESS", "_manifest.json"] + [f"part-0000{n}.{output_format}" for n in range(3)]
    # Opened off the event loop's thread (the worker's main thread here).
    assert threads
    assert threading.main_thread().name not in threads


def test_lineage_names_the_object_and_the_files(
    sf: RunningEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow_provider_salesforce_bulk.operators.salesforce_bulk_query import SalesforceBulkQueryOperator
    from tests.airflow import lineage_standins
    from tests.airflow.lineage_standins import Dataset, OutputDataset, OutputStatisticsOutputDatasetFacet

    _run(sf, "insert", _accounts(0, 3))
    op = SalesforceBulkQueryOperator(
        task_id="extract",
        soql=SOQL,
        conn_id="sf_query",
        deferrable=False,
        poll_interval=0.1,
        output_path=tmp_path,
    )
    op.execute({"ti": _TI(), "task_state_store": _DictStore()})
    assert op.get_openlineage_facets_on_complete(None) is None  # no OpenLineage provider here
    lineage_standins.install(monkeypatch)
    lineage = op.get_openlineage_facets_on_complete(None)
    host = sf.base_url.split("://", 1)[1]
    assert lineage.inputs == [Dataset(namespace=f"salesforce://{host}", name="Account")]
    part = tmp_path / "part-00000.csv"
    stats = OutputStatisticsOutputDatasetFacet(rowCount=3, size=part.stat().st_size)
    assert lineage.outputs == [
        OutputDataset(namespace="file", name=str(part), outputFacets={"outputStatistics": stats})
    ]


def test_example_extract_dag_round_trip(sf: RunningEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    """Three runs of the example: everything, then nothing new (an empty extract and no load job),
    then the two Accounts changed in between."""
    pytest.importorskip("pyarrow.parquet")
    monkeypatch.setenv("AIRFLOW_CONN_SALESFORCE_BULK_DEFAULT", conn_uri_json(sf))
    _run(sf, "insert", _accounts(0, 10))
    time.sleep(2.2)  # a run reads up to the whole second before it starts
    example = Path(__file__).resolve().parents[2] / "dags_examples" / "example_salesforce_bulk_extract.py"
    dag: Any = load_dag_file("example_salesforce_bulk_extract", example.read_text())
    assert dag.test().state == "success"
    accounts = {r["Id"]: r for r in sf.records("Account")}
    contacts = sf.records("Contact")
    assert sorted(c["AccountId"] for c in contacts) == sorted(accounts)
    assert all(c["LastName"] == f"Primary contact of {accounts[c['AccountId']]['Name']}" for c in contacts)
    ingest_jobs = len(sf.emulator.store.list_jobs(0, 1000))

    time.sleep(1.1)
    assert dag.test().state == "success"  # nothing new: an empty extract, the load creates no job
    assert len(sf.records("Contact")) == 10
    assert len(sf.emulator.store.list_jobs(0, 1000)) == ingest_jobs

    changed = list(accounts)[:2]
    _run(sf, "update", [{"Id": i, "Name": f"Renamed {n}"} for n, i in enumerate(changed)])
    time.sleep(2.2)
    assert dag.test().state == "success"
    by_account = {c["AccountId"]: c for c in sf.records("Contact")}
    assert len(by_account) == 10
    assert [by_account[i]["LastName"] for i in changed] == [
        "Primary contact of Renamed 0",
        "Primary contact of Renamed 1",
    ]


# -- the trigger with job_kind="query" ---------------------------------------------------------


@pytest.fixture
def conn(emulator: RunningEmulator, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("AIRFLOW_CONN_SF_QUERY", conn_uri_json(emulator))
    return "sf_query"


async def _insert_async(sf: RunningEmulator, n: int) -> None:
    async with _session(sf) as session:
        async for result in BulkIngestClient(session).perform_operation(
            "insert", "Account", _accounts(0, n), polling_interval=0.05
        ):
            assert result.job_info.state == "JobComplete"


async def _query(sf: RunningEmulator) -> str:
    async with _session(sf) as session:
        return (await BulkQueryClient(session).create_job(SOQL)).id


async def _query_state(sf: RunningEmulator, job_id: str) -> str | None:
    async with _session(sf) as session:
        return (await BulkQueryClient(session).get_job(job_id)).state


def test_job_kind_round_trips_and_is_checked() -> None:
    trigger = SalesforceBulkJobTrigger("sf_query", ["7505e000000AAAA"], job_kind="query")
    classpath, kwargs = trigger.serialize()
    assert kwargs["job_kind"] == "query"
    assert SalesforceBulkJobTrigger(**kwargs).serialize() == (classpath, kwargs)
    with pytest.raises(ValueError, match="job_kind"):
        SalesforceBulkJobTrigger("sf_query", [], job_kind="bulk")


async def test_trigger_polls_a_query_job_to_completion(emulator: RunningEmulator, conn: str) -> None:
    await _insert_async(emulator, 20)
    emulator.update_settings(records_per_second=20.0)
    job_id = await _query(emulator)
    trigger = SalesforceBulkJobTrigger(
        conn, [job_id], deadline=time.time() + 60, poll_interval=0.2, job_kind="query"
    )
    payload = (await trigger.run().__anext__()).payload
    assert payload["status"] == "success"
    assert payload["jobs"][job_id]["state"] == "JobComplete"
    assert payload["jobs"][job_id]["numberRecordsProcessed"] == 20


async def test_trigger_deadline_and_on_kill_abort_query_jobs(
    emulator: RunningEmulator, conn: str, comms: SupervisorComms
) -> None:
    await _insert_async(emulator, 20)
    emulator.update_settings(records_per_second=1.0)
    first, second = await _query(emulator), await _query(emulator)
    trigger = SalesforceBulkJobTrigger(
        conn, [first], deadline=time.time() + 1.0, poll_interval=0.2, job_kind="query"
    )
    payload = (await trigger.run().__anext__()).payload
    assert payload["status"] == "timeout"
    assert await _query_state(emulator, first) == "Aborted"
    killed = SalesforceBulkJobTrigger(
        conn, [second], deadline=time.time() + 60, poll_interval=0.2, job_kind="query"
    )
    killed.task_instance = TI  # type: ignore[assignment]  # marked failed (the comms fixture)
    comms.state = "running"
    await killed.on_kill()  # the try goes on elsewhere: nothing aborted
    assert await _query_state(emulator, second) in ("UploadComplete", "InProgress")
    comms.state = "failed"
    await killed.on_kill()
    assert await _query_state(emulator, second) == "Aborted"


def test_operator_kill_aborts_its_query_job_only_when_the_try_is_over(
    sf: RunningEmulator, comms: SupervisorComms
) -> None:
    from airflow_provider_salesforce_bulk.hooks.salesforce_bulk import SalesforceBulkHook
    from airflow_provider_salesforce_bulk.operators.salesforce_bulk_query import SalesforceBulkQueryOperator

    _run(sf, "insert", _accounts(0, 20))
    sf.update_settings(records_per_second=1.0)
    job_id = asyncio.run(_query(sf))
    op = SalesforceBulkQueryOperator(task_id="extract", soql=SOQL, conn_id="sf_query")
    op._active_job_id = job_id
    op._settings = SalesforceBulkHook("sf_query").get_settings()
    op._ti = TI
    comms.state = "deferred"
    op.on_kill()
    op._kill_thread.join(30)  # on_kill returns at once; its thread asks and aborts
    assert asyncio.run(_query_state(sf, job_id)) in ("UploadComplete", "InProgress")
    comms.state = "failed"
    op.on_kill()
    op._kill_thread.join(30)
    assert asyncio.run(_query_state(sf, job_id)) == "Aborted"


class _DictStore:
    def __init__(self) -> None:
        self.data: dict[str, Any] = {}

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    def set(self, key: str, value: Any) -> None:
        self.data[key] = json.loads(json.dumps(value))

    def delete(self, key: str) -> None:
        self.data.pop(key, None)


class _TI:
    dag_id, run_id, task_id, map_index, try_number = "d", "r", "extract", -1, 1

    def __init__(self) -> None:
        self.pushed: dict[str, Any] = {}

    def xcom_push(self, key: str, value: Any) -> None:
        self.pushed[key] = value
