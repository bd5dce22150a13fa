"""Submitting chunks as jobs and settling an earlier try's jobs, every step recorded before it is taken.

Every job is sent by the client's :func:`submit_job` (create, upload, a new job when an upload's
answer is lost, close by rule); this module only hooks the plan (:mod:`.job_plan`) into its callbacks.

The task state store holds a plan: per chunk of input (by its first record index) every job that was
ever given its records, in order, with how far each got. A job is recorded before its upload and
marked ``closing`` before its close request, so a later try knows which jobs Salesforce may be
processing. ``reconcile()`` reads the state of each chunk's current job before doing anything:

- Open and never closed: nothing was processed; aborted, and the chunk goes to a new job;
- Open with a close that may have been sent: closed (the data is there), never aborted;
- UploadComplete, InProgress, JobComplete: kept;
- Aborted or Failed: only its ``unprocessedrecords`` go to a new job; when they cannot be read the
  task fails naming the job, since resending the chunk could load processed records twice.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Iterator, Mapping
from typing import Any

from airflow.providers.common.compat.sdk import AirflowException, AirflowFailException

from airflow_provider_salesforce_bulk.client import (
    BulkIngestClient,
    InputError,
    InvalidJobError,
    JobInfo,
    JobOutcomeUnknownError,
    JobSpec,
    NotFoundError,
    SalesforceBulkError,
)
from airflow_provider_salesforce_bulk.client.csv_format import COLUMN_DELIMITERS, Chunk
from airflow_provider_salesforce_bulk.client.models import CLOSED_STATES, FAILED_STATES, ColumnDelimiter
from airflow_provider_salesforce_bulk.client.operation import close_uploaded_job, submit_job
from airflow_provider_salesforce_bulk.operators.job_plan import (
    CHUNK,
    CLOSED,
    CLOSING,
    CREATED,
    REPLACED,
    RESENT,
    STATE_KEY,
    JobPlan,
)
from airflow_provider_salesforce_bulk.operators.result_files import download_with_retries
from airflow_provider_salesforce_bulk.triggers.events import check_job_id, job_summary

__all__ = [
    "CLOSED",
    "CLOSING",
    "CREATED",
    "REPLACED",
    "RESENT",
    "STATE_KEY",
    "JobPlan",
    "reconcile",
    "submit_chunks",
]

log = logging.getLogger(__name__)

MAX_UPLOAD_ATTEMPTS = 3
_KEEP = CLOSED_STATES - FAILED_STATES
# Whole-job failures caused by the data or the job's settings: a new job would fail the same way.
_INPUT_FAILURES = ("InvalidBatch", "ClientInputError")


def _settle(entry: dict[str, Any], outcome: str, info: Mapping[str, Any]) -> None:
    entry["outcome"] = outcome
    entry["info"] = info


async def _abort(client: BulkIngestClient, job_id: str) -> Mapping[str, Any]:
    """Abort a job that was never closed (so never processed); its last known state either way."""
    try:
        await client.abort_job(job_id)
    except SalesforceBulkError as exc:
        log.warning("Could not abort job %s (it was never closed, so it processes nothing): %s", job_id, exc)
        return _never_closed(job_id)
    return await _state_of_aborted(client, job_id)


async def _state_of_aborted(client: BulkIngestClient, job_id: str) -> Mapping[str, Any]:
    try:
        return job_summary(await client.get_job(job_id))
    except SalesforceBulkError as exc:
        log.warning(
            "Could not read the state of job %s (never closed, so it processes nothing): %s", job_id, exc
        )
        return _never_closed(job_id)


def _never_closed(job_id: str) -> dict[str, Any]:
    return {"id": job_id, "state": "Open", "numberRecordsProcessed": 0, "numberRecordsFailed": 0}


class _PlanHooks:
    """``submit_job``'s callbacks for one chunk: each of its steps written to the plan before it is taken.

    ``parent`` is the job whose unprocessed records are sent (settled ``resent`` with
    ``parent_info`` once its successor exists). A job whose upload's answer was lost, or whose upload
    was refused, is aborted by ``submit_job`` and settled ``replaced`` here.
    """

    def __init__(
        self,
        client: BulkIngestClient,
        plan: JobPlan,
        first: int,
        count: int,
        source: str,
        parent: dict[str, Any] | None,
        parent_info: Mapping[str, Any] | None,
    ) -> None:
        self.client = client
        self.plan = plan
        self.chunk = plan.chunks.setdefault(first, {"count": count, "jobs": []})
        self.count = count
        self.source = source
        self.parent = parent
        self.parent_info = parent_info
        self.entries: dict[str, dict[str, Any]] = {}
        self.upload_errors: list[BaseException] = []  # why each job made was aborted

    async def created(self, job: JobInfo) -> None:
        check_job_id(job.id)
        entry = {"job": job.id, "count": self.count, "phase": CREATED, "source": self.source}
        parent = self.parent
        if parent is not None and not parent.get("outcome"):
            _settle(parent, RESENT, self.parent_info or {"id": parent["job"], "state": None})
        if parent is not None:
            parent["next"] = job.id
        previous = self.plan.current(self.chunk)
        if previous is not None and previous.get("outcome") == REPLACED and previous is not parent:
            previous["next"] = job.id
        self.chunk["jobs"].append(entry)
        self.entries[job.id] = entry
        await self.plan.save()

    async def aborted(self, job: JobInfo, error: BaseException) -> None:
        self.upload_errors.append(error)
        entry = self.entries.get(job.id)
        if entry is None:  # refused before it was recorded: nothing in the plan names it
            return
        _settle(entry, REPLACED, await _state_of_aborted(self.client, job.id))
        await self.plan.save()

    async def closing(self, job: JobInfo) -> None:
        self.entries[job.id]["phase"] = CLOSING
        await self.plan.save()

    def refused_create(self, exc: BaseException) -> bool:
        """Whether ``exc`` is Salesforce refusing to create the job (a bad object or operation)."""
        return isinstance(exc, (InvalidJobError, NotFoundError)) and not any(
            exc is seen for seen in self.upload_errors
        )


async def _send(
    client: BulkIngestClient,
    plan: JobPlan,
    first: int,
    data: bytes | Chunk,
    count: int,
    source: str,
    spec: JobSpec,
    parent: dict[str, Any] | None = None,
    parent_info: Mapping[str, Any] | None = None,
) -> JobInfo:
    """Send ``count`` records of chunk ``first`` to a new job through the client's :func:`submit_job`.

    Its rules hold: an upload whose answer is lost goes to another new job (the first is aborted,
    never closed, so it never processes anything); a close whose answer is lost is never followed by
    an abort: the job's state is read instead, and if even that fails the error is raised with the
    job recorded as ``closing``, for the next try's ``reconcile()`` to read.
    """
    hooks = _PlanHooks(client, plan, first, count, source, parent, parent_info)
    try:
        closed, _ = await submit_job(
            client,
            spec,
            data,
            max_upload_attempts=MAX_UPLOAD_ATTEMPTS,
            on_job_created=hooks.created,
            on_job_closing=hooks.closing,
            on_job_aborted=hooks.aborted,
            # A plan that cannot be saved, a stop or a cancellation: the job stays as the plan says,
            # for the try that owns the plan to settle (this one may be a try Airflow has ended).
            abort_on_interruption=False,
        )
    except JobOutcomeUnknownError as exc:
        raise AirflowException(f"{exc}; a retry reads its state and carries on") from exc
    except (InvalidJobError, NotFoundError) as exc:
        if not hooks.refused_create(exc):
            raise
        raise InputError(
            f"Salesforce refused a {spec.operation} job on object {spec.object!r}: {exc}",
            field="object_name",
        ) from None
    hooks.entries[closed.id]["phase"] = CLOSED
    await plan.save()
    return closed


async def _close(client: BulkIngestClient, job_id: str) -> JobInfo:
    """Close a job whose data is uploaded by the client's rule: on a lost answer read its state, never abort.

    One rule for the client and the operator (:func:`close_uploaded_job`, as ``submit_job`` closes).
    """
    try:
        return await close_uploaded_job(client, JobInfo(id=job_id))
    except JobOutcomeUnknownError as exc:
        raise AirflowException(f"{exc}; a retry reads its state and carries on") from exc


async def _unprocessed(
    client: BulkIngestClient, entry: dict[str, Any], info: JobInfo, column_delimiter: ColumnDelimiter
) -> tuple[bytes, int]:
    """Download a job's unprocessed records; the task fails naming the job when they cannot be read."""
    job_id = entry["job"]
    delimiter = COLUMN_DELIMITERS.get(column_delimiter, ",")
    try:
        data = await download_with_retries(client, job_id, "unprocessedrecords")
    except NotFoundError as exc:
        raise AirflowFailException(
            f"job {job_id} ended {info.state} after processing {info.number_records_processed} of "
            f"{entry['count']} records, and its unprocessed records cannot be read ({exc}): they cannot be "
            "resent without risking loading processed records twice; load them by hand"
        ) from None
    except SalesforceBulkError as exc:
        raise AirflowException(
            f"job {job_id} ended {info.state}: reading its unprocessed records failed ({exc}); a retry "
            "tries again"
        ) from None
    try:
        # Counted as a stream: the file is one chunk's size at most, its parsed rows would be several.
        text = io.TextIOWrapper(io.BytesIO(data), encoding="utf-8-sig", newline="")
        reader = csv.reader(text, delimiter=delimiter)
        next(reader, None)  # the header
        count = sum(1 for row in reader if row)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise AirflowFailException(
            f"job {job_id}: its unprocessed records are not readable CSV ({exc}); load them by hand"
        ) from None
    return data, count


async def reconcile(client: BulkIngestClient, plan: JobPlan, spec: JobSpec) -> dict[str, JobInfo]:
    """Read every chunk's current job and settle it (see the module docstring).

    Chunks whose records must come from the input again are left without a current job and
    ``plan.complete`` is cleared, so :func:`submit_chunks` sends them.

    Returns
    -------
    dict
        The latest state of every job to wait for.
    """
    settling = _Reconcile(client, plan, spec)
    for first, chunk in sorted(plan.chunks.items()):
        # Each step settles the chunk's current job; one that hands the chunk to a new job goes on.
        while not await settling.step(first, chunk):
            pass
    await plan.save()
    return settling.latest


class _Reconcile:
    """One reconcile: the plan's jobs settled chunk by chunk, ``latest`` the jobs to wait for."""

    def __init__(self, client: BulkIngestClient, plan: JobPlan, spec: JobSpec) -> None:
        self.client = client
        self.plan = plan
        self.spec = spec
        self.latest: dict[str, JobInfo] = {}

    async def step(self, first: int, chunk: dict[str, Any]) -> bool:
        """Settle chunk ``first``'s current job; True once the chunk is settled, False to read it again."""
        entry = self.plan.current(chunk)
        if self.plan._waiting_for_input(chunk):
            self.plan.complete = False
            return True
        assert entry is not None
        if entry.get("outcome") == REPLACED:
            await self._send_again(first, entry)
            return False
        job = await self._read(first, entry)
        if job is None:
            return False
        if job.state == "Open" and entry["phase"] == CREATED:
            _settle(entry, REPLACED, await _abort(self.client, job.id))
            log.warning(
                "Job %s of records %d.. was never closed: aborted, its records go to a new job", job.id, first
            )
            await self.plan.save()
            return False
        if job.state == "Open":
            log.warning("Job %s holds its data but its close did not take: closing it", job.id)
            job = await _close(self.client, job.id)
        if job.state in _KEEP or job.state == "Open":
            self._keep(entry, job)
            log.info("Reattaching to job %s (%s) of records %d..", job.id, job.state, first)
            return True
        if job.state not in FAILED_STATES:
            raise AirflowException(f"job {job.id} is in an unknown state {job.to_dict().get('state')!r}")
        return await self._settle_ended(first, entry, job)

    def _keep(self, entry: dict[str, Any], job: JobInfo) -> None:
        entry["phase"] = CLOSED
        self.latest[job.id] = job

    async def _send_again(self, first: int, entry: dict[str, Any]) -> None:
        """A replaced job's records were another job's unprocessed records: read them again, send them."""
        source = _find(self.plan, entry["source"])
        data, count = await _unprocessed(
            self.client, source, JobInfo(id=source["job"]), self.spec.column_delimiter
        )
        if count != int(entry["count"]):
            raise AirflowFailException(
                f"job {source['job']}'s unprocessed records file now holds {count} records, not "
                f"the {entry['count']} read before: load them by hand"
            )
        await _send(self.client, self.plan, first, data, count, entry["source"], self.spec)

    async def _read(self, first: int, entry: dict[str, Any]) -> JobInfo | None:
        """The job's state; None when Salesforce does not know a job never closed (settled ``replaced``)."""
        try:
            return await self.client.get_job(entry["job"])
        except NotFoundError:
            if entry["phase"] != CREATED:
                raise AirflowFailException(
                    f"job {entry['job']} of records {first}.. is unknown to Salesforce, but it may have "
                    "processed them: resending could load them twice; check the org and clear the "
                    "task's state by hand"
                ) from None
        _settle(entry, REPLACED, {"id": entry["job"], "state": "NotFound"})
        log.warning("Job %s is unknown to Salesforce and was never closed: resending", entry["job"])
        await self.plan.save()
        return None

    async def _settle_ended(self, first: int, entry: dict[str, Any], job: JobInfo) -> bool:
        """A job that ended Aborted or Failed: only its unprocessed records go to a new job."""
        if entry["phase"] == CREATED and job.number_records_processed == 0:
            _settle(entry, REPLACED, job_summary(job))
            log.warning(
                "Job %s was never closed and ended %s: its records go to a new job", job.id, job.state
            )
            await self.plan.save()
            return False
        if job.state == "Failed" and (job.error_message or "").startswith(_INPUT_FAILURES):
            # The data itself was refused: sending it again would fail the same way.
            self._keep(entry, job)
            log.warning("Job %s failed on its data (%s): not sent again", job.id, job.error_message)
            return True
        job, data, count = await _counted_unprocessed(self.client, entry, job, self.spec.column_delimiter)
        if count == 0:
            self._keep(entry, job)
            return True
        log.warning(
            "Job %s ended %s after processing %d of %d records: sending the %d unprocessed to a new job",
            job.id,
            job.state,
            job.number_records_processed,
            entry["count"],
            count,
        )
        new = await _send(
            self.client,
            self.plan,
            first,
            data,
            count,
            entry["job"],
            self.spec,
            parent=entry,
            parent_info=job_summary(job),
        )
        self.latest[new.id] = new
        return True


async def _counted_unprocessed(
    client: BulkIngestClient, entry: dict[str, Any], job: JobInfo, column_delimiter: ColumnDelimiter
) -> tuple[JobInfo, bytes, int]:
    """An ended job's unprocessed records, their count checked against the job's counters."""
    data, count = await _unprocessed(client, entry, job, column_delimiter)
    expected = int(entry["count"]) - min(job.number_records_processed, int(entry["count"]))
    if count != expected:
        job = await client.get_job(job.id)  # counters can trail an abort by a moment
        expected = int(entry["count"]) - min(job.number_records_processed, int(entry["count"]))
    if count != expected:
        raise AirflowFailException(
            f"job {job.id} ended {job.state} having processed {job.number_records_processed} of "
            f"{entry['count']} records, but its unprocessed records file holds {count}: resending "
            "could load records twice or lose some; load them by hand"
        )
    return job, data, count


def _find(plan: JobPlan, job_id: str) -> dict[str, Any]:
    for chunk in plan.chunks.values():
        for job in chunk["jobs"]:
            if job["job"] == job_id:
                return dict(job)
    raise AirflowFailException(f"the task's state names job {job_id} but does not hold it")


async def submit_chunks(
    client: BulkIngestClient,
    plan: JobPlan,
    chunks: Iterator[Chunk],
    spec: JobSpec,
) -> dict[str, JobInfo]:
    """Send every chunk that has no job yet (or whose job was replaced), in input order.

    Returns
    -------
    dict
        The state of every job sent, as its close answered.
    """
    sent: dict[str, JobInfo] = {}
    for chunk in chunks:
        start = chunk.first_record_index
        last = start + chunk.record_count
        known = plan.chunks.get(start)
        if known is not None:
            if int(known["count"]) != chunk.record_count:
                raise InputError(
                    f"records {start}.. were given to job(s) {', '.join(j['job'] for j in known['jobs'])} "
                    f"in a chunk of {known['count']} records, but this try cut {chunk.record_count}: the "
                    "input or the chunk limits changed between tries: reattaching could load records "
                    "twice or not at all",
                    record_index=start,
                )
            if not plan._waiting_for_input(known):
                continue
        else:
            overlap = [f for f, e in plan.chunks.items() if f < last and f + int(e["count"]) > start]
            if overlap:
                raise InputError(
                    f"records {start}..{last - 1} overlap a chunk loaded by an earlier try: "
                    "the input or the chunk limits changed between tries",
                    record_index=start,
                )
        # The chunk itself: a staged one is streamed from its file, never read whole.
        job = await _send(client, plan, start, chunk, chunk.record_count, CHUNK, spec)
        sent[job.id] = job
        log.info("Job %s: records %d..%d uploaded (%s)", job.id, start, last - 1, job.state)
    missing = [f for f, c in plan.chunks.items() if plan._waiting_for_input(c)]
    if missing:
        raise InputError(
            f"the input has no chunk starting at record(s) {missing} that an earlier try loaded: the input "
            "changed between tries",
            record_index=missing[0],
        )
    plan.complete = True
    await plan.save()
    return sent
