"""Chunks written straight into files (issue 15 §4): the same bytes as in memory, and streamed uploads.

Every chunk builder given a :class:`FileSink` writes exactly the bytes it would have joined in memory,
with the SHA-256 of those bytes; an upload of a file-backed chunk streams the file in pieces with its
``Content-Length``, and a request the session sends again (it never reached the server) sends the
whole file again, not the rest of a spent iterator.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from airflow_provider_salesforce_bulk.client import BulkIngestClient, ChunkFormat, ChunkLimits, RetryPolicy
from airflow_provider_salesforce_bulk.client.arrow_chunks import iter_arrow_source_chunks
from airflow_provider_salesforce_bulk.client.chunk_files import FileSink
from airflow_provider_salesforce_bulk.client.csv_format import StagedChunk
from airflow_provider_salesforce_bulk.client.csv_split import iter_csv_stream_chunks
from airflow_provider_salesforce_bulk.client.serialize import iter_record_chunks
from airflow_provider_salesforce_bulk.emulator.server import RunningEmulator
from tests.client import helpers
from tests.client.fake_bulk import FaultyTransport

FORMAT = ChunkFormat()


def file_sink(folder: Path) -> FileSink:
    def create(name: str) -> IO[bytes]:
        return open(folder / name, "wb")

    def reader(name: str) -> Callable[[], IO[bytes]]:
        return lambda: open(folder / name, "rb")

    return FileSink(create, reader, lambda name: str(folder / name))


def records(n: int) -> list[dict[str, Any]]:
    return [
        {"LastName": f'Name {i}, "quoted"' if i % 7 == 0 else f"Name {i}", "Amount": i * 1.5}
        for i in range(n)
    ]


def assert_same(memory: list[Any], staged: list[Any]) -> None:
    assert [(c.first_record_index, c.record_count) for c in staged] == [
        (c.first_record_index, c.record_count) for c in memory
    ]
    for in_memory, in_file in zip(memory, staged, strict=True):
        assert isinstance(in_file, StagedChunk)
        data = Path(in_file.path).read_bytes()
        assert data == in_memory.data
        assert in_file.size == len(data)
        assert in_file.digest == hashlib.sha256(data).hexdigest() == in_memory.digest
        assert in_file.fieldnames() == in_memory.fieldnames()


@settings(max_examples=25, deadline=None)
@given(n=st.integers(0, 300), max_records=st.integers(1, 120), max_bytes=st.integers(200, 5_000))
def test_records_into_files_are_the_bytes_in_memory(
    tmp_path_factory: pytest.TempPathFactory, n: int, max_records: int, max_bytes: int
) -> None:
    limits = ChunkLimits(max_size_bytes=max_bytes, max_records=max_records)
    folder = tmp_path_factory.mktemp("sink")
    memory = list(iter_record_chunks(records(n), ["LastName", "Amount"], limits, FORMAT))
    staged = list(
        iter_record_chunks(records(n), ["LastName", "Amount"], limits, FORMAT, sink=file_sink(folder))
    )
    assert_same(memory, staged)


@pytest.mark.parametrize(
    ("max_bytes", "max_records", "block"), [(300, 50, 7), (100_000, 13, 64), (1_000, 1_000, 1 << 20)]
)
def test_csv_split_into_files_is_the_bytes_in_memory(
    tmp_path: Path, max_bytes: int, max_records: int, block: int
) -> None:
    text = "LastName,Notes\n" + "".join(
        f'N{i},"line one\nline {i}"\n' if i % 5 == 0 else f"N{i},plain\n" for i in range(400)
    )
    limits = ChunkLimits(max_size_bytes=max_bytes, max_records=max_records)
    memory = list(iter_csv_stream_chunks(io.BytesIO(text.encode()), limits, FORMAT, block_size=block))
    staged = list(
        iter_csv_stream_chunks(
            io.BytesIO(text.encode()), limits, FORMAT, block_size=block, sink=file_sink(tmp_path)
        )
    )
    assert_same(memory, staged)


def test_arrow_into_files_is_the_bytes_in_memory(tmp_path: Path) -> None:
    import pyarrow as pa

    table = pa.Table.from_pylist(records(1_000))
    limits = ChunkLimits(max_size_bytes=4_000, max_records=90)
    memory = list(iter_arrow_source_chunks(table, None, limits, FORMAT))
    staged = list(iter_arrow_source_chunks(table, None, limits, FORMAT, sink=file_sink(tmp_path)))
    assert_same(memory, staged)


@pytest.fixture(autouse=True)
def clean(emulator: RunningEmulator) -> None:
    emulator.reset()


async def test_a_staged_chunk_is_streamed_and_sent_whole_again_after_a_refused_upload(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    rows = [{"LastName": f"Streamed {i} " + "y" * 60, "Title": "x" * 120} for i in range(15_000)]
    (chunk,) = iter_record_chunks(rows, ["LastName", "Title"], sink=file_sink(tmp_path))
    assert isinstance(chunk, StagedChunk)
    assert chunk.size > 2 << 20  # several upload pieces
    refused: list[int] = []

    def refuse_first_upload(request: httpx.Request) -> httpx.Response | None:
        if request.method == "PUT" and not refused:
            refused.append(1)
            # Refused before a byte was read (429): the session sends the upload again.
            return httpx.Response(
                429, headers={"Retry-After": "0"}, json=[{"errorCode": "REQUEST_LIMIT_EXCEEDED"}]
            )
        return None

    transport = FaultyTransport(refuse_first_upload)
    policy = RetryPolicy(max_attempts=3, initial_delay=0.01, max_delay=0.05, max_total=30)
    async with helpers.emulator_session(emulator, transport=transport, retry_policy=policy) as session:
        client = BulkIngestClient(session)
        job = await client.create_job("insert", "Contact")
        await client.upload_job_data(job.id, chunk)
        final = await client.wait_for_job(job.id)
    puts = [r for r in transport.requests if r.method == "PUT"]
    assert len(puts) == 2
    assert all(r.headers["Content-Length"] == str(chunk.size) for r in puts)
    assert "Transfer-Encoding" not in puts[1].headers
    assert (final.state, final.number_records_processed, final.number_records_failed) == (
        "JobComplete",
        15_000,
        0,
    )
    stored = sorted(r["LastName"] for r in emulator.records("Contact"))
    assert stored == sorted(row["LastName"] for row in rows)
