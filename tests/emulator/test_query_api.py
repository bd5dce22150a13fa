"""Bulk API 2.0 query jobs over a real socket: the job's life, result pages, errors and describe."""

from __future__ import annotations

import csv
import io
import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from airflow_provider_salesforce_bulk.emulator.server import RunningEmulator, run_emulator

from .helpers import API, create_query, run_job, wait_query


def _accounts(api: httpx.Client, count: int = 5) -> list[dict[str, Any]]:
    lines = ["Name,External_Id__c,NumberOfEmployees,AnnualRevenue,BillingCity"]
    for n in range(count):
        city = "" if n % 2 else "Paris"
        lines.append(f"Account {n},A-{n},{n * 10},{n * 1000.5},{city}")
    info, _ = run_job(api, "\n".join(lines) + "\n", object="Account", operation="insert")
    assert info["numberRecordsFailed"] == 0
    return list(api.get("/jobs/ingest").json()["records"])


def all_pages(api: httpx.Client, job_id: str, max_records: int | None = None) -> list[httpx.Response]:
    pages = []
    locator = ""
    while True:
        params: dict[str, Any] = {}
        if max_records:
            params["maxRecords"] = max_records
        if locator:
            params["locator"] = locator
        response = api.get(f"/jobs/query/{job_id}/results", params=params)
        assert response.status_code == 200, response.text
        pages.append(response)
        locator = response.headers["Sforce-Locator"]
        if locator == "null":
            return pages
        assert len(pages) < 1000


def run_query(api: httpx.Client, soql: str, **spec: Any) -> list[dict[str, str]]:
    job = create_query(api, soql, **spec)
    info = wait_query(api, job["id"])
    assert info["state"] == "JobComplete", info
    rows: list[dict[str, str]] = []
    for page in all_pages(api, job["id"]):
        rows += csv.DictReader(io.StringIO(page.text, newline=""))
    return rows


def test_job_life_and_bodies(api: httpx.Client) -> None:
    _accounts(api, 3)
    job = create_query(api, "SELECT Id, Name FROM account")
    assert job["state"] == "UploadComplete"
    assert job["object"] == "Account"
    assert job["operation"] == "query"
    assert job["apiVersion"] == 62.0
    assert (job["lineEnding"], job["columnDelimiter"], job["contentType"]) == ("LF", "COMMA", "CSV")
    assert "jobType" not in job
    assert "numberRecordsProcessed" not in job
    info = wait_query(api, job["id"])
    assert info["state"] == "JobComplete"
    assert info["jobType"] == "V2Query"
    assert info["numberRecordsProcessed"] == 3
    assert info["isPkChunkingSupported"] is True
    listed = api.get("/jobs/query").json()
    assert listed["done"] is True
    assert listed["nextRecordsUrl"] is None
    assert [r["id"] for r in listed["records"]] == [job["id"]]
    assert listed["records"][0]["jobType"] == "V2Query"
    assert api.get("/jobs/ingest").json()["records"][0]["jobType"] == "V2Ingest"  # not mixed up
    aborted = api.patch(f"/jobs/query/{job['id']}", json={"state": "Aborted"})
    assert aborted.status_code == 400
    assert aborted.json()[0]["message"] == "Aborting already Completed Job not allowed"
    assert api.delete(f"/jobs/query/{job['id']}").status_code == 204
    assert api.get(f"/jobs/query/{job['id']}").status_code == 404


def test_results_paging_headers_and_locators(api: httpx.Client) -> None:
    _accounts(api, 7)
    job = create_query(api, "SELECT Name FROM Account ORDER BY NumberOfEmployees DESC")
    wait_query(api, job["id"])
    pages = all_pages(api, job["id"], max_records=3)
    assert [p.headers["Sforce-NumberOfRecords"] for p in pages] == ["3", "3", "1"]
    assert pages[-1].headers["Sforce-Locator"] == "null"
    assert pages[0].headers["content-type"].startswith("text/csv")
    names = []
    for page in pages:
        lines = page.text.split("\n")
        assert lines[0] == '"Name"'  # the header on every page
        names += [line.strip('"') for line in lines[1:] if line]
    assert names == [f"Account {n}" for n in range(6, -1, -1)]
    # A locator can be read again and gives the same page.
    second = pages[0].headers["Sforce-Locator"]
    again = api.get(f"/jobs/query/{job['id']}/results", params={"locator": second, "maxRecords": 3})
    assert again.text == pages[1].text
    # Without maxRecords everything fits one page.
    whole = api.get(f"/jobs/query/{job['id']}/results")
    assert whole.headers["Sforce-NumberOfRecords"] == "7"
    assert whole.headers["Sforce-Locator"] == "null"
    for bad in ("nonsense!", "MTAwMDA", "null", "MTA="):
        answer = api.get(f"/jobs/query/{job['id']}/results", params={"locator": bad})
        assert answer.status_code == 400, bad
    assert api.get(f"/jobs/query/{job['id']}/results", params={"maxRecords": "0"}).status_code == 400
    other_version = api.get(
        str(api.base_url).rstrip("/").replace("v62.0", "v61.0") + f"/jobs/query/{job['id']}/results"
    )
    assert other_version.status_code == 409


def test_values_as_salesforce_writes_them(api: httpx.Client) -> None:
    csv_text = (
        "LastName,FirstName,Birthdate,HasOptedOutOfEmail,Email\n"
        'Doe,"Jane ""JJ""",1990-02-03,true,jane@example.com\n'
        "Roe,,,false,\n"
    )
    run_job(api, csv_text, object="Contact", operation="insert")
    job = create_query(
        api,
        "SELECT LastName, FirstName, Birthdate, HasOptedOutOfEmail, Email, CreatedDate "
        "FROM Contact ORDER BY LastName",
    )
    wait_query(api, job["id"])
    text = api.get(f"/jobs/query/{job['id']}/results").text
    lines = text.split("\n")
    assert lines[0] == '"LastName","FirstName","Birthdate","HasOptedOutOfEmail","Email","CreatedDate"'
    assert lines[1].startswith('"Doe","Jane ""JJ""","1990-02-03","true","jane@example.com","')
    assert lines[2].startswith('"Roe","","","false","","')
    created = lines[1].rsplit(",", 1)[1].strip('"')
    assert len(created) == 24
    assert created.endswith("Z")
    assert created[19] == "."


def test_numbers_relationships_and_delimiters(api: httpx.Client) -> None:
    run_job(
        api,
        "Name,External_Id__c,AnnualRevenue,NumberOfEmployees\nParent,P-1,912260031,12\nChild,C-1,1.5,\n",
        object="Account",
        operation="insert",
    )
    run_job(
        api,
        "Name,External_Id__c,Parent.External_Id__c\nChild,C-1,P-1\n",
        object="Account",
        operation="upsert",
        externalIdFieldName="External_Id__c",
    )
    job = create_query(
        api,
        "SELECT Name, AnnualRevenue, NumberOfEmployees, Parent.Name, a.Parent.Parent.Name "
        "FROM Account a ORDER BY a.Name",
        columnDelimiter="PIPE",
        lineEnding="CRLF",
    )
    wait_query(api, job["id"])
    text = api.get(f"/jobs/query/{job['id']}/results").text
    assert text == (
        '"Name"|"AnnualRevenue"|"NumberOfEmployees"|"Parent.Name"|"Parent.Parent.Name"\r\n'
        '"Child"|"1.5"|""|"Parent"|""\r\n'
        '"Parent"|"9.12260031E8"|"12"|""|""\r\n'
    )


def test_query_all_includes_deleted_records(api: httpx.Client, emulator: RunningEmulator) -> None:
    _accounts(api, 3)
    stored = {r["Name"]: r["Id"] for r in emulator.records("Account")}
    run_job(api, f"Id\n{stored['Account 1']}\n", object="Account", operation="delete")
    live = run_query(api, "SELECT Name, IsDeleted FROM Account")
    assert [r["Name"] for r in live] == ["Account 0", "Account 2"]
    everything = run_query(api, "SELECT Name, IsDeleted FROM Account", operation="queryAll")
    assert [(r["Name"], r["IsDeleted"]) for r in everything] == [
        ("Account 0", "false"),
        ("Account 1", "true"),
        ("Account 2", "false"),
    ]
    only_deleted = run_query(api, "SELECT Name FROM Account WHERE IsDeleted = true", operation="queryAll")
    assert [r["Name"] for r in only_deleted] == ["Account 1"]
    job = create_query(api, "SELECT Id FROM Account", operation="queryAll")
    assert job["operation"] == "queryAll"


def test_where_clauses_over_the_wire(api: httpx.Client) -> None:
    _accounts(api, 6)

    def names(soql: str) -> list[str]:
        return [r["Name"] for r in run_query(api, soql)]

    assert names("SELECT Name FROM Account WHERE BillingCity = null") == [
        "Account 1",
        "Account 3",
        "Account 5",
    ]
    assert names("SELECT Name FROM Account WHERE BillingCity != 'paris'") == [
        "Account 1",
        "Account 3",
        "Account 5",
    ]
    assert names("SELECT Name FROM Account WHERE NumberOfEmployees >= 30 AND Name LIKE '%count _'") == [
        "Account 3",
        "Account 4",
        "Account 5",
    ]
    assert names(
        "SELECT Name FROM Account WHERE External_Id__c IN ('A-1', 'a-2') OR NumberOfEmployees < 1"
    ) == [
        "Account 0",
        "Account 1",
        "Account 2",
    ]
    assert names("SELECT Name FROM Account WHERE NOT (NumberOfEmployees > 10) LIMIT 1") == ["Account 0"]
    assert names(
        "SELECT Name FROM Account WHERE CreatedDate = TODAY AND CreatedDate > 2020-01-01T00:00:00Z"
    ) == [f"Account {n}" for n in range(6)]
    assert names("SELECT Name FROM Account WHERE CreatedDate < LAST_N_DAYS:3") == []


@pytest.mark.parametrize(
    ("soql", "code", "text"),
    [
        ("SELECT Id FORM Account", "MALFORMED_QUERY", "ERROR at Row:1:Column:11\nunexpected token: 'FORM'"),
        (
            "SELECT Id,\nNme FROM Account",
            "INVALID_FIELD",
            "ERROR at Row:2:Column:1\nNo such column 'Nme' on entity",
        ),
        ("SELECT Id FROM Foo__c", "INVALID_TYPE", "sObject type 'Foo__c' is not supported."),
        ("SELECT Acount.Name FROM Contact", "INVALID_FIELD", "Didn't understand relationship 'Acount'"),
        ("SELECT COUNT() FROM Account", "API_ERROR", "not supported in Bulk Query"),
        (
            "SELECT Id, (SELECT Id FROM Contacts) FROM Account",
            "API_ERROR",
            "Aggregate Relationships not supported",
        ),
        ("SELECT Id FROM Account OFFSET 5", "API_ERROR", "OFFSET"),
        (
            "SELECT Id FROM Account WHERE Name = 5",
            "INVALID_FIELD",
            "must be of type string and should be enclosed",
        ),
        (
            "SELECT Id FROM Account WHERE Id = 'nope'",
            "INVALID_QUERY_FILTER_OPERATOR",
            "invalid ID field: nope",
        ),
        (
            "SELECT Id FROM Account WHERE CreatedDate > 2024-01-01",
            "INVALID_FIELD",
            "must be of type dateTime",
        ),
        ("SELECT Id FROM Account WHERE Name = 'a' AND Id != null OR Name = 'b'", "MALFORMED_QUERY", "'OR'"),
        # The SOQL guide's FIELDS() page: INVALID_FIELD, the field named as the org spells it.
        ("SELECT Id, id FROM Account", "INVALID_FIELD", "duplicate field selected: Id"),
        (
            "SELECT Id FROM Account WHERE Description = 'x'",
            "INVALID_FIELD",
            "can not be filtered in query call",
        ),
        ("SELECT Id FROM Account ORDER BY Description", "INVALID_FIELD", "can not be sorted in a query call"),
    ],
)
def test_bad_queries_refused_at_create(api: httpx.Client, soql: str, code: str, text: str) -> None:
    response = api.post("/jobs/query", json={"operation": "query", "query": soql})
    assert response.status_code == 400
    error = response.json()[0]
    assert error["errorCode"] == code
    assert text in error["message"]
    assert api.get("/jobs/query").json()["records"] == []


def test_bad_job_specs(api: httpx.Client) -> None:
    for spec, code in (
        ({"operation": "insert", "query": "SELECT Id FROM Account"}, "API_ERROR"),
        ({"operation": "query"}, "API_ERROR"),
        ({"operation": "query", "query": "SELECT Id FROM Account", "columnDelimiter": "DASH"}, "INVALIDJOB"),
        ({"operation": "query", "query": "SELECT Id FROM Account", "contentType": "JSON"}, "INVALIDJOB"),
    ):
        response = api.post("/jobs/query", json=spec)
        assert response.status_code == 400, spec
        assert response.json()[0]["errorCode"] == code


def test_abort_while_running_and_delete_rules(api: httpx.Client, emulator: RunningEmulator) -> None:
    _accounts(api, 40)
    emulator.update_settings(records_per_second=5.0)
    job = create_query(api, "SELECT Id FROM Account")
    assert api.delete(f"/jobs/query/{job['id']}").status_code == 400  # not finished yet
    aborted = api.patch(f"/jobs/query/{job['id']}/", json={"state": "Aborted"})
    assert aborted.status_code == 200, aborted.text
    assert aborted.json()["state"] == "Aborted"
    info = wait_query(api, job["id"])
    assert info["state"] == "Aborted"
    assert api.get(f"/jobs/query/{job['id']}/results").status_code == 400
    assert api.delete(f"/jobs/query/{job['id']}/").status_code == 204


def test_in_progress_then_complete(api: httpx.Client, emulator: RunningEmulator) -> None:
    _accounts(api, 10)
    emulator.update_settings(records_per_second=2000.0)
    job = create_query(api, "SELECT Id FROM Account")
    seen = {wait_query(api, job["id"])["state"]}
    assert seen == {"JobComplete"}
    emulator.update_settings(records_per_second=4.0)
    slow = create_query(api, "SELECT Id FROM Account")
    deadline = time.monotonic() + 20
    states: list[str] = []
    while not states or states[-1] != "JobComplete":
        states.append(api.get(f"/jobs/query/{slow['id']}").json()["state"])
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert "InProgress" in states
    early = api.get(f"/jobs/query/{slow['id']}")
    assert early.json()["numberRecordsProcessed"] == 10


def test_trailing_slashes_served(api: httpx.Client) -> None:
    _accounts(api, 2)
    response = api.post("/jobs/query/", json={"operation": "query", "query": "SELECT Id FROM Account"})
    assert response.status_code == 200, response.text
    job_id = response.json()["id"]
    wait_query(api, job_id)
    assert api.get(f"/jobs/query/{job_id}/").status_code == 200
    page = api.get(f"/jobs/query/{job_id}/results/")
    assert page.status_code == 200
    assert page.headers["Sforce-NumberOfRecords"] == "2"
    assert api.get("/jobs/query/").status_code == 200
    assert api.get("/sobjects/").status_code == 200


def test_result_pages(api: httpx.Client, monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow_provider_salesforce_bulk.emulator import query

    monkeypatch.setattr(query, "DEFAULT_PAGE_RECORDS", 2)
    _accounts(api, 13)
    job = create_query(api, "SELECT Name FROM Account")
    wait_query(api, job["id"])
    first = api.get(f"/jobs/query/{job['id']}/resultPages").json()
    assert len(first["resultPages"]) == 5
    assert first["done"] is False
    second = api.get(first["nextRecordsUrl"].replace("/services/data/v62.0", "")).json()
    assert second["done"] is True
    assert second["nextRecordsUrl"] is None
    names = []
    for entry in first["resultPages"] + second["resultPages"]:
        url = entry["resultUrl"]
        assert url.startswith(f"/services/data/v62.0/jobs/query/{job['id']}/results?locator=")
        page = api.get(url.replace("/services/data/v62.0", ""))
        names += [r["Name"] for r in csv.DictReader(io.StringIO(page.text, newline=""))]
    assert names == [f"Account {n}" for n in range(13)]
    old = api.get(
        str(api.base_url).rstrip("/").replace("v62.0", "v57.0") + f"/jobs/query/{job['id']}/resultPages"
    )
    assert old.status_code == 404


def test_describe_and_sobjects(api: httpx.Client) -> None:
    listed = api.get("/sobjects").json()
    names = {o["name"]: o for o in listed["sobjects"]}
    assert {"Account", "Contact", "Warehouse_Item__c"} <= set(names)
    assert names["Account"]["keyPrefix"] == "001"
    assert names["Account"]["urls"]["describe"] == "/services/data/v62.0/sobjects/Account/describe"
    assert names["Warehouse_Item__c"]["custom"] is True
    described = api.get("/sobjects/contact/describe").json()
    assert described["name"] == "Contact"
    fields = {f["name"]: f for f in described["fields"]}
    assert fields["Id"]["type"] == "id"
    assert fields["Id"]["nillable"] is False
    assert fields["AccountId"]["type"] == "reference"
    assert fields["AccountId"]["referenceTo"] == ["Account"]
    assert fields["AccountId"]["relationshipName"] == "Account"
    assert fields["Birthdate"]["type"] == "date"
    assert fields["Birthdate"]["nillable"] is True
    assert fields["HasOptedOutOfEmail"]["type"] == "boolean"
    assert fields["HasOptedOutOfEmail"]["nillable"] is False
    assert fields["LastName"]["nillable"] is False
    assert fields["LastName"]["length"] == 80
    assert fields["External_Id__c"]["externalId"] is True
    assert fields["LeadSource"]["type"] == "picklist"
    assert next(v["value"] for v in fields["LeadSource"]["picklistValues"]) == "Web"
    assert fields["SystemModstamp"]["type"] == "datetime"
    account = {f["name"]: f for f in api.get("/sobjects/Account/describe").json()["fields"]}
    assert account["NumberOfEmployees"]["type"] == "int"
    assert account["AnnualRevenue"]["type"] == "currency"
    item = {f["name"]: f for f in api.get("/sobjects/Warehouse_Item__c/describe").json()["fields"]}
    assert item["Quantity__c"]["type"] == "double"
    missing = api.get("/sobjects/Foo__c/describe")
    assert missing.status_code == 404
    assert missing.json()[0]["errorCode"] == "NOT_FOUND"


def test_large_extract_pages_cover_every_record_once(api: httpx.Client) -> None:
    lines = ["Name,External_Id__c,Quantity__c"] + [f"Item {n},W-{n:05d},{n}" for n in range(5000)]
    run_job(api, "\n".join(lines) + "\n", object="Warehouse_Item__c", operation="insert")
    job = create_query(
        api, "SELECT External_Id__c, Quantity__c FROM Warehouse_Item__c WHERE Quantity__c >= 10"
    )
    assert wait_query(api, job["id"])["numberRecordsProcessed"] == 4990
    rows: list[dict[str, str]] = []
    for page in all_pages(api, job["id"], max_records=777):
        got = list(csv.DictReader(io.StringIO(page.text, newline="")))
        assert len(got) == int(page.headers["Sforce-NumberOfRecords"])
        rows += got
    assert [r["External_Id__c"] for r in rows] == [f"W-{n:05d}" for n in range(10, 5000)]
    assert rows[0]["Quantity__c"] == "10.0"  # a custom number field is a double


def test_failed_job_carries_its_error(api: httpx.Client, emulator: RunningEmulator) -> None:
    _accounts(api, 3)
    emulator.update_settings(job_failure_rate=1.0)
    job = create_query(api, "SELECT Id FROM Account")
    info = wait_query(api, job["id"])
    assert info["state"] == "Failed"
    assert info["errorMessage"].startswith("InvalidBatch : Failed to process query: QUERY_TIMEOUT")
    assert api.get(f"/jobs/query/{job['id']}/results").status_code == 400
    assert api.delete(f"/jobs/query/{job['id']}").status_code == 204


def test_unfinished_query_reruns_after_a_restart(tmp_path: Path) -> None:
    db = str(tmp_path / "org.sqlite3")
    with run_emulator(db=db, records_per_second=10.0) as first:
        token = first.new_access_token()
        with httpx.Client(base_url=first.base_url + API, headers={"Authorization": f"Bearer {token}"}) as api:
            first.update_settings(records_per_second=None)
            _accounts(api, 30)
            first.update_settings(records_per_second=10.0)
            job = create_query(api, "SELECT Name FROM Account")
            deadline = time.monotonic() + 20
            while api.get(f"/jobs/query/{job['id']}").json()["numberRecordsProcessed"] < 30:
                assert time.monotonic() < deadline
                time.sleep(0.02)
            assert api.get(f"/jobs/query/{job['id']}").json()["state"] == "InProgress"
    with (
        run_emulator(db=db) as second,
        httpx.Client(base_url=second.base_url + API, headers={"Authorization": f"Bearer {token}"}) as api,
    ):
        info = wait_query(api, job["id"])
        assert info["state"] == "JobComplete"
        assert info["numberRecordsProcessed"] == 30
        rows = [r["Name"] for p in all_pages(api, job["id"], 7) for r in csv.DictReader(io.StringIO(p.text))]
        assert rows == [f"Account {n}" for n in range(30)]


def test_a_broken_scan_is_retried(
    api: httpx.Client, emulator: RunningEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    _accounts(api, 4)
    store = emulator.emulator.store
    real_execute = store.execute
    breaks = iter([True, False])

    def flaky(sql: str, params: Any = ()) -> Any:
        if sql.startswith("SELECT") and next(breaks, False):
            raise sqlite3.OperationalError("abort due to ROLLBACK")
        return real_execute(sql, params)

    monkeypatch.setattr(store, "execute", flaky)
    job = create_query(api, "SELECT Name FROM Account")
    info = wait_query(api, job["id"])
    assert info["state"] == "JobComplete"
    assert info["retries"] == 1
    assert info["numberRecordsProcessed"] == 4


def test_job_list_pages(api: httpx.Client, emulator: RunningEmulator) -> None:
    emulator.update_settings(job_page_size=2)
    made = [create_query(api, "SELECT Id FROM Account")["id"] for _ in range(3)]
    first = api.get("/jobs/query").json()
    assert first["done"] is False
    assert [r["id"] for r in first["records"]] == made[:2]
    second = api.get(first["nextRecordsUrl"].replace("/services/data/v62.0", "")).json()
    assert second["done"] is True
    assert second["nextRecordsUrl"] is None
    assert [r["id"] for r in second["records"]] == made[2:]
    assert api.get("/jobs/query", params={"queryLocator": "bogus"}).status_code == 400


def test_incremental_extract_on_system_modstamp(api: httpx.Client, emulator: RunningEmulator) -> None:
    _accounts(api, 2)
    stamp = emulator.records("Account")[0]["LastModifiedDate"]  # e.g. 2026-11-29T22:47:16.509+0000
    since = stamp[:19] + "Z"
    soql = "SELECT Name, SystemModstamp FROM Account WHERE SystemModstamp >= " + since  # noqa: S608 - SOQL
    later = run_query(api, soql)
    assert [r["Name"] for r in later] == ["Account 0", "Account 1"]
    assert later[0]["SystemModstamp"] == stamp[:23] + "Z"
    assert run_query(api, "SELECT Name FROM Account WHERE SystemModstamp > 2999-01-01T00:00:00Z") == []
