"""perform_operation and submit_job: every record accounted for, bounded concurrency, failures
reported with every job, and no job that may hold data ever aborted."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import math
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from airflow_provider_salesforce_bulk.client import (
    BulkIngestClient,
    BulkJobFailedError,
    BulkOperationError,
    BulkOperationTimeoutError,
    InputError,
    JobOutcomeUnknownError,
    JobSpec,
    OperationTimeoutError,
    PollPolicy,
    RetryPolicy,
    ServerError,
    UploadOutcomeUnknownError,
)
from airflow_provider_salesforce_bulk.client.operation import submit_job
from tests.client.fake_bulk import INSTANCE, FakeBulkApi, is_abort, is_close, job_id_of
from tests.client.helpers import mock_session

FAST_POLL = 0.001
INSERT_ACCOUNT = JobSpec(operation="insert", object="Account")


@pytest.fixture
def api() -> FakeBulkApi:
    return FakeBulkApi()


@pytest.fixture
async def client(api: FakeBulkApi):
    session = mock_session(
        "fixed-token",
        INSTANCE,
        transport=api.transport(),
        retry_policy=RetryPolicy(max_attempts=3, initial_delay=0.001, max_delay=0.001),
    )
    async with session:
        yield BulkIngestClient(session)


def insert_records(client: BulkIngestClient, n: int, fail_every: int = 0, **options: Any):
    """``perform_operation`` inserting :func:`records` as Accounts, polling fast."""
    options.setdefault("polling_interval", FAST_POLL)
    return client.perform_operation(
        "insert", "Account", records(n, fail_every), fieldnames=["Name", "Description"], **options
    )


def records(n: int, fail_every: int = 0):
    for i in range(n):
        name = f"FAIL {i}" if fail_every and i % fail_every == 0 else f"Name {i}"
        yield {"Name": name, "Description": f'line one\nline "two" {i}'}


async def collect(gen):
    return [r async for r in gen]


async def drain(gen, into: list) -> None:
    """Keep what is yielded before an error."""
    async for item in gen:
        into.append(item)


async def test_every_record_lands_in_exactly_one_job(client, api):
    results = await collect(insert_records(client, 95, fail_every=10, max_records=10, max_concurrent_jobs=3))
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


@pytest.mark.parametrize("csv_file", [False, True])
async def test_a_load_of_three_jobs_checks_its_job_options_once(client, api, monkeypatch, tmp_path, csv_file):
    checked: list[JobSpec] = []
    check = JobSpec.__post_init__

    def counted(spec: JobSpec) -> None:
        checked.append(spec)
        check(spec)

    monkeypatch.setattr(JobSpec, "__post_init__", counted)
    if csv_file:
        path = tmp_path / "accounts.csv"
        path.write_bytes(b"Name\n" + b"".join(b"A%d\n" % i for i in range(30)))
        load = client.perform_csv_operation(
            "insert", "Account", path, max_records=10, polling_interval=FAST_POLL
        )
    else:
        load = insert_records(client, 30, max_records=10)
    results = await collect(load)
    assert len(results) == len(api.jobs) == 3
    assert [spec.object for spec in checked] == ["Account"]


async def test_concurrent_jobs_are_bounded(client, api):
    api.polls_until_done = 3
    await collect(insert_records(client, 60, max_records=5, max_concurrent_jobs=2))
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
        ("insert", {"max_concurrent_jobs": 2.5}, "max_concurrent_jobs"),
        ("insert", {"timeout": math.nan}, "timeout"),
        ("insert", {"timeout": math.inf}, "timeout"),
        ("insert", {"timeout": -1}, "timeout"),
        ("insert", {"timeout": 0}, "timeout"),
        ("insert", {"timeout": None}, "timeout"),
        ("insert", {"polling_interval": math.nan}, "polling_interval"),
        ("insert", {"polling_interval": math.inf}, "polling_interval"),
        ("insert", {"polling_interval": 0}, "polling_interval"),
        ("insert", {"max_upload_attempts": 0}, "max_upload_attempts"),
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
    results = await collect(insert_records(client, 5))
    (result,) = results
    assert result.job_info.state == "Failed"
    assert result.job_info.error_message == "InvalidBatch : Field name not found : Nope"
    assert result.number_records_unprocessed == 5
    assert not result.is_success


async def test_failed_job_can_raise(client, api):
    api.fail_job_with = "InvalidBatch : Field name not found : Nope"
    with pytest.raises(BulkOperationError, match="Field name not found") as info:
        await collect(insert_records(client, 5, raise_on_failed_job=True))
    assert isinstance(info.value.__cause__, BulkJobFailedError)
    assert info.value.__cause__.state == "Failed"
    (report,) = info.value.jobs
    assert (report.status, report.job_info.state, report.yielded) == ("completed", "Failed", False)


async def test_lost_upload_answer_sends_the_chunk_to_a_fresh_job_and_aborts_the_old(client, api):
    dropped: list[str] = []

    def drop_first_put(request):
        if request.method == "PUT" and not dropped:
            dropped.append(request.url.path.split("/")[-2])
            raise httpx.ReadTimeout("no answer")
        return None

    api.intercept = drop_first_put
    results = await collect(insert_records(client, 3))
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


async def test_upload_that_keeps_failing_gives_up_and_aborts_the_never_closed_jobs(client, api):
    def always_drop(request):
        if request.method == "PUT":
            raise httpx.ReadTimeout("no answer")
        return None

    api.intercept = always_drop
    with pytest.raises(BulkOperationError) as info:
        await collect(
            client.perform_operation(
                "insert", "Account", records(3), fieldnames=["Name", "Description"], max_upload_attempts=2
            )
        )
    assert isinstance(info.value.__cause__, UploadOutcomeUnknownError)
    assert len(api.jobs) == 2
    assert all(job.state == "Aborted" for job in api.jobs.values())
    (report,) = info.value.jobs
    assert report.status == "not_loaded"
    assert {report.job_id, *report.replaced_job_ids} == set(api.jobs)
    assert info.value.first_unsent_record_index == 3


async def test_a_failure_starts_no_new_job_and_yields_every_job_under_way(client, api):
    api.polls_until_done = 3

    def fail_third_create(request):
        if request.method == "POST" and len(api.jobs) == 2:
            return httpx.Response(500, json=[{"errorCode": "UNKNOWN_EXCEPTION", "message": "boom"}])
        return None

    api.intercept = fail_third_create
    gen = insert_records(client, 50, max_records=10, max_concurrent_jobs=2)
    yielded = []
    with pytest.raises(BulkOperationError, match="boom") as info:
        await drain(gen, yielded)
    assert isinstance(info.value.__cause__, ServerError)
    assert len(api.jobs) == 2  # nothing started after the failure
    assert sorted(r.first_record_index for r in yielded) == [0, 10]
    assert all(job.state == "JobComplete" for job in api.jobs.values())  # finished, not aborted
    assert not any(is_abort(r) for r in api.requests)
    reports = sorted(info.value.jobs, key=lambda r: r.first_record_index)
    # Chunks read before the failure was known got no job (every create failed); none after it.
    assert [(r.first_record_index, r.status, r.yielded) for r in reports[:2]] == [
        (0, "completed", True),
        (10, "completed", True),
    ]
    assert 3 <= len(reports) <= 4
    assert all(r.status == "not_loaded" and r.job_id is None for r in reports[2:])
    assert isinstance(reports[2].error, ServerError)
    assert info.value.first_unsent_record_index == 10 * len(reports)


async def test_a_job_whose_polls_fail_is_left_running_and_the_others_are_yielded(client, api):
    api.polls_until_done = 2
    watched: list[str] = []

    def fail_polls_of_second_job(request):
        job_id = job_id_of(request)
        if request.method == "PUT" and len(watched) < 2:
            watched.append(job_id)
        if request.method == "GET" and len(watched) >= 2 and job_id == watched[1]:
            return httpx.Response(503, json=[{"errorCode": "SERVER_UNAVAILABLE", "message": "later"}])
        return None

    api.intercept = fail_polls_of_second_job
    yielded = []
    gen = insert_records(client, 40, max_records=10, max_concurrent_jobs=2)
    with pytest.raises(BulkOperationError) as info:
        await drain(gen, yielded)
    assert not any(is_abort(r) for r in api.requests)
    failing = watched[1]
    assert api.jobs[failing].state in ("UploadComplete", "InProgress")  # left to Salesforce
    assert info.value.unfinished_job_ids == (failing,)
    by_job = {r.job_id: r for r in info.value.jobs}
    assert by_job[failing].status == "unfinished"
    assert {r.job_id for r in yielded} == {j for j, r in by_job.items() if r.status == "completed"}
    # Every record read is in exactly one reported job; the rest were never sent.
    covered = sorted(
        i for r in info.value.jobs for i in range(r.first_record_index, r.first_record_index + r.record_count)
    )
    assert covered == list(range(info.value.first_unsent_record_index))
    assert sum(r.record_count for r in yielded) + 10 == info.value.first_unsent_record_index
    assert len(yielded) >= 1


async def test_a_bad_record_in_a_later_chunk_of_a_generator_stops_after_yielding_the_jobs_sent(client, api):
    def data():
        yield from records(25)
        yield {"Name": object()}

    yielded = []
    gen = client.perform_operation(
        "insert",
        "Account",
        data(),
        fieldnames=["Name", "Description"],
        max_records=10,
        polling_interval=FAST_POLL,
    )
    with pytest.raises(BulkOperationError) as info:
        await drain(gen, yielded)
    assert isinstance(info.value.__cause__, InputError)
    assert info.value.__cause__.record_index == 25
    assert sorted(r.first_record_index for r in yielded) == [0, 10]
    assert info.value.first_unsent_record_index == 20
    assert [r.status for r in info.value.jobs] == ["completed", "completed"]


@pytest.mark.parametrize("container", [list, tuple])
async def test_a_bad_record_anywhere_in_a_list_fails_before_any_job(client, api, container):
    data = container([*records(25), {"Name": object()}])
    with pytest.raises(InputError) as info:
        await collect(
            client.perform_operation(
                "insert", "Account", data, fieldnames=["Name", "Description"], max_records=10
            )
        )
    assert info.value.record_index == 25
    assert api.requests == []


async def test_a_bad_line_anywhere_in_a_csv_file_fails_before_any_job(client, api, tmp_path):
    path = tmp_path / "accounts.csv"
    path.write_bytes(b"Name\n" + b"".join(f"A{i}\n".encode() for i in range(30)) + b'"never closed\n')
    with pytest.raises(InputError):
        await collect(client.perform_csv_operation("insert", "Account", str(path), max_records=10))
    assert api.requests == []


async def test_overall_timeout_leaves_closed_jobs_running_and_reports_them(client, api):
    api.polls_until_done = 10**6
    with pytest.raises(BulkOperationTimeoutError) as info:
        await collect(insert_records(client, 20, max_records=10, polling_interval=0.01, timeout=1.0))
    assert isinstance(info.value, OperationTimeoutError)
    assert len(api.jobs) == 2
    assert all(job.state == "InProgress" for job in api.jobs.values())
    assert not any(is_abort(r) for r in api.requests)
    assert sorted(info.value.unfinished_job_ids) == sorted(api.jobs)


async def gated_client(api: FakeBulkApi, hold: Callable[[httpx.Request], bool], gate: asyncio.Event):
    async def handler(request: httpx.Request) -> httpx.Response:
        if hold(request):
            await gate.wait()
        return api.handle(request)

    return mock_session(
        "fixed-token",
        INSTANCE,
        transport=httpx.MockTransport(handler),
        retry_policy=RetryPolicy(max_attempts=3, initial_delay=0.001, max_delay=0.001),
    )


async def test_timeout_during_an_upload_aborts_that_never_closed_job_only(api):
    api.polls_until_done = 10**6
    puts: list[str] = []

    def hold_second_put(request):
        if request.method == "PUT":
            puts.append(job_id_of(request))
            return len(puts) == 2
        return False

    gate = asyncio.Event()  # never set: the second upload hangs
    async with await gated_client(api, hold_second_put, gate) as session:
        with pytest.raises(BulkOperationTimeoutError) as info:
            await collect(
                insert_records(
                    BulkIngestClient(session), 20, max_records=10, polling_interval=0.01, timeout=1.0
                )
            )
    closed, hanging = puts
    assert api.jobs[closed].state == "InProgress"
    assert api.jobs[hanging].state == "Aborted"
    statuses = {r.job_id: r.status for r in info.value.jobs}
    assert statuses == {closed: "unfinished", hanging: "not_loaded"}


async def test_cancellation_aborts_only_jobs_never_closed(api):
    api.polls_until_done = 10**6
    puts: list[str] = []

    def hold_second_put(request):
        if request.method == "PUT":
            puts.append(job_id_of(request))
            return len(puts) == 2
        return False

    gate = asyncio.Event()
    async with await gated_client(api, hold_second_put, gate) as session:
        task = asyncio.create_task(
            collect(insert_records(BulkIngestClient(session), 20, max_records=10, polling_interval=0.01))
        )
        for _ in range(500):
            await asyncio.sleep(0.01)
            if len(puts) == 2 and api.jobs[puts[0]].state == "InProgress":
                break
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert api.jobs[puts[0]].state == "InProgress"  # closed: left to Salesforce
    assert api.jobs[puts[1]].state == "Aborted"  # never closed: aborted


async def test_cancellation_while_the_close_is_in_flight_never_aborts(api):
    api.polls_until_done = 10**6
    held: list[httpx.Request] = []

    def hold_close(request):
        if is_close(request):
            held.append(request)
            return True
        return False

    gate = asyncio.Event()
    async with await gated_client(api, hold_close, gate) as session:
        task = asyncio.create_task(
            collect(insert_records(BulkIngestClient(session), 5, polling_interval=0.01))
        )
        for _ in range(1000):
            await asyncio.sleep(0.01)
            if held:
                break
        assert held
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    (job,) = api.jobs.values()
    assert job.state == "Open"  # the close never landed here, and still nobody aborted the job
    assert not any(is_abort(r) for r in api.requests)


async def test_close_answer_lost_and_its_retries_refused_is_not_aborted(client, api):
    """Issue 7, item 1: the close reached Salesforce, its answer was lost, its retries got 503."""
    closes = 0

    def lose_first_close_then_503(request):
        nonlocal closes
        if is_close(request):
            closes += 1
            if closes == 1:
                api.handle_without_intercept(request)  # Salesforce acts on it ...
                raise httpx.ReadError("... and the answer is lost")
            return httpx.Response(503, json=[{"errorCode": "SERVER_UNAVAILABLE", "message": "later"}])
        return None

    api.intercept = lose_first_close_then_503
    job, replaced = await submit_job(client, INSERT_ACCOUNT, b"Name\nA\nB\n")
    assert job.state in ("UploadComplete", "InProgress", "JobComplete")
    assert replaced == ()
    assert not any(is_abort(r) for r in api.requests)
    assert closes == 3  # the close and the session's two retries of it
    assert sum(1 for r in api.requests if r.method == "PUT") == 1
    final = await client.wait_for_job(job.id, poll=PollPolicy(initial=0.001))
    assert final.number_records_processed == 2


async def test_close_outcome_unknown_when_the_state_cannot_be_read_either(client, api):
    def lose_close_and_reads(request):
        if is_close(request):
            api.handle_without_intercept(request)
            raise httpx.ReadError("lost")
        if request.method == "GET":
            raise httpx.ConnectError("down")
        return None

    api.intercept = lose_close_and_reads
    with pytest.raises(JobOutcomeUnknownError) as info:
        await submit_job(client, INSERT_ACCOUNT, b"Name\nA\n")
    (job,) = api.jobs.values()
    assert info.value.job_id == job.id
    assert job.state == "UploadComplete"  # processing, never aborted
    assert not any(is_abort(r) for r in api.requests)


async def test_a_close_that_did_not_take_is_sent_again(client, api):
    refused = 0

    def refuse_first_closes(request):
        nonlocal refused
        if is_close(request) and refused < 3:  # every retry of the first close
            refused += 1
            return httpx.Response(503, json=[{"errorCode": "SERVER_UNAVAILABLE", "message": "later"}])
        return None

    api.intercept = refuse_first_closes
    job, _ = await submit_job(client, INSERT_ACCOUNT, b"Name\nA\n")
    assert job.state == "UploadComplete"
    assert sum(1 for r in api.requests if is_close(r)) == 4
    assert not any(is_abort(r) for r in api.requests)


async def test_a_job_that_stays_open_after_every_close_is_reported_not_aborted(client, api):
    api.intercept = lambda request: (
        httpx.Response(503, json=[{"errorCode": "SERVER_UNAVAILABLE", "message": "x"}])
        if is_close(request)
        else None
    )
    with pytest.raises(JobOutcomeUnknownError, match="still Open") as info:
        await submit_job(client, INSERT_ACCOUNT, b"Name\nA\n", max_close_attempts=2)
    assert info.value.job_info.state == "Open"
    assert sum(1 for r in api.requests if is_close(r)) == 2 * 3
    assert not any(is_abort(r) for r in api.requests)


async def test_a_job_aborted_by_someone_else_before_the_close_is_returned_as_it_is(client, api):
    async def someone_aborts(job):
        api.jobs[job.id].state = "Aborted"

    job, _ = await submit_job(client, INSERT_ACCOUNT, b"Name\nA\n", on_job_closing=someone_aborts)
    assert job.state == "Aborted"


async def test_on_job_closing_runs_after_the_upload_and_its_failure_aborts_the_unclosed_job(client, api):
    seen: list[int] = []

    async def refuse(job):
        seen.append(sum(1 for r in api.requests if r.method == "PUT"))
        raise RuntimeError("state store unavailable")

    with pytest.raises(RuntimeError):
        await submit_job(client, INSERT_ACCOUNT, b"Name\nA\n", on_job_closing=refuse)
    assert seen == [1]
    assert not any(is_close(r) for r in api.requests)
    assert [j.state for j in api.jobs.values()] == ["Aborted"]


@pytest.mark.parametrize("where", ["created", "closing"])
async def test_without_abort_on_interruption_a_failed_callback_leaves_the_unclosed_job_open(
    client, api, where
):
    # The Airflow operator's case: its plan cannot be saved because Airflow handed the task over to a
    # retry; the job stays as the plan says, for the try that owns the plan to settle.
    async def refuse(job):
        raise RuntimeError("task instance not found")

    callbacks = {"on_job_created" if where == "created" else "on_job_closing": refuse}
    with pytest.raises(RuntimeError):
        await submit_job(client, INSERT_ACCOUNT, b"Name\nA\n", abort_on_interruption=False, **callbacks)
    assert not any(is_abort(r) for r in api.requests)
    assert not any(is_close(r) for r in api.requests)
    assert [j.state for j in api.jobs.values()] == ["Open"]


async def test_on_job_aborted_hears_of_each_never_closed_job_aborted_and_why(client, api):
    # A caller that recorded each job (the Airflow operator's plan) learns which never processed anything.
    aborted: list[tuple[str, str, str | None]] = []

    async def heard(job, error):
        aborted.append((job.id, type(error).__name__, api.jobs[job.id].state))

    dropped: list[str] = []

    def drop_first_put(request):
        if request.method == "PUT" and not dropped:
            dropped.append(request.url.path.split("/")[-2])
            raise httpx.ReadTimeout("no answer")
        return None

    api.intercept = drop_first_put
    job, replaced = await submit_job(client, INSERT_ACCOUNT, b"Name\nA\n", on_job_aborted=heard)
    assert replaced == (dropped[0],)
    assert aborted == [(dropped[0], "UploadOutcomeUnknownError", "Aborted")]  # told after the abort
    assert job.id != dropped[0]
    assert job.state == "UploadComplete"

    async def refuse(job):
        raise RuntimeError("state store unavailable")

    with pytest.raises(RuntimeError):
        await submit_job(client, INSERT_ACCOUNT, b"Name\nA\n", on_job_closing=refuse, on_job_aborted=heard)
    assert aborted[1][1:] == ("RuntimeError", "Aborted")


async def test_close_outcome_unknown_inside_an_operation_is_reported_unfinished(client, api):
    def lose_closes_and_job_reads(request):
        if is_close(request):
            api.handle_without_intercept(request)
            raise httpx.ReadError("lost")
        if request.method == "GET" and job_id_of(request):
            raise httpx.ConnectError("down")
        return None

    api.intercept = lose_closes_and_job_reads
    with pytest.raises(BulkOperationError) as info:
        await collect(
            client.perform_operation("insert", "Account", records(5), fieldnames=["Name", "Description"])
        )
    assert isinstance(info.value.__cause__, JobOutcomeUnknownError)
    (report,) = info.value.jobs
    assert report.status == "unfinished"
    assert not any(is_abort(r) for r in api.requests)


async def test_on_job_created_runs_before_the_upload(client, api):
    seen: list[tuple[str, int]] = []

    async def remember(job):
        seen.append((job.id, sum(1 for r in api.requests if r.method == "PUT")))

    results = await collect(
        insert_records(client, 20, max_records=10, max_concurrent_jobs=1, on_job_created=remember)
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


async def _run_with_one_fault(n: int, per_job: int, slots: int, target: int, fault: str):
    """Load ``n`` records with the ``target``-th job (1-based, by upload order) hit by ``fault``."""
    api = FakeBulkApi(polls_until_done=2)
    uploads: list[str] = []
    unavailable = httpx.Response(503, json=[{"errorCode": "SERVER_UNAVAILABLE", "message": "later"}])

    def inject(request: httpx.Request) -> httpx.Response | None:
        job_id = job_id_of(request)
        if request.method == "PUT" and job_id not in uploads:
            uploads.append(job_id)
            if fault == "upload_lost" and len(uploads) == target:
                raise httpx.ReadError("lost")
        hit = len(uploads) >= target and job_id == uploads[target - 1]
        if hit and fault == "polls" and request.method == "GET":
            return unavailable
        if hit and fault == "close_lost" and is_close(request):
            api.handle_without_intercept(request)
            raise httpx.ReadError("lost")
        if hit and fault == "close_lost" and request.method == "GET":
            raise httpx.ConnectError("down")
        return None

    api.intercept = inject
    session = mock_session(
        "fixed-token",
        INSTANCE,
        transport=api.transport(),
        retry_policy=RetryPolicy(max_attempts=2, initial_delay=0, max_delay=0),
    )
    yielded: list = []
    error: BulkOperationError | None = None
    async with session:
        gen = BulkIngestClient(session).perform_operation(
            "insert",
            "Account",
            [{"Name": f"N{i}"} for i in range(n)],
            max_records=per_job,
            polling_interval=FAST_POLL,
            max_concurrent_jobs=slots,
            max_upload_attempts=1,
        )
        try:
            await drain(gen, yielded)
        except BulkOperationError as exc:
            error = exc
    return api, yielded, error


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 40),
    per_job=st.integers(1, 12),
    slots=st.integers(1, 4),
    target=st.integers(1, 5),
    fault=st.sampled_from(["polls", "upload_lost", "close_lost"]),
)
def test_whatever_job_fails_every_record_is_accounted_for_once_and_no_closed_job_is_aborted(
    n, per_job, slots, target, fault
):
    api, yielded, error = asyncio.run(_run_with_one_fault(n, per_job, slots, target, fault))
    # Salesforce never saw an abort of a job that was closed.
    closed = {job_id_of(r) for r in api.requests if is_close(r)}
    assert not any(is_abort(r) and job_id_of(r) in closed for r in api.requests)
    # The records each job may process (closed jobs), by input index.
    loaded = sorted(
        int(row[0][1:])
        for job in api.jobs.values()
        if job.id in closed
        for row in csv.reader(io.StringIO(job.data.decode()))
        if row[0] != "Name"
    )
    assert len(loaded) == len(set(loaded))  # nothing sent twice
    if error is None:
        assert loaded == list(range(n))
        covered = sorted(
            i for r in yielded for i in range(r.first_record_index, r.first_record_index + r.record_count)
        )
        assert covered == list(range(n))
        return
    reports = error.jobs
    covered = sorted(
        i for r in reports for i in range(r.first_record_index, r.first_record_index + r.record_count)
    )
    assert covered == list(range(error.first_unsent_record_index))
    assert {r.job_id for r in yielded} == {r.job_id for r in reports if r.yielded}
    assert all(r.status == "completed" for r in reports if r.yielded)
    may_hold = sorted(
        i
        for r in reports
        if r.status != "not_loaded"
        for i in range(r.first_record_index, r.first_record_index + r.record_count)
    )
    assert loaded == may_hold  # exactly the records of completed and unfinished jobs
    assert len([r for r in reports if r.error is not None]) == 1
