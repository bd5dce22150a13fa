"""Resubmitting records that failed for a transient reason (``UNABLE_TO_LOCK_ROW``) in new jobs.

Once a round of jobs has ended, :func:`iter_resubmit_chunks` streams each job's ``failedResults``, keeps
the rows whose ``sf__Error`` code is one of the policy's transient codes, drops the ``sf__Id`` and
``sf__Error`` columns and writes the rest as new job-sized CSV chunks under the uploaded header.
Those records failed, so Salesforce stored nothing of them: sending them again cannot store one twice.

Each record is counted once at its final outcome with a :class:`ResubmitLedger`: a record taken for
resubmission leaves its job's failed count and is counted where it ends, in a later round's job.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from airflow_provider_salesforce_bulk.client.csv_format import CsvChunk
from airflow_provider_salesforce_bulk.client.errors import (
    InputError,
    UnexpectedResponseError,
)
from airflow_provider_salesforce_bulk.client.ingest_jobs import IngestJobApi
from airflow_provider_salesforce_bulk.client.job_spec import (
    DEFAULT_FORMAT,
    DEFAULT_LIMITS,
    ChunkFormat,
    ChunkLimits,
    JobSpec,
)
from airflow_provider_salesforce_bulk.client.models import TERMINAL_STATES, JobInfo
from airflow_provider_salesforce_bulk.client.operation import submit_job
from airflow_provider_salesforce_bulk.client.result_csv import EXTRA_KEY_PREFIX
from airflow_provider_salesforce_bulk.client.sf_error import parse_sf_error

__all__ = [
    "DEFAULT_RESUBMIT_ERROR_CODES",
    "LedgerJob",
    "ResubmitChunk",
    "ResubmitJob",
    "ResubmitLedger",
    "ResubmitPolicy",
    "iter_resubmit_chunks",
    "resubmit_round",
]

DEFAULT_RESUBMIT_ERROR_CODES: tuple[str, ...] = ("UNABLE_TO_LOCK_ROW",)
# "Retry" names a request sent again; records sent again are "resubmitted". The old names still
# import from this module, with a DeprecationWarning.
_RENAMED = {
    "DEFAULT_RETRY_ERROR_CODES": "DEFAULT_RESUBMIT_ERROR_CODES",
    "RetryChunk": "ResubmitChunk",
    "RetryJob": "ResubmitJob",
    "iter_retry_chunks": "iter_resubmit_chunks",
    "submit_retry_round": "resubmit_round",
}
_CODE = re.compile(r"[A-Z][A-Z0-9_]*")
_MAX_ROUNDS = 10
_MAX_BACKOFF = 3600.0


@dataclass(frozen=True)
class ResubmitPolicy:
    """Which failed records to send again, how many rounds, and how long to wait between rounds.

    Attributes
    ----------
    codes : tuple of str
        ``sf__Error`` status codes that mean "try again later" (default ``UNABLE_TO_LOCK_ROW``).
    max_rounds : int
        Rounds in all, the first load included: 3 means the load and at most two resubmissions;
        1 turns resubmission off. At most 10.
    backoff : float
        Seconds to wait before the second round; each later round waits ``backoff_factor`` times
        longer, at most ``max_backoff``. Lock contention is caused by other work on the same parents,
        so a pause gives it time to end.
    """

    codes: tuple[str, ...] = DEFAULT_RESUBMIT_ERROR_CODES
    max_rounds: int = 3
    backoff: float = 30.0
    backoff_factor: float = 2.0
    max_backoff: float = 600.0

    def __post_init__(self) -> None:
        codes = self.codes
        if isinstance(codes, str) or not isinstance(codes, Iterable):
            raise InputError(
                f"codes must be a list of Salesforce status codes, got {codes!r}",
                field="codes",
            )
        normalized = tuple(dict.fromkeys(codes))
        for code in normalized:
            if not isinstance(code, str) or not _CODE.fullmatch(code):
                raise InputError(
                    f"codes holds {code!r}, not a status code like 'UNABLE_TO_LOCK_ROW'",
                    field="codes",
                )
        object.__setattr__(self, "codes", normalized)
        rounds = self.max_rounds
        if isinstance(rounds, bool) or not isinstance(rounds, int) or not 1 <= rounds <= _MAX_ROUNDS:
            raise InputError(
                f"max_rounds must be an int from 1 to {_MAX_ROUNDS}, got {rounds!r}", field="max_rounds"
            )
        for name, low in (("backoff", 0.0), ("backoff_factor", 1.0), ("max_backoff", 0.0)):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
                or not low <= value <= _MAX_BACKOFF
            ):
                raise InputError(
                    f"{name} must be a number from {low:g} to {_MAX_BACKOFF:g}, got {value!r}", field=name
                )
            object.__setattr__(self, name, float(value))

    def matches(self, sf_error: str) -> bool:
        """Whether a failed record with this ``sf__Error`` is to be sent again."""
        return parse_sf_error(sf_error).status_code in self.codes

    def may_follow(self, round_number: int) -> bool:
        """Whether another round may follow round ``round_number`` (the first load is round 1)."""
        return bool(self.codes) and round_number < self.max_rounds

    def delay_before(self, round_number: int) -> float:
        """Seconds to wait after round ``round_number - 1`` ended before round ``round_number`` (>= 2)."""
        if round_number < 2:
            return 0.0
        return min(self.backoff * self.backoff_factor ** (round_number - 2), self.max_backoff)


@dataclass(frozen=True)
class ResubmitChunk(CsvChunk):
    """A :class:`CsvChunk` of records taken from earlier jobs' failed results.

    ``first_record_index`` counts records across the chunks of one :func:`iter_resubmit_chunks` call
    (a failed results file has no defined row order, so a record's place in the original input is not
    known). ``origins`` says how many of the chunk's records came from each earlier job, in order:
    ``(("750...A", 12), ("750...B", 3))``.
    """

    origins: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True)
class LedgerJob:
    """One ended job's counts as the ledger keeps them."""

    round: int
    uploaded: int
    processed: int
    failed: int


@dataclass
class ResubmitLedger:
    """Counts each record once, at its final outcome, across rounds of jobs.

    Feed it every ended job with :meth:`add_job` (its round and how many records were uploaded to
    it) and every resubmit chunk once its job may process it with :meth:`add_resubmitted`. A job's
    records then count as: successful ``processed - failed``, failed ``failed - resubmitted`` (the
    rest are counted in a later round's job), unprocessed ``uploaded - processed``.

    :meth:`to_dict` and :meth:`from_dict` carry it, as plain JSON, across a deferral.
    """

    jobs: dict[str, LedgerJob] = field(default_factory=dict)
    resubmitted: dict[str, int] = field(default_factory=dict)

    def add_job(self, job: JobInfo, round_number: int, records_uploaded: int) -> None:
        """Record an ended job of round ``round_number`` holding ``records_uploaded`` records."""
        self.jobs[job.id] = LedgerJob(
            round_number, records_uploaded, job.number_records_processed, job.number_records_failed
        )

    def add_resubmitted(self, chunk: ResubmitChunk) -> None:
        """Record that ``chunk``'s records left their jobs' failed count for a new job."""
        for job_id, count in chunk.origins:
            self.resubmitted[job_id] = self.resubmitted.get(job_id, 0) + count

    def round_of(self, job_id: str) -> int:
        """The round a job belongs to (1: the first load)."""
        return self.jobs[job_id].round

    def final_failed(self, job_id: str) -> int:
        """Records of this job that failed and were not sent again."""
        return self.jobs[job_id].failed - self.resubmitted.get(job_id, 0)

    def is_final_failure(self, job_id: str, sf_error: str, policy: ResubmitPolicy) -> bool:
        """Whether a row of this job's failed results stays a failure (False: it was sent again and
        is reported where it ended, in a later round). For a failed results file without the rows
        that were resubmitted."""
        return not (self.resubmitted.get(job_id) and policy.matches(sf_error))

    def totals(self) -> dict[str, int]:
        """``successful``, ``failed``, ``unprocessed`` and ``resubmitted`` over every job: each input
        record is in exactly one of the first three once every round has ended."""
        successful = failed = unprocessed = 0
        for job_id, job in self.jobs.items():
            successful += job.processed - job.failed
            failed += self.final_failed(job_id)
            unprocessed += max(0, job.uploaded - job.processed)
        return {
            "successful": successful,
            "failed": failed,
            "unprocessed": unprocessed,
            "resubmitted": sum(self.resubmitted.values()),
        }

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON: ``{"jobs": {id: [round, uploaded, processed, failed]}, "resubmitted": {id: n}}``."""
        return {
            "jobs": {i: [j.round, j.uploaded, j.processed, j.failed] for i, j in self.jobs.items()},
            "resubmitted": dict(self.resubmitted),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ResubmitLedger:
        """The ledger :meth:`to_dict` wrote; InputError for anything else."""
        try:
            raw_jobs, raw_resubmitted = data["jobs"], data["resubmitted"]
            if not isinstance(raw_jobs, Mapping) or not isinstance(raw_resubmitted, Mapping):
                raise TypeError("jobs and resubmitted must be objects")
            jobs: dict[str, LedgerJob] = {}
            for job_id, values in raw_jobs.items():
                if not isinstance(values, (list, tuple)) or len(values) != 4:
                    raise ValueError(f"job {job_id} is not [round, uploaded, processed, failed]")
                jobs[str(job_id)] = LedgerJob(*(_count(v) for v in values))
            resubmitted = {str(i): _count(n) for i, n in raw_resubmitted.items()}
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"not a resubmission ledger: {exc}", field="ledger") from None
        return cls(jobs=jobs, resubmitted=resubmitted)


def _count(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{value!r} is not a count")
    return value


class _Builder:
    """Collects CSV records under one header within a chunk's limits."""

    def __init__(
        self, header: Sequence[str], delimiter: str, eol: str, max_size: int, max_records: int
    ) -> None:
        self.delimiter = delimiter
        self.eol = eol
        self.special = re.compile(f'["\r\n{re.escape(delimiter)}]')
        self.header = self.line(header)
        self.max_size = max_size
        self.max_records = max_records
        self.parts: list[bytes] = []
        self.size = len(self.header)
        self.origins: dict[str, int] = {}

    def line(self, values: Sequence[str]) -> bytes:
        special = self.special
        text = self.delimiter.join(
            '"' + value.replace('"', '""') + '"' if special.search(value) else value for value in values
        )
        return (text + self.eol).encode()

    def fits(self, record: bytes) -> bool:
        return len(self.parts) < self.max_records and self.size + len(record) <= self.max_size

    def add(self, record: bytes, job_id: str) -> None:
        self.parts.append(record)
        self.size += len(record)
        self.origins[job_id] = self.origins.get(job_id, 0) + 1

    def take(self, first: int) -> ResubmitChunk:
        chunk = ResubmitChunk(
            self.header + b"".join(self.parts), first, len(self.parts), origins=tuple(self.origins.items())
        )
        self.parts = []
        self.size = len(self.header)
        self.origins = {}
        return chunk


async def iter_resubmit_chunks(
    client: IngestJobApi,
    job_ids: Iterable[str],
    policy: ResubmitPolicy | None = None,
    *,
    limits: ChunkLimits = DEFAULT_LIMITS,
    chunk_format: ChunkFormat = DEFAULT_FORMAT,
) -> AsyncIterator[ResubmitChunk]:
    """New job-sized chunks of the records that failed with one of ``policy.codes`` in ended jobs.

    Each job's state is read first: a job that has not ended (JobComplete, Failed or Aborted) is
    an :class:`InputError`, since its failed results are not final. Its failed results are
    streamed (memory holds one chunk; a job named twice is read once), the ``sf__Id`` and
    ``sf__Error`` columns dropped, and the uploaded columns written again, in chunks within
    ``limits``, with ``chunk_format``'s delimiter and line ending (quoting values holding a quote,
    CR, LF or the delimiter; the values are Salesforce's text, so its other options do not apply).
    Jobs with different headers never share a chunk.

    Values are those Salesforce echoes in its failed results, which it may have normalized (a number
    ``912260031`` can come back as ``9.12260031E8``); Salesforce reads those back as the same value.

    Nothing is counted as resubmitted here: the caller adds a chunk to its :class:`ResubmitLedger`
    once the chunk's job may process it (``submit_job``'s ``on_job_closing``), so records of a chunk
    that never reached a job stay counted as failed in their original job.

    Raises
    ------
    InputError
        A job that has not ended (JobComplete, Failed or Aborted).
    UnexpectedResponseError
        A failed results file without ``sf__Error``, with rows that do not match its header, or a
        record too large for ``max_size_bytes``.
    """
    max_size_bytes, max_records = limits.max_size_bytes, limits.max_records
    delimiter, eol = chunk_format.delimiter, chunk_format.eol
    policy = policy or ResubmitPolicy()
    builder: _Builder | None = None
    first = 0
    # A job named twice would have its records sent twice: each job is read once.
    for job_id in dict.fromkeys(job_ids):
        job = await client.get_job(job_id)
        if job.state not in TERMINAL_STATES:  # only then is its failedResults file complete
            raise InputError(
                f"job {job_id} is {job.state}: its failed records can be sent again only once it has ended",
                field="job_ids",
            )
        if not job.number_records_failed:
            continue
        columns: list[str] | None = None
        async for row in client.iter_results(
            job_id, "failedResults", column_delimiter=job.column_delimiter or "COMMA"
        ):
            if columns is None:
                columns = _uploaded_columns(row, job_id)
                if builder is None or builder.header != builder.line(columns):
                    if builder is not None and builder.parts:
                        chunk = builder.take(first)
                        first += chunk.record_count
                        yield chunk
                    builder = _Builder(columns, delimiter, eol, max_size_bytes, max_records)
            if not policy.matches(row["sf__Error"]):
                continue
            if len(row) != len(columns) + 2 or any(key.startswith(EXTRA_KEY_PREFIX) for key in row):
                raise UnexpectedResponseError(
                    f"failedResults of job {job_id} holds a row whose values do not match its header"
                )
            assert builder is not None
            record = builder.line([row[name] for name in columns])
            if not builder.fits(record):
                if not builder.parts:
                    raise UnexpectedResponseError(
                        f"a failed record of job {job_id} takes {len(record) + len(builder.header):,} bytes "
                        f"with the header, more than max_size_bytes ({max_size_bytes:,})"
                    )
                chunk = builder.take(first)
                first += chunk.record_count
                yield chunk
            builder.add(record, job_id)
    if builder is not None and builder.parts:
        yield builder.take(first)


def _uploaded_columns(row: Mapping[str, str], job_id: str) -> list[str]:
    if "sf__Error" not in row:
        raise UnexpectedResponseError(f"failedResults of job {job_id} has no sf__Error column")
    return [
        name for name in row if name not in ("sf__Id", "sf__Error") and not name.startswith(EXTRA_KEY_PREFIX)
    ]


@dataclass(frozen=True)
class ResubmitJob:
    """A job made by :func:`resubmit_round`: the closed job and the chunk's accounting."""

    job_info: JobInfo
    first_record_index: int
    record_count: int
    origins: tuple[tuple[str, int], ...]


ChunkJobCallback = Callable[[JobInfo, ResubmitChunk], Awaitable[None]]


async def resubmit_round(
    client: IngestJobApi,
    job_ids: Iterable[str],
    policy: ResubmitPolicy,
    ledger: ResubmitLedger,
    spec: JobSpec,
    *,
    limits: ChunkLimits = DEFAULT_LIMITS,
    compress: bool = False,
    on_job_created: ChunkJobCallback | None = None,
    sent_before: Callable[[ResubmitChunk], Awaitable[bool]] | None = None,
    on_job_closing: ChunkJobCallback | None = None,
    on_job_closed: ChunkJobCallback | None = None,
    abort_on_interruption: bool = True,
) -> list[ResubmitJob]:
    """Send the transient failures of ended jobs ``job_ids`` again, one new job per resubmit chunk, each
    created as ``spec`` says (its CSV in ``spec``'s delimiter and line ending, in chunks within
    ``limits``).

    Each chunk of :func:`iter_resubmit_chunks` goes through :func:`submit_job` (no job is ever
    aborted once its close may have been sent); ``on_job_created(job, chunk)`` is awaited before
    each upload, so a caller can record the new job durably first (a task retry must reattach to it,
    never compute the round again). ``on_job_closing(job, chunk)`` is awaited once the data is
    uploaded, then the chunk is added to ``ledger``, just before its job's close is sent;
    ``on_job_closed(job, chunk)`` once the close is confirmed. The new jobs are returned closed, not
    waited for: wait or defer on them, then add them to the ledger with the next round number. No
    wait happens here: sleep ``policy.delay_before(round)`` (or defer until then) before calling.

    ``sent_before(chunk)``, awaited first for each chunk, lets a caller that replays a round
    recorded by an earlier try skip a chunk already held by a job that may process it (True: not
    sent, not added to the ledger here); it may raise to stop the round before the chunk.

    Raises what :func:`iter_resubmit_chunks` and :func:`submit_job` raise; the jobs submitted before
    the error are in the ledger and were passed to ``on_job_created``.
    """
    made: list[ResubmitJob] = []
    async for chunk in iter_resubmit_chunks(
        client, job_ids, policy, limits=limits, chunk_format=spec.chunk_format()
    ):
        if sent_before is not None and await sent_before(chunk):
            continue

        async def created(job: JobInfo, chunk: ResubmitChunk = chunk) -> None:
            if on_job_created is not None:
                await on_job_created(job, chunk)

        async def closing(job: JobInfo, chunk: ResubmitChunk = chunk) -> None:
            if on_job_closing is not None:
                await on_job_closing(job, chunk)
            ledger.add_resubmitted(chunk)  # from here on the new job may process these records

        job, _ = await submit_job(
            client,
            spec,
            chunk.data,
            compress=compress,
            on_job_created=created,
            on_job_closing=closing,
            abort_on_interruption=abort_on_interruption,
        )
        if on_job_closed is not None:
            await on_job_closed(job, chunk)
        made.append(ResubmitJob(job, chunk.first_record_index, chunk.record_count, chunk.origins))
    return made


def __getattr__(name: str) -> Any:
    new = _RENAMED.get(name)
    if new is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    warnings.warn(f"{name} is renamed {new}", DeprecationWarning, stacklevel=2)
    return globals()[new]
