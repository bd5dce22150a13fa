"""BulkQueryClient request by request, against an in-memory query API on httpx.MockTransport:
paging by locator, the "null" last locator, a page dropped mid-body resumed from its own locator,
parallel pages from /resultPages written in a stable order, and query errors."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from airflow_provider_salesforce_bulk.client import (
    BulkQueryClient,
    InputError,
    InvalidJobStateError,
    PollPolicy,
    QueryError,
    QueryJobFailedError,
    RetryPolicy,
    TransportError,
    UnexpectedResponseError,
)
from tests.client.fake_query import JOB_ID, FakeQueryApi, encode_locator
from tests.client.helpers import query_api_session

FAST = RetryPolicy(max_attempts=3, initial_delay=0.0, max_delay=0.0, max_total=5)


@pytest.fixture
def api() -> FakeQueryApi:
    return FakeQueryApi()


@pytest.fixture
async def client(api: FakeQueryApi):
    session = query_api_session(api, retry_policy=FAST)
    async with session:
        yield BulkQueryClient(session)


def _rows(data: bytes, header: bytes = b'"Id","Name"\n') -> list[bytes]:
    """Split a page (or pages) into record rows; our rows end at a line feed after a closing quote."""
    rows: list[bytes] = []
    for part in data.split(b'"\n'):
        if part:
            rows.append(part + b'"\n')
    return [r for r in rows if r != header]


# -- jobs -------------------------------------------------------------------------------------------


async def test_create_job_sends_the_query_and_its_options(client, api):
    job = await client.create_job(
        "SELECT Id FROM Account", operation="queryAll", column_delimiter="PIPE", line_ending="CRLF"
    )
    assert job.id == JOB_ID
    assert job.state == "UploadComplete"
    assert json.loads(api.requests[-1].content) == {
        "operation": "queryAll",
        "query": "SELECT Id FROM Account",
        "contentType": "CSV",
        "columnDelimiter": "PIPE",
        "lineEnding": "CRLF",
    }


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"soql": ""}, "soql"),
        ({"soql": "SELECT Id FROM Account", "operation": "select"}, "operation"),
        ({"soql": "SELECT Id FROM Account", "column_delimiter": "SPACE"}, "column_delimiter"),
        ({"soql": "SELECT Id FROM Account", "line_ending": "CR"}, "line_ending"),
    ],
)
async def test_bad_options_are_refused_before_any_request(client, api, kwargs, field):
    with pytest.raises(InputError) as info:
        await client.create_job(**kwargs)
    assert info.value.field == field
    assert api.requests == []


async def test_a_refused_query_names_the_field_and_position(client):
    with pytest.raises(QueryError) as info:
        await client.create_job("SELECT Id, Nme FROM Account")
    error = info.value
    assert error.error_code == "INVALID_FIELD"
    assert (error.row, error.column, error.field) == (1, 12, "Nme")
    assert "No such column 'Nme' on entity 'Account'" in str(error)


async def test_an_unsupported_construct_is_a_query_error_too(client):
    with pytest.raises(QueryError) as info:
        await client.create_job("SELECT Id FROM Account GROUP BY ROLLUP(Name)")
    assert info.value.error_code == "API_ERROR"
    assert "not supported in Bulk Query" in str(info.value)


async def test_a_failed_job_raises_with_its_error_message(client, api):
    api.state = "Failed"
    api.error_message = "InvalidBatch : Failed to process query: too complex"
    with pytest.raises(QueryJobFailedError) as info:
        await client.wait_for_job(JOB_ID, poll=PollPolicy(initial=0.01, maximum=0.01))
    assert info.value.error_code == "InvalidBatch"
    assert info.value.error_message == api.error_message
    job = await client.wait_for_job(JOB_ID, raise_on_failure=False)
    assert job.state == "Failed"


async def test_abort_of_a_finished_job_returns_it_and_delete_answers_nothing(client, api):
    assert (await client.abort_job(JOB_ID)).state == "JobComplete"
    api.state = "InProgress"
    assert (await client.abort_job(JOB_ID)).state == "Aborted"
    assert await client.delete_job(JOB_ID) is None


async def test_list_jobs_follows_next_records_url(client):
    ids = [job.id async for job in client.list_jobs()]
    assert ids == ["750R0000000zxr1IAA", JOB_ID]


@pytest.mark.parametrize("timeout", [0, -1, float("nan"), float("inf")])
async def test_wait_refuses_a_timeout_that_bounds_nothing(client, timeout):
    with pytest.raises(InputError):
        await client.wait_for_job(JOB_ID, timeout=timeout)


# -- pages by locator -------------------------------------------------------------------------------


async def test_pages_follow_locators_until_the_null_one(client, api):
    pages = []
    async for page in client.iter_result_pages(JOB_ID, max_records=10):
        body = b"".join([chunk async for chunk in page.iter_bytes()])
        pages.append((page.number, page.locator, page.records, page.next_locator, body))
    assert [(n, loc, r, nxt) for n, loc, r, nxt, _ in pages] == [
        (0, None, 10, encode_locator(10)),
        (1, encode_locator(10), 10, encode_locator(20)),
        (2, encode_locator(20), 3, None),
    ]
    assert _rows(b"".join(p[4] for p in pages)) == api.expected()
    results = [r for r in api.requests if r.url.path.endswith("/results")]
    assert [dict(r.url.params) for r in results] == [
        {"maxRecords": "10"},
        {"maxRecords": "10", "locator": encode_locator(10)},
        {"maxRecords": "10", "locator": encode_locator(20)},
    ]
    assert all(r.headers["Accept"] == "text/csv" for r in results)


async def test_a_page_dropped_mid_body_is_fetched_again_and_resumed_exactly_once(client, api):
    api.drops = {10: [23, 61]}  # the second page breaks twice, at different points
    data = b""
    async for page in client.iter_result_pages(JOB_ID, max_records=10):
        async for chunk in page.iter_bytes():
            data += chunk
    assert _rows(data) == api.expected()
    assert api.fetches == {0: 1, 10: 3, 20: 1}


async def _read_all(client) -> bytes:
    data = b""
    async for page in client.iter_result_pages(JOB_ID):
        async for chunk in page.iter_bytes():
            data += chunk
    return data


async def test_a_page_dropped_more_often_than_allowed_fails(client, api):
    api.drops = {0: [5, 5, 5, 5, 5]}
    with pytest.raises(TransportError, match="dropped 4 times"):
        await _read_all(client)


async def test_a_page_that_changed_when_fetched_again_is_an_error(client, api):
    api.drops = {0: [30]}
    api.changed_on_refetch = {0}
    with pytest.raises(UnexpectedResponseError, match="changed"):
        await _read_all(client)


async def test_pages_that_do_not_add_up_to_the_job_are_an_error(client, api):
    api.processed = 24
    with pytest.raises(UnexpectedResponseError, match="hold 23 records"):
        await _read_all(client)


async def test_results_of_a_running_job_are_refused_before_asking_for_them(client, api):
    api.state = "InProgress"
    with pytest.raises(InvalidJobStateError):
        async for _ in client.iter_result_pages(JOB_ID):
            pass
    assert not [r for r in api.requests if r.url.path.endswith("/results")]


@pytest.mark.parametrize("max_records", [0, -5, 1.5, True])
async def test_max_records_must_be_a_positive_whole_number(client, max_records):
    with pytest.raises(InputError):
        async for _ in client.iter_result_pages(JOB_ID, max_records=max_records):
            pass


# -- pages in parallel ------------------------------------------------------------------------------


async def test_parallel_pages_come_back_in_page_order_with_bounded_concurrency(client, api):
    api.records = 42
    api.processed = 42
    # Early pages answer slowest, so completion order is the reverse of page order.
    api.delays = {offset: 0.05 * (9 - offset // 5) for offset in range(0, 42, 5)}
    api.drops = {15: [40]}

    async def read(page):
        return page.number, b"".join([c async for c in page.iter_bytes()])

    pages = await client.for_each_result_page(JOB_ID, read, concurrency=3)
    assert [n for n, _ in pages] == list(range(9))
    assert _rows(b"".join(body for _, body in pages)) == api.expected()
    assert api.max_in_flight == 3
    listed = [r for r in api.requests if r.url.path.endswith("/resultPages")]
    assert len(listed) == 3  # 9 pages, 3 per answer


async def test_without_result_pages_the_locators_are_chained(client, api):
    api.result_pages = False

    async def count(page):
        return page.records

    assert await client.for_each_result_page(JOB_ID, count) == [5, 5, 5, 5, 3]


async def test_chained_pages_overlap_once_the_head_names_the_next(client, api):
    api.delays = {0: 0.0}
    started: list[int] = []
    release = asyncio.Event()

    async def slow(page):
        started.append(page.number)
        if page.number == 0:
            await asyncio.wait_for(release.wait(), 5)
        else:
            release.set()
        return page.records

    counts = await client.for_each_result_page(JOB_ID, slow, concurrency=2, parallel=False)
    assert counts == [5, 5, 5, 5, 3]
    assert started[:2] == [0, 1]


async def test_a_failing_handler_stops_the_other_pages(client, api):
    async def fail(page):
        if page.number == 1:
            raise RuntimeError("disk full")
        await asyncio.sleep(0.5)
        return page.number

    with pytest.raises(RuntimeError, match="disk full"):
        await client.for_each_result_page(JOB_ID, fail, concurrency=3)


async def test_copy_results_to_writes_one_file_per_page(client, api, tmp_path: Path):
    summaries = await client.copy_results_to(
        JOB_ID, lambda page: (tmp_path / f"part-{page.number:03d}.csv").open("wb"), concurrency=2
    )
    files = sorted(tmp_path.iterdir())
    assert [f.name for f in files] == [f"part-{n:03d}.csv" for n in range(5)]
    assert [s.records for s in summaries] == [5, 5, 5, 5, 3]
    assert [s.bytes for s in summaries] == [f.stat().st_size for f in files]
    assert all(f.read_bytes().startswith(b'"Id","Name"\n') for f in files)
    assert _rows(b"".join(f.read_bytes() for f in files)) == api.expected()


async def test_parallel_with_max_records_is_refused(client):
    async def noop(page):
        return None

    with pytest.raises(InputError, match="max_records"):
        await client.for_each_result_page(JOB_ID, noop, parallel=True, max_records=10)


@settings(max_examples=60, deadline=None)
@given(
    records=st.integers(0, 40),
    page_size=st.integers(1, 12),
    cuts=st.dictionaries(st.integers(0, 40), st.lists(st.integers(0, 400), max_size=3), max_size=6),
)
def test_any_drops_within_the_allowed_refetches_yield_every_record_once(records, page_size, cuts):
    api = FakeQueryApi(records=records, page_size=page_size)
    api.drops = {offset: list(points) for offset, points in cuts.items()}

    async def run() -> bytes:
        session = query_api_session(api, retry_policy=FAST)
        async with session:
            return await _read_all(BulkQueryClient(session))

    assert _rows(asyncio.run(run())) == api.expected()


async def test_copy_can_open_write_and_close_each_sink_in_a_worker_thread(client, api, tmp_path: Path):
    loop_thread = threading.get_ident()
    threads: list[int] = []

    class Sink:
        def __init__(self, path: Path) -> None:
            threads.append(threading.get_ident())
            self.file = path.open("wb")

        def __enter__(self) -> Sink:
            threads.append(threading.get_ident())
            return self

        def write(self, data: bytes) -> int:
            threads.append(threading.get_ident())
            return self.file.write(data)

        def __exit__(self, *exc: object) -> None:
            threads.append(threading.get_ident())
            self.file.close()

    api.drops = {10: [33]}
    summaries = await client.copy_results_to(
        JOB_ID, lambda page: Sink(tmp_path / f"part-{page.number}.csv"), write_in_thread=True
    )
    assert [s.records for s in summaries] == [5, 5, 5, 5, 3]
    assert threads
    assert loop_thread not in threads
    assert _rows(b"".join((tmp_path / f"part-{n}.csv").read_bytes() for n in range(5))) == api.expected()


async def test_a_complete_job_info_is_not_asked_for_again(client, api):
    job = await client.wait_for_job(JOB_ID)
    before = len(api.requests)
    records = [record async for record in client.iter_records(job)]
    assert len(records) == 23
    assert records[0] == {"Id": "001000000000000000", "Name": 'Name "0",\nline two'}
    gets = [r for r in api.requests[before:] if r.url.path.endswith(JOB_ID)]
    assert gets == []
