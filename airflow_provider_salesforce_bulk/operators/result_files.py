"""Streaming each job's result files to storage while counting rows and failed records by error code."""

from __future__ import annotations

import asyncio
import codecs
import collections
import csv
import io
import logging
import random
import re
from collections.abc import Awaitable, Callable
from typing import IO, Any, TypeVar

from airflow_provider_salesforce_bulk.client import (
    COLUMN_DELIMITERS,
    BulkIngestClient,
    RecordScan,
    ResultKind,
    ServerError,
    TransportError,
)
from airflow_provider_salesforce_bulk.triggers.events import check_job_id

__all__ = [
    "DOWNLOAD_ATTEMPTS",
    "RESULT_FILES",
    "ResultCounter",
    "copy_job_results",
    "download_with_retries",
]

log = logging.getLogger(__name__)
T = TypeVar("T")

DOWNLOAD_ATTEMPTS = 4
"""Attempts per result file; each starts the file again from its first byte."""
_BACKOFF = 0.5

RESULT_FILES = {
    "successful": ("successfulResults", "successfulResults.csv"),
    "failed": ("failedResults", "failedResults.csv"),
    "unprocessed": ("unprocessedrecords", "unprocessedrecords.csv"),
}
_CODE = re.compile(r"^([A-Z][A-Z0-9_]*)(?::|$)")
_SAMPLE_CHARS = 300


class ResultCounter:
    """A tee for ``copy_results``: writes the raw bytes to ``sink`` and parses them incrementally.

    Memory holds one network chunk plus one partial record. A record ends at a line feed outside
    quotes (the client's :class:`RecordScan`), so quoted newlines never split a record.
    """

    def __init__(self, sink: IO[bytes], delimiter: str, count_errors: bool) -> None:
        self._sink = sink
        self._delimiter = delimiter
        self._count_errors = count_errors
        self._utf8 = codecs.getincrementaldecoder("utf-8-sig")()
        self._pending = ""
        self._scan = RecordScan()
        self._header: list[str] | None = None
        self._error_column: int | None = None
        self.rows = 0
        self.by_code: collections.Counter[str] = collections.Counter()
        self.samples: dict[str, str] = {}

    async def write(self, data: bytes) -> None:
        self._sink.write(data)
        self._feed(self._utf8.decode(data))

    def finish(self) -> None:
        self._feed(self._utf8.decode(b"", final=True))
        if self._pending.strip("\r\n"):
            self._parse(self._pending)
        self._pending = ""

    def _feed(self, text: str) -> None:
        if not text:
            return
        self._pending += text
        end = self._scan.last_end(self._pending)
        if end:
            self._parse(self._pending[:end])
            self._pending = self._pending[end:]
            self._scan.consumed(end)

    def _parse(self, text: str) -> None:
        for row in csv.reader(io.StringIO(text, newline=""), delimiter=self._delimiter):
            if self._header is None:
                self._header = row
                if "sf__Error" in row:
                    self._error_column = row.index("sf__Error")
                continue
            if not row:
                continue
            self.rows += 1
            if self._count_errors and self._error_column is not None and self._error_column < len(row):
                message = row[self._error_column]
                match = _CODE.match(message)
                code = match[1] if match else "UNKNOWN"
                self.by_code[code] += 1
                self.samples.setdefault(code, message[:_SAMPLE_CHARS])


async def _with_retries(what: str, attempt: Callable[[], Awaitable[T]]) -> T:
    """Run ``attempt`` again from the start after a dropped stream or a server error, a few times."""
    for number in range(1, DOWNLOAD_ATTEMPTS + 1):
        try:
            return await attempt()
        except (TransportError, ServerError) as exc:
            if number == DOWNLOAD_ATTEMPTS:
                raise
            wait = random.uniform(0, _BACKOFF * 2 ** (number - 1))
            log.warning("%s failed (%s); starting it again in %.1fs", what, exc, wait)
            await asyncio.sleep(wait)
    raise AssertionError("unreachable")  # pragma: no cover


async def download_with_retries(client: BulkIngestClient, job_id: str, kind: ResultKind) -> bytes:
    """One result file in memory (a job's unprocessed records: at most one chunk's size)."""
    check_job_id(job_id)

    async def attempt() -> bytes:
        buffer = io.BytesIO()
        await client.copy_results(job_id, kind, buffer)
        return buffer.getvalue()

    return await _with_retries(f"Downloading {kind} of job {job_id}", attempt)


async def copy_job_results(
    client: BulkIngestClient, job_id: str, directory: Any, column_delimiter: str | None = None
) -> tuple[dict[str, str], dict[str, int], collections.Counter[str], dict[str, str]]:
    """Copy the three result files of one job under ``directory`` (an ``ObjectStoragePath``).

    ``column_delimiter`` is the job's (its ``columnDelimiter``, ``COMMA`` when not known).

    Returns
    -------
    tuple
        File URIs by kind, row counts by kind, failed records by error code, one sample message per code.
    """
    check_job_id(job_id)
    delimiter = COLUMN_DELIMITERS.get(column_delimiter or "COMMA", ",")
    job_dir = directory / job_id
    job_dir.mkdir(parents=True, exist_ok=True)
    uris: dict[str, str] = {}
    rows: dict[str, int] = {}
    by_code: collections.Counter[str] = collections.Counter()
    samples: dict[str, str] = {}
    for kind, (api_kind, filename) in RESULT_FILES.items():
        target = job_dir / filename

        async def attempt(target: Any = target, kind: str = kind, api_kind: str = api_kind) -> ResultCounter:
            # Each attempt truncates the file and counts from zero: a dropped stream leaves nothing behind.
            with target.open("wb") as sink:
                counter = ResultCounter(sink, delimiter, count_errors=kind == "failed")
                await client.copy_results(job_id, api_kind, counter)  # type: ignore[arg-type]
                counter.finish()
            return counter

        counter = await _with_retries(f"Copying {api_kind} of job {job_id}", attempt)
        uris[kind] = str(target)
        rows[kind] = counter.rows
        by_code.update(counter.by_code)
        for code, sample in counter.samples.items():
            samples.setdefault(code, sample)
    return uris, rows, by_code, samples
