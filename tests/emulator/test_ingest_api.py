"""The ingest endpoints' status codes and bodies, as the contract lists them."""

from __future__ import annotations

import gzip
import re

import httpx
import pytest

from airflow_provider_salesforce_bulk.emulator.server import RunningEmulator

from .helpers import create_job, run_job, wait_done

DATETIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}\+0000")


def test_create_answers_the_documented_body(api: httpx.Client) -> None:
    job = create_job(api, object="Contact", operation="upsert", externalIdFieldName="External_Id__c")
    assert re.fullmatch(r"750[0-9A-Za-z]{15}", job["id"])
    assert job["state"] == "Open"
    assert job["apiVersion"] == 62.0
    assert isinstance(job["apiVersion"], float)
    assert job["contentUrl"] == f"services/data/v62.0/jobs/ingest/{job['id']}/batches"
    assert job["lineEnding"] == "LF"
    assert job["columnDelimiter"] == "COMMA"
    assert job["concurrencyMode"] == "Parallel"
    assert job["contentType"] == "CSV"
    assert job["externalIdFieldName"] == "External_Id__c"
    assert DATETIME.fullmatch(job["createdDate"])
    assert DATETIME.fullmatch(job["systemModstamp"])
    assert "assignmentRuleId" not in job
    assert (
        api.post("/jobs/ingest", json={"object": "Account", "operation": "insert"}).headers["content-type"]
        == "application/json;charset=UTF-8"
    )


def test_create_validates_the_job(emulator: RunningEmulator, api: httpx.Client) -> None:
    def error(spec: dict[str, object]) -> tuple[int, str]:
        response = api.post("/jobs/ingest", json=spec)
        body = response.json()
        assert isinstance(body, list)
        assert set(body[0]) == {"errorCode", "message"}
        return response.status_code, body[0]["errorCode"]

    assert error({"object": "Nope__c", "operation": "insert"}) == (400, "INVALIDJOB")
    assert error({"object": "Account", "operation": "merge"}) == (400, "INVALIDJOB")
    assert error({"object": "Account", "operation": "upsert"}) == (400, "INVALIDJOB")
    assert error({"object": "Account", "operation": "upsert", "externalIdFieldName": "Name"}) == (
        400,
        "INVALIDJOB",
    )
    assert error({"object": "Account", "operation": "insert", "columnDelimiter": "STAR"}) == (
        400,
        "INVALIDJOB",
    )
    assert error({"object": "Account", "operation": "insert", "lineEnding": "CR"}) == (400, "INVALIDJOB")
    assert error({"object": "Account", "operation": "insert", "contentType": "JSON"}) == (400, "INVALIDJOB")
    emulator.update_settings(hard_delete_enabled=False)
    assert error({"object": "Account", "operation": "hardDelete"}) == (400, "FEATURENOTENABLED")
    malformed = api.post(
        "/jobs/ingest", content=b'{"object" "Account"}', headers={"Content-Type": "application/json"}
    )
    assert malformed.status_code == 400
    assert malformed.json()[0]["errorCode"] == "JSON_PARSER_ERROR"
    assert "[line:1, column:11]" in malformed.json()[0]["message"]


def test_only_one_upload_per_job(api: httpx.Client) -> None:
    job = create_job(api, object="Account", operation="insert")
    url = f"/jobs/ingest/{job['id']}/batches"
    first = api.put(url, content=b"Name\nAcme\n", headers={"Content-Type": "text/csv"})
    assert first.status_code == 201
    assert first.content == b""
    second = api.put(url, content=b"Name\nAcme\n", headers={"Content-Type": "text/csv"})
    assert second.status_code == 400
    assert second.json() == [
        {
            "errorCode": "INVALIDJOB",
            # The 15-character id in angle brackets, as real orgs write it.
            "message": f"Found multipe contents for job: <{job['id'][:15]}>, "
            "please 'Close' / 'Abort' / 'Delete' the current Job then create a new Job "
            "and make sure you only do 'PUT' once on a given Job.",
        }
    ]


def test_upload_limit_and_gzip_bodies(emulator: RunningEmulator, api: httpx.Client) -> None:
    emulator.update_settings(upload_limit_bytes=1000)
    job = create_job(api, object="Account", operation="insert")
    big = b"Name\n" + b"x" * 2000 + b"\n"
    too_big = api.put(f"/jobs/ingest/{job['id']}/batches", content=big, headers={"Content-Type": "text/csv"})
    assert too_big.status_code == 400
    assert too_big.json()[0]["errorCode"] == "CLIENTINPUTERROR"
    bomb = api.put(
        f"/jobs/ingest/{job['id']}/batches",
        content=gzip.compress(big),
        headers={"Content-Type": "text/csv", "Content-Encoding": "gzip"},
    )
    assert bomb.status_code == 400
    emulator.update_settings(upload_limit_bytes=100 * 1024 * 1024)
    body = gzip.compress(b"Name\nZipped One\nZipped Two\n")
    ok = api.put(
        f"/jobs/ingest/{job['id']}/batches",
        content=body,
        headers={"Content-Type": "text/csv", "Content-Encoding": "gzip"},
    )
    assert ok.status_code == 201
    api.patch(f"/jobs/ingest/{job['id']}", json={"state": "UploadComplete"})
    assert wait_done(api, job["id"])["numberRecordsProcessed"] == 2
    assert sorted(r["Name"] for r in emulator.records("Account")) == ["Zipped One", "Zipped Two"]


def test_gzip_responses_when_asked(api: httpx.Client) -> None:
    rows = "".join(f"Account {n}\n" for n in range(200))
    info, _ = run_job(api, "Name\n" + rows, object="Account", operation="insert")
    response = api.get(f"/jobs/ingest/{info['id']}/successfulResults", headers={"Accept-Encoding": "gzip"})
    assert response.headers["content-encoding"] == "gzip"
    assert response.text.count("\n") == 201


def test_state_rules(api: httpx.Client) -> None:
    job = create_job(api, object="Account", operation="insert")
    url = f"/jobs/ingest/{job['id']}"
    assert api.delete(url).json()[0]["errorCode"] == "API_ERROR"  # Open cannot be deleted
    assert api.get(f"{url}/successfulResults").status_code == 400
    api.put(f"{url}/batches", content=b"Name\nA\n", headers={"Content-Type": "text/csv"})
    closed = api.patch(url, json={"state": "UploadComplete"})
    assert closed.status_code == 200
    assert set(closed.json()) >= {"id", "state", "object", "operation", "apiVersion"}
    assert not {"jobType", "lineEnding", "columnDelimiter", "numberRecordsProcessed"} & set(closed.json())
    assert wait_done(api, job["id"])["state"] == "JobComplete"
    again = api.patch(url, json={"state": "UploadComplete"})
    assert again.status_code == 400
    assert again.json()[0]["errorCode"] == "INVALIDJOBSTATE"
    abort = api.patch(url, json={"state": "Aborted"})
    assert abort.status_code == 400
    assert abort.json() == [
        {"errorCode": "INVALIDJOBSTATE", "message": "Aborting already Completed Job not allowed"}
    ]
    deleted = api.delete(url)
    assert deleted.status_code == 204
    assert deleted.content == b""
    assert api.get(url).status_code == 404
    assert api.get(url).json() == [
        {"errorCode": "NOT_FOUND", "message": "The requested resource does not exist"}
    ]


def test_abort_an_open_job(api: httpx.Client) -> None:
    job = create_job(api, object="Account", operation="insert")
    aborted = api.patch(f"/jobs/ingest/{job['id']}", json={"state": "Aborted"})
    assert aborted.status_code == 200
    assert aborted.json()["state"] == "Aborted"
    upload = api.put(
        f"/jobs/ingest/{job['id']}/batches", content=b"Name\nA\n", headers={"Content-Type": "text/csv"}
    )
    assert upload.status_code == 400
    assert api.delete(f"/jobs/ingest/{job['id']}").status_code == 204


def test_job_info_fields(api: httpx.Client) -> None:
    info, _ = run_job(api, "Name\nA\n", object="Account", operation="insert")
    for field in (
        "id",
        "operation",
        "object",
        "createdById",
        "createdDate",
        "systemModstamp",
        "state",
        "concurrencyMode",
        "contentType",
        "apiVersion",
        "jobType",
        "lineEnding",
        "columnDelimiter",
        "numberRecordsProcessed",
        "numberRecordsFailed",
        "retries",
        "totalProcessingTime",
        "apiActiveProcessingTime",
        "apexProcessingTime",
    ):
        assert field in info, field
    assert info["jobType"] == "V2Ingest"
    assert "contentUrl" not in info
    assert "errorMessage" not in info


def test_list_pages_with_next_records_url(emulator: RunningEmulator, api: httpx.Client) -> None:
    emulator.update_settings(job_page_size=2)
    ids = {create_job(api, object="Account", operation="insert")["id"] for _ in range(5)}
    seen: set[str] = set()
    page = api.get("/jobs/ingest").json()
    pages = 1
    while page["nextRecordsUrl"]:
        assert not page["done"]
        assert page["nextRecordsUrl"].startswith("/services/data/v62.0/jobs/ingest?queryLocator=")
        seen |= {r["id"] for r in page["records"]}
        page = httpx.get(emulator.base_url + page["nextRecordsUrl"], headers=api.headers).json()
        pages += 1
    seen |= {r["id"] for r in page["records"]}
    assert page["done"]
    assert seen == ids
    assert pages == 3
    assert "numberRecordsProcessed" not in page["records"][0]


def test_unknown_paths_and_methods_answer_json_arrays(api: httpx.Client) -> None:
    assert api.get("/jobs/ingest/750000000000000AAA").status_code == 404
    missing = api.get("/nothing/here")
    assert missing.status_code == 404
    assert missing.json()[0]["errorCode"] == "NOT_FOUND"
    wrong = api.post("/jobs/ingest/750000000000000AAA")
    assert wrong.status_code == 405
    assert wrong.json()[0]["errorCode"] == "METHOD_NOT_ALLOWED"


def test_api_versions(emulator: RunningEmulator, api: httpx.Client) -> None:
    headers = api.headers
    retired = httpx.get(f"{emulator.base_url}/services/data/v40.0/jobs/ingest", headers=headers)
    assert retired.status_code == 410
    assert isinstance(retired.json(), list)
    assert (
        httpx.get(f"{emulator.base_url}/services/data/v68.0/jobs/ingest", headers=headers).status_code == 200
    )
    assert (
        httpx.get(f"{emulator.base_url}/services/data/v69.0/jobs/ingest", headers=headers).status_code == 404
    )
    versions = httpx.get(f"{emulator.base_url}/services/data/").json()
    assert versions[0]["version"] == "41.0"
    assert versions[-1] == {
        "label": "Winter '27",
        "url": "/services/data/v68.0",
        "version": "68.0",
    }


def test_limits_count_down_and_are_enforced(emulator: RunningEmulator, api: httpx.Client) -> None:
    first = api.get("/limits")
    used = int(first.headers["sforce-limit-info"].split("=")[1].split("/")[0])
    assert first.json()["DailyApiRequests"] == {"Max": 100_000, "Remaining": 100_000 - used}
    batches = first.json()["DailyBulkApiBatches"]["Remaining"]
    run_job(api, "Name\n" + "".join(f"A{n}\n" for n in range(10_001)), object="Account", operation="insert")
    after = api.get("/limits").json()
    assert after["DailyBulkApiBatches"]["Remaining"] == batches - 2  # 10,001 records: two batches
    assert after["DailyApiRequests"]["Remaining"] < 100_000 - used
    emulator.update_settings(daily_api_requests_max=used)
    refused = api.get("/jobs/ingest")
    assert refused.status_code == 403
    assert refused.json() == [
        {"errorCode": "REQUEST_LIMIT_EXCEEDED", "message": "TotalRequests Limit exceeded."}
    ]
    assert "sforce-limit-info" in refused.headers


def test_an_unexpected_error_is_a_json_array_not_a_traceback(
    emulator: RunningEmulator, api: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(job_id: str) -> None:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(emulator.emulator.store, "get_job", broken)
    response = api.get("/jobs/ingest/7505e0000000001AAA")
    assert response.status_code == 500
    assert response.json()[0]["errorCode"] == "UNKNOWN_EXCEPTION"
    assert "Traceback" not in response.text
    assert "disk on fire" not in response.text


def test_version_resources(api: httpx.Client) -> None:
    assert api.get("/").json()["limits"] == "/services/data/v62.0/limits"
