"""Submitting chunks as jobs and settling an earlier try's jobs, every step recorded before it is taken.

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

import asyncio
import csv
import io
import logging
from collections.abc import Iterator, Mapping
from typing import Any, Protocol

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
    UploadOutcomeUnknownError,
)
from airflow_provider_salesforce_bulk.client.csv_format import COLUMN_DELIMITERS, Chunk
from airflow_provider_salesforce_bulk.client.models import CLOSED_STATES, FAILED_STATES, ColumnDelimiter
from airflow_provider_salesforce_bulk.client.operation import close_uploaded_job
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
    "StateStore",
    "reconcile",
    "submit_chunks",
]

log = logging.getLogger(__name__)

STATE_KEY = "salesforce_bulk"
_VERSION = 2
MAX_UPLOAD_ATTEMPTS = 3

# How far a job got (its "phase").
CREATED = "created"
"""Created, upload not confirmed, close never sent: Salesforce never processes it."""
CLOSING = "closing"
"""Its data is uploaded and the close request may have been sent: it may be processing."""
CLOSED = "closed"
"""Salesforce confirmed it left Open."""

# Why a job is no longer the current one of its chunk (its "outcome").
REPLACED = "replaced"
"""Never closed, so nothing processed: all its records went to the next job."""
RESENT = "resent"
"""Ended Aborted or Failed: its unprocessed records (only those) went to the next job."""

_KEEP = CLOSED_STATES - FAILED_STATES
# Whole-job failures caused by the data or the job's settings: a new job would fail the same way.
_INPUT_FAILURES = ("InvalidBatch", "ClientInputError")
CHUNK = "chunk"
"""``source`` of a job given its chunk from the input (otherwise the id of the job it resends)."""


class StateStore(Protocol):
    def get(self, key: str, default: Any = None) -> Any: ...

    def set(self, key: str, value: Any) -> None: ...

    def delete(self, key: str) -> None: ...


class JobPlan:
    """What the state store holds: per chunk, its record count and every job it was given to."""

    def __init__(self, store: StateStore | None, raw: Any = None) -> None:
        self.store = store
        raw = raw if isinstance(raw, dict) else {}
        self.chunks: dict[int, dict[str, Any]] = {}
        for first, entry in (raw.get("chunks") or {}).items():
            entry = dict(entry)
            if "jobs" not in entry:  # written by the first version: one job per chunk
                phase = CLOSED if entry.get("closed") else CREATED
                entry = {
                    "count": entry["count"],
                    "jobs": [{"job": entry["job"], "count": entry["count"], "phase": phase, "source": CHUNK}],
                }
            self.chunks[int(first)] = {"count": int(entry["count"]), "jobs": [dict(j) for j in entry["jobs"]]}
        self.complete = bool(raw.get("complete"))
        staged = raw.get("staged")
        self.staged: dict[str, Any] | None = dict(staged) if isinstance(staged, dict) else None
        """The manifest of the staged chunks (see :mod:`.staging`), recorded before the first job."""
        self.instance_url: str | None = raw.get("instance_url")
        done = raw.get("done")
        self.done: dict[str, Any] | None = dict(done) if isinstance(done, dict) else None
        """Set once a try succeeded: its ``try_number`` and ``summary`` (see :meth:`mark_done`)."""

    @classmethod
    def load(cls, store: StateStore | None) -> JobPlan:
        return cls(store, store.get(STATE_KEY) if store is not None else None)

    def dump(self) -> dict[str, Any]:
        out = {
            "version": _VERSION,
            "chunks": {str(first): entry for first, entry in sorted(self.chunks.items())},
            "complete": self.complete,
            "instance_url": self.instance_url,
        }
        if self.staged is not None:
            out["staged"] = self.staged
        if self.done is not None:
            out["done"] = self.done
        return out

    @staticmethod
    def mark_done(store: StateStore, try_number: int | None, summary: Mapping[str, Any]) -> None:
        """Keep the plan, marked done by ``try_number`` with its summary, instead of deleting it.

        Airflow can fail a try after it succeeded (a late stale report): its retry then finds this
        mark and finishes without loading anything again. Called from the worker, never the loop.
        """
        try:
            raw = store.get(STATE_KEY)
        except Exception as exc:
            log.warning("Could not read the plan to mark it done (%s: %s)", type(exc).__name__, exc)
            return
        raw = dict(raw) if isinstance(raw, dict) else {"version": _VERSION, "chunks": {}, "complete": True}
        raw["done"] = {"try_number": try_number, "summary": dict(summary)}
        try:
            store.set(STATE_KEY, raw)
            return
        except Exception as exc:  # e.g. a summary of many jobs beyond the store's value size
            log.warning("Could not keep the summary with the plan (%s: %s)", type(exc).__name__, exc)
        raw["done"] = {"try_number": try_number, "summary": None}
        try:
            store.set(STATE_KEY, raw)
        except Exception as exc:
            # The plan stays as it was: a later try reattaches to the finished jobs, loads nothing.
            log.warning("Could not mark the plan done (%s: %s)", type(exc).__name__, exc)

    async def save(self) -> None:
        if self.store is not None:
            # A thread, so the sync round trip to the supervisor never runs on the event loop thread.
            await asyncio.to_thread(self.store.set, STATE_KEY, self.dump())

    def save_now(self) -> None:
        """:meth:`save` from the worker's own thread (outside the event loop)."""
        if self.store is not None:
            self.store.set(STATE_KEY, self.dump())

    # -- views ----------------------------------------------------------------------------------

    @staticmethod
    def current(chunk: dict[str, Any]) -> dict[str, Any] | None:
        jobs = chunk["jobs"]
        return jobs[-1] if jobs else None

    def active(self) -> list[dict[str, Any]]:
        """Each chunk's current job, unless it was replaced (its chunk waits for a new job)."""
        out = []
        for _, chunk in sorted(self.chunks.items()):
            entry = self.current(chunk)
            if entry is not None and not entry.get("outcome"):
                out.append(entry)
        return out

    @property
    def job_ids(self) -> list[str]:
        """The jobs to wait for: every chunk's current job."""
        return [entry["job"] for entry in self.active()]

    @property
    def all_job_ids(self) -> list[str]:
        return [job["job"] for _, chunk in sorted(self.chunks.items()) for job in chunk["jobs"]]

    @property
    def records(self) -> int:
        return sum(int(chunk["count"]) for chunk in self.chunks.values())

    def record_counts(self) -> dict[str, int]:
        """Records given to each job, every job of every try."""
        return {job["job"]: int(job["count"]) for chunk in self.chunks.values() for job in chunk["jobs"]}

    def history(self) -> list[dict[str, Any]]:
        """The jobs settled by a reconcile (replaced or resent), with their last known state."""
        out = []
        for first, chunk in sorted(self.chunks.items()):
            for job in chunk["jobs"]:
                if job.get("outcome"):
                    out.append(
                        {
                            "id": job["job"],
                            "chunk": first,
                            "count": int(job["count"]),
                            "outcome": job["outcome"],
                            "next": job.get("next"),
                            "info": job.get("info") or {"id": job["job"], "state": None},
                        }
                    )
        return out

    def _waiting_for_input(self, chunk: dict[str, Any]) -> bool:
        entry = self.current(chunk)
        return entry is None or (entry.get("outcome") == REPLACED and entry.get("source") == CHUNK)


def _settle(entry: dict[str, Any], outcome: str, info: Mapping[str, Any]) -> None:
    entry["outcome"] = outcome
    entry["info"] = info


async def _abort(client: BulkIngestClient, job_id: str) -> Mapping[str, Any]:
    """Abort a job that was never closed (so never processed); its last known state either way."""
    try:
        await client.abort_job(job_id)
        return job_summary(await client.get_job(job_id))
    except SalesforceBulkError as exc:
        log.warning("Could not abort job %s (it was never closed, so it processes nothing): %s", job_id, exc)
        return {"id": job_id, "state": "Open", "numberRecordsProcessed": 0, "numberRecordsFailed": 0}


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
    """Send ``count`` records of chunk ``first`` to a new job; every step recorded before it is taken.

    An upload whose answer is lost goes to another new job (the first is never closed, so it never
    processes anything). A close whose answer is lost is never followed by an abort: the job's state
    is read instead, and if even that fails the error is raised with the job recorded as ``closing``,
    for the next try's ``reconcile()`` to read.
    """
    chunk = plan.chunks.setdefault(first, {"count": count, "jobs": []})
    for attempt in range(1, MAX_UPLOAD_ATTEMPTS + 1):
        try:
            job = await client.create_job_from_spec(spec)
        except (InvalidJobError, NotFoundError) as exc:
            raise InputError(
                f"Salesforce refused a {spec.operation} job on object {spec.object!r}: {exc}",
                field="object_name",
            ) from None
        check_job_id(job.id)
        entry = {"job": job.id, "count": count, "phase": CREATED, "source": source}
        if parent is not None and not parent.get("outcome"):
            _settle(parent, RESENT, parent_info or {"id": parent["job"], "state": None})
        if parent is not None:
            parent["next"] = job.id
        previous = plan.current(chunk)
        if previous is not None and previous.get("outcome") == REPLACED and previous is not parent:
            previous["next"] = job.id
        chunk["jobs"].append(entry)
        await plan.save()
        try:
            await client.upload_job_data(job.id, data, close=False)
        except UploadOutcomeUnknownError as exc:
            _settle(entry, REPLACED, await _abort(client, job.id))
            await plan.save()
            if attempt == MAX_UPLOAD_ATTEMPTS:
                raise
            log.warning("Upload to job %s got no answer (%s); sending its records to a new job", job.id, exc)
            continue
        except SalesforceBulkError:
            # Refused: the job holds no data and was never closed.
            _settle(entry, REPLACED, await _abort(client, job.id))
            await plan.save()
            raise
        entry["phase"] = CLOSING
        await plan.save()
        closed = await _close(client, job.id)
        entry["phase"] = CLOSED
        await plan.save()
        return closed
    raise AssertionError("unreachable")  # pragma: no cover


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
    latest: dict[str, JobInfo] = {}
    for first, chunk in sorted(plan.chunks.items()):
        while True:
            entry = plan.current(chunk)
            if plan._waiting_for_input(chunk):
                plan.complete = False
                break
            assert entry is not None
            if entry.get("outcome") == REPLACED:
                # Its records were another job's unprocessed records: read them again.
                source = _find(plan, entry["source"])
                data, count = await _unprocessed(
                    client, source, JobInfo(id=source["job"]), spec.column_delimiter
                )
                if count != int(entry["count"]):
                    raise AirflowFailException(
                        f"job {source['job']}'s unprocessed records file now holds {count} records, not "
                        f"the {entry['count']} read before: load them by hand"
                    )
                await _send(client, plan, first, data, count, entry["source"], spec)
                continue
            try:
                job = await client.get_job(entry["job"])
            except NotFoundError:
                if entry["phase"] != CREATED:
                    raise AirflowFailException(
                        f"job {entry['job']} of records {first}.. is unknown to Salesforce, but it may have "
                        "processed them: resending could load them twice; check the org and clear the "
                        "task's state by hand"
                    ) from None
                _settle(entry, REPLACED, {"id": entry["job"], "state": "NotFound"})
                log.warning("Job %s is unknown to Salesforce and was never closed: resending", entry["job"])
                await plan.save()
                continue
            if job.state == "Open" and entry["phase"] == CREATED:
                _settle(entry, REPLACED, await _abort(client, job.id))
                log.warning(
                    "Job %s of records %d.. was never closed: aborted, its records go to a new job",
                    job.id,
                    first,
                )
                await plan.save()
                continue
            if job.state == "Open":
                log.warning("Job %s holds its data but its close did not take: closing it", job.id)
                job = await _close(client, job.id)
            if job.state in _KEEP or job.state == "Open":
                entry["phase"] = CLOSED
                latest[job.id] = job
                log.info("Reattaching to job %s (%s) of records %d..", job.id, job.state, first)
                break
            if job.state not in FAILED_STATES:
                raise AirflowException(f"job {job.id} is in an unknown state {job.to_dict().get('state')!r}")
            if entry["phase"] == CREATED and job.number_records_processed == 0:
                _settle(entry, REPLACED, job_summary(job))
                log.warning(
                    "Job %s was never closed and ended %s: its records go to a new job", job.id, job.state
                )
                await plan.save()
                continue
            if job.state == "Failed" and (job.error_message or "").startswith(_INPUT_FAILURES):
                # The data itself was refused: sending it again would fail the same way.
                entry["phase"] = CLOSED
                latest[job.id] = job
                log.warning("Job %s failed on its data (%s): not sent again", job.id, job.error_message)
                break
            data, count = await _unprocessed(client, entry, job, spec.column_delimiter)
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
            if count == 0:
                entry["phase"] = CLOSED
                latest[job.id] = job
                break
            log.warning(
                "Job %s ended %s after processing %d of %d records: sending the %d unprocessed to a new job",
                job.id,
                job.state,
                job.number_records_processed,
                entry["count"],
                count,
            )
            new = await _send(
                client,
                plan,
                first,
                data,
                count,
                entry["job"],
                spec,
                parent=entry,
                parent_info=job_summary(job),
            )
            latest[new.id] = new
            break
    await plan.save()
    return latest


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
