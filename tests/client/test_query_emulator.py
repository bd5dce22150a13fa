"""BulkQueryClient against the emulator over a real socket: records loaded by the ingest client come
back exactly (as CSV pages and as typed Parquet), through dropped connections, deleted records
with queryAll, relationship columns typed by describe, and Salesforce's query errors."""

from __future__ import annotations

import csv
import datetime
import io
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_salesforce_bulk.client import (
    BulkIngestClient,
    BulkQueryClient,
    PollPolicy,
    QueryError,
    RetryPolicy,
    SalesforceSession,
)
from airflow_provider_salesforce_bulk.client.describe import describe_sobject
from airflow_provider_salesforce_bulk.client.query_parquet import copy_results_to_parquet
from airflow_provider_salesforce_bulk.emulator.server import RunningEmulator
from tests.client import helpers

FAST_RETRY = RetryPolicy(max_attempts=10, initial_delay=0.01, max_delay=0.05, max_total=60)
POLL = PollPolicy(initial=0.02, maximum=0.1)
SOQL = (
    "SELECT Id, External_Id__c, Name, NumberOfEmployees, AnnualRevenue, Description "
    "FROM Account ORDER BY External_Id__c"
)


@pytest.fixture
def pq() -> Any:
    """pyarrow.parquet; only the tests of typed output need it."""
    return pytest.importorskip("pyarrow.parquet")


@pytest.fixture(autouse=True)
def clean(emulator: RunningEmulator) -> Iterator[None]:
    emulator.reset()
    yield
    emulator.update_settings(drop_rate=0.0, error_503_rate=0.0)


def session_for(emulator: RunningEmulator, api_version: str = "60.0") -> SalesforceSession:
    return helpers.emulator_session(emulator, retry_policy=FAST_RETRY, api_version=api_version)


def accounts(n: int) -> list[dict[str, Any]]:
    out = []
    for i in range(n):
        record: dict[str, Any] = {"External_Id__c": f"ACC-{i:04d}", "Name": f"Account {i}"}
        if i % 3:
            record["NumberOfEmployees"] = i * 7
            record["AnnualRevenue"] = i * 1000.25
        if i % 4 == 0:
            record["Description"] = f'line one, "quoted" {i}\nline two é 中文 \U0001f600'
        out.append(record)
    return out


async def load(session: SalesforceSession, sobject: str, records: list[dict[str, Any]]) -> None:
    ingest = BulkIngestClient(session)
    async for result in ingest.perform_operation("insert", sobject, records, polling_interval=0.05):
        assert result.job_info.state == "JobComplete"
        assert result.job_info.number_records_failed == 0


def expected_csv_rows(records: list[dict[str, Any]]) -> list[dict[str, str]]:
    """What Salesforce writes for each record (without Id): ints plain, doubles as Java prints them."""
    rows = []
    for record in records:
        employees = record.get("NumberOfEmployees")
        revenue = record.get("AnnualRevenue")
        rows.append(
            {
                "External_Id__c": record["External_Id__c"],
                "Name": record["Name"],
                "NumberOfEmployees": "" if employees is None else str(employees),
                "AnnualRevenue": "" if revenue is None else repr(float(revenue)),
                "Description": record.get("Description", ""),
            }
        )
    return rows


def read_csv_files(paths: list[Path]) -> list[dict[str, str]]:
    rows: list[dict[str, str]] = []
    for path in paths:
        rows.extend(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"), newline="")))
    return rows


async def test_records_come_back_exactly_as_csv_pages(emulator, tmp_path):
    records = accounts(53)
    async with session_for(emulator) as session:
        await load(session, "Account", records)
        client = BulkQueryClient(session)
        job = await client.run_query(SOQL, poll=POLL, timeout=60)
        assert job.number_records_processed == 53
        summaries = await client.copy_results_to(
            job.id, lambda page: (tmp_path / f"part-{page.number:03d}.csv").open("wb"), max_records=10
        )
    assert [s.records for s in summaries] == [10, 10, 10, 10, 10, 3]
    files = sorted(tmp_path.glob("part-*.csv"))
    assert len(files) == 6
    rows = read_csv_files(files)
    assert all(row.pop("Id").startswith("001") for row in rows)
    assert rows == expected_csv_rows(records)


async def test_every_record_arrives_once_through_dropped_connections(emulator, tmp_path, caplog, pq):
    caplog.set_level(logging.INFO, logger="airflow_provider_salesforce_bulk.client")
    records = accounts(40)
    async with session_for(emulator) as session:
        await load(session, "Account", records)
        client = BulkQueryClient(session, page_refetches=10)
        job = await client.run_query(SOQL, poll=POLL, timeout=60)
        emulator.update_settings(drop_rate=0.35, seed=7)
        summaries = await client.copy_results_to(
            job.id,
            lambda page: (tmp_path / f"part-{page.number:03d}.csv").open("wb"),
            max_records=2,
            concurrency=3,
        )
        typed = await copy_results_to_parquet(
            client,
            job.id,
            lambda page: (tmp_path / f"part-{page.number:03d}.parquet").open("wb"),
            max_records=3,
            concurrency=3,
        )
        emulator.update_settings(drop_rate=0.0)
    assert sum(s.records for s in summaries) == 40
    assert "fetching it again" in caplog.text  # some pages did break mid-body
    rows = read_csv_files(sorted(tmp_path.glob("part-*.csv")))
    assert [row.pop("Id")[:3] for row in rows] == ["001"] * 40
    assert rows == expected_csv_rows(records)
    assert [s.records for s in typed] == [3] * 13 + [1]
    parquet_rows = [r for p in sorted(tmp_path.glob("part-*.parquet")) for r in pq.read_table(p).to_pylist()]
    assert [r["External_Id__c"] for r in parquet_rows] == [r["External_Id__c"] for r in records]
    assert [r["Description"] for r in parquet_rows] == [r.get("Description") for r in records]


async def test_typed_parquet_pages_hold_the_loaded_values(emulator, tmp_path, pq):
    records = accounts(25)
    async with session_for(emulator) as session:
        await load(session, "Account", records)
        client = BulkQueryClient(session)
        job = await client.run_query(SOQL, poll=POLL, timeout=60)
        summaries = await copy_results_to_parquet(
            client,
            job.id,
            lambda page: (tmp_path / f"part-{page.number:03d}.parquet").open("wb"),
            max_records=10,
        )
    assert [s.records for s in summaries] == [10, 10, 5]
    tables = [pq.read_table(p) for p in sorted(tmp_path.glob("*.parquet"))]
    assert [str(t) for t in tables[0].schema.types] == [
        "string",
        "string",
        "string",
        "int64",
        "double",
        "string",
    ]
    rows = [row for table in tables for row in table.to_pylist()]
    for row, record in zip(rows, records, strict=True):
        assert row.pop("Id").startswith("001")
        assert row == {
            "External_Id__c": record["External_Id__c"],
            "Name": record["Name"],
            "NumberOfEmployees": record.get("NumberOfEmployees"),
            "AnnualRevenue": record.get("AnnualRevenue"),
            "Description": record.get("Description"),
        }


async def test_relationship_columns_dates_and_booleans_are_typed_through_describe(emulator, tmp_path, pq):
    async with session_for(emulator) as session:
        await load(session, "Account", [{"External_Id__c": "A-1", "Name": "Parent Co"}])
        client = BulkQueryClient(session)
        job = await client.run_query("SELECT Id FROM Account", poll=POLL, timeout=60)
        rows = []
        async for page in client.iter_result_pages(job.id):
            rows.append(b"".join([chunk async for chunk in page.iter_bytes()]))
        account_id = rows[0].splitlines()[1].strip(b'"').decode()
        contacts = [
            {
                "LastName": "Doe",
                "Birthdate": "1990-04-05",
                "HasOptedOutOfEmail": True,
                "AccountId": account_id,
            },
            {"LastName": "Roe", "HasOptedOutOfEmail": False},
        ]
        await load(session, "Contact", contacts)
        job = await client.run_query(
            "SELECT LastName, Birthdate, HasOptedOutOfEmail, Account.Name, CreatedDate FROM Contact "
            "ORDER BY LastName",
            poll=POLL,
            timeout=60,
        )
        await copy_results_to_parquet(client, job.id, lambda page: (tmp_path / "c.parquet").open("wb"))
        describe = await describe_sobject(session, "Contact")
    assert describe.field("birthdate") is not None
    table = pq.read_table(tmp_path / "c.parquet")
    assert [str(t) for t in table.schema.types] == [
        "string",
        "date32[day]",
        "bool",
        "string",
        "timestamp[ms, tz=UTC]",
    ]
    out = table.to_pylist()
    created = [row.pop("CreatedDate") for row in out]
    assert all(c.tzinfo is not None and c.year >= 2024 for c in created)
    assert out == [
        {
            "LastName": "Doe",
            "Birthdate": datetime.date(1990, 4, 5),
            "HasOptedOutOfEmail": True,
            "Account.Name": "Parent Co",
        },
        {"LastName": "Roe", "Birthdate": None, "HasOptedOutOfEmail": False, "Account.Name": None},
    ]


async def test_query_all_includes_deleted_records(emulator):
    async with session_for(emulator) as session:
        await load(session, "Account", accounts(6))
        client = BulkQueryClient(session)
        job = await client.run_query("SELECT Id FROM Account ORDER BY External_Id__c", poll=POLL, timeout=60)
        ids = []
        async for page in client.iter_result_pages(job.id):
            body = b"".join([chunk async for chunk in page.iter_bytes()])
            ids += [line.strip(b'"').decode() for line in body.splitlines()[1:]]
        ingest = BulkIngestClient(session)
        async for result in ingest.perform_operation(
            "delete", "Account", [{"Id": i} for i in ids[:2]], polling_interval=0.05
        ):
            assert result.job_info.number_records_failed == 0
        live = await client.run_query("SELECT Id FROM Account", poll=POLL, timeout=60)
        every = await client.run_query(
            "SELECT Id, IsDeleted FROM Account", include_deleted=True, poll=POLL, timeout=60
        )
        assert (live.number_records_processed, every.number_records_processed) == (4, 6)
        assert every.operation == "queryAll"


async def test_results_are_read_with_the_jobs_api_version(emulator):
    async with session_for(emulator, "60.0") as session:
        await load(session, "Account", accounts(3))
        job = await BulkQueryClient(session).run_query(SOQL, poll=POLL, timeout=60)
    async with session_for(emulator, "62.0") as other:
        client = BulkQueryClient(other)
        counts = await client.for_each_result_page(job.id, _records)
    assert counts == [3]


async def _records(page: Any) -> int:
    async for _ in page.iter_bytes():
        pass
    return int(page.records)


async def test_a_bad_query_is_refused_with_salesforces_message(emulator):
    async with session_for(emulator) as session:
        client = BulkQueryClient(session)
        with pytest.raises(QueryError) as info:
            await client.create_job("SELECT Id, Nme FROM Account")
        assert info.value.error_code == "INVALID_FIELD"
        assert info.value.field == "Nme"
        assert (info.value.row, info.value.column) == (1, 12)
        with pytest.raises(QueryError) as info:
            await client.create_job("SELECT Id FROM Nope__c")
        assert info.value.error_code == "INVALID_TYPE"
        with pytest.raises(QueryError) as info:
            await client.create_job("SELECT Id FROM Account WHERE")
        assert info.value.error_code == "MALFORMED_QUERY"
        assert info.value.row == 1


@pytest.mark.parametrize(
    ("delimiter", "line_ending"), [("TAB", "CRLF"), ("PIPE", "LF"), ("SEMICOLON", "CRLF")]
)
async def test_the_jobs_delimiter_and_line_ending_are_honoured_end_to_end(
    emulator, tmp_path, delimiter, line_ending, pq
):
    records = [
        {"External_Id__c": "D-1", "Name": "tab\there | pipe; semi", "NumberOfEmployees": 3},
        {"External_Id__c": "D-2", "Name": "crlf\r\ninside", "AnnualRevenue": 2.5},
    ]
    async with session_for(emulator) as session:
        await load(session, "Account", records)
        client = BulkQueryClient(session)
        job = await client.run_query(
            "SELECT External_Id__c, Name, NumberOfEmployees, AnnualRevenue FROM Account "
            "ORDER BY External_Id__c",
            column_delimiter=delimiter,
            line_ending=line_ending,
            poll=POLL,
            timeout=60,
        )
        assert (job.column_delimiter, job.line_ending) == (delimiter, line_ending)
        await copy_results_to_parquet(client, job.id, lambda page: (tmp_path / "d.parquet").open("wb"))
    assert pq.read_table(tmp_path / "d.parquet").to_pylist() == [
        {
            "External_Id__c": "D-1",
            "Name": "tab\there | pipe; semi",
            "NumberOfEmployees": 3,
            "AnnualRevenue": None,
        },
        {"External_Id__c": "D-2", "Name": "crlf\r\ninside", "NumberOfEmployees": None, "AnnualRevenue": 2.5},
    ]


async def test_an_empty_result_is_one_empty_page(emulator, tmp_path, pq):
    async with session_for(emulator) as session:
        await load(session, "Account", accounts(2))
        client = BulkQueryClient(session)
        job = await client.run_query(
            "SELECT Id, Name FROM Account WHERE Name = 'none'", poll=POLL, timeout=60
        )
        assert job.number_records_processed == 0
        csv_pages = await client.copy_results_to(job.id, lambda page: (tmp_path / "e.csv").open("wb"))
        typed = await copy_results_to_parquet(
            client, job.id, lambda page: (tmp_path / "e.parquet").open("wb")
        )
    assert [s.records for s in csv_pages] == [0]
    assert [s.records for s in typed] == [0]
    assert (tmp_path / "e.csv").read_bytes() == b'"Id","Name"\n'
    table = pq.read_table(tmp_path / "e.parquet")  # the header alone: the columns, no rows
    assert (table.num_rows, table.schema.names) == (0, ["Id", "Name"])


async def test_iter_records_yields_every_record_as_salesforce_wrote_it(emulator):
    records = accounts(17)
    async with session_for(emulator) as session:
        await load(session, "Account", records)
        client = BulkQueryClient(session)
        job = await client.run_query(SOQL, poll=POLL, timeout=60)
        rows = [row async for row in client.iter_records(job, max_records=4)]
    assert all(row.pop("Id").startswith("001") for row in rows)
    assert rows == expected_csv_rows(records)
