"""End to end with dag.test(): a real deferral, the trigger run in-process, the emulator as Salesforce."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, ClassVar

import pytest

from airflow_provider_salesforce_bulk.emulator.server import RunningEmulator
from tests.airflow.helpers import DictStore, conn_uri_json, load_dag_file

N = 30
BAD = {3, 11, 17, 25}  # invalid e-mail addresses: Salesforce fails these records


def _records() -> list[dict[str, Any]]:
    return [
        {
            "LastName": f"Last, {i}",
            "FirstName": f'Fir"st\n{i}',
            "External_Id__c": f"EXT-{i}",
            "Email": "not-an-email" if i in BAD else f"p{i}@example.com",
        }
        for i in range(N)
    ]


def _dag(name: str, tmp_path: Path, operator_args: str, *, retries: int = 0, flaky: bool = False) -> Any:
    records = tmp_path / "records.json"
    records.write_text(json.dumps(_records()))
    operator = "SalesforceBulkOperator"
    prelude = ""
    if flaky:
        # Lose the worker right after every chunk was uploaded, on the first try only.
        prelude = """
        from airflow.providers.common.compat.sdk import TaskDeferred

        class Flaky(SalesforceBulkOperator):
            def execute(self, context):
                try:
                    return super().execute(context)
                except TaskDeferred:
                    if context["ti"].try_number == 1:
                        raise RuntimeError("worker lost after the upload")
                    raise
        """
        operator = "Flaky"
    return load_dag_file(
        name,
        f"""
        import datetime, json
        from airflow.sdk import DAG
        from airflow_provider_salesforce_bulk.operators.salesforce_bulk import SalesforceBulkOperator
        {prelude}
        with DAG({name!r}, schedule=None, start_date=datetime.datetime(2024, 1, 1)) as dag:
            {operator}(
                task_id="load", operation="upsert", object_name="Contact",
                external_id_field="External_Id__c", conn_id="sf_e2e", deferrable=True,
                poll_interval=0.2, max_records_per_job=8, results_path={str(tmp_path / "results")!r},
                records=json.load(open({str(records)!r})), retries={retries},
                retry_delay=datetime.timedelta(0), {operator_args}
            )
        """,
    )


def _xcom(dag_id: str, task_id: str = "load") -> Any:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        row = session.scalars(
            select(XComModel.value).where(
                XComModel.dag_id == dag_id, XComModel.task_id == task_id, XComModel.key == "return_value"
            )
        ).first()
    return json.loads(row) if isinstance(row, str) else row


def _ti_state(dr: Any) -> str:
    return str(dr.get_task_instance("load").state)


@pytest.fixture
def sf(emulator: RunningEmulator, monkeypatch: pytest.MonkeyPatch, airflow_db: object) -> RunningEmulator:
    monkeypatch.setenv("AIRFLOW_CONN_SF_E2E", conn_uri_json(emulator))
    return emulator


def _jobs(sf: RunningEmulator) -> list[dict[str, Any]]:
    return sf.emulator.store.list_jobs(0, 10_000)


def _rows(path: str) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_load_with_failures_defers_and_reports_the_truth(sf: RunningEmulator, tmp_path: Path) -> None:
    dag = _dag("e2e_tolerated", tmp_path, "max_failed_records=10")
    dr = dag.test()
    assert dr.state == "success"
    summary = _xcom("e2e_tolerated")
    stored = sf.records("Contact")
    # Figures match what Salesforce (the emulator) stored.
    assert len(stored) == N - len(BAD)
    assert summary["totals"] == {
        "records": N,
        "processed": N,
        "succeeded": N - len(BAD),
        "failed": len(BAD),
        "unprocessed": 0,
        "jobs": 4,
    }
    assert summary["failed_by_error_code"] == {"INVALID_EMAIL_ADDRESS": len(BAD)}
    assert len(_jobs(sf)) == 4
    # The result files hold exactly the input records, each once.
    ok_ids: list[str] = []
    failed_ids: list[str] = []
    for job in summary["jobs"].values():
        assert job["state"] == "JobComplete"
        assert job["accounted"] is True
        ok_ids += [r["External_Id__c"] for r in _rows(job["result_files"]["successful"])]
        failed_ids += [r["External_Id__c"] for r in _rows(job["result_files"]["failed"])]
        assert _rows(job["result_files"]["unprocessed"]) == []
    assert sorted(ok_ids + failed_ids) == sorted(f"EXT-{i}" for i in range(N))
    assert sorted(failed_ids) == sorted(f"EXT-{i}" for i in BAD)
    assert {r["External_Id__c"] for r in stored} == set(ok_ids)
    first = next(r for r in _rows(next(iter(summary["jobs"].values()))["result_files"]["successful"]))
    assert first["FirstName"] == 'Fir"st\n0'


def test_default_threshold_fails_the_task_after_saving_the_summary(
    sf: RunningEmulator, tmp_path: Path
) -> None:
    dag = _dag("e2e_strict", tmp_path, "max_failed_ratio=None")
    dr = dag.test()
    assert dr.state == "failed"
    assert _ti_state(dr) == "failed"
    summary = _xcom("e2e_strict")
    assert summary["totals"]["failed"] == len(BAD)
    assert len(sf.records("Contact")) == N - len(BAD)


def test_ratio_threshold(sf: RunningEmulator, tmp_path: Path) -> None:
    assert dag_state(_dag("e2e_ratio_ok", tmp_path, "max_failed_ratio=0.2")) == "success"
    assert dag_state(_dag("e2e_ratio_low", tmp_path, "max_failed_ratio=0.1")) == "failed"


def dag_state(dag: Any) -> str:
    return str(dag.test().state)


def test_retry_reattaches_and_loads_every_record_once(sf: RunningEmulator, tmp_path: Path) -> None:
    dag = _dag("e2e_retry", tmp_path, "max_failed_records=10", retries=1, flaky=True)
    dr = dag.test()
    assert dr.state == "success"
    assert dr.get_task_instance("load").try_number == 2
    # One job per chunk: the retry reattached instead of submitting again.
    assert len(_jobs(sf)) == 4
    stored = sf.records("Contact")
    assert len(stored) == N - len(BAD)
    assert _xcom("e2e_retry")["totals"]["records"] == N


def test_bad_input_fails_before_any_job(sf: RunningEmulator, tmp_path: Path) -> None:
    # Record 20 is a list, not a dict: named in the error, and no job is created for records 0-19.
    records = tmp_path / "bad.json"
    data: list[Any] = [{"LastName": f"x{i}", "External_Id__c": f"B{i}"} for i in range(30)]
    data[20] = ["not", "a", "dict"]
    records.write_text(json.dumps(data))
    dag = load_dag_file(
        "e2e_bad_input",
        f"""
        import datetime, json
        from airflow.sdk import DAG
        from airflow_provider_salesforce_bulk.operators.salesforce_bulk import SalesforceBulkOperator
        with DAG("e2e_bad_input", schedule=None, start_date=datetime.datetime(2024, 1, 1)) as dag:
            SalesforceBulkOperator(
                task_id="load", operation="upsert", object_name="Contact", external_id_field="External_Id__c",
                conn_id="sf_e2e", max_records_per_job=5, records=json.load(open({str(records)!r})),
                fieldnames=["LastName", "External_Id__c"],
            )
        """,
    )
    assert dag.test().state == "failed"
    assert _jobs(sf) == []


def test_bad_operator_settings_fail_before_any_job(sf: RunningEmulator, tmp_path: Path) -> None:
    from airflow.providers.common.compat.sdk import AirflowFailException

    from airflow_provider_salesforce_bulk.operators.salesforce_bulk import SalesforceBulkOperator

    cases = [
        ({"operation": "upsert", "records": [{"LastName": "x"}]}, "external_id_field"),
        ({"operation": "merge", "records": [{"LastName": "x"}]}, "operation"),
        ({"operation": "insert", "records": [{"LastName": "x"}], "max_failed_ratio": 2}, "max_failed_ratio"),
        ({"operation": "insert"}, "exactly one of records and source"),
        ({"operation": "insert", "source": str(tmp_path / "missing.csv")}, "does not exist"),
        ({"operation": "delete", "records": [{"Name": "x"}]}, "Id"),
        (
            {"operation": "insert", "records": [{"LastName": "x"}], "conn_id": "sf_missing_secret"},
            "client_secret",
        ),
    ]
    import os

    os.environ["AIRFLOW_CONN_SF_MISSING_SECRET"] = json.dumps(
        {
            "conn_type": "salesforce_bulk",
            "host": sf.base_url,
            "extra": {"auth_type": "client_credentials", "client_id": "x"},
        }
    )
    try:
        for kwargs, expected in cases:
            op = SalesforceBulkOperator(
                task_id="t", object_name="Contact", conn_id=kwargs.pop("conn_id", "sf_e2e"), **kwargs
            )
            with pytest.raises(AirflowFailException, match=expected):
                op.execute({"ti": None, "task_state_store": None})
    finally:
        del os.environ["AIRFLOW_CONN_SF_MISSING_SECRET"]
    assert _jobs(sf) == []


def test_csv_and_ndjson_sources_stream_from_files(sf: RunningEmulator, tmp_path: Path) -> None:
    from airflow_provider_salesforce_bulk.operators.salesforce_bulk import SalesforceBulkOperator

    class _TI:
        dag_id, run_id, task_id, map_index = "d", "r", "t", -1
        pushed: ClassVar[dict[str, Any]] = {}

        def xcom_push(self, key: str, value: Any) -> None:
            self.pushed[key] = value

    csv_path = tmp_path / "contacts.csv"
    csv_path.write_text("LastName,External_Id__c\n" + "".join(f'"L,{i}",C{i}\n' for i in range(25)))
    nd_path = tmp_path / "contacts.ndjson"
    nd_path.write_text(
        "".join(json.dumps({"LastName": f"N{i}", "External_Id__c": f"N{i}"}) + "\n" for i in range(12))
    )
    for path, count in ((csv_path, 25), (nd_path, 12)):
        ti = _TI()
        op = SalesforceBulkOperator(
            task_id="t",
            operation="upsert",
            object_name="Contact",
            external_id_field="External_Id__c",
            conn_id="sf_e2e",
            source=str(path),
            deferrable=False,
            poll_interval=0.2,
            max_records_per_job=10,
            results_path=str(tmp_path / f"res_{path.suffix[1:]}"),
        )
        summary = op.execute({"ti": ti, "task_state_store": DictStore()})
        assert summary["totals"]["succeeded"] == count
        assert ti.pushed["return_value"] == summary
    assert len(sf.records("Contact")) == 37


def test_empty_input_creates_no_job(sf: RunningEmulator) -> None:
    from airflow_provider_salesforce_bulk.operators.salesforce_bulk import SalesforceBulkOperator

    op = SalesforceBulkOperator(
        task_id="t", operation="insert", object_name="Contact", conn_id="sf_e2e", records=[]
    )
    summary = op.execute({"ti": None, "task_state_store": None})
    assert summary["totals"]["records"] == 0
    assert _jobs(sf) == []
