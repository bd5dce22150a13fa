"""perform_operation: every record accounted for, bounded concurrency, failures reported, aborts on error."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io

import httpx
import pytest

from airflow_provider_salesforce_bulk.client import (
    BulkIngestClient,
    BulkJobFailedError,
    InputError,
    OperationTimeoutError,
    RetryPolicy,
    SalesforceSession,
    ServerError,
    StaticTokenAuth,
    TokenCache,
    UploadOutcomeUnknownError,
)
from tests.client.fake_bulk import INSTANCE, FakeBulkApi

FAST_POLL = 0.001


@pytest.fixture
def api() -> FakeBulkApi:
    return FakeBulkApi()


@pytest.fixture
async def client(api: FakeBulkApi):
    session = SalesforceSession(
        StaticTokenAuth("fixed-token", INSTANCE),
        transport=api.transport(),
        token_cache=TokenCache(),
        retry_policy=RetryPolicy(max_attempts=3, initial_delay=0.001, max_delay=0.001),
    )
    async with session:
        yield BulkIngestClient(session)


def records(n: int, fail_every: int = 0):
    for i in range(n):
        name = f"FAIL {i}" if fail_every and i % fail_every == 0 else f"Name {i}"
        yield {"Name": name, "Description": f'line one\nline "two" {i}'}


async def collect(gen):
    return [r async for r in gen]


async def test_every_record_lands_in_exactly_one_job(client, api):
    results = await collect(
        client.perform_operation(
            "insert",
            "Account",
            records(95, fail_every=10),
            fieldnames=["Name", "Description"],
            max_records=10,
            polling_interval=FAST_POLL,
            max_concurrent_jobs=3,
        )
    )
    assert len(results) == 10
    ranges = sorted((r.first_record_index, r.record_count) for r in results)
    covered = [i for start, count in ranges for i in range(start, start + count)]
    assert covered == list(range(95))
    assert sum(r.number_records_succeeded for r in results) == 95 - 10
    assert sum(r.number_records_failed for r in results) == 10
    assert all(r.number_records_unprocessed == 0 for r in results)
    # The records Salesforce received, in order, are exactly the input.
    received = []
    for result in sorted(results, key=lambda r: r.first_record_index):
        rows = list(csv.reader(io.StringIO(api.jobs[result.job_id].data.decode(), newline="")))
        assert rows[0] == ["Name", "Description"]
        assert len(rows) - 1 == result.record_count
        received += [dict(zip(rows[0], row, strict=True)) for row in rows[1:]]
    assert received == list(records(95, fail_every=10))
    # Results are streamed per job and match the job's own records.
    first = min(results, key=lambda r: r.first_record_index)
    failed = await collect(first.iter_failed_results())
    ok = await collect(first.iter_successful_results())
    assert [f["Name"] for f in failed] == ["FAIL 0"]
    assert [o["Name"] for o in ok] == [f"Name {i}" for i in range(1, 10)]
    assert ok[0]["Description"] == 'line one\nline "two" 1'


async def test_concurrent_jobs_are_bounded(client, api):
    api.polls_until_done = 3
    await collect(
        client.perform_operation(
            "insert",
            "Account",
            records(60),
            fieldnames=["Name", "Description"],
            max_records=5,
            polling_interval=FAST_POLL,
            max_concurrent_jobs=2,
        )
    )
    assert len(api.jobs) == 12
    assert api.max_open_jobs_seen <= 2


async def test_empty_input_creates_no_job(client, api):
    assert await collect(client.perform_operation("insert", "Account", iter(()), fieldnames=["Name"])) == []
    assert await collect(client.perform_operation("insert", "Account", [])) == []
    assert api.requests == []


@pytest.mark.parametrize(
    ("operation", "kwargs", "field"),
    [
        ("merge", {}, "operation"),
        ("upsert", {}, "external_id_field"),
        ("delete", {"fieldnames": ["Id", "Name"]}, None),
        ("insert", {"max_concurrent_jobs": 0}, "max_concurrent_jobs"),
    ],
)
async def test_bad_input_fails_before_any_job(client, api, operation, kwargs, field):
    with pytest.raises(InputError) as info:
        await collect(client.perform_operation(operation, "Account", [{"Id": "001", "Name": "x"}], **kwargs))
    if field:
        assert info.value.field == field
    assert api.requests == []


async def test_delete_with_other_columns_is_refused_when_fieldnames_are_inferred(client, api):
    with pytest.raises(InputError, match="Id"):
        await collect(client.perform_operation("delete", "Account", [{"Id": "001", "Name": "x"}]))
    assert api.requests == []


async def test_bad_record_in_first_chunk_fails_before_any_job(client, api):
    data = [{"Name": "ok"}, {"Name": "ok"}, {"Name": object()}]
    with pytest.raises(InputError) as info:
        await collect(client.perform_operation("insert", "Account", data, fieldnames=["Name"]))
    assert info.value.record_index == 2
    assert api.requests == []


async def test_failed_job_is_reported_with_its_error_message(client, api):
    api.fail_job_with = "InvalidBatch : Field name not found : Nope"
    results = await collect(
        client.perform_operation(
            "insert", "Account", records(5), fieldnames=["Name", "Description"], polling_interval=FAST_POLL
        )
    )
    (result,) = results
    assert result.job_info.state == "Failed"
    assert result.job_info.error_message == "InvalidBatch : Field name not found : Nope"
    assert result.number_records_unprocessed == 5
    assert not result.is_success


async def test_failed_job_can_raise(client, api):
    api.fail_job_with = "InvalidBatch : Field name not found : Nope"
    with pytest.raises(BulkJobFailedError, match="Field name not found") as info:
        await collect(
            client.perform_operation(
                "insert",
                "Account",
                records(5),
                fieldnames=["Name", "Description"],
                polling_interval=FAST_POLL,
                raise_on_failed_job=True,
            )
        )
    assert info.value.state == "Failed"


async def test_lost_upload_answer_sends_the_chunk_to_a_fresh_job_and_aborts_the_old(client, api):
    dropped: list[str] = []

    def drop_first_put(request):
        if request.method == "PUT" and not dropped:
            dropped.append(request.url.path.split("/")[-2])
            raise httpx.ReadTimeout("no answer")
        return None

    api.intercept = drop_first_put
    results = await collect(
        client.perform_operation(
            "insert", "Account", records(3), fieldnames=["Name", "Description"], polling_interval=FAST_POLL
        )
    )
    (result,) = results
    assert result.replaced_job_ids == (dropped[0],)
    assert api.jobs[dropped[0]].state == "Aborted"
    assert api.jobs[dropped[0]].data is None  # the lost upload never reached it here ...
    assert result.job_id != dropped[0]
    puts = [r for r in api.requests if r.method == "PUT"]
    assert [p.url.path.split("/")[-2] for p in puts] == [
        dropped[0],
        result.job_id,
    ]  # ... and was never resent to it
    assert result.number_records_succeeded == 3


async def test_upload_that_keeps_failing_gives_up_and_aborts(client, api):
    def always_drop(request):
        if request.method == "PUT":
            raise httpx.ReadTimeout("no answer")
        return None

    api.intercept = always_drop
    with pytest.raises(UploadOutcomeUnknownError):
        await collect(
            client.perform_operation(
                "insert", "Account", records(3), fieldnames=["Name", "Description"], max_upload_attempts=2
            )
        )
    assert len(api.jobs) == 2
    assert all(job.state == "Aborted" for job in api.jobs.values())


async def test_error_in_one_job_aborts_the_unfinished_others(client, api):
    api.polls_until_done = 10**6

    def fail_third_create(request):
        if request.method == "POST" and len(api.jobs) == 2:
            return httpx.Response(500, json=[{"errorCode": "UNKNOWN_EXCEPTION", "message": "boom"}])
        return None

    api.intercept = fail_third_create
    with pytest.raises(ServerError, match="boom"):
        await collect(
            client.perform_operation(
                "insert",
                "Account",
                records(30),
                fieldnames=["Name", "Description"],
                max_records=10,
                polling_interval=FAST_POLL,
            )
        )
    assert len(api.jobs) == 2
    assert all(job.state == "Aborted" for job in api.jobs.values())


async def test_overall_timeout_aborts_unfinished_jobs(client, api):
    api.polls_until_done = 10**6
    with pytest.raises(OperationTimeoutError):
        await collect(
            client.perform_operation(
                "insert",
                "Account",
                records(20),
                fieldnames=["Name", "Description"],
                max_records=10,
                polling_interval=0.01,
                timeout=0.2,
            )
        )
    assert len(api.jobs) == 2
    assert all(job.state == "Aborted" for job in api.jobs.values())


async def test_cancellation_aborts_unfinished_jobs(client, api):
    api.polls_until_done = 10**6
    task = asyncio.create_task(
        collect(
            client.perform_operation(
                "insert",
                "Account",
                records(20),
                fieldnames=["Name", "Description"],
                max_records=10,
                polling_interval=0.01,
            )
        )
    )
    for _ in range(200):
        await asyncio.sleep(0.01)
        if len(api.jobs) == 2 and all(j.state == "InProgress" for j in api.jobs.values()):
            break
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert len(api.jobs) == 2
    assert all(job.state == "Aborted" for job in api.jobs.values())


async def test_on_job_created_runs_before_the_upload(client, api):
    seen: list[tuple[str, int]] = []

    async def remember(job):
        seen.append((job.id, sum(1 for r in api.requests if r.method == "PUT")))

    results = await collect(
        client.perform_operation(
            "insert",
            "Account",
            records(20),
            fieldnames=["Name", "Description"],
            max_records=10,
            polling_interval=FAST_POLL,
            max_concurrent_jobs=1,
            on_job_created=remember,
        )
    )
    assert [job_id for job_id, _ in seen] == sorted(r.job_id for r in results)
    assert [puts for _, puts in seen] == [0, 1]


async def test_generator_input_is_consumed_lazily(client, api):
    pulled = 0

    def counting():
        nonlocal pulled
        for record in records(50):
            pulled += 1
            yield record

    gen = client.perform_operation(
        "insert",
        "Account",
        counting(),
        fieldnames=["Name", "Description"],
        max_records=10,
        polling_interval=FAST_POLL,
        max_concurrent_jobs=1,
    )
    first = await gen.__anext__()
    assert first.record_count == 10
    assert pulled <= 30  # a chunk per slot plus the one being read, not all 50
    await gen.aclose()


async def test_csv_file_is_loaded_through_the_split_fast_path(client, api, tmp_path):
    path = tmp_path / "accounts.csv"
    path.write_bytes(b'Name,Description\n"A, Inc.","two\nlines"\nFAIL b,x\nC,"say ""hi"""\n')
    results = await collect(
        client.perform_csv_operation(
            "insert", "Account", str(path), max_records=2, polling_interval=FAST_POLL
        )
    )
    assert sorted((r.first_record_index, r.record_count) for r in results) == [(0, 2), (2, 1)]
    assert sum(r.number_records_failed for r in results) == 1
    uploaded = [api.jobs[r.job_id].data for r in sorted(results, key=lambda r: r.first_record_index)]
    assert uploaded == [
        b'Name,Description\n"A, Inc.","two\nlines"\nFAIL b,x\n',
        b'Name,Description\nC,"say ""hi"""\n',
    ]


async def test_csv_file_for_delete_with_extra_columns_is_refused_before_any_job(client, api, tmp_path):
    path = tmp_path / "ids.csv"
    path.write_bytes(b"Id,Name\n001000000000001,x\n")
    with pytest.raises(InputError, match="Id"):
        await collect(client.perform_csv_operation("delete", "Account", str(path)))
    assert api.requests == []
