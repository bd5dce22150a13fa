"""``SalesforceBulkJobTrigger``: waits in the triggerer for every Bulk API 2.0 job of one task."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterable
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_provider_salesforce_bulk.client import JobInfo, PollPolicy, SalesforceBulkError
from airflow_provider_salesforce_bulk.hooks.connection import ConnectionConfigError, ConnectionSettings
from airflow_provider_salesforce_bulk.hooks.salesforce_bulk import SalesforceBulkHook

__all__ = ["SalesforceBulkJobTrigger", "job_summary"]

# Polls of one task's jobs in flight at once: a task with hundreds of jobs must not flood the pool.
_POLL_CONCURRENCY = 8


def _event(payload: dict[str, Any]) -> TriggerEvent:
    return TriggerEvent(payload)  # type: ignore[no-untyped-call]


def job_summary(job: JobInfo) -> dict[str, Any]:
    """The JSON-able part of a job the operator needs (no secrets, a few hundred bytes)."""
    return {
        "id": job.id,
        "state": job.state,
        "object": job.object,
        "operation": job.operation,
        "numberRecordsProcessed": job.number_records_processed,
        "numberRecordsFailed": job.number_records_failed,
        "errorMessage": job.error_message,
        "columnDelimiter": job.column_delimiter,
    }


class SalesforceBulkJobTrigger(BaseTrigger):
    """Poll all jobs of one task until each is JobComplete, Failed or Aborted.

    Parameters
    ----------
    conn_id : str
        The Salesforce connection id (the trigger reads it itself; no secret travels in kwargs).
    job_ids : list of str
        Jobs to wait for.
    deadline : float, optional
        Absolute deadline as a UNIX timestamp. Absolute so a triggerer restart does not extend it.
        When it passes, the unfinished jobs are aborted and a ``timeout`` event is fired.
    poll_interval : float
        Longest wait between two polls; polling starts at 1 s (or less) and backs off to it.

    Notes
    -----
    Fires exactly one event: ``{"status": "success", "jobs": {...}}`` with the final state of every job,
    ``{"status": "timeout", ...}`` or ``{"status": "error", "message": ..., "jobs": {...}}``. ``cleanup``
    aborts nothing, so a triggerer restart or move resumes polling without side effects; ``on_kill``
    (a user marking or clearing the task) aborts the unfinished jobs.
    """

    def __init__(
        self,
        conn_id: str,
        job_ids: Iterable[str],
        deadline: float | None = None,
        poll_interval: float = 5.0,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.conn_id = conn_id
        self.job_ids = list(job_ids)
        self.deadline = deadline
        self.poll_interval = float(poll_interval)
        self._final: dict[str, dict[str, Any]] = {}
        self.settings: ConnectionSettings | None = None
        """Set by the operator when it polls in the worker (sync connection read); None in the triggerer."""

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "conn_id": self.conn_id,
                "job_ids": list(self.job_ids),
                "deadline": self.deadline,
                "poll_interval": self.poll_interval,
            },
        )

    def __repr__(self) -> str:
        return f"<SalesforceBulkJobTrigger conn_id={self.conn_id!r} jobs={len(self.job_ids)}>"

    def _hook(self) -> SalesforceBulkHook:
        return SalesforceBulkHook(salesforce_bulk_conn_id=self.conn_id)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        # The event is yielded after the client is released: a generator suspended inside the
        # pool's context would keep the pool open until the triggerer closes the generator.
        payload = await self._wait()
        yield _event(payload)

    async def _wait(self) -> dict[str, Any]:
        latest: dict[str, dict[str, Any]] = {}
        try:
            async with self._hook().client(self.settings) as client:
                limit = asyncio.Semaphore(_POLL_CONCURRENCY)

                async def poll(job_id: str) -> JobInfo:
                    async with limit:
                        return await client.get_job(job_id)

                policy = PollPolicy(initial=min(1.0, self.poll_interval), maximum=self.poll_interval)
                for wait in policy.intervals():
                    pending = [j for j in self.job_ids if j not in self._final]
                    for job in await asyncio.gather(*(poll(j) for j in pending)):
                        summary = job_summary(job)
                        if latest.get(job.id) != summary:
                            latest[job.id] = summary
                            self._log_job(summary)
                        if job.is_terminal:
                            self._final[job.id] = summary
                    self._log_total(latest)
                    if len(self._final) == len(self.job_ids):
                        return {"status": "success", "jobs": self._ordered(self._final)}
                    if self.deadline is not None:
                        remaining = self.deadline - time.time()
                        if remaining <= 0:
                            await self._abort(client, latest)
                            return {
                                "status": "timeout",
                                "message": f"{len(self.job_ids) - len(self._final)} of {len(self.job_ids)} "
                                "job(s) not finished by the deadline; aborted them",
                                "jobs": self._ordered(latest),
                            }
                        wait = min(wait, remaining)
                    await asyncio.sleep(wait)
        except (SalesforceBulkError, ConnectionConfigError) as exc:
            message = f"{type(exc).__name__}: {exc}"
            return {"status": "error", "message": message, "jobs": self._ordered(latest)}
        raise AssertionError("unreachable")  # pragma: no cover

    def _ordered(self, jobs: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        return {j: jobs[j] for j in self.job_ids if j in jobs}

    def _log_job(self, job: dict[str, Any]) -> None:
        self.log.info(
            "Job %s %s: %d processed, %d failed",
            job["id"],
            job["state"],
            job["numberRecordsProcessed"],
            job["numberRecordsFailed"],
        )

    def _log_total(self, latest: dict[str, dict[str, Any]]) -> None:
        if len(self.job_ids) < 2:
            return
        self.log.info(
            "%d of %d jobs finished: %d records processed, %d failed so far",
            len(self._final),
            len(self.job_ids),
            sum(j["numberRecordsProcessed"] for j in latest.values()),
            sum(j["numberRecordsFailed"] for j in latest.values()),
        )

    async def _abort(self, client: Any, latest: dict[str, dict[str, Any]]) -> None:
        for job_id in [j for j in self.job_ids if j not in self._final]:
            try:
                job = await client.abort_job(job_id)
            except SalesforceBulkError as exc:
                self.log.warning("Could not abort job %s: %s", job_id, exc)
                continue
            latest[job_id] = job_summary(job)
            self.log.warning("Aborted job %s (now %s)", job_id, job.state)

    async def on_kill(self) -> None:
        """Abort the jobs not finished yet: the user killed the task (Airflow 3.3+). Idempotent."""
        try:
            async with self._hook().client() as client:
                await self._abort(client, {})
        except (SalesforceBulkError, ConnectionConfigError) as exc:
            self.log.warning("on_kill could not abort the jobs: %s", exc)

    async def cleanup(self) -> None:
        """Nothing to abort: the trigger may just be moving to another triggerer."""
