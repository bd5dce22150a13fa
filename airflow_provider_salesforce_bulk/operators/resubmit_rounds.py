"""The operator's resubmission rounds: transient failures sent again in new jobs, every job recorded first.

After a round of jobs has ended, the records that failed with one of the policy's codes
(``UNABLE_TO_LOCK_ROW``) go to new jobs: round 2, 3, ... Each new job is recorded in the task's plan
store under its round and the ``first_record_index`` of its retry chunk *before* its upload, and
marked before its close. A task retry replays the rounds: a round already recorded is reattached to,
never computed and sent again (its records could be stored twice); within a round left half done,
the chunks already given to a job whose close may have been sent are kept, and only the others are
sent. The chunks of a round are the same on every try: the failed results of ended jobs do not change.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Sequence
from typing import Any

from airflow.providers.common.compat.sdk import AirflowFailException

from airflow_provider_salesforce_bulk.client import (
    BulkIngestClient,
    ChunkLimits,
    JobInfo,
    JobSpec,
    ResubmitPolicy,
    SalesforceBulkError,
)
from airflow_provider_salesforce_bulk.client.operation import submit_job
from airflow_provider_salesforce_bulk.client.resubmit import ResubmitLedger, RetryChunk, iter_retry_chunks
from airflow_provider_salesforce_bulk.operators.submit import CLOSED, CLOSING, CREATED, StateStore
from airflow_provider_salesforce_bulk.operators.try_stop import check_stop
from airflow_provider_salesforce_bulk.triggers.events import check_job_id

__all__ = ["ROUNDS_KEY", "RoundPlan", "submit_round"]

log = logging.getLogger(__name__)

ROUNDS_KEY = "salesforce_bulk_rounds"
"""The plan store key of the rounds (beside the first round's plan)."""
_VERSION = 1


class RoundPlan:
    """Per round (2, 3, ...): the jobs it was given to, by retry chunk, and whether it was all sent."""

    def __init__(self, store: StateStore | None) -> None:
        self.store = store
        raw = store.get(ROUNDS_KEY) if store is not None else None
        rounds = raw.get("rounds") if isinstance(raw, dict) else None
        self.rounds: dict[str, dict[str, Any]] = dict(rounds) if isinstance(rounds, dict) else {}

    @staticmethod
    def reset(store: StateStore | None) -> None:
        """Forget every round: a fresh load (nothing of the first round submitted yet) starts here."""
        if store is not None and store.get(ROUNDS_KEY) is not None:
            store.delete(ROUNDS_KEY)

    def round(self, number: int) -> dict[str, Any]:
        return self.rounds.setdefault(str(number), {"sources": None, "jobs": {}, "complete": False})

    async def save(self) -> None:
        if self.store is not None:
            # A thread: the sync round trip to the supervisor never runs on the event loop's thread.
            await asyncio.to_thread(self.store.set, ROUNDS_KEY, {"version": _VERSION, "rounds": self.rounds})


def _chunk_of(record: dict[str, Any], first: int) -> RetryChunk:
    origins = tuple((str(job_id), int(count)) for job_id, count in record["origins"])
    return RetryChunk(b"", first, int(record["count"]), origins=origins)


async def submit_round(
    client: BulkIngestClient,
    plan: RoundPlan,
    number: int,
    source_job_ids: Sequence[str],
    policy: ResubmitPolicy,
    ledger: ResubmitLedger,
    spec: JobSpec,
    limits: ChunkLimits,
    stop: threading.Event | None = None,
) -> dict[str, int]:
    """Send round ``number``: the transient failures of ``source_job_ids`` (ended jobs of the round before),
    in jobs created as ``spec`` says and chunks within ``limits``.

    Every chunk whose job may process it is added to ``ledger``. Returns every job of the round
    (sent now or by an earlier try) with the records it was given. A set ``stop`` (the try was
    ended) stops the round before its next chunk; the plan keeps what was sent for the next try.
    """
    entry = plan.round(number)
    jobs: dict[str, dict[str, Any]] = entry["jobs"]
    sources = list(source_job_ids)
    if entry["sources"] is not None and sorted(entry["sources"]) != sorted(sources):
        raise AirflowFailException(
            f"round {number} of resubmission was computed by an earlier try from jobs {entry['sources']}, "
            f"but this try would take it from {sources}: the task's plan does not match the jobs; check "
            "the org and clear the task's state by hand"
        )
    entry["sources"] = sources
    if entry["complete"]:
        log.info("Round %d was sent by an earlier try: reattaching to its %d job(s)", number, len(jobs))
        for first, known_job in jobs.items():
            ledger.add_resubmitted(_chunk_of(known_job, int(first)))
        return {known_job["job"]: int(known_job["count"]) for known_job in jobs.values()}
    await plan.save()
    async for chunk in iter_retry_chunks(
        client, sources, policy, limits=limits, chunk_format=spec.chunk_format()
    ):
        check_stop(stop, f"retry chunk {chunk.first_record_index} of round {number}")
        key = str(chunk.first_record_index)
        known = jobs.get(key)
        if known is not None:
            if int(known["count"]) != chunk.record_count:
                raise AirflowFailException(
                    f"round {number}: job {known['job']} was given {known['count']} records from retry chunk "
                    f"{key}, but the failed results now give {chunk.record_count}: check the org and clear "
                    "the task's state by hand"
                )
            if known["phase"] != CREATED:
                log.info("Round %d: reattaching to job %s (%d records)", number, known["job"], known["count"])
                ledger.add_resubmitted(chunk)
                continue
            # Never closed, so it processes nothing: aborted (harmless if it is gone), chunk sent again.
            with contextlib.suppress(SalesforceBulkError):
                await client.abort_job(check_job_id(known["job"]))
        record: dict[str, Any] = {
            "job": None,
            "count": chunk.record_count,
            "origins": [[job_id, count] for job_id, count in chunk.origins],
            "phase": CREATED,
        }

        async def created(job: JobInfo, record: dict[str, Any] = record, key: str = key) -> None:
            check_job_id(job.id)
            record["job"] = job.id
            record["phase"] = CREATED
            jobs[key] = record
            await plan.save()

        async def closing(_job: JobInfo, record: dict[str, Any] = record, chunk: RetryChunk = chunk) -> None:
            record["phase"] = CLOSING
            await plan.save()
            ledger.add_resubmitted(chunk)  # from here on the new job may process these records

        job, _ = await submit_job(client, spec, chunk.data, on_job_created=created, on_job_closing=closing)
        record["phase"] = CLOSED
        await plan.save()
        log.info(
            "Round %d: job %s holds %d records sent again (%s)", number, job.id, chunk.record_count, job.state
        )
    entry["complete"] = True
    await plan.save()
    return {record["job"]: int(record["count"]) for record in jobs.values()}
