"""``IngestJobApi``: every Bulk API 2.0 ingest job endpoint, one method each.

The job-level half of :class:`~airflow_provider_salesforce_bulk.client.ingest.BulkIngestClient`:
:mod:`.operation` drives a whole load through it, and ``BulkIngestClient`` adds that load on top, so
the modules depend one way (ingest_jobs <- operation <- ingest).
"""

from __future__ import annotations

import asyncio
import csv
import gzip
import logging
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import IO, Any, Literal, Protocol

import httpx
import orjson

from airflow_provider_salesforce_bulk.client.csv_format import COLUMN_DELIMITERS, Chunk, CsvChunk
from airflow_provider_salesforce_bulk.client.errors import (
    InputError,
    InvalidJobStateError,
    OperationTimeoutError,
    SalesforceApiError,
    TransportError,
    UnexpectedResponseError,
    UploadOutcomeUnknownError,
)
from airflow_provider_salesforce_bulk.client.job_spec import DEFAULT_OPERATION_TIMEOUT, JobSpec, PollPolicy
from airflow_provider_salesforce_bulk.client.jobs_common import (
    JSON_HEADERS,
    check_job_id,
    iter_job_list,
    job_info,
    list_params,
)
from airflow_provider_salesforce_bulk.client.limits import OrgLimits, get_limits
from airflow_provider_salesforce_bulk.client.models import CLOSED_STATES, ColumnDelimiter, JobInfo, ResultKind
from airflow_provider_salesforce_bulk.client.result_csv import iter_csv_records
from airflow_provider_salesforce_bulk.client.retry import RetrySafety, check_seconds
from airflow_provider_salesforce_bulk.client.session import BodyFactory, SalesforceSession
from airflow_provider_salesforce_bulk.client.timeouts import within

__all__ = ["RESULT_KINDS", "AsyncWritable", "IngestJobApi"]

log = logging.getLogger(__name__)

RESULT_KINDS: tuple[ResultKind, ...] = ("successfulResults", "failedResults", "unprocessedrecords")


class AsyncWritable(Protocol):
    async def write(self, data: bytes, /) -> Any: ...


class IngestJobApi:
    """The ingest job endpoints of Bulk API 2.0 on one session; :class:`BulkIngestClient` adds whole loads.

    Parameters
    ----------
    session : SalesforceSession
        Authenticated HTTP access to the org; closing it is the caller's business.
    """

    def __init__(self, session: SalesforceSession) -> None:
        self.session = session

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.session!r}>"

    # -- jobs ---------------------------------------------------------------------------------

    async def create_job_from_spec(self, spec: JobSpec) -> JobInfo:
        """Create an ingest job (state Open) as ``spec`` says (already checked when it was built)."""
        response = await self.session.request(
            "POST", "jobs/ingest", content=orjson.dumps(spec.create_body()), headers=JSON_HEADERS
        )
        return job_info(response)

    async def get_limits(self) -> OrgLimits:
        """The org's daily allowances (``GET /limits``); see :func:`.limits.get_limits`."""
        return await get_limits(self.session)

    async def get_job(self, job_id: str) -> JobInfo:
        """Information about a job, counters included."""
        response = await self.session.request(
            "GET", f"jobs/ingest/{check_job_id(job_id)}", headers=JSON_HEADERS
        )
        return job_info(response)

    async def list_jobs(
        self,
        is_pk_chunking_enabled: bool | None = None,
        *,
        job_type: str | None = None,
        concurrency_mode: str | None = None,
    ) -> AsyncIterator[JobInfo]:
        """Every ingest job of the org, following ``nextRecordsUrl`` page by page."""
        params = list_params(is_pk_chunking_enabled, job_type, concurrency_mode)
        async for job in iter_job_list(self.session, "jobs/ingest", params, _next_list_page):
            yield job

    async def close_job(self, job_id: str) -> JobInfo:
        """Mark the upload complete (state UploadComplete) so Salesforce starts processing.

        Safe to repeat: if an earlier close whose answer was lost went through, the job's current
        state is returned instead of an error.
        """
        try:
            return await self._set_state(job_id, "UploadComplete")
        except InvalidJobStateError:
            job = await self.get_job(job_id)
            if job.state in CLOSED_STATES:
                return job
            raise

    async def abort_job(self, job_id: str) -> JobInfo:
        """Abort a job and return its state read afterwards (with real counters: the abort's own
        answer has none). Aborting a job that already ended returns its state instead of failing.

        A job whose records may be processing is partly loaded once aborted: abort only on a
        user's decision, or a job that was never closed (it cannot have processed anything).
        """
        try:
            await self._set_state(job_id, "Aborted")
        except InvalidJobStateError:
            job = await self.get_job(job_id)
            if job.is_terminal:
                return job
            raise
        return await self.get_job(job_id)

    async def _set_state(self, job_id: str, state: Literal["UploadComplete", "Aborted"]) -> JobInfo:
        response = await self.session.request(
            "PATCH",
            f"jobs/ingest/{check_job_id(job_id)}",
            content=orjson.dumps({"state": state}),
            headers=JSON_HEADERS,
        )
        return job_info(response)

    async def delete_job(self, job_id: str) -> None:
        """Delete a finished job and its results (written records stay written)."""
        await self.session.request("DELETE", f"jobs/ingest/{check_job_id(job_id)}")

    async def upload_job_data(
        self,
        job_id: str,
        data: bytes | Chunk,
        *,
        close: bool = True,
        compress: bool = False,
    ) -> JobInfo:
        """Upload the job's CSV (one upload per job) and, by default, close the job.

        Parameters
        ----------
        job_id : str
            An Open job.
        data : bytes, CsvChunk or StagedChunk
            The whole CSV, header included, at most 100 MB. A chunk is streamed from its
            ``open()`` in pieces (a file-backed one is never read whole into memory).
        close : bool
            Close the job after the upload (as the reference client does).
        compress : bool
            Send the body gzip-compressed (``Content-Encoding: gzip``). Off by default: Salesforce
            documents request compression for REST, not explicitly for this upload.

        Raises
        ------
        UploadOutcomeUnknownError
            The upload may or may not have reached Salesforce. Never send the data to this job
            again: abort it and use a new job (``perform_operation`` does this for you).
        """
        headers = {"Content-Type": "text/csv"}
        body: bytes | BodyFactory
        if isinstance(data, CsvChunk):
            data = data.data  # already in memory
        if isinstance(data, (bytes, bytearray, memoryview)):
            body = bytes(data)
            if compress:
                # gzip of a large chunk takes long enough to stall other jobs' polling.
                body = await asyncio.to_thread(gzip.compress, body, 6)
        else:
            body = _streamed(data, compress)
            if not compress:
                headers["Content-Length"] = str(data.size)
        if compress:
            headers["Content-Encoding"] = "gzip"
        try:
            await self.session.request(
                "PUT",
                f"jobs/ingest/{check_job_id(job_id)}/batches",
                content=body,
                headers=headers,
                safety=RetrySafety.NOT_SENT_ONLY,
            )
        except TransportError as exc:
            raise UploadOutcomeUnknownError(
                f"upload to job {job_id} got no answer ({exc}); it must not be sent to this job again",
                job_id=job_id,
            ) from exc
        except SalesforceApiError as exc:
            if exc.status_code >= 500:
                raise UploadOutcomeUnknownError(
                    f"upload to job {job_id} failed with HTTP {exc.status_code}; whether Salesforce kept "
                    "the data is unknown, so it must not be sent to this job again",
                    job_id=job_id,
                ) from exc
            raise
        if close:
            return await self.close_job(job_id)
        return JobInfo(id=job_id, state="Open")

    async def wait_for_job(
        self,
        job_id: str,
        *,
        poll: PollPolicy | None = None,
        timeout: float = DEFAULT_OPERATION_TIMEOUT,
        on_progress: Callable[[JobInfo], Awaitable[None] | None] | None = None,
    ) -> JobInfo:
        """Poll a job with backoff until it is JobComplete, Failed or Aborted.

        ``timeout`` (seconds, finite, 24 hours by default) bounds the whole wait, a poll in
        flight included.

        Raises
        ------
        InputError
            ``timeout`` is not a finite number above 0.
        OperationTimeoutError
            ``timeout`` seconds passed first (the job keeps running on Salesforce; it is not aborted).
        """
        check_seconds("timeout", timeout)
        deadline = time.monotonic() + timeout
        last: JobInfo | None = None
        for wait in (poll or PollPolicy()).intervals():
            remaining = deadline - time.monotonic()
            try:
                # A poll that never waits (an answer already there) would outrun an expired within():
                # the deadline is checked first.
                if remaining <= 0:
                    raise asyncio.TimeoutError
                # within(), not asyncio.wait_for: 3.11's wait_for drops a cancellation arriving with the
                # answer, and the cancelled load then polled on until this wait's own deadline.
                job = await within(self.get_job(job_id), remaining)
            except asyncio.TimeoutError:
                if time.monotonic() < deadline:
                    raise  # a timeout of the request itself, not of this wait
                state = last.state if last is not None else "not seen"
                raise OperationTimeoutError(
                    f"job {job_id} still {state} after {timeout}s; it keeps running on Salesforce"
                ) from None
            last = job
            if on_progress is not None:
                maybe = on_progress(job)
                if maybe is not None:
                    await maybe
            if job.is_terminal:
                return job
            await asyncio.sleep(max(min(wait, deadline - time.monotonic()), 0))
        raise AssertionError("unreachable")  # pragma: no cover

    # -- results ------------------------------------------------------------------------------

    async def iter_results(
        self, job_id: str, kind: ResultKind, *, column_delimiter: ColumnDelimiter | None = None
    ) -> AsyncIterator[dict[str, str]]:
        """Stream one result file as dicts, parsed as CSV while it arrives.

        ``column_delimiter`` defaults to the job's own (read with :meth:`get_job`). A download dropped
        midway (or outlasting ``timeouts.download``) starts again from the top of the file, within the
        session's retry policy, skipping the records already yielded: each record is yielded once.
        A row with fewer values than the header gets ``""`` for the missing columns, one with more
        keeps the extra values under ``_extra_1``, ``_extra_2``, ... (see
        :func:`~airflow_provider_salesforce_bulk.client.result_csv.iter_csv_records`).

        Raises
        ------
        TransportError
            The download kept failing until the retry policy was spent.
        UnexpectedResponseError
            The file is not CSV, or a restarted download holds fewer records than already yielded.
        """
        path = f"jobs/ingest/{check_job_id(job_id)}/{_kind(kind)}"
        if column_delimiter is None:
            column_delimiter = (await self.get_job(job_id)).column_delimiter or "COMMA"
        delimiter = COLUMN_DELIMITERS[column_delimiter]
        budget = self.session.retry_policy.budget()
        yielded = 0
        while True:
            opened = False
            skip = yielded
            try:
                async with self.session.stream("GET", path, headers={"Accept": "text/csv"}) as response:
                    opened = True
                    async for record in iter_csv_records(_body(response, job_id), delimiter=delimiter):
                        if skip:
                            skip -= 1
                            continue
                        yield record
                        yielded += 1
                if skip:
                    raise UnexpectedResponseError(
                        f"{kind} of job {job_id} held fewer records when downloaded again after a "
                        f"dropped download ({yielded - skip} instead of at least {yielded})"
                    )
                return
            except csv.Error as exc:
                raise UnexpectedResponseError(f"{kind} of job {job_id} is not valid CSV: {exc}") from exc
            except TransportError as exc:
                # The head's own failures were already retried by the session.
                wait = budget.next_wait() if opened else None
                if wait is None:
                    raise
                log.warning(
                    "%s of job %s: download dropped (%s); starting again in %.1fs", kind, job_id, exc, wait
                )
            await asyncio.sleep(wait)

    async def iter_successful_results(self, job_id: str) -> AsyncIterator[dict[str, str]]:
        """``sf__Id``, ``sf__Created`` and the uploaded columns of each successful record."""
        async for record in self.iter_results(job_id, "successfulResults"):
            yield record

    async def iter_failed_results(self, job_id: str) -> AsyncIterator[dict[str, str]]:
        """``sf__Id``, ``sf__Error`` and the uploaded columns of each failed record."""
        async for record in self.iter_results(job_id, "failedResults"):
            yield record

    async def iter_unprocessed_records(self, job_id: str) -> AsyncIterator[dict[str, str]]:
        """The uploaded columns of each record a Failed or Aborted job did not process."""
        async for record in self.iter_results(job_id, "unprocessedrecords"):
            yield record

    async def copy_results(
        self, job_id: str, kind: ResultKind, destination: IO[bytes] | AsyncWritable
    ) -> int:
        """Copy one result file, as Salesforce sent it (decompressed), to a file or stream.

        ``destination`` is a binary file object or anything with an async ``write(bytes)``.
        Returns the number of bytes written. Memory holds one network chunk.

        A download dropped midway (or outlasting ``timeouts.download``) starts again from the top of
        the file, within the session's retry policy, when the destination can be rewound: a binary
        file object whose ``seekable()`` is true is sought back to where the copy began and truncated
        there, so it ends holding the file exactly once. A destination that cannot be rewound (a pipe,
        an async writer) is retried only while nothing was written to it; otherwise the
        :class:`TransportError` is raised and the caller must start over with a fresh destination.
        """
        path = f"jobs/ingest/{check_job_id(job_id)}/{_kind(kind)}"
        rewind = _rewinder(destination)
        budget = self.session.retry_policy.budget()
        while True:
            opened = False
            written = 0
            try:
                async with self.session.stream("GET", path, headers={"Accept": "text/csv"}) as response:
                    opened = True
                    async for chunk in _body(response, job_id):
                        result = destination.write(chunk)
                        if asyncio.iscoroutine(result):
                            await result
                        written += len(chunk)
                return written
            except TransportError as exc:
                wait = budget.next_wait() if opened and (rewind is not None or not written) else None
                if wait is None:
                    raise
                log.warning(
                    "%s of job %s: download dropped (%s); starting again in %.1fs", kind, job_id, exc, wait
                )
            if written and rewind is not None:
                rewind()
            await asyncio.sleep(wait)

    async def get_results(self, job_id: str, kind: ResultKind) -> list[dict[str, str]]:
        """One result file as a list (for small jobs; prefer :meth:`iter_results`)."""
        return [record async for record in self.iter_results(job_id, kind)]


_UPLOAD_PIECE = 1 << 20


def _streamed(chunk: Chunk, compress: bool) -> BodyFactory:
    """A body factory reading ``chunk`` in pieces, each read (and gzip step) in a thread so the
    event loop keeps polling; every call opens the chunk again, so the session can resend it."""

    async def pieces() -> AsyncIterator[bytes]:
        stream = await asyncio.to_thread(chunk.open)
        packer = zlib.compressobj(6, zlib.DEFLATED, 31) if compress else None
        try:
            while True:
                piece = await asyncio.to_thread(stream.read, _UPLOAD_PIECE)
                if not piece:
                    break
                if packer is not None:
                    piece = await asyncio.to_thread(packer.compress, piece)
                    if not piece:
                        continue
                yield piece
            if packer is not None:
                yield packer.flush()
        finally:
            await asyncio.to_thread(stream.close)

    return pieces


def _next_list_page(page: dict[str, Any]) -> str | None:
    next_url = page.get("nextRecordsUrl")
    if next_url is not None and not isinstance(next_url, str):
        raise UnexpectedResponseError(f"nextRecordsUrl is not a string: {type(next_url).__name__}")
    # An absolute nextRecordsUrl is checked against the allowed hosts by the session.
    return next_url if next_url and not page.get("done", False) else None


def _rewinder(destination: object) -> Callable[[], None] | None:
    """A function putting a seekable binary file back where the copy begins, or ``None``."""
    seekable = getattr(destination, "seekable", None)
    if not callable(seekable) or asyncio.iscoroutinefunction(seekable):
        return None
    try:
        if not seekable():
            return None
        handle: IO[bytes] = destination  # type: ignore[assignment]
        start = handle.tell()
    except (OSError, ValueError):
        return None

    def rewind() -> None:
        handle.seek(start)
        handle.truncate()

    return rewind


def _kind(kind: str) -> str:
    if kind not in RESULT_KINDS:
        raise InputError(f"unknown result kind {kind!r}; expected one of {RESULT_KINDS}", field="kind")
    return kind


async def _body(response: httpx.Response, job_id: str) -> AsyncIterator[bytes]:
    try:
        async for chunk in response.aiter_bytes():
            yield chunk
    except httpx.HTTPError as exc:
        raise TransportError(f"reading results of job {job_id} failed: {type(exc).__name__}: {exc}") from exc
