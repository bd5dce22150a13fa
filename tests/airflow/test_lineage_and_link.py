"""OpenLineage facets (with and without the provider) and the operator's extra link."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import pytest

from airflow_provider_salesforce_bulk.emulator.server import RunningEmulator
from airflow_provider_salesforce_bulk.operators.links import LINK_XCOM_KEY, SalesforceBulkJobLink
from airflow_provider_salesforce_bulk.operators.salesforce_bulk import SalesforceBulkOperator
from tests.airflow import lineage_standins
from tests.airflow.helpers import DictStore, conn_uri_json, load_dag_file
from tests.airflow.lineage_standins import (
    Dataset,
    OperatorLineage,
    OutputDataset,
    OutputStatisticsOutputDatasetFacet,
)


@pytest.fixture
def openlineage(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stand-ins for the OpenLineage classes the operator imports, for this test only."""
    lineage_standins.install(monkeypatch)


def _output(namespace: str, name: str, succeeded: int) -> OutputDataset:
    stats = OutputStatisticsOutputDatasetFacet(rowCount=succeeded)
    return OutputDataset(namespace=namespace, name=name, outputFacets={"outputStatistics": stats})


class _TI:
    dag_id, run_id, task_id, map_index = "d", "r", "t", -1
    pushed: ClassVar[dict[str, Any]]

    def __init__(self) -> None:
        self.pushed = {}

    def xcom_push(self, key: str, value: Any) -> None:
        self.pushed[key] = value


def _operator(tmp_path: Path, **kwargs: Any) -> SalesforceBulkOperator:
    settings: dict[str, Any] = {
        "task_id": "t",
        "operation": "insert",
        "object_name": "Contact",
        "conn_id": "sf_lineage",
        "deferrable": False,
        "poll_interval": 0.2,
        "results_path": str(tmp_path / "results"),
    }
    return SalesforceBulkOperator(**{**settings, **kwargs})


def _complete(op: SalesforceBulkOperator, instance_url: str) -> None:
    """The operator's own completion path with no job: it records the instance URL lineage uses."""
    op.execute_complete(
        {"ti": _TI(), "task_state_store": DictStore()},
        {"status": "success", "jobs": {}},
        record_counts={},
        instance_url=instance_url,
    )


def test_lineage_without_the_openlineage_provider_is_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lineage_standins.uninstall(monkeypatch)
    op = _operator(tmp_path, source="s3://bucket/contacts.csv")
    _complete(op, "https://acme.my.salesforce.com")
    assert op.get_openlineage_facets_on_complete(None) is None


@pytest.fixture
def sf(emulator: RunningEmulator, monkeypatch: pytest.MonkeyPatch, airflow_db: object) -> RunningEmulator:
    monkeypatch.setenv("AIRFLOW_CONN_SF_LINEAGE", conn_uri_json(emulator))
    return emulator


@pytest.mark.usefixtures("openlineage")
def test_lineage_after_a_load_from_a_local_file(sf: RunningEmulator, tmp_path: Path) -> None:
    path = tmp_path / "contacts.csv"
    path.write_text("LastName\n" + "".join(f"Lineage {i}\n" for i in range(5)))
    op = _operator(tmp_path, source=str(path))
    summary = op.execute({"ti": _TI(), "task_state_store": DictStore()})
    assert summary["totals"]["succeeded"] == 5
    lineage = op.get_openlineage_facets_on_complete(None)
    assert isinstance(lineage, OperatorLineage)
    host = sf.base_url.split("://", 1)[1]  # 127.0.0.1:<port>
    assert lineage.outputs == [_output(f"salesforce://{host}", "Contact", 5)]
    assert lineage.inputs == [Dataset(namespace="file", name=str(path))]


@pytest.mark.usefixtures("openlineage")
@pytest.mark.parametrize(
    ("source", "namespace", "name"),
    [
        ("s3://bucket/contacts/2024-01-01.csv", "s3://bucket", "contacts/2024-01-01.csv"),
        ("s3://aws_conn@bucket/contacts.csv", "s3://bucket", "contacts.csv"),  # a conn id is no bucket
        ("gs://bucket/a.ndjson", "gs://bucket", "a.ndjson"),
        ("file:///data/contacts.csv", "file", "/data/contacts.csv"),
        ("/data/contacts.csv", "file", "/data/contacts.csv"),
    ],
)
def test_lineage_input_dataset_from_source(tmp_path: Path, source: str, namespace: str, name: str) -> None:
    op = _operator(tmp_path, source=source, object_name="Account")
    _complete(op, "https://acme.my.salesforce.com/")
    lineage = op.get_openlineage_facets_on_complete(None)
    assert lineage.inputs == [Dataset(namespace=namespace, name=name)]
    assert lineage.outputs == [_output("salesforce://acme.my.salesforce.com", "Account", 0)]


@pytest.mark.usefixtures("openlineage")
def test_lineage_of_records_has_no_input(tmp_path: Path) -> None:
    from airflow.sdk import ObjectStoragePath

    op = _operator(tmp_path, records=[{"LastName": "x"}])
    _complete(op, "https://acme.my.salesforce.com")
    lineage = op.get_openlineage_facets_on_complete(None)
    assert lineage.inputs == []
    assert lineage.outputs == [_output("salesforce://acme.my.salesforce.com", "Contact", 0)]
    # An ObjectStoragePath source, as the operator accepts one.
    op = _operator(tmp_path, source=ObjectStoragePath("s3://bucket/k/x.csv", conn_id="aws"))
    _complete(op, "https://acme.my.salesforce.com")
    assert op.get_openlineage_facets_on_complete(None).inputs == [Dataset("s3://bucket", "k/x.csv")]


# -- the extra link ----------------------------------------------------------------------------------


def _link_dag(name: str, tmp_path: Path, records: int, per_job: int) -> Any:
    data = tmp_path / f"{name}.json"
    data.write_text(json.dumps([{"LastName": f"Link {i}"} for i in range(records)]))
    return load_dag_file(
        name,
        f"""
        import datetime, json
        from airflow.sdk import DAG
        from airflow_provider_salesforce_bulk.operators.salesforce_bulk import SalesforceBulkOperator
        with DAG({name!r}, schedule=None, start_date=datetime.datetime(2024, 1, 1)) as dag:
            SalesforceBulkOperator(
                task_id="load", operation="insert", object_name="Contact", conn_id="sf_lineage",
                deferrable=True, poll_interval=0.2, max_records_per_job={per_job},
                results_path={str(tmp_path / name)!r}, records=json.load(open({str(data)!r})),
            )
        """,
    )


def _xcom(dag_id: str, key: str) -> Any:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        row = session.scalars(
            select(XComModel.value).where(
                XComModel.dag_id == dag_id, XComModel.task_id == "load", XComModel.key == key
            )
        ).first()
    if not isinstance(row, str):
        return row
    try:
        return json.loads(row)
    except ValueError:
        return row  # the worker stores an extra link's string as it is


def _ui_link(dag: Any, dr: Any) -> str:
    """What the API server shows: the serialized operator's link reads the XCom the worker wrote."""
    try:
        from airflow.serialization.definitions.operatorlink import XComOperatorLink
    except ImportError:  # Airflow 3.1
        from airflow.serialization.serialized_objects import XComOperatorLink

    link = SalesforceBulkJobLink()
    ti = dr.get_task_instance("load")
    return str(
        XComOperatorLink(name=link.name, xcom_key=link.xcom_key).get_link(dag.get_task("load"), ti_key=ti.key)
    )


@pytest.mark.parametrize(("records", "per_job", "jobs"), [(5, 100, 1), (12, 5, 3)])
def test_extra_link_for_one_and_several_jobs(
    sf: RunningEmulator, tmp_path: Path, records: int, per_job: int, jobs: int
) -> None:
    name = f"e2e_link_{jobs}"
    dag = _link_dag(name, tmp_path, records, per_job)
    dr = dag.test()  # type: ignore[attr-defined]
    assert dr.state == "success"
    job_ids = list(_xcom(name, "return_value")["jobs"])
    assert len(job_ids) == jobs
    base = sf.base_url
    if jobs == 1:
        expected = f"{base}/lightning/setup/AsyncApiJobStatus/page?address=%2F{job_ids[0]}"
    else:
        expected = f"{base}/lightning/setup/AsyncApiJobStatus/home"
    # What the operator stored for the link, what get_link returned in the worker (Airflow stores it
    # under the link's own key), and what the UI gets from that.
    assert _xcom(name, LINK_XCOM_KEY) == expected
    assert _xcom(name, SalesforceBulkJobLink().xcom_key) == expected
    assert _ui_link(dag, dr) == expected
    # One row carries the URL: the link's key is the one the operator writes.
    assert _rows_holding(name, expected) == 1


def _rows_holding(dag_id: str, value: str) -> int:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        rows = session.scalars(
            select(XComModel.value).where(XComModel.dag_id == dag_id, XComModel.task_id == "load")
        ).all()
    return sum(1 for row in rows if row == value or (isinstance(row, str) and row == json.dumps(value)))
