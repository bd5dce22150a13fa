"""Query answers as real orgs give them (issue 16 §6-7), each checked over a real socket.

Every expected text here comes from a public source named in docs/emulator.md ("Real answers matched").
"""

from __future__ import annotations

import datetime
import time

import httpx
import pytest

from airflow_provider_salesforce_bulk.emulator.ids import DEFAULT_USER_ID
from airflow_provider_salesforce_bulk.emulator.server import RunningEmulator

from .helpers import create_query, run_job, wait_query
from .test_query_api import all_pages, run_query

NOT_WRITABLE = (
    "INVALID_FIELD_FOR_INSERT_UPDATE:Unable to create/update fields: {0}. Please check the security settings "
    "of this field and verify that it is read/write for your role or profile.:{1} --"
)


def _contacts(api: httpx.Client) -> None:
    info, results = run_job(
        api,
        "FirstName,LastName,Email\nAda,Lovelace,ada@example.com\n,Hopper,\n",
        object="Contact",
        operation="insert",
    )
    assert info["numberRecordsFailed"] == 0, results["failedResults"]


def _header(api: httpx.Client, soql: str) -> str:
    job = create_query(api, soql)
    assert wait_query(api, job["id"])["state"] == "JobComplete"
    return all_pages(api, job["id"])[0].text.splitlines()[0]


def _refusal(api: httpx.Client, soql: str) -> tuple[int, dict[str, str]]:
    response = api.post("/jobs/query", json={"operation": "query", "query": soql})
    return response.status_code, response.json()[0]


def test_headers_spell_fields_as_the_org_does(api: httpx.Client) -> None:
    _contacts(api)
    assert _header(api, "select id, lastname, owner.name, createdby.username from contact") == (
        '"Id","LastName","Owner.Name","CreatedBy.Username"'
    )
    assert _header(api, "SELECT c.ACCOUNT.name, c.email FROM Contact c") == '"Account.Name","Email"'


def test_owner_and_audit_fields_are_set_by_the_org(api: httpx.Client, emulator: RunningEmulator) -> None:
    before = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=2)
    _contacts(api)
    rows = run_query(
        api,
        "SELECT Name, OwnerId, Owner.Name, CreatedById, CreatedBy.Name, LastModifiedById, "
        "LastModifiedBy.Alias, CreatedDate, LastModifiedDate, SystemModstamp, IsDeleted "
        "FROM Contact ORDER BY LastName",
    )
    assert [r["Name"] for r in rows] == ["Hopper", "Ada Lovelace"]  # a person's Name: "First Last"
    for row in rows:
        assert row["OwnerId"] == row["CreatedById"] == row["LastModifiedById"] == DEFAULT_USER_ID
        assert row["Owner.Name"] == row["CreatedBy.Name"] == "Integration User"
        assert row["LastModifiedBy.Alias"] == "integ"
        assert row["IsDeleted"] == "false"
        created = datetime.datetime.fromisoformat(row["CreatedDate"].replace("Z", "+00:00"))
        assert before <= created <= datetime.datetime.now(datetime.timezone.utc)
        assert row["CreatedDate"] == row["LastModifiedDate"] == row["SystemModstamp"]
    users = run_query(api, "SELECT Id, Username, Name, IsActive FROM User")
    assert users == [
        {
            "Id": DEFAULT_USER_ID,
            "Username": emulator.credentials.username,
            "Name": "Integration User",
            "IsActive": "true",
        }
    ]


def test_system_modstamp_moves_on_every_change_and_deletions_show_in_query_all(api: httpx.Client) -> None:
    _contacts(api)
    first = {r["Id"]: r for r in run_query(api, "SELECT Id, LastName, SystemModstamp FROM Contact")}
    ada = next(i for i, r in first.items() if r["LastName"] == "Lovelace")
    hopper = next(i for i in first if i != ada)
    time.sleep(0.01)  # stamps have millisecond precision
    run_job(api, f"Id,Title\n{ada},Countess\n", object="Contact", operation="update")
    time.sleep(0.01)
    run_job(api, f"Id\n{hopper}\n", object="Contact", operation="delete")
    after = {
        r["Id"]: r
        for r in run_query(api, "SELECT Id, SystemModstamp, IsDeleted FROM Contact", operation="queryAll")
    }
    assert after[ada]["SystemModstamp"] > first[ada]["SystemModstamp"]
    assert after[hopper]["SystemModstamp"] > first[hopper]["SystemModstamp"]
    assert (after[ada]["IsDeleted"], after[hopper]["IsDeleted"]) == ("false", "true")
    assert [r["Id"] for r in run_query(api, "SELECT Id FROM Contact")] == [ada]
    since = first[ada]["SystemModstamp"]
    soql = f"SELECT Id FROM Contact WHERE SystemModstamp > {since}"  # noqa: S608 - SOQL, not SQL
    changed = run_query(api, soql, operation="queryAll")
    assert sorted(r["Id"] for r in changed) == sorted([ada, hopper])


def test_ingest_refuses_values_for_fields_only_the_org_sets(api: httpx.Client) -> None:
    info, results = run_job(
        api,
        "LastName,CreatedDate,CreatedById,OwnerId\n"
        f"Kept,,,{DEFAULT_USER_ID}\n"
        "Dated,2020-01-01T00:00:00Z,,\n"
        f"Both,2020-01-01T00:00:00Z,{DEFAULT_USER_ID},\n",
        object="Contact",
        operation="insert",
    )
    assert (info["numberRecordsProcessed"], info["numberRecordsFailed"]) == (3, 2)
    failed = results["failedResults"].splitlines()
    assert (
        failed[1]
        == '"","'
        + NOT_WRITABLE.format("CreatedDate", "CreatedDate")
        + '","Dated","2020-01-01T00:00:00Z","",""'
    )
    assert NOT_WRITABLE.format("CreatedDate, CreatedById", "CreatedDate,CreatedById") in failed[2]
    info, results = run_job(api, "LastName,Name\nSolo,Someone Else\n", object="Contact", operation="insert")
    assert info["numberRecordsFailed"] == 1
    assert NOT_WRITABLE.format("Name", "Name") in results["failedResults"]
    rows = run_query(api, "SELECT Name, OwnerId, CreatedDate FROM Contact")
    assert [r["Name"] for r in rows] == ["Kept"]
    assert rows[0]["CreatedDate"] > "2020-01-02"


def test_owner_id_can_be_given_but_must_name_a_user(api: httpx.Client) -> None:
    info, results = run_job(
        api, "Name,OwnerId\nMine,\nTheirs,005000000000000AAA\n", object="Account", operation="insert"
    )
    assert info["numberRecordsFailed"] == 1
    assert "Theirs" in results["failedResults"]
    assert [r["OwnerId"] for r in run_query(api, "SELECT OwnerId FROM Account")] == [DEFAULT_USER_ID]


def test_describe_lists_the_owner_audit_and_compound_fields(api: httpx.Client) -> None:
    fields = {f["name"]: f for f in api.get("/sobjects/Contact/describe").json()["fields"]}
    tail = list(fields)[-5:]
    assert tail == ["CreatedDate", "CreatedById", "LastModifiedDate", "LastModifiedById", "SystemModstamp"]
    assert fields["OwnerId"]["referenceTo"] == ["User"]
    assert fields["OwnerId"]["updateable"] is True
    assert fields["CreatedById"]["relationshipName"] == "CreatedBy"
    assert fields["CreatedById"]["createable"] is fields["CreatedById"]["updateable"] is False
    assert fields["Name"]["createable"] is False
    assert fields["Name"]["type"] == "string"
    assert fields["MailingAddress"]["type"] == "address"
    assert fields["MailingAddress"]["soapType"] == "urn:address"
    assert api.get("/sobjects/User/describe").status_code == 200


@pytest.mark.parametrize(
    "soql",
    [
        "SELECT Id, MailingAddress FROM Contact",
        "SELECT BillingAddress FROM Account",
        "SELECT Account.ShippingAddress FROM Contact",
        "SELECT Id FROM Lead WHERE Address != null",
    ],
)
def test_compound_fields_are_refused(api: httpx.Client, soql: str) -> None:
    assert _refusal(api, soql) == (
        400,
        {"errorCode": "API_ERROR", "message": "Selecting compound data not supported in Bulk Query"},
    )


def test_fields_standard_expands_in_describe_order(api: httpx.Client) -> None:
    _contacts(api)
    header = _header(api, "SELECT FIELDS(STANDARD) FROM Contact").replace('"', "").split(",")
    described = [f["name"] for f in api.get("/sobjects/Contact/describe").json()["fields"]]
    standard = [n for n in described if not n.endswith("__c") and n not in ("MailingAddress", "OtherAddress")]
    assert header == standard
    assert "External_Id__c" not in header
    assert "Owner.Name" not in header
    custom = _header(api, "SELECT Id, FIELDS(CUSTOM) FROM Account LIMIT 200")
    assert custom == '"Id","External_Id__c"'


@pytest.mark.parametrize(
    ("soql", "code", "message"),
    [
        (
            "SELECT FIELDS(ALL) FROM Account",
            "MALFORMED_QUERY",
            "The SOQL FIELDS function must have a LIMIT of at most 200",
        ),
        (
            "SELECT FIELDS(CUSTOM) FROM Account LIMIT 201",
            "MALFORMED_QUERY",
            "The SOQL FIELDS function must have a LIMIT of at most 200",
        ),
        (
            "SELECT FIELDS(CUSTOM) FROM User LIMIT 200",
            "MALFORMED_QUERY",
            "'FIELDS(...)' expansion function must result in at least one field being selected.",
        ),
        ("SELECT Id, FIELDS(ALL) FROM User LIMIT 200", "INVALID_FIELD", "duplicate field selected: Id"),
        ("SELECT Name, account.NAME FROM Account", "INVALID_FIELD", "duplicate field selected: Name"),
        (
            "SELECT Id, (SELECT Id FROM Contacts) FROM Account",
            "API_ERROR",
            "Aggregate Relationships not supported in Bulk V2 Query with CSV content type",
        ),
    ],
)
def test_salesforce_texts_for_refused_queries(api: httpx.Client, soql: str, code: str, message: str) -> None:
    assert _refusal(api, soql) == (400, {"errorCode": code, "message": message})
    assert api.get("/jobs/query").json()["records"] == []


def test_abort_body_as_the_guide_shows_it(api: httpx.Client, emulator: RunningEmulator) -> None:
    _contacts(api)
    emulator.update_settings(records_per_second=1.0)  # two records: the scan lasts about two seconds
    job = create_query(api, "SELECT Id FROM Contact", lineEnding="CRLF", columnDelimiter="PIPE")
    aborted = api.patch(f"/jobs/query/{job['id']}", json={"state": "Aborted"})
    assert aborted.status_code == 200
    body = aborted.json()
    assert list(body) == [
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
    ]
    assert (body["state"], body["object"], body["apiVersion"]) == ("Aborted", "Contact", 62.0)


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/jobs/query//"), ("GET", "/jobs/query//{id}/results"), ("GET", "/jobs/query/{id}//results")],
)
def test_double_slash_paths_are_not_found(api: httpx.Client, method: str, path: str) -> None:
    job = create_query(api, "SELECT Id FROM Account")
    wait_query(api, job["id"])
    response = api.request(
        method, path.format(id=job["id"]), json={"operation": "query", "query": "SELECT Id FROM Account"}
    )
    assert response.status_code == 404
    assert response.json() == [{"errorCode": "NOT_FOUND", "message": "The requested resource does not exist"}]


def test_daily_query_job_limit(api: httpx.Client, emulator: RunningEmulator) -> None:
    emulator.update_settings(daily_bulk_query_jobs_max=3)

    def remaining() -> dict[str, int]:
        found: dict[str, int] = api.get("/limits").json()["DailyBulkV2QueryJobs"]
        return found

    assert remaining() == {"Max": 3, "Remaining": 3}
    assert _refusal(api, "SELECT Nope FROM Account")[1]["errorCode"] == "INVALID_FIELD"  # no job: not counted
    for n in range(3):
        create_query(api, "SELECT Id FROM Account")
        assert remaining() == {"Max": 3, "Remaining": 2 - n}
    for attempt in (4, 5):
        assert _refusal(api, "SELECT Id FROM Account") == (
            400,
            {
                "errorCode": "LIMIT_EXCEEDED",
                "message": f"Max bulk v2 query jobs (3) per 24 hrs has been reached ({attempt})",
            },
        )
    assert remaining() == {"Max": 3, "Remaining": 0}
    assert len(api.get("/jobs/query").json()["records"]) == 3
    emulator.update_settings(daily_bulk_query_jobs_max=10_000)
    create_query(api, "SELECT Id FROM Account")
