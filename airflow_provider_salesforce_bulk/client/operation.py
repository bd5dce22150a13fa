"""A whole load: records → chunks → jobs, bounded in memory, accounting for every record."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from airflow_provider_salesforce_bulk.client.csv_split import CsvChunk, CsvSource, iter_csv_stream_chunks
from airflow_provider_salesforce_bulk.client.errors import (
    BulkJobFailedError,
    InputError,
    OperationTimeoutError,
    SalesforceBulkError,
    UploadOutcomeUnknownError,
)
from airflow_provider_salesforce_bulk.client.ingest import PollPolicy, check_job_options
from airflow_provider_salesforce_bulk.client.models import JobInfo, OperationType
from airflow_provider_salesforce_bulk.client.serialize import iter_record_chunks, validate_operation_fields

if TYPE_CHECKING:
    from airflow_provider_salesforce_bulk.client.ingest import BulkIngestClient

__all__ = ["JobResult", "perform_chunks", "perform_csv_operation", "perform_operation", "submit_job"]

log = logging.getLogger(__name__)

JobCreatedCallback = Callable[[JobInfo], Awaitable[None]]


@dataclasses.dataclass(frozen=True)
class JobResult:
    """Where the records of one job went.

    The job holds input records ``first_record_index`` to ``first_record_index + record_count - 1``.
    Of those, :attr:`number_records_succeeded` succeeded, :attr:`number_records_failed` failed (with
    Salesforce's error in the failed results) and :attr:`number_records_unprocessed` were not
    processed (a Failed or Aborted job); the three always add up to :attr:`record_count`. The
    per-record detail is streamed on demand with the ``iter_*`` methods, never held in memory.
    """

    job_info: JobInfo
    first_record_index: int
    record_count: int
    replaced_job_ids: tuple[str, ...] = ()
    """Jobs aborted, without their data ever being processed, because an upload's answer was lost."""
    client: BulkIngestClient | None = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def job_id(self) -> str:
        return self.job_info.id

    @property
    def number_records_processed(self) -> int:
        return min(self.job_info.number_records_processed, self.record_count)

    @property
    def number_records_failed(self) -> int:
        return min(self.job_info.number_records_failed, self.number_records_processed)

    @property
    def number_records_succeeded(self) -> int:
        return self.number_records_processed - self.number_records_failed

    @property
    def number_records_unprocessed(self) -> int:
        return self.record_count - self.number_records_processed

    @property
    def is_success(self) -> bool:
        """The job completed and every record in it succeeded."""
        return self.job_info.state == "JobComplete" and self.number_records_succeeded == self.record_count

    def _client(self) -> BulkIngestClient:
        if self.client is None:
            raise RuntimeError("this JobResult is not bound to a client")
        return self.client

    def iter_successful_results(self) -> AsyncIterator[dict[str, str]]:
        return self._client().iter_results(
            self.job_id, "successfulResults", column_delimiter=self.job_info.column_delimiter
        )

    def iter_failed_results(self) -> AsyncIterator[dict[str, str]]:
        return self._client().iter_results(
            self.job_id, "failedResults", column_delimiter=self.job_info.column_delimiter
        )

    def iter_unprocessed_records(self) -> AsyncIterator[dict[str, str]]:
        return self._client().iter_results(
            self.job_id, "unprocessedrecords", column_delimiter=self.job_info.column_delimiter
        )


async def submit_job(
    client: BulkIngestClient,
    operation: OperationType,
    sobject: str,
    data: bytes,
    *,
    external_id_field: str | None = None,
    assignment_rule_id: str | None = None,
    column_delimiter: str = "COMMA",
    line_ending: str = "LF",
    compress: bool = False,
    max_upload_attempts: int = 3,
    on_job_created: JobCreatedCallback | None = None,
) -> tuple[JobInfo, tuple[str, ...]]:
    """Create a job, upload one CSV chunk to it and close it, without ever loading the chunk twice.

    An upload whose answer is lost is never repeated on the same job (Salesforce takes one upload
    per job): that job is aborted, and the chunk goes to a fresh job, at most
    ``max_upload_attempts`` jobs in all. A job that is never closed is never processed, so even if
    the abort fails the chunk cannot be loaded twice.

    ``on_job_created`` is awaited with each new job before its upload, so a caller can record the
    job id durably first (the Airflow operator stores it for task retries).

    Returns
    -------
    tuple[JobInfo, tuple[str, ...]]
        The closed job, and the ids of jobs aborted on the way.
    """
    replaced: list[str] = []
    for attempt in range(1, max_upload_attempts + 1):
        job = await client.create_job(
            operation,
            sobject,
            external_id_field,
            assignment_rule_id,
            column_delimiter=column_delimiter,
            line_ending=line_ending,
        )
        try:
            if on_job_created is not None:
                await on_job_created(job)
            closed = await client.upload_job_data(job.id, data, compress=compress)
        except UploadOutcomeUnknownError as exc:
            replaced.append(job.id)
            await abort_quietly(client, job.id)
            if attempt == max_upload_attempts:
                raise
            log.warning("Upload to job %s got no answer (%s); sending the chunk to a new job", job.id, exc)
            continue
        except BaseException:
            await abort_quietly(client, job.id)
            raise
        return closed, tuple(replaced)
    raise AssertionError("unreachable")  # pragma: no cover


async def abort_quietly(client: BulkIngestClient, job_id: str) -> None:
    """Abort a job, logging instead of raising: used on paths that are already failing."""
    try:
        await asyncio.shield(client.abort_job(job_id))
    except (SalesforceBulkError, asyncio.CancelledError) as exc:
        log.warning("Could not abort job %s: %s", job_id, exc)


_DONE = object()


async def perform_operation(
    client: BulkIngestClient,
    operation: OperationType,
    sobject: str,
    data: Iterable[dict[str, Any]],
    fieldnames: Collection[str] | None = None,
    max_size_bytes: int = 100_000_000,
    max_records: int = 150_000_000,
    external_id_field: str | None = None,
    assignment_rule_id: str | None = None,
    polling_interval: float = 5.0,
    *,
    max_concurrent_jobs: int = 5,
    column_delimiter: str = "COMMA",
    line_ending: str = "LF",
    none_as: str = "empty",
    compress: bool = False,
    timeout: float | None = None,
    raise_on_failed_job: bool = False,
    max_upload_attempts: int = 3,
    serialize_in_thread: bool = True,
    on_job_created: JobCreatedCallback | None = None,
) -> AsyncIterator[JobResult]:
    """Load records into Salesforce and yield a :class:`JobResult` per job as each job finishes.

    Parameters
    ----------
    client : BulkIngestClient
    operation, sobject, data, fieldnames, max_size_bytes, max_records, external_id_field, assignment_rule_id
        As in the reference client; see :func:`serialize_ingest_data` for the data rules.
    polling_interval : float
        Longest wait between two polls of a job; polling starts at 0.5 s and backs off to it.
    max_concurrent_jobs : int
        Jobs in flight at once. A chunk is serialized only when a slot is free, so at most this
        many chunks are in memory.
    column_delimiter, line_ending
        The job's CSV dialect.
    none_as : {"empty", "null"}
        ``None`` written as an empty value (field left unchanged) or ``#N/A`` (field set to null).
    compress : bool
        gzip the uploads.
    timeout : float, optional
        Overall deadline in seconds; on expiry unfinished jobs are aborted and
        :class:`OperationTimeoutError` is raised.
    raise_on_failed_job : bool
        Raise :class:`BulkJobFailedError` for a Failed or Aborted job instead of yielding it.
    max_upload_attempts : int
        Fresh jobs tried for one chunk whose upload answer is lost.
    serialize_in_thread : bool
        Serialize chunks in a worker thread so polling goes on meanwhile. Turn off for inputs
        bound to the creating thread (a ``sqlite3`` cursor, for example).
    on_job_created : callable, optional
        Awaited with each job before its data is uploaded.

    Yields
    ------
    JobResult
        One per job, in the order jobs finish. Failed and Aborted jobs are yielded too (with
        their ``error_message``) unless ``raise_on_failed_job``.

    Raises
    ------
    InputError
        Bad input. Problems in the first chunk are found before any job is created.
    OperationTimeoutError, SalesforceBulkError
        On any error or cancellation, the jobs started and not finished are aborted first.
    """
    check_job_options(operation, sobject, external_id_field, column_delimiter, line_ending)
    if fieldnames is not None:
        validate_operation_fields(operation, list(fieldnames), external_id_field)
    chunks = iter_record_chunks(
        data,
        fieldnames=fieldnames,
        max_size_bytes=max_size_bytes,
        max_records=max_records,
        column_delimiter=column_delimiter,
        line_ending=line_ending,
        none_as=none_as,
    )
    async for result in perform_chunks(
        client,
        operation,
        sobject,
        chunks,
        external_id_field=external_id_field,
        assignment_rule_id=assignment_rule_id,
        polling_interval=polling_interval,
        max_concurrent_jobs=max_concurrent_jobs,
        column_delimiter=column_delimiter,
        line_ending=line_ending,
        compress=compress,
        timeout=timeout,
        raise_on_failed_job=raise_on_failed_job,
        max_upload_attempts=max_upload_attempts,
        serialize_in_thread=serialize_in_thread,
        on_job_created=on_job_created,
    ):
        yield result


async def perform_csv_operation(
    client: BulkIngestClient,
    operation: OperationType,
    sobject: str,
    source: CsvSource,
    max_size_bytes: int = 100_000_000,
    max_records: int = 150_000_000,
    external_id_field: str | None = None,
    assignment_rule_id: str | None = None,
    polling_interval: float = 5.0,
    *,
    column_delimiter: str = "COMMA",
    line_ending: str = "LF",
    **options: Any,
) -> AsyncIterator[JobResult]:
    """Load an existing CSV file or binary stream, split into jobs without re-encoding its values.

    The CSV must already be UTF-8 in the job's dialect (``column_delimiter``, ``line_ending``);
    its first line is the header, repeated in every job. Other options as :func:`perform_operation`.
    """
    check_job_options(operation, sobject, external_id_field, column_delimiter, line_ending)
    chunks = iter_csv_stream_chunks(
        source, max_size_bytes, max_records, line_ending=line_ending, column_delimiter=column_delimiter
    )
    async for result in perform_chunks(
        client,
        operation,
        sobject,
        chunks,
        external_id_field=external_id_field,
        assignment_rule_id=assignment_rule_id,
        polling_interval=polling_interval,
        column_delimiter=column_delimiter,
        line_ending=line_ending,
        **options,
    ):
        yield result


async def perform_chunks(
    client: BulkIngestClient,
    operation: OperationType,
    sobject: str,
    chunks: Iterator[CsvChunk],
    *,
    external_id_field: str | None = None,
    assignment_rule_id: str | None = None,
    polling_interval: float = 5.0,
    max_concurrent_jobs: int = 5,
    column_delimiter: str = "COMMA",
    line_ending: str = "LF",
    compress: bool = False,
    timeout: float | None = None,
    raise_on_failed_job: bool = False,
    max_upload_attempts: int = 3,
    serialize_in_thread: bool = True,
    on_job_created: JobCreatedCallback | None = None,
) -> AsyncIterator[JobResult]:
    """The engine of :func:`perform_operation`: one job per chunk, as chunks are produced.

    ``chunks`` is pulled only when a job slot is free. Parameters as :func:`perform_operation`.
    """
    check_job_options(operation, sobject, external_id_field, column_delimiter, line_ending)
    if max_concurrent_jobs < 1:
        raise InputError("max_concurrent_jobs must be at least 1", field="max_concurrent_jobs")
    if polling_interval <= 0:
        raise InputError("polling_interval must be positive", field="polling_interval")
    deadline = None if timeout is None else time.monotonic() + timeout
    poll = PollPolicy(initial=min(0.5, polling_interval), maximum=polling_interval)
    next_chunk = _chunk_reader(chunks, serialize_in_thread)

    # The first chunk is built before any job exists, so its input errors cost nothing.
    first = await next_chunk()
    if first is None:
        return
    validate_operation_fields(operation, first.fieldnames(column_delimiter), external_id_field)

    slots = asyncio.Semaphore(max_concurrent_jobs)
    await slots.acquire()
    queue: asyncio.Queue[object] = asyncio.Queue()
    unfinished: set[str] = set()
    job_tasks: set[asyncio.Task[None]] = set()
    submitted = 0

    async def track(job: JobInfo) -> None:
        unfinished.add(job.id)
        if on_job_created is not None:
            await on_job_created(job)

    async def run_job(chunk: CsvChunk) -> None:
        try:
            job, replaced = await submit_job(
                client,
                operation,
                sobject,
                chunk.data,
                external_id_field=external_id_field,
                assignment_rule_id=assignment_rule_id,
                column_delimiter=column_delimiter,
                line_ending=line_ending,
                compress=compress,
                max_upload_attempts=max_upload_attempts,
                on_job_created=track,
            )
            unfinished.difference_update(replaced)
            first_index, count = chunk.first_record_index, chunk.record_count
            del chunk  # the data is on Salesforce now: free the slot's memory while polling
            final = await client.wait_for_job(job.id, poll=poll)
            unfinished.discard(job.id)
            log.info(
                "Job %s %s: %d processed, %d failed of %d records",
                final.id,
                final.state,
                final.number_records_processed,
                final.number_records_failed,
                count,
            )
            if raise_on_failed_job and final.state in ("Failed", "Aborted"):
                raise BulkJobFailedError(
                    f"job {final.id} ended {final.state}: {final.error_message or 'no error message'}",
                    job_id=final.id,
                    state=final.state or "",
                    error_message=final.error_message,
                )
            queue.put_nowait(JobResult(final, first_index, count, replaced, client))
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            queue.put_nowait(exc)
        finally:
            slots.release()

    async def produce(chunk: CsvChunk | None) -> None:
        nonlocal submitted
        try:
            while chunk is not None:
                task = asyncio.create_task(run_job(chunk))
                job_tasks.add(task)
                task.add_done_callback(job_tasks.discard)
                submitted += 1
                chunk = None
                await slots.acquire()
                chunk = await next_chunk()
                if chunk is None:
                    slots.release()
            queue.put_nowait(_DONE)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            queue.put_nowait(exc)

    producer = asyncio.create_task(produce(first))
    del first  # the producer owns it now; the slot's memory goes when its job has it
    received = 0
    produced_all = False
    try:
        while not (produced_all and received == submitted):
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise OperationTimeoutError(f"perform_operation did not finish within {timeout}s")
            try:
                item = await asyncio.wait_for(queue.get(), remaining)
            except asyncio.TimeoutError:
                raise OperationTimeoutError(f"perform_operation did not finish within {timeout}s") from None
            if item is _DONE:
                produced_all = True
            elif isinstance(item, BaseException):
                raise item
            else:
                received += 1
                assert isinstance(item, JobResult)
                yield item
    finally:
        producer.cancel()
        for task in list(job_tasks):
            task.cancel()
        await asyncio.gather(producer, *job_tasks, return_exceptions=True)
        if unfinished:
            log.warning("Aborting %d unfinished job(s): %s", len(unfinished), ", ".join(sorted(unfinished)))
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(
                    asyncio.gather(*(abort_quietly(client, job_id) for job_id in sorted(unfinished))), 60
                )


def _chunk_reader(chunks: Iterator[CsvChunk], in_thread: bool) -> Callable[[], Awaitable[CsvChunk | None]]:
    if in_thread:

        async def read_in_thread() -> CsvChunk | None:
            return await asyncio.to_thread(next, chunks, None)

        return read_in_thread

    async def read_inline() -> CsvChunk | None:
        return next(chunks, None)

    return read_inline
