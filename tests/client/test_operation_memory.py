"""Memory stays flat in the data: once a chunk's job has its data, nothing in the client keeps the chunk.

A stub Bulk API that keeps nothing it is sent, and chunks watched by weak reference (the chunk) and by
``gc.get_referrers`` (its bytes, which take no weak reference): when a later chunk is asked for, every
chunk already loaded must be gone, the first one included.
"""

from __future__ import annotations

import gc
import json
import weakref
from collections.abc import Iterator

import httpx
import pytest

from airflow_provider_salesforce_bulk.client import (
    BulkIngestClient,
    JobSpec,
    SalesforceSession,
    StaticTokenAuth,
    TokenCache,
)
from airflow_provider_salesforce_bulk.client.csv_format import CsvChunk
from airflow_provider_salesforce_bulk.client.operation import perform_chunks

HEADER = b"Name\n"


class ForgetfulBulkApi:
    """Answers every call at once; remembers only record counts, never a request or its body."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            job_id = f"750{len(self.counts):015d}"
            self.counts[job_id] = 0
            return httpx.Response(200, json={"id": job_id, "state": "Open"})
        job_id = request.url.path.split("/jobs/ingest/", 1)[1].split("/")[0]
        if request.method == "PUT":
            self.counts[job_id] = request.content.count(b"\n") - 1
            return httpx.Response(201)
        if request.method == "PATCH":
            return httpx.Response(200, json={"id": job_id, "state": json.loads(request.content)["state"]})
        n = self.counts[job_id]
        done = {"state": "JobComplete", "numberRecordsProcessed": n, "numberRecordsFailed": 0}
        return httpx.Response(200, json={"id": job_id, **done})


class WatchedChunks:
    """Yields chunks and, before building each one, checks that the chunks already loaded are freed."""

    def __init__(self, count: int, records_per_chunk: int) -> None:
        self.count = count
        self.records_per_chunk = records_per_chunk
        self.chunks: list[weakref.ref[CsvChunk]] = []
        self.datas: list[bytes] = []  # the only holder the test allows
        self.leaks: list[str] = []

    def _check_loaded(self, loaded: int) -> None:
        gc.collect()
        for i in range(loaded):
            if self.chunks[i]() is not None:
                self.leaks.append(f"chunk {i} alive when chunk {loaded + 1} was asked for")
            holders = [r for r in gc.get_referrers(self.datas[i]) if r is not self.datas]
            if holders:
                kinds = ", ".join(sorted({type(r).__name__ for r in holders}))
                self.leaks.append(f"bytes of chunk {i} held by {kinds} when chunk {loaded + 1} was asked for")

    def __iter__(self) -> Iterator[CsvChunk]:
        n = self.records_per_chunk
        for i in range(self.count):
            # One job at a time: chunk i is asked for only once job i - 1 is done.
            self._check_loaded(i)
            data = HEADER + b"".join(b"record %d\n" % j for j in range(i * n, (i + 1) * n))
            chunk = CsvChunk(data=data, first_record_index=i * n, record_count=n)
            self.chunks.append(weakref.ref(chunk))
            self.datas.append(data)
            del data
            yield chunk
            del chunk


@pytest.mark.parametrize("in_thread", [False, True])
async def test_a_loaded_chunk_is_freed_before_the_next_is_built(in_thread: bool) -> None:
    watched = WatchedChunks(count=4, records_per_chunk=50)
    session = SalesforceSession(
        StaticTokenAuth("fixed-token", "https://fake.my.salesforce.com"),
        transport=httpx.MockTransport(ForgetfulBulkApi()),
        token_cache=TokenCache(),
    )
    async with session:
        client = BulkIngestClient(session)
        loaded = 0
        async for result in perform_chunks(
            client,
            JobSpec(operation="insert", object="Account"),
            iter(watched),
            polling_interval=0.001,
            max_concurrent_jobs=1,
            serialize_in_thread=in_thread,
        ):
            loaded += result.record_count
    assert loaded == 200
    assert watched.leaks == []
