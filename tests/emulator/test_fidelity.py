"""Details real orgs show and the emulator must match: paths, multipart create, texts, result echoes."""

from __future__ import annotations

import csv
import io
import json
import time
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from airflow_provider_salesforce_bulk.emulator.csv_values import java_double_text
from airflow_provider_salesforce_bulk.emulator.server import RunningEmulator

from .helpers import run_job, start_job, wait_done


def _rows(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text, newline="")))


def test_trailing_slashes_are_served_not_redirected(emulator: RunningEmulator, api: httpx.Client) -> None:
    created = api.post("/jobs/ingest/", json={"object": "Account", "operation": "insert"})
    assert created.status_code == 200, created.text
    job_id = created.json()["id"]
    assert api.get(f"/jobs/ingest/{job_id}/").json()["state"] == "Open"
    put = api.put(
        f"/jobs/ingest/{job_id}/batches/", content=b"Name\nA\n", headers={"Content-Type": "text/csv"}
    )
    assert put.status_code == 201
    assert api.patch(f"/jobs/ingest/{job_id}/", json={"state": "UploadComplete"}).status_code == 200
    wait_done(api, job_id)
    results = api.get(f"/jobs/ingest/{job_id}/successfulResults/")
    assert results.status_code == 200
    assert len(_rows(results.text)) == 2
    assert api.get("/jobs/ingest/").status_code == 200
    assert api.delete(f"/jobs/ingest/{job_id}/").status_code == 204


# The body of Salesforce's guide ("Bulk Insert with a Multipart Request"), with its LF line endings
# (Title for its MailingCity, which the emulator's schema does not have).
_GUIDE_BODY = (
    "--BOUNDARY\n"
    "Content-Type: application/json\n"
    'Content-Disposition: form-data; name="job"\n'
    "\n"
    '{\n  "object":"Contact",\n  "contentType":"CSV",\n  "operation": "insert",\n  "lineEnding" : "LF"\n}\n'
    "\n"
    "--BOUNDARY\n"
    "Content-Type: text/csv\n"
    'Content-Disposition: form-data; name="content"; filename="content"\n'
    "\n"
    "FirstName,LastName,Title\n"
    "Astro,Nomical,San Francisco\n"
    "Hootie,McOwl,San Francisco\n"
    "Appy,Camper,San Francisco\n"
    "Earnie,Badger,San Francisco\n"
    "--BOUNDARY--\n"
)


def test_multipart_create_of_the_guide_answers_upload_complete(
    emulator: RunningEmulator, api: httpx.Client
) -> None:
    response = api.post(
        "/jobs/ingest/",
        content=_GUIDE_BODY.encode(),
        headers={"Content-Type": 'multipart/form-data; boundary="BOUNDARY"', "Accept": "application/json"},
    )
    assert response.status_code == 200, response.text
    job = response.json()
    assert job["state"] == "UploadComplete"
    assert "contentUrl" not in job
    assert (job["object"], job["operation"]) == ("Contact", "insert")
    info = wait_done(api, job["id"])
    assert (info["state"], info["numberRecordsProcessed"], info["numberRecordsFailed"]) == (
        "JobComplete",
        4,
        0,
    )
    assert sorted(r["LastName"] for r in emulator.records("Contact")) == [
        "Badger",
        "Camper",
        "McOwl",
        "Nomical",
    ]
    # A second upload to a multipart job is refused like any second upload.
    again = api.put(
        f"/jobs/ingest/{job['id']}/batches", content=b"LastName\nX\n", headers={"Content-Type": "text/csv"}
    )
    assert again.status_code == 400


def test_multipart_create_from_an_http_client(emulator: RunningEmulator, api: httpx.Client) -> None:
    spec = json.dumps({"object": "Account", "operation": "insert", "lineEnding": "CRLF"})
    data = b'Name,Description\r\nOne,"a\r\nb"\r\nTwo,x\r\n'
    response = api.post(
        "/jobs/ingest",
        files={"job": (None, spec, "application/json"), "content": ("content", data, "text/csv")},
    )
    assert response.status_code == 200, response.text
    assert response.json()["state"] == "UploadComplete"
    info = wait_done(api, response.json()["id"])
    assert info["numberRecordsProcessed"] == 2
    assert {r["Name"]: r["Description"] for r in emulator.records("Account")} == {"One": "a\r\nb", "Two": "x"}


def test_multipart_create_without_content_is_refused(api: httpx.Client) -> None:
    spec = json.dumps({"object": "Account", "operation": "insert"})
    response = api.post("/jobs/ingest", files={"job": (None, spec, "application/json")})
    assert response.status_code == 400
    assert response.json()[0]["errorCode"] == "INVALIDJOB"
    assert api.get("/jobs/ingest").json()["records"] == []


def test_rows_with_the_wrong_number_of_values_fail_alone_and_results_stay_rectangular(
    api: httpx.Client,
) -> None:
    data = "Name,Phone,Description\nGood,1,d\nShort,2\nLong,3,d,extra\nAlso good,4,\n"
    info, results = run_job(api, data, object="Account", operation="insert")
    assert (info["state"], info["numberRecordsProcessed"], info["numberRecordsFailed"]) == (
        "JobComplete",
        4,
        2,
    )
    failed = _rows(results["failedResults"])
    assert failed[0] == ["sf__Id", "sf__Error", "Name", "Phone", "Description"]
    assert failed[1:] == [
        [
            "",
            "INVALID_FIELD:Number of fields in header is different from the row. header = 3 row = 2:--",
            "",
            "",
            "",
        ],
        [
            "",
            "INVALID_FIELD:Number of fields in header is different from the row. header = 3 row = 4:--",
            "",
            "",
            "",
        ],
    ]
    assert [row[2] for row in _rows(results["successfulResults"])[1:]] == ["Good", "Also good"]


@pytest.mark.parametrize(
    ("spec", "code", "message"),
    [
        (
            {"object": "Foo__c", "operation": "insert"},
            "INVALIDJOB",
            "InvalidJob : Unable to find object: Foo__c",
        ),
        (
            {"object": "Account", "operation": "upsert", "externalIdFieldName": "Name"},
            "INVALIDJOB",
            "InvalidJob : Field name provided, Name does not match an External ID for Account",
        ),
        (
            {"object": "Account", "operation": ""},
            "API_ERROR",
            "Invalid value: '' supplied for property: 'operation'",
        ),
    ],
)
def test_create_errors_read_as_real_orgs_write_them(
    api: httpx.Client, spec: dict[str, Any], code: str, message: str
) -> None:
    response = api.post("/jobs/ingest", json=spec)
    assert response.status_code == 400
    assert response.json() == [{"errorCode": code, "message": message}]


def test_active_processing_time_grows_while_in_progress(emulator: RunningEmulator, api: httpx.Client) -> None:
    emulator.update_settings(records_per_second=200)
    body = "Name\n" + "".join(f"A{n}\n" for n in range(600))
    job = start_job(api, body, object="Account", operation="insert")
    seen: list[int] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        info = api.get(f"/jobs/ingest/{job['id']}").json()
        if info["state"] != "InProgress":
            break
        assert info["totalProcessingTime"] == 0
        if info["apiActiveProcessingTime"] and (not seen or info["apiActiveProcessingTime"] > seen[-1]):
            seen.append(info["apiActiveProcessingTime"])
        time.sleep(0.05)
    assert len(seen) >= 2, seen
    final = wait_done(api, job["id"], timeout=30)
    assert final["apiActiveProcessingTime"] >= seen[-1]
    assert final["totalProcessingTime"] >= final["apiActiveProcessingTime"] > 0


def test_results_echo_the_header_as_uploaded(api: httpx.Client) -> None:
    _, results = run_job(api, '"Name",Phone\n"Acme",1\n', object="Account", operation="insert")
    assert results["successfulResults"].splitlines()[0] == '"sf__Id","sf__Created","Name",Phone'
    assert results["failedResults"] == '"sf__Id","sf__Error","Name",Phone\n'


def test_double_fields_are_echoed_as_salesforce_prints_doubles(api: httpx.Client) -> None:
    data = "Name,AnnualRevenue,NumberOfEmployees\nA,912260031,800\nB,1500.50,12\nC,0.0001,\nD,#N/A,1\n"
    _, results = run_job(api, data, object="Account", operation="insert")
    rows = {row[2]: row[3:] for row in _rows(results["successfulResults"])[1:]}
    assert rows == {
        "A": ["9.12260031E8", "800"],
        "B": ["1500.5", "12"],
        "C": ["1.0E-4", ""],
        "D": ["#N/A", "1"],
    }


@pytest.mark.parametrize(
    ("text", "java"),
    [
        ("912260031", "9.12260031E8"),
        ("100", "100.0"),
        ("9999999", "9999999.0"),
        ("10000000", "1.0E7"),
        ("0.001", "0.001"),
        ("0.0001", "1.0E-4"),
        ("-123456789012.5", "-1.234567890125E11"),
        ("1e21", "1.0E21"),
        ("0", "0.0"),
        ("-0", "-0.0"),
        ("12.50", "12.5"),
        # Beyond a double's range the text reads as infinity, which Java prints by name.
        ("1e400", "Infinity"),
        ("-1e400", "-Infinity"),
        ("not a number", "not a number"),
    ],
)
def test_java_double_text(text: str, java: str) -> None:
    assert java_double_text(text) == java


@settings(max_examples=300, deadline=None)
@given(st.floats(allow_nan=False, allow_infinity=False))
def test_java_double_text_reads_back_as_the_same_double(value: float) -> None:
    text = java_double_text(repr(value))
    assert float(text) == value
    mantissa = text.split("E")[0]
    assert "." in mantissa
    assert not mantissa.endswith(".")
    if "E" in text:
        assert 1 <= abs(float(mantissa)) < 10
    else:
        assert value == 0 or 1e-3 <= abs(value) < 1e7
