"""Streaming each job's result files to storage while counting rows and failed records by error code.

A file a summary names is never truncated or rewritten. Each file is written under a partial name
of this try (``.<name>.<try>-<token>.partial``, which never looks complete) and published under its
own name only once complete: by a rename on local disk (atomic), by the filesystem's move on object
storage, where there is no rename: a server-side copy, which makes the named object appear whole or
not at all, then the partial object's deletion. A name already published is kept (only complete
files are ever published, and a job's results are the same for every try), so a try that woke up
after its retry took over cannot replace what its successor reported; its partial files are its
own. A try killed mid-copy leaves only a partial file behind.
"""

from __future__ import annotations

import asyncio
import codecs
import collections
import contextlib
import csv
import io
import logging
import random
import secrets
import threading
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import IO, Any, TypeVar

from airflow_provider_salesforce_bulk.client import BulkIngestClient, ServerError, TransportError
from airflow_provider_salesforce_bulk.client.csv_format import COLUMN_DELIMITERS, RecordScan, count_records
from airflow_provider_salesforce_bulk.client.models import ResultKind
from airflow_provider_salesforce_bulk.client.sf_error import parse_sf_error
from airflow_provider_salesforce_bulk.operators.try_stop import check_stop
from airflow_provider_salesforce_bulk.triggers.events import check_job_id

__all__ = [
    "DOWNLOAD_ATTEMPTS",
    "NO_RESULTS",
    "RESULT_FILES",
    "JobResults",
    "ResultCounter",
    "copy_job_results",
    "download_with_retries",
    "partial_name",
    "publish",
    "write_then_publish",
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
_SAMPLE_CHARS = 300


class ResultCounter:
    """A tee for ``copy_results``: writes the raw bytes to ``sink`` and parses them incrementally.

    Memory holds one network chunk plus one partial record. A record ends at a line feed outside
    quotes (the client's :class:`RecordScan`), so quoted newlines never split a record.
    """

    def __init__(
        self, sink: IO[bytes], delimiter: str, count_errors: bool, stop: threading.Event | None = None
    ) -> None:
        self._sink = sink
        self._stop = stop
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
        check_stop(self._stop, "writing more of a result file")
        self._sink.write(data)
        self._feed(self._utf8.decode(data))

    def finish(self) -> None:
        self._feed(self._utf8.decode(b"", final=True))
        if self._pending.strip("\r\n"):
            self._parse_rows(self._pending)  # a last record without its line feed: as csv reads it
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
        """Whole records: only counted when no value is wanted from them (a million in about a
        third of a parse's CPU), parsed otherwise."""
        if self._header is None:
            end = RecordScan().first_end(text)
            head, text = (text, "") if end is None else (text[:end], text[end:])
            self._parse_rows(head)
        if not text:
            return
        if not (self._count_errors and self._error_column is not None):
            counted = count_records(text)
            if counted is not None:
                self.rows += counted
                return
        self._parse_rows(text)

    def _parse_rows(self, text: str) -> None:
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
                code = parse_sf_error(message).status_code or "UNKNOWN"
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


def partial_name(target: Any, token: str) -> Any:
    """Where this try writes ``target`` until it is complete (beside it: a rename stays in one folder)."""
    return target.parent / f".{target.name}.{token}.partial"


def publish(partial: Any, target: Any) -> bool:
    """Move a complete ``partial`` file to ``target``, unless ``target`` is published already.

    Returns whether this call published it; otherwise ``partial`` is removed and ``target`` kept.
    """
    if target.exists():
        partial.unlink(missing_ok=True)
        return False
    partial.rename(target)
    return True


async def write_then_publish(
    target: Any, token: str, write: Callable[[IO[bytes]], Awaitable[T]], stop: threading.Event | None
) -> T:
    """``write(sink)`` into ``target``'s partial file of ``token``, then publish it (not if ``stop``
    is set by then); the partial file never stays behind."""
    partial = partial_name(target, token)
    try:
        with partial.open("wb") as sink:
            result = await write(sink)
        check_stop(stop, f"publishing {target}")
        if not publish(partial, target):
            log.info("%s was published by another try: kept as it is", target)
        return result
    except BaseException:
        with contextlib.suppress(Exception):
            partial.unlink(missing_ok=True)
        raise


@dataclass(frozen=True)
class JobResults:
    """What copying one job's result files found: the files, their rows, its failures by error code."""

    uris: Mapping[str, str] = field(default_factory=dict)
    """File URI by kind (``successful``, ``failed``, ``unprocessed``)."""
    rows: Mapping[str, int] = field(default_factory=dict)
    """Rows (records) by kind."""
    by_code: Mapping[str, int] = field(default_factory=dict)
    """Failed records by ``sf__Error`` status code."""
    samples: Mapping[str, str] = field(default_factory=dict)
    """One failure message per status code, for the task's error."""


NO_RESULTS = JobResults()
"""A job whose result files were not read (not ended, or an earlier round's)."""


async def copy_job_results(
    client: BulkIngestClient,
    job_id: str,
    directory: Any,
    column_delimiter: str | None = None,
    *,
    stop: threading.Event | None = None,
    token: str | None = None,
) -> JobResults:
    """Copy the three result files of one job under ``directory`` (an ``ObjectStoragePath``).

    ``column_delimiter`` is the job's (its ``columnDelimiter``, ``COMMA`` when not known). Each file
    is written under a partial name with ``token`` (this try's) and published when complete; a set
    ``stop`` ends the copy at the next network piece with
    :class:`~airflow_provider_salesforce_bulk.operators.try_stop.TryStopped`, leaving no partial file.

    Returns
    -------
    JobResults
        File URIs by kind, row counts by kind, failed records by error code, one sample message per code.
    """
    check_job_id(job_id)
    token = token or secrets.token_hex(4)
    delimiter = COLUMN_DELIMITERS.get(column_delimiter or "COMMA", ",")
    job_dir = directory / job_id
    job_dir.mkdir(parents=True, exist_ok=True)
    uris: dict[str, str] = {}
    rows: dict[str, int] = {}
    by_code: collections.Counter[str] = collections.Counter()
    samples: dict[str, str] = {}
    for kind, (api_kind, filename) in RESULT_FILES.items():
        target = job_dir / filename
        check_stop(stop, f"copying {target}")

        async def write(sink: IO[bytes], kind: str = kind, api_kind: str = api_kind) -> ResultCounter:
            counter = ResultCounter(sink, delimiter, count_errors=kind == "failed", stop=stop)
            await client.copy_results(job_id, api_kind, counter)  # type: ignore[arg-type]
            counter.finish()
            return counter

        async def attempt(target: Any = target, write: Any = write) -> ResultCounter:
            # Each attempt writes its partial file from the start and counts from zero.
            return await write_then_publish(target, token, write, stop)

        counter = await _with_retries(f"Copying {api_kind} of job {job_id}", attempt)
        uris[kind] = str(target)
        rows[kind] = counter.rows
        by_code.update(counter.by_code)
        for code, sample in counter.samples.items():
            samples.setdefault(code, sample)
    return JobResults(uris, rows, dict(by_code), samples)
