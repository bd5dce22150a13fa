"""A whole load: records → chunks → jobs, bounded in memory, accounting for every record."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterable, Iterator
from typing import TYPE_CHECKING, Any, TypedDict

from airflow_provider_salesforce_bulk.client.csv_format import (
    MAX_RECORDS,
    MAX_SIZE_BYTES,
    Chunk,
    CsvSource,
)
from airflow_provider_salesforce_bulk.client.csv_split import iter_csv_stream_chunks
from airflow_provider_salesforce_bulk.client.errors import (
    BulkJobFailedError,
    BulkOperationError,
    BulkOperationTimeoutError,
    JobOutcomeUnknownError,
    JobReport,
    JobReportStatus,
    OperationTimeoutError,
    SalesforceBulkError,
    UploadOutcomeUnknownError,
)
from airflow_provider_salesforce_bulk.client.ingest_jobs import IngestJobApi
from airflow_provider_salesforce_bulk.client.job_spec import (
    DEFAULT_OPERATION_TIMEOUT,
    ChunkLimits,
    JobSpec,
    PollPolicy,
)
from airflow_provider_salesforce_bulk.client.models import (
    FAILED_STATES,
    ColumnDelimiter,
    JobInfo,
    LineEnding,
    NoneAs,
    OperationType,
    RecordCounts,
)
from airflow_provider_salesforce_bulk.client.retry import check_count, check_seconds
from airflow_provider_salesforce_bulk.client.serialize import iter_record_chunks
from airflow_provider_salesforce_bulk.client.timeouts import within

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = [
    "JobResult",
    "RunOptions",
    "close_uploaded_job",
    "perform_chunks",
    "perform_csv_operation",
    "perform_operation",
    "submit_job",
]

log = logging.getLogger(__name__)

JobCreatedCallback = Callable[[JobInfo], Awaitable[None]]
JobAbortedCallback = Callable[[JobInfo, BaseException], Awaitable[None]]


class RunOptions(TypedDict, total=False):
    """How a load runs its jobs: the keyword options :func:`perform_operation` and
    :func:`perform_csv_operation` pass on to :func:`perform_chunks`, which documents their defaults."""

    max_concurrent_jobs: int
    compress: bool
    raise_on_failed_job: bool
    max_upload_attempts: int
    serialize_in_thread: bool
    on_job_created: JobCreatedCallback | None


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
    client: IngestJobApi | None = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def job_id(self) -> str:
        return self.job_info.id

    @property
    def counts(self) -> RecordCounts:
        """The job's counters, kept within its :attr:`record_count`."""
        info = self.job_info
        return RecordCounts.of(self.record_count, info.number_records_processed, info.number_records_failed)

    @property
    def number_records_processed(self) -> int:
        return self.counts.processed

    @property
    def number_records_failed(self) -> int:
        return self.counts.failed

    @property
    def number_records_succeeded(self) -> int:
        return self.counts.succeeded

    @property
    def number_records_unprocessed(self) -> int:
        return self.counts.unprocessed

    @property
    def is_success(self) -> bool:
        """The job completed and every record in it succeeded."""
        return self.job_info.state == "JobComplete" and self.number_records_succeeded == self.record_count

    def _client(self) -> IngestJobApi:
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
    client: IngestJobApi,
    spec: JobSpec,
    data: bytes | Chunk,
    *,
    compress: bool = False,
    max_upload_attempts: int = 3,
    on_job_created: JobCreatedCallback | None = None,
    on_job_closing: JobCreatedCallback | None = None,
    max_close_attempts: int = 3,
    on_job_aborted: JobAbortedCallback | None = None,
    abort_on_interruption: bool = True,
) -> tuple[JobInfo, tuple[str, ...]]:
    """Create a job as ``spec`` says, upload one CSV chunk to it and close it, without ever loading the
    chunk twice.

    Two rules decide what happens when an answer is lost:

    * Before the close is sent, the job cannot process anything. An upload whose answer is lost is
      never repeated on the same job (Salesforce takes one upload per job): that job is aborted and
      the chunk goes to a fresh job, at most ``max_upload_attempts`` jobs in all. Any other failure
      or a cancellation before the close also aborts the job (harmless: it holds nothing processed).
    * Once the close (``state=UploadComplete``) has been sent, or may have been (transport error, 5xx
      after the session's retries, a cancellation while it is in flight), the job is **never
      aborted**: its state is read first. UploadComplete, InProgress, JobComplete, Failed or Aborted
      means it was closed, and that job is returned; Open means the close did not take, and it is sent
      again (``max_close_attempts`` closes in all); when the state cannot be read, or the job is still
      Open after the last close, :class:`JobOutcomeUnknownError` is raised and the job is left as it is.

    ``on_job_created`` is awaited with each new job before its upload, so a caller can record the
    job id durably first (the Airflow operator stores it for task retries). ``on_job_closing`` is
    awaited with the job once its data is uploaded, just before the close is sent: from then on the
    job may process records and must never be aborted nor its chunk sent again without asking
    Salesforce. If either callback raises, the job (not yet closed) is aborted and the error raised.
    With ``abort_on_interruption=False`` a failure that is not Salesforce's answer (a callback that
    raised, a stop, a cancellation) leaves the unclosed job as it is: a caller that recorded it (the
    Airflow operator's plan) lets the try that owns the plan abort it, since the one interrupted may
    be a try Airflow has already handed over to its retry.
    ``on_job_aborted`` is awaited with a job aborted before its close and the error that made it so
    (its upload's answer lost, a request or a callback failed; not a cancellation), so a caller that
    recorded the job can mark it as never processed.

    Returns
    -------
    tuple[JobInfo, tuple[str, ...]]
        The closed job (its state is UploadComplete or later; Aborted or Failed if someone else
        ended it meanwhile), and the ids of jobs aborted on the way because an upload's answer was lost.

    Raises
    ------
    UploadOutcomeUnknownError
        Every one of the ``max_upload_attempts`` uploads lost its answer; every job made was
        aborted before being closed, so none of the chunk was processed.
    JobOutcomeUnknownError
        The close may have reached Salesforce and the job's state could not be read (or it stayed
        Open); the job was not aborted (``.job_id``, ``.job_info``).
    SalesforceBulkError
        Any other failure, raised before the close was sent (the job was aborted).
    """
    check_count("max_upload_attempts", max_upload_attempts)
    check_count("max_close_attempts", max_close_attempts)
    replaced: list[str] = []
    for attempt in range(1, max_upload_attempts + 1):
        job = await client.create_job_from_spec(spec)
        try:
            if on_job_created is not None:
                await on_job_created(job)
            await client.upload_job_data(job.id, data, close=False, compress=compress)
            if on_job_closing is not None:
                await on_job_closing(job)
        except UploadOutcomeUnknownError as exc:
            replaced.append(job.id)
            await _abort_unclosed(client, job, exc, on_job_aborted)
            if attempt == max_upload_attempts:
                raise
            log.warning("Upload to job %s got no answer (%s); sending the chunk to a new job", job.id, exc)
            continue
        except SalesforceBulkError as exc:
            # Not closed yet: Salesforce cannot have processed any of it, so aborting is safe.
            await _abort_unclosed(client, job, exc, on_job_aborted)
            raise
        except Exception as exc:
            if abort_on_interruption:
                await _abort_unclosed(client, job, exc, on_job_aborted)
            raise
        except BaseException:
            if abort_on_interruption:
                await abort_quietly(client, job.id)
            raise
        return await close_uploaded_job(client, job, max_attempts=max_close_attempts), tuple(replaced)
    raise AssertionError("unreachable")  # pragma: no cover


async def _abort_unclosed(
    client: IngestJobApi, job: JobInfo, error: BaseException, on_job_aborted: JobAbortedCallback | None
) -> None:
    """Abort a job never closed (so never processing anything), then tell the caller why."""
    await abort_quietly(client, job.id)
    if on_job_aborted is not None:
        await on_job_aborted(job, error)


async def close_uploaded_job(client: IngestJobApi, job: JobInfo, *, max_attempts: int = 3) -> JobInfo:
    """Close a job whose data is uploaded; on any failure ask Salesforce, never abort.

    The rules are those of :func:`submit_job`, which uses it.
    """
    check_count("max_close_attempts", max_attempts)
    last_seen = job
    failure: SalesforceBulkError | None = None
    for _ in range(max_attempts):
        try:
            return await client.close_job(job.id)
        except asyncio.CancelledError:
            log.warning(
                "Cancelled while closing job %s: left as it is (not aborted), it may be processing", job.id
            )
            raise
        except SalesforceBulkError as exc:
            failure = exc
        # The close may have reached Salesforce: read the job's state before doing anything else.
        try:
            last_seen = await client.get_job(job.id)
        except SalesforceBulkError as exc:
            raise JobOutcomeUnknownError(
                f"closing job {job.id} failed ({failure}) and its state could not be read ({exc}); "
                "it may be processing its records, so it was not aborted: read its state before "
                "sending any of them again",
                job_id=job.id,
                job_info=last_seen,
            ) from failure
        if last_seen.state != "Open":
            log.warning(
                "Closing job %s failed (%s) but the job is %s: the close went through",
                job.id,
                failure,
                last_seen.state,
            )
            return last_seen
        log.warning("Closing job %s failed (%s) and it is still Open: closing it again", job.id, failure)
    raise JobOutcomeUnknownError(
        f"job {job.id} is still Open after {max_attempts} closes (last error: {failure}); it was not "
        "aborted: close or abort it yourself",
        job_id=job.id,
        job_info=last_seen,
    ) from failure


async def abort_quietly(client: IngestJobApi, job_id: str) -> None:
    """Abort a job, logging instead of raising: used on paths that are already failing."""
    try:
        await asyncio.shield(client.abort_job(job_id))
    except (SalesforceBulkError, asyncio.CancelledError) as exc:
        log.warning("Could not abort job %s: %s", job_id, exc)


async def perform_operation(
    client: IngestJobApi,
    operation: OperationType,
    sobject: str,
    data: Iterable[dict[str, Any]],
    fieldnames: Collection[str] | None = None,
    max_size_bytes: int = MAX_SIZE_BYTES,
    max_records: int = MAX_RECORDS,
    external_id_field: str | None = None,
    assignment_rule_id: str | None = None,
    polling_interval: float = 5.0,
    *,
    column_delimiter: ColumnDelimiter = "COMMA",
    line_ending: LineEnding = "LF",
    none_as: NoneAs = "empty",
    allow_na_marker: bool = False,
    timeout: float = DEFAULT_OPERATION_TIMEOUT,
    validate_first: bool = True,
    **options: Unpack[RunOptions],
) -> AsyncIterator[JobResult]:
    """Load records into Salesforce and yield a :class:`JobResult` per job as each job finishes.

    Parameters
    ----------
    client : IngestJobApi
        A :class:`BulkIngestClient` (this is also its method ``perform_operation``).
    operation, sobject, data, fieldnames, max_size_bytes, max_records, external_id_field, assignment_rule_id
        As in the reference client; see :func:`serialize_ingest_data` for the data rules.
    polling_interval : float
        Longest wait between two polls of a job; polling starts at 0.5 s and backs off to it.
    max_concurrent_jobs : int
        Jobs in flight at once (5). A chunk is serialized only when a slot is free, so at most this
        many chunks are in memory.
    column_delimiter, line_ending
        The job's CSV dialect.
    none_as : {"empty", "null"}
        ``None`` written as an empty value (field left unchanged) or ``#N/A`` (field set to null).
    allow_na_marker : bool
        Let a value that is the text ``#N/A`` through (Salesforce then sets the field to null);
        by default it is refused as bad input, since it is usually data, not a request to null.
    compress : bool
        gzip the uploads (off).
    timeout : float
        Deadline in seconds of the whole operation, validation, submission and waiting included;
        24 hours by default (a finite number above 0 is required). On expiry, jobs never closed are
        aborted, closed ones are left running, and :class:`BulkOperationTimeoutError` reports them.
    raise_on_failed_job : bool
        Treat a Failed or Aborted job as a failure of the operation (a :class:`BulkJobFailedError`
        as the cause of the :class:`BulkOperationError`) instead of yielding it.
    max_upload_attempts : int
        Fresh jobs tried for one chunk whose upload answer is lost (3).
    serialize_in_thread : bool
        Serialize chunks in a worker thread so polling goes on meanwhile. Turn off for inputs
        bound to the creating thread (a ``sqlite3`` cursor, for example).
    on_job_created : callable, optional
        Awaited with each job before its data is uploaded.
    validate_first : bool
        When ``data`` is a list or a tuple, serialize all of it once, discarding the chunks, before
        the first job is created, so that bad input fails with nothing sent (costs a second
        serialization). Other iterables are read once: only their first chunk is checked up front.

    Yields
    ------
    JobResult
        One per job, in the order jobs finish. Failed and Aborted jobs are yielded too (with
        their ``error_message``) unless ``raise_on_failed_job``.

    Raises
    ------
    InputError
        Bad input, before any job is created: arguments, the first chunk, or with ``validate_first``
        any record of a list or tuple.
    BulkOperationError
        Any failure once jobs are under way (a job whose polls run out of retries, lost uploads,
        an expired session, a bad record in a later chunk of a generator, ...). No new job is
        started; jobs under way are finished and every completed job's result is yielded first;
        no job that was closed is ever aborted. The error's ``jobs`` account for every chunk
        (:class:`JobReport`) and ``__cause__`` is the failure.
    BulkOperationTimeoutError
        ``timeout`` passed (also an :class:`OperationTimeoutError`).
    asyncio.CancelledError
        On cancellation, jobs never closed are aborted and closed ones are left running (logged).
    """
    started = time.monotonic()
    spec = JobSpec(
        operation=operation,
        object=sobject,
        external_id_field=external_id_field,
        assignment_rule_id=assignment_rule_id,
        column_delimiter=column_delimiter,
        line_ending=line_ending,
    )
    limits = ChunkLimits(max_size_bytes=max_size_bytes, max_records=max_records)
    chunk_format = spec.chunk_format(none_as, allow_na_marker)
    check_seconds("timeout", timeout)
    if fieldnames is not None:
        spec.check_fieldnames(list(fieldnames))
    chunks = functools.partial(iter_record_chunks, data, fieldnames, limits, chunk_format)

    validate_all = validate_first and isinstance(data, (list, tuple))
    async for result in _load(
        client, spec, chunks, validate_all, polling_interval, timeout, started, options
    ):
        yield result


async def perform_csv_operation(
    client: IngestJobApi,
    operation: OperationType,
    sobject: str,
    source: CsvSource,
    max_size_bytes: int = MAX_SIZE_BYTES,
    max_records: int = MAX_RECORDS,
    external_id_field: str | None = None,
    assignment_rule_id: str | None = None,
    polling_interval: float = 5.0,
    *,
    column_delimiter: ColumnDelimiter = "COMMA",
    line_ending: LineEnding = "LF",
    timeout: float = DEFAULT_OPERATION_TIMEOUT,
    validate_first: bool = True,
    **options: Unpack[RunOptions],
) -> AsyncIterator[JobResult]:
    """Load an existing CSV file or binary stream, split into jobs without re-encoding its values.

    The CSV must already be UTF-8 in the job's dialect (``column_delimiter``, ``line_ending``);
    its first line is the header, repeated in every job. When ``source`` is a file path and
    ``validate_first`` is true, the whole file is split once (chunks discarded) before the first job,
    so that an error anywhere in it is raised with nothing sent. Other options, errors and
    ``timeout`` as :func:`perform_operation`.
    """
    started = time.monotonic()
    spec = JobSpec(
        operation=operation,
        object=sobject,
        external_id_field=external_id_field,
        assignment_rule_id=assignment_rule_id,
        column_delimiter=column_delimiter,
        line_ending=line_ending,
    )
    limits = ChunkLimits(max_size_bytes=max_size_bytes, max_records=max_records)
    check_seconds("timeout", timeout)
    # The CSV is copied as it is: of the format, only the job's delimiter and line ending apply.
    chunks = functools.partial(iter_csv_stream_chunks, source, limits, spec.chunk_format())

    validate_all = validate_first and isinstance(source, (str, os.PathLike))
    async for result in _load(
        client, spec, chunks, validate_all, polling_interval, timeout, started, options
    ):
        yield result


async def _load(
    client: IngestJobApi,
    spec: JobSpec,
    chunks: Callable[[], Iterator[Chunk]],
    validate_all: bool,
    polling_interval: float,
    timeout: float,
    started: float,
    options: RunOptions,
) -> AsyncIterator[JobResult]:
    """The chunks as jobs, after one pass over all of them when ``validate_all``, within ``timeout``
    counted from ``started``."""
    if validate_all:
        await _validate_all(chunks, spec, options.get("serialize_in_thread", True))
    remaining = _remaining(timeout, started)
    async for result in perform_chunks(
        client, spec, chunks(), polling_interval=polling_interval, timeout=remaining, **options
    ):
        yield result


async def _validate_all(make_chunks: Callable[[], Iterator[Chunk]], spec: JobSpec, in_thread: bool) -> None:
    """Build every chunk once and drop it, so bad input is found before any job; memory holds one chunk."""

    def run() -> None:
        header_checked = False
        for chunk in make_chunks():
            if not header_checked:  # every chunk repeats the first one's header
                spec.check_fieldnames(chunk.fieldnames(spec.column_delimiter))
                header_checked = True
            del chunk

    if in_thread:
        await asyncio.to_thread(run)
    else:
        run()


def _remaining(timeout: float, started: float) -> float:
    remaining = timeout - (time.monotonic() - started)
    if remaining <= 0:
        raise OperationTimeoutError(
            f"checking the input took longer than timeout={timeout}s; nothing was sent"
        )
    return remaining


async def perform_chunks(
    client: IngestJobApi,
    spec: JobSpec,
    chunks: Iterator[Chunk],
    *,
    polling_interval: float = 5.0,
    timeout: float = DEFAULT_OPERATION_TIMEOUT,
    max_concurrent_jobs: int = 5,
    compress: bool = False,
    raise_on_failed_job: bool = False,
    max_upload_attempts: int = 3,
    serialize_in_thread: bool = True,
    on_job_created: JobCreatedCallback | None = None,
) -> AsyncIterator[JobResult]:
    """The engine of :func:`perform_operation`: one job per chunk, each created as ``spec`` says.

    ``chunks`` is pulled only when a job slot is free; only its first chunk's header is checked
    against the operation before the first job. Parameters, failure rules and errors as
    :func:`perform_operation`.
    """
    check_count("max_concurrent_jobs", max_concurrent_jobs)
    poll = PollPolicy.up_to(polling_interval)
    check_seconds("timeout", timeout)
    check_count("max_upload_attempts", max_upload_attempts)
    deadline = time.monotonic() + timeout
    next_chunk = _chunk_reader(chunks, serialize_in_thread)

    # The first chunk is built before any job exists, so its input errors cost nothing.
    try:
        first = await within(next_chunk(), timeout)
    except asyncio.TimeoutError:
        if time.monotonic() < deadline:
            raise
        raise OperationTimeoutError(f"reading the first chunk took longer than timeout={timeout}s") from None
    if first is None:
        return
    spec.check_fieldnames(first.fieldnames(spec.column_delimiter))

    run = _Operation(
        client,
        next_chunk,
        deadline=deadline,
        timeout=timeout,
        max_concurrent_jobs=max_concurrent_jobs,
        poll=poll,
        raise_on_failed_job=raise_on_failed_job,
        submit=functools.partial(
            submit_job,
            client,
            spec,
            compress=compress,
            max_upload_attempts=max_upload_attempts,
        ),
        on_job_created=on_job_created,
    )
    results = run.results(first)
    # The operation owns the first chunk now. Kept here, it would stay in memory until the whole load ends,
    # next to every later chunk being built (a second chunk's worth of peak memory).
    del first
    async for result in results:
        yield result


@dataclasses.dataclass(eq=False)
class _Entry:
    """One chunk's account while the operation runs."""

    first_record_index: int
    record_count: int
    job: JobInfo | None = None
    replaced: tuple[str, ...] = ()
    closing: bool = False  # the close was sent, or may have been: this job is never aborted
    final: JobInfo | None = None
    yielded: bool = False
    error: BaseException | None = None

    def report(self) -> JobReport:
        if self.final is not None:
            status: JobReportStatus = "completed"
        elif self.closing:
            status = "unfinished"
        else:
            status = "not_loaded"
        info = self.final or self.job
        return JobReport(
            first_record_index=self.first_record_index,
            record_count=self.record_count,
            job_id=info.id if info is not None else None,
            job_info=info,
            status=status,
            yielded=self.yielded,
            replaced_job_ids=self.replaced,
            error=self.error,
        )


@dataclasses.dataclass(frozen=True)
class _Done:
    entry: _Entry
    result: JobResult


@dataclasses.dataclass(frozen=True)
class _Failed:
    error: BaseException
    from_job: bool


_PRODUCED_ALL = object()
# Cancelled jobs abort the ones they never closed; this bounds how long that may take.
_STOP_GRACE = 60.0


class _Operation:
    """Runs chunks as jobs, keeping an account of every chunk so that a failure can report them all."""

    def __init__(
        self,
        client: IngestJobApi,
        next_chunk: Callable[[], Awaitable[Chunk | None]],
        *,
        deadline: float,
        timeout: float,
        max_concurrent_jobs: int,
        poll: PollPolicy,
        raise_on_failed_job: bool,
        submit: Callable[..., Awaitable[tuple[JobInfo, tuple[str, ...]]]],
        on_job_created: JobCreatedCallback | None,
    ) -> None:
        self.client = client
        self.next_chunk = next_chunk
        self.deadline = deadline
        self.timeout = timeout
        self.poll = poll
        self.raise_on_failed_job = raise_on_failed_job
        self.submit = submit
        self.on_job_created = on_job_created
        self.slots = asyncio.Semaphore(max_concurrent_jobs)
        self.queue: asyncio.Queue[object] = asyncio.Queue()
        self.entries: list[_Entry] = []
        self.tasks: set[asyncio.Task[None]] = set()
        self.next_index = 0
        self.failure: BaseException | None = None
        self.stopping = False

    async def run_job(self, entry: _Entry, chunk: Chunk) -> None:
        async def created(job: JobInfo) -> None:
            if entry.job is not None:
                entry.replaced += (entry.job.id,)
            entry.job = job
            if self.on_job_created is not None:
                await self.on_job_created(job)

        async def closing(job: JobInfo) -> None:
            entry.closing = True

        def progress(job: JobInfo) -> None:
            entry.job = job

        try:
            # The chunk itself: a file-backed one is streamed from its file, never read whole.
            job, replaced = await self.submit(chunk, on_job_created=created, on_job_closing=closing)
            del chunk  # the data is on Salesforce now: free the slot's memory while polling
            entry.job, entry.replaced = job, replaced
            final = job
            if not job.is_terminal:
                final = await self.client.wait_for_job(
                    job.id,
                    poll=self.poll,
                    # The operation's own deadline cancels this first; the margin only backs it up.
                    timeout=max(self.deadline - time.monotonic(), 0) + _STOP_GRACE,
                    on_progress=progress,
                )
            entry.final = final
            log.info(
                "Job %s %s: %d processed, %d failed of %d records",
                final.id,
                final.state,
                final.number_records_processed,
                final.number_records_failed,
                entry.record_count,
            )
            if self.raise_on_failed_job and final.state in FAILED_STATES:
                raise BulkJobFailedError(
                    f"job {final.id} ended {final.state}: {final.error_message or 'no error message'}",
                    job_id=final.id,
                    state=final.state or "",
                    error_message=final.error_message,
                )
            result = JobResult(
                final, entry.first_record_index, entry.record_count, entry.replaced, self.client
            )
            self.queue.put_nowait(_Done(entry, result))
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            entry.error = exc
            self.queue.put_nowait(_Failed(exc, from_job=True))
        finally:
            self.slots.release()

    async def produce(self, chunk: Chunk | None) -> None:
        try:
            while chunk is not None:
                if self.stopping:
                    break  # a job failed: start nothing new; the chunk is never sent
                entry = _Entry(chunk.first_record_index, chunk.record_count)
                self.entries.append(entry)
                self.next_index = chunk.first_record_index + chunk.record_count
                task = asyncio.create_task(self.run_job(entry, chunk))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)
                chunk = None
                await self.slots.acquire()
                if self.stopping:
                    self.slots.release()
                    break
                chunk = await self.next_chunk()
                if chunk is None:
                    self.slots.release()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            self.queue.put_nowait(_Failed(exc, from_job=False))
        self.queue.put_nowait(_PRODUCED_ALL)

    async def results(self, first: Chunk) -> AsyncIterator[JobResult]:
        self.next_index = first.first_record_index
        await self.slots.acquire()
        producer = asyncio.create_task(self.produce(first))
        del first  # the producer owns it now (the caller dropped its own); it goes when its job has it
        timed_out = False
        received = 0
        produced_all = False
        try:
            while not (produced_all and received == len(self.entries)):
                remaining = self.deadline - time.monotonic()
                try:
                    if remaining <= 0:  # within() would hand out an item already queued
                        raise asyncio.TimeoutError
                    item = await within(self.queue.get(), remaining)
                except asyncio.TimeoutError:
                    timed_out = True
                    break
                if item is _PRODUCED_ALL:
                    produced_all = True
                elif isinstance(item, _Failed):
                    if item.from_job:
                        received += 1
                    if self.failure is None:
                        self.failure = item.error
                        log.warning("Stopping: no new job will start after this failure: %s", item.error)
                    self.stopping = True
                else:
                    received += 1
                    assert isinstance(item, _Done)
                    item.entry.yielded = True
                    yield item.result
        finally:
            await self._stop(producer)
        if timed_out:
            raise BulkOperationTimeoutError(
                self._describe(f"the operation did not finish within timeout={self.timeout}s"),
                jobs=[e.report() for e in self.entries],
                first_unsent_record_index=self.next_index,
            ) from self.failure
        if self.failure is not None:
            raise BulkOperationError(
                self._describe(f"the operation stopped on {type(self.failure).__name__}: {self.failure}"),
                jobs=[e.report() for e in self.entries],
                first_unsent_record_index=self.next_index,
            ) from self.failure

    async def _stop(self, producer: asyncio.Task[None]) -> None:
        """Cancel what still runs: jobs never closed abort themselves, closed ones are left running."""
        producer.cancel()
        for task in list(self.tasks):
            task.cancel()
        pending = [producer, *self.tasks]
        await asyncio.wait(pending, timeout=_STOP_GRACE)
        left = [e.job.id for e in self.entries if e.closing and e.final is None and e.job is not None]
        if left:
            log.warning(
                "Left running on Salesforce, not aborted (they may be processing records): %s",
                ", ".join(left),
            )

    def _describe(self, what: str) -> str:
        reports = [e.report() for e in self.entries]
        done = sum(1 for r in reports if r.status == "completed")
        unfinished = [r.job_id or "?" for r in reports if r.status == "unfinished"]
        not_loaded = [
            f"{r.first_record_index}..{r.first_record_index + r.record_count - 1}"
            for r in reports
            if r.status == "not_loaded"
        ]
        parts = [f"{what}; {done} job(s) completed"]
        if unfinished:
            parts.append(f"left unfinished on Salesforce, not aborted: {', '.join(unfinished)}")
        if not_loaded:
            parts.append(f"records never loaded: {', '.join(not_loaded)}")
        parts.append(f"records from index {self.next_index} on were never sent")
        return "; ".join(parts)


def _chunk_reader(chunks: Iterator[Chunk], in_thread: bool) -> Callable[[], Awaitable[Chunk | None]]:
    if in_thread:

        async def read_in_thread() -> Chunk | None:
            return await asyncio.to_thread(next, chunks, None)

        return read_in_thread

    async def read_inline() -> Chunk | None:
        return next(chunks, None)

    return read_inline
