"""Every result page is counted from its own bytes and no page may repeat another: tampered answers
(a page cut at a row boundary, a page answered with another page's body) between the client and the
emulator, over a real socket, are caught in both formats; the counter itself is checked against
Python's csv module on CSV with quoted line breaks split at every possible chunk boundary."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from airflow_provider_salesforce_bulk.client import (
    BulkIngestClient,
    BulkQueryClient,
    PollPolicy,
    UnexpectedResponseError,
)
from airflow_provider_salesforce_bulk.client.errors import RequestLimitExceededError
from airflow_provider_salesforce_bulk.client.page_check import PageCheck
from airflow_provider_salesforce_bulk.client.query_parquet import copy_results_to_parquet
from airflow_provider_salesforce_bulk.emulator.server import RunningEmulator
from tests.client import helpers

POLL = PollPolicy(initial=0.02, maximum=0.1)
SOQL = "SELECT Id, Name, Description FROM Account"


@pytest.fixture(autouse=True)
def clean(emulator: RunningEmulator) -> None:
    emulator.reset()


Tamper = Callable[[str, dict[str, bytes]], bytes | None]


class TamperingTransport(httpx.AsyncBaseTransport):
    """Passes every request to the emulator; result pages may have their body replaced."""

    def __init__(self, tamper: Tamper) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.tamper = tamper
        self.bodies: dict[str, bytes] = {}  # the genuine body of each locator ("" for the first page)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        if not request.url.path.endswith("/results"):
            return response
        body = await httpx.Response(
            response.status_code, headers=response.headers, stream=response.stream
        ).aread()
        locator = request.url.params.get("locator", "")
        self.bodies.setdefault(locator, body)
        replaced = self.tamper(locator, self.bodies)
        headers = [
            (k, v)
            for k, v in response.headers.items()
            if k.lower() not in ("content-encoding", "content-length")
        ]
        return httpx.Response(
            response.status_code, headers=headers, content=body if replaced is None else replaced
        )

    async def aclose(self) -> None:
        await self.inner.aclose()


async def _job(emulator: RunningEmulator, n: int) -> tuple[str, list[dict[str, Any]]]:
    records = [
        {"Name": f"Account {i}", "Description": f'two\nlines, "quoted" {i}' if i % 3 == 0 else None}
        for i in range(n)
    ]
    async with helpers.emulator_session(emulator) as session:
        ingest = BulkIngestClient(session)
        async for result in ingest.perform_operation("insert", "Account", records, polling_interval=0.05):
            assert result.job_info.state == "JobComplete"
        job = await BulkQueryClient(session).run_query(SOQL, poll=POLL, timeout=60)
    return job.id, records


async def _copy(emulator: RunningEmulator, job_id: str, tamper: Tamper, tmp_path: Path, fmt: str) -> Any:
    transport = TamperingTransport(tamper)
    async with helpers.emulator_session(emulator, transport=transport) as session:
        client = BulkQueryClient(session)

        def sink(page: Any) -> Any:
            return (tmp_path / f"part-{page.number}.{fmt}").open("wb")

        if fmt == "parquet":
            pytest.importorskip("pyarrow")
            return await copy_results_to_parquet(client, job_id, sink, max_records=10, parallel=False)
        return await client.copy_results_to(job_id, sink, max_records=10, parallel=False)


def _cut_last_row(body: bytes) -> bytes:
    # Rows end where a line feed is outside quotes: drop the last whole record.
    ends = [i + 1 for i, ch in enumerate(body) if ch == 0x0A and body[: i + 1].count(b'"') % 2 == 0]
    return body[: ends[-2]]


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
async def test_untampered_pages_pass_every_check(emulator: RunningEmulator, tmp_path: Path, fmt: str) -> None:
    job_id, _ = await _job(emulator, 25)
    pages = await _copy(emulator, job_id, lambda locator, bodies: None, tmp_path, fmt)
    assert [p.records for p in pages] == [10, 10, 5]
    assert len({p.fingerprint for p in pages}) == 3


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
async def test_a_page_cut_at_a_row_boundary_is_caught(
    emulator: RunningEmulator, tmp_path: Path, fmt: str
) -> None:
    job_id, _ = await _job(emulator, 25)
    first_locator: list[str] = []

    def cut(locator: str, bodies: dict[str, bytes]) -> bytes | None:
        if locator and not first_locator:
            first_locator.append(locator)
        if first_locator and locator == first_locator[0]:
            return _cut_last_row(bodies[locator])
        return None

    with pytest.raises(UnexpectedResponseError, match=r"page 1 of query job .*(holds 9 records|9 rows)"):
        await _copy(emulator, job_id, cut, tmp_path, fmt)


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
async def test_a_page_answered_with_another_pages_body_is_caught(
    emulator: RunningEmulator, tmp_path: Path, fmt: str
) -> None:
    job_id, _ = await _job(emulator, 30)

    def repeat(locator: str, bodies: dict[str, bytes]) -> bytes | None:
        later = [key for key in bodies if key]
        if len(later) == 2 and locator == later[1]:
            return bodies[later[0]]  # page 2 answers page 1's body, with page 2's own headers
        return None

    with pytest.raises(UnexpectedResponseError, match=r"pages 1 and 2 of query job .* hold the same records"):
        await _copy(emulator, job_id, repeat, tmp_path, fmt)


async def test_limit_exceeded_on_create_is_a_limit_error(emulator: RunningEmulator) -> None:
    """Salesforce's answer when the day's query jobs are used up: a limit error, not a refused query."""
    answer = (
        b'[{"errorCode":"LIMIT_EXCEEDED",'
        b'"message":"Max bulk v2 query jobs (10000) per 24 hrs has been reached"}]'
    )

    class Refusing(httpx.AsyncBaseTransport):
        def __init__(self) -> None:
            self.inner = httpx.AsyncHTTPTransport()
            self.creates = 0

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            if request.method == "POST" and request.url.path.rstrip("/").endswith("/jobs/query"):
                self.creates += 1
                return httpx.Response(400, content=answer, headers={"Content-Type": "application/json"})
            return await self.inner.handle_async_request(request)

    transport = Refusing()
    async with helpers.emulator_session(emulator, transport=transport) as session:
        with pytest.raises(RequestLimitExceededError) as caught:
            await BulkQueryClient(session).create_job(SOQL)
    assert caught.value.error_code == "LIMIT_EXCEEDED"
    assert caught.value.status_code == 400
    assert "Max bulk v2 query jobs (10000) per 24 hrs has been reached" in str(caught.value)
    assert (
        transport.creates == 1
    )  # a 400 is not retried by the session: the limit does not free up in seconds


_VALUES = st.text(alphabet=st.sampled_from(list('ab,"\n\r é')), max_size=8)


@settings(max_examples=150, deadline=None)
@given(
    rows=st.lists(st.lists(_VALUES, min_size=2, max_size=2), max_size=12), cuts=st.lists(st.integers(1, 40))
)
def test_the_counter_agrees_with_pythons_csv_module(rows: list[list[str]], cuts: list[int]) -> None:
    out = io.StringIO()
    writer = csv.writer(out, quoting=csv.QUOTE_ALL, lineterminator="\n")
    writer.writerow(["Id", "Name"])
    writer.writerows(rows)
    data = out.getvalue().encode()
    check = PageCheck()
    position = 0
    for cut in cuts:
        check.feed(data[position : position + cut])
        position += cut
    check.feed(data[position:])
    assert check.records == len(rows)
    assert check.bytes == len(data)


@settings(max_examples=50, deadline=None)
@given(rows=st.lists(st.lists(_VALUES, min_size=2, max_size=2), max_size=12), cut=st.integers(1, 40))
def test_a_check_that_does_not_count_fingerprints_as_one_that_does(rows: list[list[str]], cut: int) -> None:
    # The Parquet path counts records while parsing them and keeps only the fingerprint from here.
    out = io.StringIO()
    writer = csv.writer(out, quoting=csv.QUOTE_ALL, lineterminator="\n")
    writer.writerow(["Id", "Name"])
    writer.writerows(rows)
    data = out.getvalue().encode()
    counting, fingerprinting = PageCheck(), PageCheck(count=False)
    for position in range(0, len(data), cut):
        counting.feed(data[position : position + cut])
        fingerprinting.feed(data[position : position + cut])
    assert fingerprinting.fingerprint(len(rows)) == counting.fingerprint()
    with pytest.raises(ValueError, match="does not count"):
        _ = fingerprinting.records
    with pytest.raises(ValueError, match="does not count"):
        fingerprinting.fingerprint()
