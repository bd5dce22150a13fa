"""A ``deferrable=False`` try runs its steps on one event loop: one login and one HTTP pool per try.

Each step (submit, wait, copy results, write files) used to start a loop of its own, and tokens and
pools are kept per loop, so a try logged in and built a pool once per step. Counted here on the
emulator's token endpoint, over a real socket, for a try of each operator.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest

from airflow_provider_salesforce_bulk.client import (
    BulkIngestClient,
    ClientCredentialsAuth,
    SalesforceSession,
    TokenCache,
)
from airflow_provider_salesforce_bulk.emulator.server import RunningEmulator
from tests.airflow import helpers
from tests.airflow.helpers import DictStore, conn_uri_json

CONN = "sf_one_loop"


class _Counting(httpx.AsyncBaseTransport):
    """Counts the logins (token requests) sent through the hook's pools."""

    logins = 0

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/oauth2/token") or "/services/Soap/" in request.url.path:
            type(self).logins += 1
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


class _TI:
    dag_id, run_id, map_index = "one_loop", "manual__1", -1

    def __init__(self, task_id: str, try_number: int) -> None:
        self.task_id = task_id
        self.try_number = try_number
        self.pushed: dict[str, Any] = {}

    def xcom_push(self, key: str, value: Any) -> None:
        self.pushed[key] = value


@pytest.fixture
def counted(emulator: RunningEmulator, monkeypatch: pytest.MonkeyPatch) -> RunningEmulator:
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN.upper()}", conn_uri_json(emulator))
    helpers.wrap_pool_transport(monkeypatch, _Counting)
    _Counting.logins = 0
    return emulator


def _counts() -> tuple[int, int]:
    from airflow_provider_salesforce_bulk.hooks.pool import shared_pools

    return _Counting.logins, shared_pools.created


def _insert_accounts(emulator: RunningEmulator, n: int) -> None:
    async def go() -> None:
        c = emulator.credentials
        auth = ClientCredentialsAuth(c.client_id, c.client_secret, emulator.base_url)
        async with SalesforceSession(auth, token_cache=TokenCache()) as session:
            async for result in BulkIngestClient(session).perform_operation(
                "insert",
                "Account",
                [{"Name": f"Account {i}"} for i in range(n)],
                polling_interval=0.05,
            ):
                assert result.job_info.state == "JobComplete"

    asyncio.run(go())


def _load(tmp_path: Path) -> Any:
    from airflow_provider_salesforce_bulk.operators.salesforce_bulk import SalesforceBulkOperator

    return SalesforceBulkOperator(
        task_id="load",
        operation="insert",
        object_name="Contact",
        conn_id=CONN,
        poll_interval=0.2,
        deferrable=False,
        results_path=str(tmp_path / "results"),
        records=[{"LastName": f"One loop {i}", "External_Id__c": f"OL-{i}"} for i in range(30)],
        max_records_per_job=10,
    )


def _extract(tmp_path: Path, soql: str = "SELECT Id, Name FROM Account") -> Any:
    from airflow_provider_salesforce_bulk.operators.salesforce_bulk_query import SalesforceBulkQueryOperator

    return SalesforceBulkQueryOperator(
        task_id="extract",
        soql=soql,
        conn_id=CONN,
        poll_interval=0.2,
        deferrable=False,
        output_path=str(tmp_path / "extract"),
    )


def _no_loop_left_open() -> None:
    from airflow_provider_salesforce_bulk.hooks.try_loop import current_try_loop

    assert current_try_loop() is None, "the try's loop outlived the try"


def test_an_ingest_try_logs_in_once_and_builds_one_pool(counted: RunningEmulator, tmp_path: Path) -> None:
    logins, pools = _counts()
    store = DictStore()
    summary = _load(tmp_path).execute({"ti": _TI("load", 1), "task_state_store": store})
    assert summary["totals"]["succeeded"] == 30
    assert summary["totals"]["jobs"] == 3  # submit, wait and copy: several steps, each a run_sync
    assert len(counted.records("Contact")) == 30
    assert _counts() == (logins + 1, pools + 1), "one login and one pool for the whole try"
    _no_loop_left_open()


def test_a_query_try_logs_in_once_and_builds_one_pool(counted: RunningEmulator, tmp_path: Path) -> None:
    _insert_accounts(counted, 12)
    logins, pools = _counts()
    summary = _extract(tmp_path).execute({"ti": _TI("extract", 1), "task_state_store": DictStore()})
    assert summary["state"] == "JobComplete"
    assert summary["records"] == 12
    assert _counts() == (logins + 1, pools + 1), "one login and one pool for the whole try"
    _no_loop_left_open()
    # The next try is another loop: it logs in and builds its pool again, once.
    _extract(tmp_path / "again").execute({"ti": _TI("extract", 2), "task_state_store": DictStore()})
    assert _counts() == (logins + 2, pools + 2)


def test_a_failed_try_closes_its_loop_and_the_next_try_runs(counted: RunningEmulator, tmp_path: Path) -> None:
    from airflow.providers.common.compat.sdk import AirflowFailException

    _insert_accounts(counted, 3)
    with pytest.raises(AirflowFailException, match="refused the query"):
        _extract(tmp_path, "SELECT Id, NoSuchField__c FROM Account").execute(
            {"ti": _TI("extract", 1), "task_state_store": DictStore()}
        )
    _no_loop_left_open()
    logins, pools = _counts()
    summary = _extract(tmp_path).execute({"ti": _TI("extract", 2), "task_state_store": DictStore()})
    assert summary["records"] == 3
    assert _counts() == (logins + 1, pools + 1)
