"""Refusals through dag.test() against the emulator over its socket: refused credentials fail the task
without retries (load, query, and in the trigger), and the daily limits guard: a limit met part way
pushes the summary, fails naming it, and the retry completes without duplicates once it refilled.
"""

from __future__ import annotations

import collections
import json
import textwrap
from pathlib import Path
from typing import Any

import httpx
import pytest

from airflow_provider_salesforce_bulk.emulator.server import RunningEmulator
from tests.airflow.helpers import load_dag_file, wrap_pool_transport
from tests.airflow.test_dag_e2e import _jobs
from tests.airflow.test_exactly_once import _xcom


def _connection(sf: RunningEmulator, kind: str) -> str:
    c = sf.credentials
    conns: dict[str, dict[str, Any]] = {
        "invalid_client": {"extra": {"client_id": c.client_id, "client_secret": "wrong"}},
        "invalid_client_id": {"extra": {"client_id": "nobody", "client_secret": c.client_secret}},
        "invalid_grant": {
            "login": c.username,
            "password": "wrong",
            "extra": {"auth_type": "password", "client_id": c.client_id, "client_secret": c.client_secret},
        },
        "INVALID_LOGIN": {"login": c.username, "password": "wrong", "extra": {"auth_type": "soap_login"}},
        "INVALID_SESSION_ID": {"extra": {"client_id": c.client_id, "client_secret": c.client_secret}},
    }
    extra = conns[kind].pop("extra")
    extra.setdefault("auth_type", "client_credentials")
    return json.dumps({"conn_type": "salesforce_bulk", "host": sf.base_url, **conns[kind], "extra": extra})


@pytest.fixture
def sf(emulator: RunningEmulator, airflow_db: object) -> RunningEmulator:
    return emulator


def _dag(name: str, tmp_path: Path, task: str, *, prelude: str = "") -> Any:
    return load_dag_file(
        name,
        f"""
        import datetime
        from airflow.sdk import DAG
        from airflow_provider_salesforce_bulk.operators.salesforce_bulk import SalesforceBulkOperator
        from airflow_provider_salesforce_bulk.operators.salesforce_bulk_query import (
            SalesforceBulkQueryOperator,
        )
{textwrap.indent(prelude, " " * 8)}
        with DAG({name!r}, schedule=None, start_date=datetime.datetime(2024, 1, 1)) as dag:
            {task}
        """,
    )


def _load(name: str, tmp_path: Path, args: str, *, operator: str = "SalesforceBulkOperator") -> str:
    return f"""{operator}(
                task_id="load", conn_id="sf_refusals", deferrable=True, poll_interval=0.2, retries=2,
                retry_delay=datetime.timedelta(0), results_path={str(tmp_path / name)!r}, {args}
            )"""


SOQL = "SELECT Id FROM Account"
KINDS = ["invalid_client", "invalid_client_id", "invalid_grant", "INVALID_LOGIN", "INVALID_SESSION_ID"]


@pytest.mark.parametrize("kind", KINDS)
def test_refused_credentials_fail_a_load_once_without_retries(
    sf: RunningEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_SF_REFUSALS", _connection(sf, kind))
    if kind == "INVALID_SESSION_ID":
        sf.update_settings(session_timeout_seconds=1e-9)  # every token is refused, even a fresh one
    name = f"refused_load_{kind.lower()}"
    task = _load(name, tmp_path, """operation="insert", object_name="Account", records=[{"Name": "x"}]""")
    dr = _dag(name, tmp_path, task).test()
    assert dr.state == "failed"
    assert dr.get_task_instance("load").try_number == 1  # AirflowFailException: retries=2 unused
    assert _jobs(sf) == []
    assert sf.records("Account") == []


@pytest.mark.parametrize("kind", ["invalid_client", "INVALID_LOGIN", "INVALID_SESSION_ID"])
def test_refused_credentials_fail_a_query_once_without_retries(
    sf: RunningEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_SF_REFUSALS", _connection(sf, kind))
    if kind == "INVALID_SESSION_ID":
        sf.update_settings(session_timeout_seconds=1e-9)
    name = f"refused_query_{kind.lower()}"
    task = f"""SalesforceBulkQueryOperator(
                task_id="load", conn_id="sf_refusals", soql={SOQL!r}, deferrable=True,
                poll_interval=0.2, retries=2, retry_delay=datetime.timedelta(0),
                output_path={str(tmp_path / name)!r}
            )"""
    dr = _dag(name, tmp_path, task).test()
    assert dr.state == "failed"
    assert dr.get_task_instance("load").try_number == 1
    assert sf.emulator.store.query("SELECT COUNT(*) FROM query_jobs")[0][0] == 0


# Once the jobs are submitted and the task deferred, the org starts refusing every session: the
# trigger's login is refused, its event says so, and execute_complete fails the task for good.
_REFUSE_AFTER_DEFERRING = """
import httpx
from airflow.providers.common.compat.sdk import TaskDeferred

def refuse_sessions(base_url):
    httpx.post(base_url + "/__emulator__/settings", json={"session_timeout_seconds": 1e-9}).raise_for_status()

class RefusedInTrigger(SalesforceBulkOperator):
    def execute(self, context):
        try:
            return super().execute(context)
        except TaskDeferred:
            refuse_sessions(BASE_URL)
            raise

class RefusedQueryInTrigger(SalesforceBulkQueryOperator):
    def execute(self, context):
        try:
            return super().execute(context)
        except TaskDeferred:
            refuse_sessions(BASE_URL)
            raise
"""


def test_credentials_refused_in_the_trigger_fail_the_load_without_retries(
    sf: RunningEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(
        "AIRFLOW_CONN_SF_REFUSALS",
        _connection(sf, "invalid_client").replace("wrong", sf.credentials.client_secret),
    )
    sf.update_settings(hold_processing=True)  # the jobs stay InProgress: the task defers
    records = [{"Name": f"T{i}"} for i in range(6)]
    name = "refused_in_trigger"
    task = _load(
        name,
        tmp_path,
        f"""operation="insert", object_name="Account", records={records!r}, max_records_per_job=3""",
        operator="RefusedInTrigger",
    )
    dr = _dag(name, tmp_path, task, prelude=f"BASE_URL = {sf.base_url!r}\n" + _REFUSE_AFTER_DEFERRING).test()
    assert dr.state == "failed"
    assert dr.get_task_instance("load").try_number == 1
    jobs = _jobs(sf)
    assert len(jobs) == 2  # created before the refusal, left as they are (never aborted)
    assert {job["state"] for job in jobs} == {"UploadComplete"}
    summary = _xcom(name)
    assert set(summary["jobs"]) == {job["id"] for job in jobs}
    assert "refused the connection's credentials" in summary["stopped"]


def test_credentials_refused_in_the_trigger_fail_the_query_without_retries(
    sf: RunningEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_SF_REFUSALS", _connection(sf, "INVALID_SESSION_ID"))
    sf.update_settings(hold_processing=True)
    name = "refused_query_in_trigger"
    task = f"""RefusedQueryInTrigger(
                task_id="load", conn_id="sf_refusals", soql={SOQL!r}, deferrable=True,
                poll_interval=0.2, retries=2, retry_delay=datetime.timedelta(0),
                output_path={str(tmp_path / name)!r}
            )"""
    dr = _dag(name, tmp_path, task, prelude=f"BASE_URL = {sf.base_url!r}\n" + _REFUSE_AFTER_DEFERRING).test()
    assert dr.state == "failed"
    assert dr.get_task_instance("load").try_number == 1


# -- the daily limits ---------------------------------------------------------------------------------


class NegativeRemaining(httpx.AsyncBaseTransport):
    """The org's /limits answer says DailyBulkApiBatches Remaining -1 (a real org over its allowance)."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        if request.method == "GET" and request.url.path.endswith("/limits"):
            body = json.loads(await response.aread())
            body["DailyBulkApiBatches"]["Remaining"] = -1
            return httpx.Response(200, json=body, request=request)
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


def test_limits_check_fail_refuses_a_negative_remaining_before_any_job(
    sf: RunningEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_SF_REFUSALS", sf.airflow_connection())
    wrap_pool_transport(monkeypatch, NegativeRemaining)
    records = [{"Name": f"N{i}"} for i in range(20)]
    name = "limits_negative"
    args = f"""operation="insert", object_name="Account", records={records!r}, max_records_per_job=5"""
    dr = _dag(name, tmp_path, _load(name, tmp_path, args + ', limits_check="fail"')).test()
    assert dr.state == "failed"
    assert dr.get_task_instance("load").try_number == 1
    assert _jobs(sf) == []
    # "warn" loads anyway.
    name = "limits_negative_warn"
    dr = _dag(name, tmp_path, _load(name, tmp_path, args + ', limits_check="warn"')).test()
    assert dr.state == "success"
    assert len(sf.records("Account")) == 20


class LimitsUnreadable(httpx.AsyncBaseTransport):
    """/limits answers a proxy's HTML page or a 500; every other request reaches the emulator."""

    status = 200

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "GET" and request.url.path.endswith("/limits"):
            cls = type(self)
            page = b"<html><body>Service maintenance</body></html>"
            return httpx.Response(
                cls.status, content=page, headers={"Content-Type": "text/html"}, request=request
            )
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


@pytest.mark.parametrize("status", [200, 500])
def test_limits_check_warn_never_stops_a_load_when_limits_cannot_be_read(
    sf: RunningEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, status: int
) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_SF_REFUSALS", sf.airflow_connection())
    monkeypatch.setattr(LimitsUnreadable, "status", status)
    wrap_pool_transport(monkeypatch, LimitsUnreadable)
    records = [{"Name": f"W{i}"} for i in range(4)]
    name = f"limits_unreadable_{status}"
    args = f"""operation="insert", object_name="Account", records={records!r}, limits_check="warn" """
    dr = _dag(name, tmp_path, _load(name, tmp_path, args)).test()
    assert dr.state == "success"
    assert dr.get_task_instance("load").try_number == 1
    assert sorted(r["Name"] for r in sf.records("Account")) == [f"W{i}" for i in range(4)]


def test_limits_check_fail_names_the_limit_what_the_load_needs_and_what_is_left(
    sf: RunningEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow.providers.common.compat.sdk import AirflowFailException

    from airflow_provider_salesforce_bulk.operators.salesforce_bulk import SalesforceBulkOperator
    from tests.airflow.helpers import DictStore

    monkeypatch.setenv("AIRFLOW_CONN_SF_REFUSALS", sf.airflow_connection())
    sf.update_settings(daily_bulk_batches_max=2)
    op = SalesforceBulkOperator(
        task_id="load",
        conn_id="sf_refusals",
        operation="insert",
        object_name="Account",
        records=[{"Name": f"B{i}"} for i in range(9)],
        max_records_per_job=3,
        limits_check="fail",
        results_path=str(tmp_path),
    )
    with pytest.raises(AirflowFailException) as info:
        op.execute({"ti": None, "task_state_store": DictStore()})
    assert "3 DailyBulkApiBatches needed (9 records in 3 jobs" in str(info.value)
    assert "2 of 2 left" in str(info.value)
    assert _jobs(sf) == []


# The first try meets the daily API request limit after its second job; before the retry the allowance
# refills (here: the org's maximum is raised, as 24 rolling hours would free it).
_REFILL_ON_RETRY = """
import httpx

class RefilledOnRetry(SalesforceBulkOperator):
    def execute(self, context):
        if context["ti"].try_number > 1:
            httpx.post(
                BASE_URL + "/__emulator__/settings", json={"daily_api_requests_max": 100_000}
            ).raise_for_status()
        return super().execute(context)
"""


def test_a_request_limit_met_part_way_fails_naming_it_and_the_retry_loads_the_rest_once(
    sf: RunningEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_SF_REFUSALS", sf.airflow_connection())
    # limits_check off: no /limits call. The describe check takes one request and each job create,
    # upload and close: the eighth request (the third job's create) is refused.
    sf.update_settings(daily_api_requests_max=7)
    n = 12
    records = [{"Name": f"R{i}", "External_Id__c": f"RL-{i}"} for i in range(n)]
    name = "limit_part_way"
    args = f"""operation="insert", object_name="Account", records={records!r}, max_records_per_job=3,
                limits_check="off" """
    task = _load(name, tmp_path, args, operator="RefilledOnRetry")
    dr = _dag(name, tmp_path, task, prelude=f"BASE_URL = {sf.base_url!r}\n" + _REFILL_ON_RETRY).test()
    assert dr.state == "success"
    assert dr.get_task_instance("load").try_number == 2
    stored = [r["External_Id__c"] for r in sf.records("Account")]
    assert [ext for ext, count in collections.Counter(stored).items() if count > 1] == []
    assert sorted(stored) == sorted(f"RL-{i}" for i in range(n))
    jobs = _jobs(sf)
    assert len(jobs) == 4  # two of the first try, reattached; two of the retry
    summary = _xcom(name)
    assert summary["totals"]["succeeded"] == n
    assert set(summary["jobs"]) == {job["id"] for job in jobs}


def test_a_request_limit_met_part_way_pushes_the_summary_and_names_the_limit(
    sf: RunningEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow.providers.common.compat.sdk import AirflowException

    from airflow_provider_salesforce_bulk.operators.salesforce_bulk import SalesforceBulkOperator
    from tests.airflow.helpers import DictStore

    pushed: dict[str, Any] = {}

    class Ti:
        dag_id, run_id, task_id = "refusals", "run", "load"
        try_number = 1

        def xcom_push(self, key: str, value: Any) -> None:
            pushed[key] = value

    monkeypatch.setenv("AIRFLOW_CONN_SF_REFUSALS", sf.airflow_connection())
    sf.update_settings(daily_api_requests_max=7)  # the describe, then two jobs' create, upload, close
    op = SalesforceBulkOperator(
        task_id="load",
        conn_id="sf_refusals",
        operation="insert",
        object_name="Account",
        records=[{"Name": f"S{i}"} for i in range(12)],
        max_records_per_job=3,
        limits_check="off",
        results_path=str(tmp_path),
    )
    with pytest.raises(AirflowException) as info:
        op.execute({"ti": Ti(), "task_state_store": DictStore()})
    message = str(info.value)
    assert "REQUEST_LIMIT_EXCEEDED" in message
    assert "DailyApiRequests" in message
    assert "6 of 12 records are in 2 job(s)" in message
    summary = pushed["return_value"]
    assert summary["stopped"] == message
    assert summary["totals"]["records"] == 12
    assert summary["totals"]["not_sent"] == 6
    assert set(summary["jobs"]) == {job["id"] for job in _jobs(sf)}
