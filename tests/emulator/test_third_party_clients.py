"""Fidelity: clients this project did not write, unmodified, against the emulator.

Only their transport is redirected (they insist on https://*.my.salesforce.com or
https://login.salesforce.com); everything on the wire is theirs.
"""

from __future__ import annotations

import csv
import io
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import requests
from requests.adapters import HTTPAdapter

from airflow_provider_salesforce_bulk.emulator.server import RunningEmulator

FAKE_HOST = "https://emulator.my.salesforce.com"


# -- aiosalesforce ------------------------------------------------------------------------------


class _RedirectTransport(httpx.AsyncBaseTransport):
    """Sends every request to the emulator whatever host the client aimed at."""

    def __init__(self, base_url: str) -> None:
        self._target = httpx.URL(base_url)
        self._inner = httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        request.url = request.url.copy_with(scheme="http", host=self._target.host, port=self._target.port)
        request.headers["host"] = f"{self._target.host}:{self._target.port}"
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


aiosalesforce = pytest.importorskip("aiosalesforce") if sys.version_info >= (3, 11) else None


@pytest.mark.skipif(sys.version_info < (3, 11), reason="aiosalesforce needs Python 3.11")
async def test_aiosalesforce_bulk_v2_ingest(emulator: RunningEmulator) -> None:
    from aiosalesforce import Salesforce, SoapLogin

    c = emulator.credentials
    async with httpx.AsyncClient(transport=_RedirectTransport(emulator.base_url)) as http:
        sf = Salesforce(
            httpx_client=http,
            base_url=FAKE_HOST,
            auth=SoapLogin(username=c.username, password=c.password, security_token=c.security_token),
            version="60.0",
        )
        ingest = sf.bulk_v2.ingest

        async def run(operation: Any, sobject: str, data: list[dict[str, Any]], **kw: Any) -> Any:
            results = [
                r
                async for r in ingest.perform_operation(operation, sobject, data, polling_interval=0.02, **kw)
            ]
            assert len(results) == 1
            return results[0]

        accounts = [
            {"Name": f"Account {n}", "External_Id__c": f"A-{n}", "NumberOfEmployees": n} for n in range(5)
        ]
        inserted = await run("insert", "Account", accounts)
        assert inserted.job_info.state == "JobComplete"
        assert len(inserted.successful_results) == 5
        assert inserted.failed_results == []
        stored = {r["External_Id__c"]: r for r in emulator.records("Account")}
        for row in inserted.successful_results:
            assert row["sf__Created"] == "true"
            assert stored[row["External_Id__c"]]["Id"] == row["sf__Id"]

        contacts = [
            {"LastName": "Ada", "External_Id__c": "C-1", "Account": {"External_Id__c": "A-1"}},
            {"LastName": "", "External_Id__c": "C-2", "Account": {"External_Id__c": "A-2"}},
            {"LastName": "Grace", "External_Id__c": "C-3", "Account": {"External_Id__c": "A-404"}},
        ]
        upserted = await run("upsert", "Contact", contacts, external_id_field="External_Id__c")
        assert [r["External_Id__c"] for r in upserted.successful_results] == ["C-1"]
        errors = {r["External_Id__c"]: r["sf__Error"] for r in upserted.failed_results}
        assert errors["C-2"].startswith("REQUIRED_FIELD_MISSING")
        assert errors["C-3"].startswith("INVALID_FIELD:Foreign key external ID: A-404")
        contact = emulator.records("Contact")[0]
        assert contact["AccountId"] == stored["A-1"]["Id"]

        # The high-level API, unmodified (it polls every 5 seconds).
        again = await sf.bulk_v2.upsert(
            "Contact", [{"LastName": "Lovelace", "External_Id__c": "C-1"}], external_id_field="External_Id__c"
        )
        assert again.successful_results[0]["sf__Created"] == "false"
        assert emulator.records("Contact")[0]["LastName"] == "Lovelace"

        updated = await run("update", "Account", [{"Id": stored["A-0"]["Id"], "Name": "Renamed"}])
        assert updated.successful_results[0]["sf__Id"] == stored["A-0"]["Id"]
        deleted = await run("delete", "Account", [{"Id": stored["A-4"]["Id"]}, {"Id": "001000000000000AAA"}])
        assert len(deleted.successful_results) == 1
        assert len(deleted.failed_results) == 1
        names = {r["Name"] for r in emulator.records("Account")}
        assert "Renamed" in names
        assert "Account 4" not in names

        limits = await sf.get_limits()
        assert limits["DailyApiRequests"]["Remaining"] < limits["DailyApiRequests"]["Max"]
        listed = [job async for job in ingest.list_jobs()]
        assert len(listed) == 5


# -- simple-salesforce --------------------------------------------------------------------------


class _RedirectAdapter(HTTPAdapter):
    def __init__(self, base_url: str) -> None:
        super().__init__()
        self._base = base_url

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> requests.Response:
        url = request.url or ""
        path = url.split("://", 1)[1].split("/", 1)[1] if "://" in url else url
        request.url = f"{self._base}/{path}"
        return super().send(request, *args, **kwargs)


@pytest.fixture
def simple_sf(emulator: RunningEmulator) -> Iterator[Any]:
    from simple_salesforce import Salesforce

    session = requests.Session()
    adapter = _RedirectAdapter(emulator.base_url)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    c = emulator.credentials
    # Its SOAP login, unmodified: it posts to login.salesforce.com, which the adapter sends here.
    yield Salesforce(
        username=c.username, password=c.password, security_token=c.security_token, session=session
    )
    session.close()


def _csv_rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text, newline="")))


def test_simple_salesforce_bulk2(emulator: RunningEmulator, simple_sf: Any) -> None:
    items = [
        {"Name": "Bolt", "External_Id__c": "W-1", "Quantity__c": "10", "Category__c": "Hardware"},
        {"Name": "Nut", "External_Id__c": "W-2", "Quantity__c": "x", "Category__c": "Hardware"},
        {"Name": "Gear, large", "External_Id__c": "W-3", "Quantity__c": "3", "Category__c": "Spare Part"},
    ]
    inserted = simple_sf.bulk2.Warehouse_Item__c.insert(records=items, wait=0)
    assert inserted[0]["numberRecordsProcessed"] == 3
    assert inserted[0]["numberRecordsFailed"] == 1
    results = simple_sf.bulk2.Warehouse_Item__c.get_all_ingest_records(inserted[0]["job_id"])
    stored = {r["External_Id__c"]: r for r in emulator.records("Warehouse_Item__c")}
    assert {r["External_Id__c"]: r["sf__Id"] for r in results["successfulRecords"]} == {
        ext: stored[ext]["Id"] for ext in ("W-1", "W-3")
    }
    assert "xsd:double:Quantity__c" in results["failedRecords"][0]["sf__Error"]
    assert stored["W-3"]["Name"] == "Gear, large"

    upserted = simple_sf.bulk2.Warehouse_Item__c.upsert(
        records=[{"External_Id__c": "W-1", "Quantity__c": "11"}, {"External_Id__c": "W-4", "Name": "New"}],
        external_id_field="External_Id__c",
        wait=0,
    )
    created = _csv_rows(simple_sf.bulk2.Warehouse_Item__c.get_successful_records(upserted[0]["job_id"]))
    assert {r["External_Id__c"]: r["sf__Created"] for r in created} == {"W-1": "false", "W-4": "true"}

    updated = simple_sf.bulk2.Warehouse_Item__c.update(
        records=[{"Id": stored["W-3"]["Id"], "Active__c": "false"}], wait=0
    )
    assert updated[0]["numberRecordsFailed"] == 0
    deleted = simple_sf.bulk2.Warehouse_Item__c.delete(records=[{"Id": stored["W-3"]["Id"]}], wait=0)
    assert deleted[0]["numberRecordsProcessed"] == 1

    after = {r["External_Id__c"]: r for r in emulator.records("Warehouse_Item__c")}
    assert set(after) == {"W-1", "W-4"}
    assert after["W-1"]["Quantity__c"] == 11
    assert after["W-4"]["Active__c"] is True
    deleted_item = {
        r["External_Id__c"]: r for r in emulator.records("Warehouse_Item__c", include_deleted=True)
    }["W-3"]
    assert deleted_item["IsDeleted"] is True
    assert deleted_item["Active__c"] is False


def test_simple_salesforce_bulk2_query_query_all_and_download(
    emulator: RunningEmulator, simple_sf: Any, tmp_path: Any
) -> None:
    items = [
        {
            "Name": f"Item {n}",
            "External_Id__c": f"Q-{n:02d}",
            "Quantity__c": str(n),
            "Category__c": "Hardware",
        }
        for n in range(25)
    ]
    simple_sf.bulk2.Warehouse_Item__c.insert(records=items, wait=0)
    stored = {r["External_Id__c"]: r["Id"] for r in emulator.records("Warehouse_Item__c")}
    simple_sf.bulk2.Warehouse_Item__c.delete(records=[{"Id": stored["Q-03"]}], wait=0)

    soql = (
        "SELECT Id, External_Id__c, Quantity__c FROM Warehouse_Item__c WHERE Quantity__c < 20 ORDER BY Name"
    )
    pages = list(simple_sf.bulk2.Warehouse_Item__c.query(soql, max_records=7, wait=0.05))
    assert len(pages) == 3  # 19 records: 7 + 7 + 5, each page with its header
    rows = [row for page in pages for row in _csv_rows(page)]
    expected = sorted(f"Q-{n:02d}" for n in range(20) if n != 3)
    assert sorted(r["External_Id__c"] for r in rows) == expected
    assert {r["Id"] for r in rows} == {stored[e] for e in expected}
    assert next(r for r in rows if r["External_Id__c"] == "Q-05")["Quantity__c"] == "5.0"

    everything = list(
        simple_sf.bulk2.Warehouse_Item__c.query_all(
            "SELECT External_Id__c, IsDeleted FROM Warehouse_Item__c WHERE IsDeleted = true", wait=0.05
        )
    )
    assert [r for page in everything for r in _csv_rows(page)] == [
        {"External_Id__c": "Q-03", "IsDeleted": "true"}
    ]

    files = simple_sf.bulk2.Warehouse_Item__c.download(
        "SELECT External_Id__c FROM Warehouse_Item__c", path=str(tmp_path), max_records=10, wait=0.05
    )
    assert [f["number_of_records"] for f in files] == [10, 10, 4]
    downloaded = []
    for entry in files:
        with open(entry["file"], encoding="utf-8", newline="") as handle:
            downloaded += [r["External_Id__c"] for r in csv.DictReader(handle)]
    assert sorted(downloaded) == sorted(e for e in stored if e != "Q-03")

    with pytest.raises(Exception, match="INVALID_FIELD"):
        list(simple_sf.bulk2.Warehouse_Item__c.query("SELECT Nope__c FROM Warehouse_Item__c", wait=0.05))
