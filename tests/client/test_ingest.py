"""BulkIngestClient endpoint by endpoint, against an in-memory Bulk API on httpx.MockTransport."""

from __future__ import annotations

import asyncio
import datetime
import gzip
import io
import json
import math
import time

import httpx
import pytest

from airflow_provider_salesforce_bulk.client import (
    BulkIngestClient,
    InputError,
    InvalidJobError,
    InvalidJobStateError,
    JobInfo,
    NotFoundError,
    OperationTimeoutError,
    PollPolicy,
    RetryPolicy,
    SalesforceSession,
    StaticTokenAuth,
    TokenCache,
    UnexpectedResponseError,
    UploadOutcomeUnknownError,
)
from tests.client.fake_bulk import INSTANCE, FakeBulkApi
from tests.client.helpers import mock_session


@pytest.fixture
def api() -> FakeBulkApi:
    return FakeBulkApi()


@pytest.fixture
async def client(api: FakeBulkApi):
    session = SalesforceSession(
        StaticTokenAuth("fixed-token", INSTANCE), transport=api.transport(), token_cache=TokenCache()
    )
    async with session:
        yield BulkIngestClient(session)


CSV = b'Name,Description\nAcme,"multi\nline, ""quoted"""\nFAIL one,x\n'


async def test_create_job_sends_every_option(client, api):
    job = await client.create_job(
        "upsert", "Contact", "External_Id__c", "01Q000000000001", column_delimiter="PIPE", line_ending="CRLF"
    )
    body = json.loads(api.requests[-1].content)
    assert body == {
        "object": "Contact",
        "operation": "upsert",
        "contentType": "CSV",
        "columnDelimiter": "PIPE",
        "lineEnding": "CRLF",
        "externalIdFieldName": "External_Id__c",
        "assignmentRuleId": "01Q000000000001",
    }
    assert api.requests[-1].url.path == "/services/data/v64.0/jobs/ingest"
    assert job.state == "Open"
    assert job.api_version == 64.0
    assert job.created_date == datetime.datetime(2024, 9, 9, 19, 25, 27, tzinfo=datetime.timezone.utc)


@pytest.mark.parametrize(
    ("args", "kwargs", "field"),
    [
        (("merge", "Account"), {}, "operation"),
        (("upsert", "Account"), {}, "external_id_field"),
        (("insert", "Account", "Ext__c"), {}, "external_id_field"),
        (("insert", ""), {}, "sobject"),
        (("insert", "Account"), {"column_delimiter": "COLON"}, "column_delimiter"),
        (("insert", "Account"), {"line_ending": "CR"}, "line_ending"),
    ],
)
async def test_create_job_refuses_bad_options_before_sending(client, api, args, kwargs, field):
    with pytest.raises(InputError) as info:
        await client.create_job(*args, **kwargs)
    assert info.value.field == field
    assert api.requests == []


async def test_upload_closes_job_and_get_job_reads_every_field(client, api):
    job = await client.create_job("insert", "Account")
    closed = await client.upload_job_data(job.id, CSV)
    assert closed.state == "UploadComplete"
    put = api.requests[-2]
    assert put.method == "PUT"
    assert put.url.path.endswith(f"/jobs/ingest/{job.id}/batches")
    assert put.headers["Content-Type"] == "text/csv"
    assert put.content == CSV
    info = await client.get_job(job.id)
    assert info.state == "JobComplete"
    assert (info.number_records_processed, info.number_records_failed, info.number_records_succeeded) == (
        2,
        1,
        1,
    )
    assert info.job_type == "V2Ingest"
    assert info.total_processing_time == 10
    assert info.extra["someNewField"] == "kept"


async def test_upload_without_close_and_gzip(client, api):
    job = await client.create_job("insert", "Account")
    await client.upload_job_data(job.id, CSV, close=False, compress=True)
    put = api.requests[-1]
    assert put.headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(put.content) == CSV
    assert api.jobs[job.id].state == "Open"
    assert (await client.close_job(job.id)).state == "UploadComplete"


async def test_second_upload_is_refused_by_salesforce(client, api):
    job = await client.create_job("insert", "Account")
    await client.upload_job_data(job.id, CSV, close=False)
    with pytest.raises(InvalidJobError, match="multipe contents"):
        await client.upload_job_data(job.id, CSV, close=False)


async def test_upload_with_lost_answer_is_reported_never_repeated(client, api):
    job = await client.create_job("insert", "Account")

    def drop(request):
        if request.method == "PUT":
            raise httpx.RemoteProtocolError("server disconnected")
        return None

    api.intercept = drop
    with pytest.raises(UploadOutcomeUnknownError) as info:
        await client.upload_job_data(job.id, CSV)
    assert info.value.job_id == job.id
    assert sum(1 for r in api.requests if r.method == "PUT") == 1


async def test_close_is_idempotent_when_an_earlier_close_went_through(client, api):
    job = await client.create_job("insert", "Account")
    await client.upload_job_data(job.id, CSV)
    assert (await client.close_job(job.id)).state in ("UploadComplete", "InProgress", "JobComplete")


async def test_abort_and_abort_again(client, api):
    job = await client.create_job("insert", "Account")
    assert (await client.abort_job(job.id)).state == "Aborted"
    assert (await client.abort_job(job.id)).state == "Aborted"


async def test_close_of_aborted_job_raises(client, api):
    job = await client.create_job("insert", "Account")
    await client.abort_job(job.id)
    with pytest.raises(InvalidJobStateError):
        await client.close_job(job.id)


async def test_delete_job_and_not_found(client, api):
    job = await client.create_job("insert", "Account")
    await client.abort_job(job.id)
    await client.delete_job(job.id)
    assert api.requests[-1].method == "DELETE"
    with pytest.raises(NotFoundError):
        await client.get_job(job.id)


async def test_job_id_is_checked_before_use(client, api):
    with pytest.raises(InputError):
        await client.get_job("../limits")
    assert api.requests == []


async def test_list_jobs_follows_next_records_url(client, api):
    ids = [(await client.create_job("insert", "Account")).id for _ in range(5)]
    listed = [job.id async for job in client.list_jobs()]
    assert sorted(listed) == ids
    gets = [r for r in api.requests if r.method == "GET"]
    assert len(gets) == 3
    assert gets[1].url.params["queryLocator"] == "2"


async def test_wait_for_job_backs_off_and_reports_progress(client, api):
    api.polls_until_done = 4
    job = await client.create_job("insert", "Account")
    await client.upload_job_data(job.id, CSV)
    seen: list[str] = []
    final = await client.wait_for_job(
        job.id,
        poll=PollPolicy(initial=0.001, maximum=0.004, factor=2),
        on_progress=lambda j: seen.append(j.state),
    )
    assert final.state == "JobComplete"
    assert seen == ["InProgress", "InProgress", "InProgress", "JobComplete"]


def test_poll_policy_backs_off_to_its_ceiling():
    waits = PollPolicy(initial=0.5, maximum=5, factor=2, jitter=0).intervals()
    assert [next(waits) for _ in range(6)] == [0.5, 1, 2, 4, 5, 5]
    jittered = PollPolicy(initial=1, maximum=1, jitter=0.2).intervals()
    spread = [next(jittered) for _ in range(200)]
    assert all(0.8 <= w <= 1.2 for w in spread)
    assert len(set(spread)) > 100


async def test_wait_for_job_timeout(client, api):
    api.polls_until_done = 10**6
    job = await client.create_job("insert", "Account")
    await client.upload_job_data(job.id, CSV)
    with pytest.raises(OperationTimeoutError, match=job.id):
        await client.wait_for_job(job.id, poll=PollPolicy(initial=0.01, maximum=0.01), timeout=0.05)


async def test_results_stream_as_records_with_quoted_newlines(client, api):
    job = await client.create_job("insert", "Account")
    await client.upload_job_data(job.id, CSV)
    await client.wait_for_job(job.id, poll=PollPolicy(initial=0.001))
    ok = [r async for r in client.iter_successful_results(job.id)]
    failed = await client.get_results(job.id, "failedResults")
    unprocessed = [r async for r in client.iter_unprocessed_records(job.id)]
    assert ok == [
        {
            "sf__Id": "001000000000000000",
            "sf__Created": "true",
            "Name": "Acme",
            "Description": 'multi\nline, "quoted"',
        }
    ]
    assert failed[0]["sf__Error"].startswith("REQUIRED_FIELD_MISSING")
    assert failed[0]["Name"] == "FAIL one"
    assert unprocessed == []


async def test_copy_results_writes_the_raw_csv(client, api):
    job = await client.create_job("insert", "Account")
    await client.upload_job_data(job.id, CSV)
    await client.wait_for_job(job.id, poll=PollPolicy(initial=0.001))
    buffer = io.BytesIO()
    written = await client.copy_results(job.id, "failedResults", buffer)
    assert written == len(buffer.getvalue())
    assert buffer.getvalue().startswith(b'"sf__Id","sf__Error","Name","Description"\n')


async def test_unknown_result_kind(client):
    with pytest.raises(InputError, match="result kind"):
        await client.get_results("750000000000000001", "everything")  # type: ignore[arg-type]


async def test_a_cancellation_arriving_with_a_poll_answer_stops_the_wait(client):
    """The poll's answer and the task's cancellation land in the same step: the wait must end
    cancelled, not take the answer and poll on (3.11's asyncio.wait_for dropped such a cancellation)."""
    waiting = asyncio.current_task()
    polls = 0

    async def get_job(job_id: str) -> JobInfo:
        nonlocal polls
        polls += 1
        if polls == 1:
            assert waiting is not None
            waiting.cancel()
            return JobInfo(id=job_id, state="InProgress")
        return JobInfo(id=job_id, state="JobComplete")

    client.get_job = get_job
    with pytest.raises(asyncio.CancelledError):
        await client.wait_for_job("750000000000000001", poll=PollPolicy(initial=0.001))
    assert polls == 1


def test_job_info_tolerates_missing_and_unknown_fields():
    info = JobInfo.from_json(
        b'{"id":"750x","state":"Open","apiVersion":"59.0","newThing":{"a":1},'
        b'"createdDate":"2022-01-02T21:33:43.000+0000","numberRecordsProcessed":null}'
    )
    assert info.api_version == 59.0
    assert info.extra == {"newThing": {"a": 1}}
    assert info.number_records_processed == 0
    assert info.created_date == datetime.datetime(2022, 1, 2, 21, 33, 43, tzinfo=datetime.timezone.utc)
    assert info.to_dict()["createdDate"] == "2022-01-02T21:33:43+00:00"
    assert not info.is_terminal


def test_job_info_keeps_an_unparseable_date_instead_of_failing():
    info = JobInfo.from_json({"id": "750x", "state": "JobComplete", "createdDate": "yesterday"})
    assert info.created_date is None
    assert info.extra["created_date"] == "yesterday"
    assert info.is_terminal


def test_job_info_keeps_a_state_it_does_not_know_without_failing():
    body = {"id": "750x", "state": "Paused", "columnDelimiter": "COLON", "lineEnding": "LF"}
    info = JobInfo.from_json(body)
    assert info.state is None
    assert info.column_delimiter is None
    assert info.extra == {"state": "Paused", "column_delimiter": "COLON"}
    assert info.line_ending == "LF"
    assert not info.is_terminal
    assert info.to_dict()["state"] == "Paused"
    assert info.to_dict()["columnDelimiter"] == "COLON"
    assert JobInfo.from_json({"id": "750x", "state": "Failed"}).state == "Failed"


def test_job_info_rejects_a_body_without_id():
    with pytest.raises(ValueError, match="not a Bulk API job body"):
        JobInfo.from_json(b"[]")


async def test_a_successful_answer_that_is_not_json_is_a_clear_error(client, api):
    api.intercept = lambda request: httpx.Response(200, content=b"<html>login page</html>")
    with pytest.raises(UnexpectedResponseError, match="not JSON"):
        await client.get_job("750000000000000001")


async def test_broken_result_csv_is_a_clear_error(client, api):
    job = await client.create_job("insert", "Account")
    api.intercept = lambda request: (
        httpx.Response(200, content=b'Name\n"never closed\n')
        if request.url.path.endswith("Results")
        else None
    )
    with pytest.raises(UnexpectedResponseError, match="not valid CSV"):
        await client.get_results(job.id, "failedResults")


async def test_create_job_is_retried_because_a_repeat_cannot_load_data(api):
    # A lost create answer may leave an empty Open job behind; it holds no data and expires, so
    # creating again is safe, unlike an upload.
    answers = iter([httpx.Response(503), httpx.ReadError("dropped")])

    def flaky_create(request):
        if request.method == "POST":
            answer = next(answers, None)
            if isinstance(answer, Exception):
                raise answer
            return answer
        return None

    api.intercept = flaky_create
    session = mock_session(
        "fixed-token",
        INSTANCE,
        transport=api.transport(),
        retry_policy=RetryPolicy(max_attempts=3, initial_delay=0.001, max_delay=0.001),
    )
    async with session:
        job = await BulkIngestClient(session).create_job("insert", "Account")
    assert [r.method for r in api.requests] == ["POST", "POST", "POST"]
    assert list(api.jobs) == [job.id]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"initial": math.nan}, "PollPolicy.initial"),
        ({"initial": 0}, "PollPolicy.initial"),
        ({"maximum": math.inf}, "PollPolicy.maximum"),
        ({"maximum": -1}, "PollPolicy.maximum"),
        ({"factor": 0.5}, "PollPolicy.factor"),
        ({"factor": math.nan}, "PollPolicy.factor"),
        ({"jitter": 1.0}, "PollPolicy.jitter"),
        ({"jitter": -0.1}, "PollPolicy.jitter"),
    ],
)
def test_poll_policy_refuses_waits_that_never_end_or_never_wait(kwargs, field):
    with pytest.raises(InputError) as info:
        PollPolicy(**kwargs)
    assert info.value.field == field


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"max_attempts": 0}, "RetryPolicy.max_attempts"),
        ({"max_attempts": 2.5}, "RetryPolicy.max_attempts"),
        ({"initial_delay": math.nan}, "RetryPolicy.initial_delay"),
        ({"max_delay": math.inf}, "RetryPolicy.max_delay"),
        ({"max_total": -1}, "RetryPolicy.max_total"),
    ],
)
def test_retry_policy_refuses_nan_inf_and_negative(kwargs, field):
    with pytest.raises(InputError) as info:
        RetryPolicy(**kwargs)
    assert info.value.field == field
    assert isinstance(info.value, ValueError)  # as before, for callers catching ValueError


@pytest.mark.parametrize("timeout", [math.nan, math.inf, 0, -5, None])
async def test_wait_for_job_refuses_a_timeout_that_never_or_always_fires(client, api, timeout):
    with pytest.raises(InputError) as info:
        await client.wait_for_job("750000000000000001", timeout=timeout)
    assert info.value.field == "timeout"
    assert api.requests == []


async def test_wait_for_job_deadline_holds_while_a_poll_hangs(api):
    async def hang_on_get(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            await asyncio.sleep(3600)
        return api.handle(request)

    session = mock_session(
        "fixed-token",
        INSTANCE,
        transport=httpx.MockTransport(hang_on_get),
    )
    async with session:
        client = BulkIngestClient(session)
        job = await client.create_job("insert", "Account")
        started = time.monotonic()
        with pytest.raises(OperationTimeoutError, match=job.id):
            await client.wait_for_job(job.id, timeout=0.3)
        assert time.monotonic() - started < 30


async def test_abort_returns_the_jobs_counters_read_after_the_abort(client, api):
    job = await client.create_job("insert", "Account")
    api.jobs[job.id].success = [["001", "true", "x"]] * 7  # processed before the abort landed

    aborted = await client.abort_job(job.id)
    assert aborted.state == "Aborted"
    assert aborted.number_records_processed == 7  # the PATCH answer has no counters
    assert [r.method for r in api.requests[-2:]] == ["PATCH", "GET"]
