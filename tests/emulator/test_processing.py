"""Record processing: outcomes, Salesforce's error texts, result layouts, job failures, speed, restarts."""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path

import httpx
import pytest

from airflow_provider_salesforce_bulk.emulator.server import RunningEmulator, run_emulator

from .helpers import API, create_job, run_job, start_job, wait_done


def _rows(text: str, delimiter: str = ",") -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter))


def test_insert_results_have_the_exact_layout(emulator: RunningEmulator, api: httpx.Client) -> None:
    data = 'Name,NumberOfEmployees,Description\nGenePoint,800,"multi\nline, ""quoted"""\nBad,x,\n'
    info, results = run_job(api, data, object="Account", operation="insert")
    assert info["state"] == "JobComplete"
    assert (info["numberRecordsProcessed"], info["numberRecordsFailed"]) == (2, 1)
    stored = emulator.records("Account")
    assert len(stored) == 1
    record_id = stored[0]["Id"]
    assert results["successfulResults"] == (
        '"sf__Id","sf__Created",Name,NumberOfEmployees,Description\n'
        f'"{record_id}","true","GenePoint","800","multi\nline, ""quoted"""\n'
    )
    assert results["failedResults"] == (
        '"sf__Id","sf__Error",Name,NumberOfEmployees,Description\n'
        '"","INVALID_FIELD:Failed to deserialize field at col 1. '
        "Due to, 'x' is not a valid value for the type "
        'xsd:double:NumberOfEmployees --","Bad","x",""\n'
    )
    assert results["unprocessedrecords"] == "Name,NumberOfEmployees,Description\n"
    assert stored[0]["Description"] == 'multi\nline, "quoted"'
    assert stored[0]["NumberOfEmployees"] == 800


def test_record_errors_use_salesforce_codes(emulator: RunningEmulator, api: httpx.Client) -> None:
    run_job(api, "Name,External_Id__c\nParent,ACC-1\n", object="Account", operation="insert")
    data = (
        "Name,StageName,CloseDate,Amount,IsPrivate,External_Id__c,Account.External_Id__c\n"
        "ok,Prospecting,2024-01-31,10.5,true,O-1,ACC-1\n"
        ",Prospecting,2024-01-31,1,false,O-2,\n"
        f"{'x' * 121},Prospecting,2024-01-31,1,false,O-3,\n"
        "picklist,Dreaming,2024-01-31,1,false,O-4,\n"
        "date,Prospecting,2024-02-30,1,false,O-5,\n"
        "bool,Prospecting,2024-01-31,1,maybe,O-6,\n"
        "dup,Prospecting,2024-01-31,1,false,O-1,\n"
        "fk,Prospecting,2024-01-31,1,false,O-7,ACC-404\n"
    )
    info, results = run_job(api, data, object="Opportunity", operation="insert")
    errors = {row["Name"][:8]: row["sf__Error"] for row in _rows(results["failedResults"])}
    assert info["numberRecordsFailed"] == 7
    assert errors[""] == "REQUIRED_FIELD_MISSING:Required fields are missing: [Name]:Name --"
    assert errors["x" * 8].startswith("STRING_TOO_LONG:Name: data value too large:")
    assert errors["picklist"] == (
        "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST:StageName: "
        "bad value for restricted picklist field: Dreaming:"
        "StageName --"
    )
    assert "xsd:date:CloseDate --" in errors["date"]
    assert "xsd:boolean:IsPrivate --" in errors["bool"]
    assert errors["dup"].startswith("DUPLICATE_VALUE:duplicate value found: External_Id__c")
    assert errors["fk"] == (
        "INVALID_FIELD:Foreign key external ID: ACC-404 "
        "not found for field External_Id__c in entity Account:--"
    )
    account = emulator.records("Account")[0]
    opportunity = emulator.records("Opportunity")[0]
    assert opportunity["AccountId"] == account["Id"]
    assert opportunity["Amount"] == 10.5
    assert opportunity["IsPrivate"] is True


def test_upsert_update_and_nulls(emulator: RunningEmulator, api: httpx.Client) -> None:
    spec = {"object": "Contact", "operation": "upsert", "externalIdFieldName": "External_Id__c"}
    run_job(api, "LastName,Email,Title,External_Id__c\nOne,one@example.com,CEO,C-1\n", **spec)
    _, results = run_job(api, "LastName,Email,Title,External_Id__c\n,,#N/A,C-1\nTwo,,,C-2\n", **spec)
    created = {row["External_Id__c"]: row["sf__Created"] for row in _rows(results["successfulResults"])}
    assert created == {"C-1": "false", "C-2": "true"}
    by_ext = {r["External_Id__c"]: r for r in emulator.records("Contact")}
    # An empty value leaves the field alone on update; #N/A clears it.
    assert by_ext["C-1"]["LastName"] == "One"
    assert by_ext["C-1"]["Email"] == "one@example.com"
    assert by_ext["C-1"]["Title"] is None
    assert by_ext["C-2"]["HasOptedOutOfEmail"] is False  # default of a new record
    record_id = by_ext["C-1"]["Id"]
    _, results = run_job(
        api,
        f"Id,LastName\n{record_id},Renamed\n{record_id[:15]},Again\n001000000000000AAA,X\ngarbage,Y\n",
        object="Contact",
        operation="update",
    )
    errors = [row["sf__Error"] for row in _rows(results["failedResults"])]
    assert errors[0] == f"DUPLICATE_VALUE:Duplicate id in list: {record_id}:--"
    assert errors[1].startswith("MALFORMED_ID:Contact ID: id value of incorrect type")
    assert errors[2].startswith("MALFORMED_ID:")
    assert {r["Id"]: r["LastName"] for r in emulator.records("Contact")}[record_id] == "Renamed"
    required = run_job(api, f"Id,LastName\n{record_id},#N/A\n", object="Contact", operation="update")[1]
    assert "REQUIRED_FIELD_MISSING" in required["failedResults"]


def test_no_record_and_deleted_record_read_alike_on_every_path(
    emulator: RunningEmulator, api: httpx.Client
) -> None:
    """Ids naming no record or a deleted one (as reference, update or upsert key); a nulled required field."""
    run_job(api, "Name\nLive\nGone\n", object="Account", operation="insert")
    live, gone = (r["Id"] for r in emulator.records("Account"))
    run_job(api, f"Id\n{gone}\n", object="Account", operation="delete")
    run_job(api, "LastName\nKept\n", object="Contact", operation="insert")
    contact = emulator.records("Contact")[0]["Id"]
    run_job(api, "LastName\nDeleted\n", object="Contact", operation="insert")
    deleted = next(r["Id"] for r in emulator.records("Contact") if r["Id"] != contact)
    run_job(api, f"Id\n{deleted}\n", object="Contact", operation="delete")
    absent_account, absent_contact = "001000000000999AAA", "003000000000999AAA"

    def errors(data: str, operation: str, **spec: str) -> dict[str, str]:
        info, results = run_job(api, data, object="Contact", operation=operation, **spec)
        assert info["state"] == "JobComplete"
        return {row["LastName"]: row["sf__Error"] for row in _rows(results["failedResults"])}

    invalid_id = "INVALID_CROSS_REFERENCE_KEY:invalid cross reference id:"
    is_deleted = "ENTITY_IS_DELETED:entity is deleted:--"
    references = errors(f"LastName,AccountId\nabsent,{absent_account}\ngone,{gone}\nok,{live}\n", "insert")
    assert references == {"absent": invalid_id + "AccountId --", "gone": is_deleted}
    updates = errors(f"Id,LastName\n{absent_contact},absent\n{deleted},gone\n{contact},#N/A\n", "update")
    required = "REQUIRED_FIELD_MISSING:Required fields are missing: [LastName]:LastName --"
    assert updates == {"absent": invalid_id + "--", "gone": is_deleted, "#N/A": required}
    upserts = errors(
        f"Id,LastName\n{absent_contact},absent\n{deleted},gone\n{contact},#N/A\n",
        "upsert",
        externalIdFieldName="Id",
    )
    assert upserts == {"absent": invalid_id + "--", "gone": is_deleted, "#N/A": required}
    assert [r["LastName"] for r in emulator.records("Contact")] == ["Kept", "ok"]


def test_delete_and_hard_delete(emulator: RunningEmulator, api: httpx.Client) -> None:
    run_job(api, "Name\nA\nB\n", object="Account", operation="insert")
    a, b = (r["Id"] for r in emulator.records("Account"))
    _info, results = run_job(api, f"Id\n{a}\n", object="Account", operation="delete")
    assert _rows(results["successfulResults"]) == [{"sf__Id": a, "sf__Created": "false", "Id": a}]
    again = run_job(api, f"Id\n{a}\n0015e0000000zzzAAA\n", object="Account", operation="delete")[1]
    errors = [row["sf__Error"] for row in _rows(again["failedResults"])]
    assert errors[0] == "ENTITY_IS_DELETED:entity is deleted:--"
    assert errors[1].startswith("INVALID_CROSS_REFERENCE_KEY:") or errors[1].startswith("MALFORMED_ID:")
    assert [r["Id"] for r in emulator.records("Account")] == [b]
    assert len(emulator.records("Account", include_deleted=True)) == 2
    run_job(api, f"Id\n{a}\n{b}\n", object="Account", operation="hardDelete")
    assert emulator.records("Account", include_deleted=True) == []


def test_unknown_column_fails_the_job(emulator: RunningEmulator, api: httpx.Client) -> None:
    info, results = run_job(api, "Name,StageName_x\nA,B\n", object="Opportunity", operation="insert")
    assert info["state"] == "Failed"
    assert info["errorMessage"] == "InvalidBatch : Field name not found : StageName_x"
    assert (info["numberRecordsProcessed"], info["numberRecordsFailed"]) == (0, 0)
    assert results["unprocessedrecords"] == 'Name,StageName_x\n"A","B"\n'
    assert emulator.records("Opportunity") == []


def test_line_ending_must_match_the_job(api: httpx.Client) -> None:
    info, _ = run_job(api, "Name\nA\n", object="Account", operation="insert", lineEnding="CRLF")
    assert info["state"] == "Failed"
    assert info["errorMessage"] == (
        "ClientInputError : LineEnding is invalid on user data. Current LineEnding setting is CRLF"
    )


def test_results_use_the_job_delimiter_and_line_ending(api: httpx.Client) -> None:
    data = "Name|Phone\r\nA|1\r\n"
    info, results = run_job(
        api, data, object="Account", operation="insert", columnDelimiter="PIPE", lineEnding="CRLF"
    )
    assert info["state"] == "JobComplete"
    header, row, end = results["successfulResults"].split("\r\n")
    assert header == '"sf__Id"|"sf__Created"|Name|Phone'
    assert row.endswith('|"true"|"A"|"1"')
    assert end == ""


def test_unprocessed_records_of_an_aborted_job(emulator: RunningEmulator, api: httpx.Client) -> None:
    emulator.update_settings(records_per_second=50)
    body = "Name\n" + "".join(f"A{n}\n" for n in range(200))
    job = start_job(api, body, object="Account", operation="insert")
    deadline = time.monotonic() + 5
    info = api.get(f"/jobs/ingest/{job['id']}").json()
    while info["numberRecordsProcessed"] == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
        info = api.get(f"/jobs/ingest/{job['id']}").json()
    assert info["state"] == "InProgress"
    assert info["totalProcessingTime"] == 0
    aborted = api.patch(f"/jobs/ingest/{job['id']}", json={"state": "Aborted"})
    assert aborted.status_code == 200
    info = wait_done(api, job["id"])
    processed = info["numberRecordsProcessed"]
    assert 0 < processed < 200
    for kind in ("unprocessedrecords", "unprocessedRecords"):
        unprocessed = _rows(api.get(f"/jobs/ingest/{job['id']}/{kind}").text)
        assert len(unprocessed) == 200 - processed
    assert len(_rows(api.get(f"/jobs/ingest/{job['id']}/successfulResults").text)) == processed
    time.sleep(0.1)
    assert len(emulator.records("Account")) == processed


def test_state_survives_a_restart(tmp_path: Path) -> None:
    db = str(tmp_path / "org.sqlite3")
    with run_emulator(db=db) as first:
        token = first.new_access_token()
        with httpx.Client(base_url=first.base_url + API, headers={"Authorization": f"Bearer {token}"}) as api:
            info, _ = run_job(api, "Name\nKept\n", object="Account", operation="insert")
            open_job = create_job(api, object="Account", operation="insert")
            api.put(
                f"/jobs/ingest/{open_job['id']}/batches",
                content=b"Name\nLater\n",
                headers={"Content-Type": "text/csv"},
            )
    with run_emulator(db=db) as second:
        assert [r["Name"] for r in second.records("Account")] == ["Kept"]
        with httpx.Client(
            base_url=second.base_url + API, headers={"Authorization": f"Bearer {token}"}
        ) as api:
            assert api.get(f"/jobs/ingest/{info['id']}").json()["state"] == "JobComplete"
            api.patch(f"/jobs/ingest/{open_job['id']}", json={"state": "UploadComplete"})
            assert wait_done(api, open_job["id"])["state"] == "JobComplete"
        assert sorted(r["Name"] for r in second.records("Account")) == ["Kept", "Later"]
        assert len({r["Id"] for r in second.records("Account")}) == 2


def test_malformed_csv_fails_the_job(api: httpx.Client) -> None:
    info, _ = run_job(api, 'Name,Phone\n"unterminated,1\n', object="Account", operation="insert")
    assert info["state"] == "Failed"
    assert info["errorMessage"].startswith("ClientInputError")
    bad_quote, _ = run_job(api, 'Name,Phone\n"A"x,1\n', object="Account", operation="insert")
    assert bad_quote["state"] == "Failed"


def test_a_number_outside_the_field_range_fails_the_record_not_the_job(
    emulator: RunningEmulator, api: httpx.Client
) -> None:
    # An integer beyond 64 bits used to reach the database and leave the job InProgress forever.
    huge = str(2**70)
    data = (
        f"Name,NumberOfEmployees,AnnualRevenue\nbig,{huge},1\nrevenue,5,1e30\nnegative,-{huge},1\nok,7,2.5\n"
    )
    info, results = run_job(api, data, object="Account", operation="insert")
    assert info["state"] == "JobComplete"
    assert (info["numberRecordsProcessed"], info["numberRecordsFailed"]) == (4, 3)
    errors = {row["Name"]: row["sf__Error"] for row in _rows(results["failedResults"])}
    assert errors["big"] == (
        "NUMBER_OUTSIDE_VALID_RANGE:NumberOfEmployees: value outside of valid range on numeric field: "
        f"{huge}:NumberOfEmployees --"
    )
    assert errors["revenue"].startswith("NUMBER_OUTSIDE_VALID_RANGE:AnnualRevenue:")
    assert errors["negative"].endswith(":NumberOfEmployees --")
    assert [r["Name"] for r in emulator.records("Account")] == ["ok"]
    # The largest value an 18-digit field holds is still stored.
    largest = f"Name,NumberOfEmployees\nmax,{10**18 - 1}\n"
    info, _ = run_job(api, largest, object="Account", operation="insert")
    assert (info["numberRecordsProcessed"], info["numberRecordsFailed"]) == (1, 0)


def test_a_job_whose_processing_breaks_ends_failed_instead_of_staying_in_progress(
    emulator: RunningEmulator, api: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow_provider_salesforce_bulk.emulator import slice_processing

    def broken(self: object, *args: object) -> None:
        raise RuntimeError("a bug in the worker")

    # Any unexpected error in the worker thread (a bug, a value the store cannot hold) stands for one here.
    monkeypatch.setattr(slice_processing.SliceProcessor, "process", broken)
    job = start_job(api, "Name\nx\n", object="Account", operation="insert")
    info = wait_done(api, job["id"])
    assert info["state"] == "Failed"
    assert info["errorMessage"].startswith("UNKNOWN_EXCEPTION : An unexpected error occurred")
    monkeypatch.undo()
    # The worker goes on with the next job.
    info, _ = run_job(api, "Name\ny\n", object="Account", operation="insert")
    assert info["state"] == "JobComplete"
