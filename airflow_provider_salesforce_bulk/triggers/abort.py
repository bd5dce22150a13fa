"""Aborting a task's Bulk API 2.0 jobs: the one abort both the trigger and the operators' ``on_kill`` use.

An abort happens only on a user's decision (the ``timeout`` passed, or a kill after which Airflow says
the try is over); the callers decide that, this module only aborts and reads back the real counts.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any, Protocol

from airflow_provider_salesforce_bulk.client import (
    BulkIngestClient,
    BulkQueryClient,
    SalesforceBulkError,
    SalesforceSession,
    TokenCache,
)
from airflow_provider_salesforce_bulk.hooks.connection import ConnectionSettings
from airflow_provider_salesforce_bulk.triggers.events import JobSummary, job_summary

__all__ = ["ABORT_BUDGET", "ABORT_CONCURRENCY", "Log", "abort_jobs", "abort_jobs_now", "jobs_client"]

ABORT_BUDGET = 20.0
"""Seconds for aborting the jobs and reading their final counts, all of them together."""
ABORT_CONCURRENCY = 8
"""Jobs aborted at once: a task with hundreds of jobs must not flood the pool."""

_log = logging.getLogger(__name__)


class Log(Protocol):
    """What these helpers log to: a ``logging.Logger``, or an operator's or a trigger's ``log``."""

    def info(self, msg: str, /, *args: Any) -> Any: ...

    def warning(self, msg: str, /, *args: Any) -> Any: ...


def jobs_client(client: BulkIngestClient, job_kind: str) -> BulkIngestClient | BulkQueryClient:
    """The client for ``job_kind`` (``ingest`` or ``query``) jobs, on the same session."""
    return BulkQueryClient(client.session) if job_kind == "query" else client


async def abort_jobs(
    jobs: BulkIngestClient | BulkQueryClient,
    job_ids: Iterable[str],
    latest: dict[str, JobSummary],
    *,
    log: Log = _log,
    budget: float = ABORT_BUDGET,
) -> set[str]:
    """Abort ``job_ids`` and read their counts again (an abort's answer has none), within ``budget``.

    ``latest`` gets each job's state as last seen. Returns the ids of the jobs known to have ended;
    the others keep their last known state. Never raises for one job: a job that cannot be aborted
    or read is logged and left as it was.
    """
    ended: set[str] = set()

    async def one(job_id: str) -> None:
        try:
            job = await jobs.abort_job(job_id)
        except SalesforceBulkError as exc:
            log.warning("Could not abort job %s: %s", job_id, exc)
            return
        log.warning("Aborted job %s (now %s)", job_id, job.state)
        latest[job_id] = job_summary(job)
        if job.is_terminal:
            ended.add(job_id)
        try:
            # The abort's answer carries no counters: the summary needs the real ones.
            job = await jobs.get_job(job_id)
        except SalesforceBulkError as exc:
            log.warning("Could not read job %s after aborting it: %s", job_id, exc)
            return
        latest[job_id] = job_summary(job)
        if job.is_terminal:
            ended.add(job_id)

    limit = asyncio.Semaphore(ABORT_CONCURRENCY)

    async def bounded(job_id: str) -> None:
        async with limit:
            await one(job_id)

    try:
        await asyncio.wait_for(asyncio.gather(*(bounded(j) for j in job_ids)), budget)
    except asyncio.TimeoutError:
        log.warning("Aborting the jobs took over %.0fs: some may still be running", budget)
    return ended


def abort_jobs_now(
    settings: ConnectionSettings,
    job_ids: list[str],
    *,
    job_kind: str = "ingest",
    log: Log = _log,
) -> dict[str, JobSummary]:
    """Abort ``job_ids`` from sync code on a session of its own; returns the jobs as last seen.

    Meant for a thread started by an operator's ``on_kill``: Airflow calls that from a signal
    handler, which may have interrupted the task while it held a pool's or a token cache's lock,
    so nothing here shares the task's pool, token cache or event loop.
    """
    latest: dict[str, JobSummary] = {}

    async def run() -> None:
        session = SalesforceSession(settings.auth, api_version=settings.api_version, token_cache=TokenCache())
        async with session:
            await abort_jobs(jobs_client(BulkIngestClient(session), job_kind), job_ids, latest, log=log)

    asyncio.run(run())
    return latest
