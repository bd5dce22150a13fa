"""``SalesforceBulkJobTrigger``: waits in the triggerer for every Bulk API 2.0 job of one task."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_provider_salesforce_bulk.client import (
    AuthenticationError,
    BulkIngestClient,
    BulkQueryClient,
    JobInfo,
    PollPolicy,
    SalesforceBulkError,
    SessionExpiredError,
)
from airflow_provider_salesforce_bulk.hooks.connection import ConnectionConfigError, ConnectionSettings
from airflow_provider_salesforce_bulk.hooks.salesforce_bulk import SalesforceBulkHook
from airflow_provider_salesforce_bulk.triggers.abort import ABORT_BUDGET, abort_jobs
from airflow_provider_salesforce_bulk.triggers.events import (
    EventStatus,
    HistoryEntry,
    JobsEvent,
    JobSummary,
    ResubmitState,
    check_history,
    check_resubmit_state,
    job_summary,
    jobs_event,
)
from airflow_provider_salesforce_bulk.triggers.task_state import atry_is_over
from airflow_provider_salesforce_bulk.version_compat import AIRFLOW_V_3_3_PLUS

__all__ = ["JOB_KINDS", "SalesforceBulkJobTrigger"]

JOB_KINDS = ("ingest", "query")
"""What a trigger's jobs are: ``/jobs/ingest`` (loads) or ``/jobs/query`` (extracts) jobs."""

# Polls of one task's jobs in flight at once: a task with hundreds of jobs must not flood the pool.
_POLL_CONCURRENCY = 8
# A total progress line at most this often (seconds), besides one whenever a job finishes.
_TOTAL_EVERY = 60.0
# Up to this many jobs, every state change of every job is logged; above it, only finishes.
_DETAIL_JOBS = 10


def check_positive_number(name: str, value: Any, *, allow_none: bool = False) -> float | None:
    """A finite positive float, or ``ValueError`` naming the setting (NaN and inf never end a wait)."""
    if value is None and allow_none:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, not {value!r}") from None
    if isinstance(value, bool) or not math.isfinite(number) or number <= 0:
        raise ValueError(f"{name} must be a finite number above 0, not {value!r}")
    return number


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
        Enforced while a poll is in flight: when it passes, the poll is cancelled, the unfinished
        jobs are aborted (the deadline is the user's decision) and their final counts read, and a
        ``timeout`` event is fired within seconds.
    poll_interval : float
        Longest wait between two polls; polling starts at 1 s (or less) and backs off to it.
    job_kind : {"ingest", "query"}
        Ingest (load) jobs or query (extract) jobs: which endpoint is polled, and aborted on the
        deadline or a kill. One poll loop serves both.
    instance_url : str, optional
        The org's URL, echoed in the event (the query operator finishes from it).
    record_counts, history, resubmit : optional
        Only from triggers serialized by earlier releases, which carried the ingest operator's working
        state (the records given to each job, earlier tries' settled jobs, the resubmission state):
        still accepted and echoed in the event, so a task deferred before an upgrade finishes as it
        would have. Triggers built now leave them empty: the operator reads that state from its plan
        store (:mod:`~airflow_provider_salesforce_bulk.operators.round_state`).
    settings : ConnectionSettings, optional
        The connection, already read, when the operator runs the poll loop in the worker (where
        reading it again would be a second sync round trip). Never serialized: it holds the
        secrets; the triggerer reads the connection itself from ``conn_id``.

    Notes
    -----
    Fires exactly one event, a :class:`~airflow_provider_salesforce_bulk.triggers.events.JobsEvent`
    (``status`` success, timeout or error, and the last known state of every job). ``cleanup``
    aborts nothing, so a triggerer restart or move resumes polling without side effects.
    ``on_kill`` aborts the unfinished jobs only once Airflow says the task is no longer deferred or
    running (a user marked or cleared it); a trigger cancelled because it moved to another
    triggerer finds the task still deferred and aborts nothing.
    Before Airflow 3.3 the triggerer never calls ``on_kill`` and cancels a trigger the same way for a
    user's action and a shutdown, so ``run`` calls ``on_kill`` itself when it is cancelled: the
    task's state tells the two apart there as well.
    """

    def __init__(
        self,
        conn_id: str,
        job_ids: Iterable[str],
        deadline: float | None = None,
        poll_interval: float = 5.0,
        instance_url: str | None = None,
        record_counts: Mapping[str, int] | None = None,
        history: Iterable[Mapping[str, Any]] | None = None,
        resubmit: Mapping[str, Any] | None = None,
        job_kind: str = "ingest",
        settings: ConnectionSettings | None = None,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.conn_id = conn_id
        self.job_ids = list(job_ids)
        self.deadline = check_positive_number("deadline", deadline, allow_none=True)
        self.poll_interval = float(check_positive_number("poll_interval", poll_interval) or 0)
        self.instance_url = instance_url
        self.record_counts = {str(k): int(v) for k, v in (record_counts or {}).items()}
        # Checked here, in the worker before deferring and in the triggerer when it resumes a
        # trigger: the event echoes them, typed.
        self.history: list[HistoryEntry] = check_history(list(history or []))
        self.resubmit: ResubmitState | None = check_resubmit_state(resubmit) if resubmit else None
        if job_kind not in JOB_KINDS:
            raise ValueError(f"job_kind must be one of {', '.join(JOB_KINDS)}, not {job_kind!r}")
        self.job_kind = job_kind
        self._final: dict[str, JobSummary] = {}
        self._last_total = -math.inf
        self._logged_totals: tuple[int, int, int] | None = None
        self._settings = settings

    def serialize(self) -> tuple[str, dict[str, Any]]:
        kwargs: dict[str, Any] = {
            "conn_id": self.conn_id,
            "job_ids": list(self.job_ids),
            "deadline": self.deadline,
            "poll_interval": self.poll_interval,
            "job_kind": self.job_kind,
        }
        if self.instance_url is not None:
            kwargs["instance_url"] = self.instance_url
        # An earlier release's working state, only when this trigger was rebuilt from its kwargs.
        if self.record_counts:
            kwargs["record_counts"] = dict(self.record_counts)
        if self.history:
            kwargs["history"] = list(self.history)
        if self.resubmit is not None:
            kwargs["resubmit"] = self.resubmit
        return f"{type(self).__module__}.{type(self).__qualname__}", kwargs

    def __repr__(self) -> str:
        return f"<SalesforceBulkJobTrigger conn_id={self.conn_id!r} {self.job_kind} jobs={len(self.job_ids)}>"

    def _jobs(self, client: BulkIngestClient) -> BulkIngestClient | BulkQueryClient:
        """The client for this trigger's kind of job, on the same session (same pool and token)."""
        return BulkQueryClient(client.session) if self.job_kind == "query" else client

    def _hook(self) -> SalesforceBulkHook:
        return SalesforceBulkHook(salesforce_bulk_conn_id=self.conn_id)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        # The event is yielded after the client is released: a generator suspended inside the
        # pool's context would keep the pool open until the triggerer closes the generator.
        try:
            event = await self._wait()
        except asyncio.CancelledError:
            if not AIRFLOW_V_3_3_PLUS and getattr(self, "task_instance", None) is not None:
                # No on_kill from the triggerer before 3.3; without a task instance (``dag.test``,
                # or polling in the worker) there is nothing to ask, and nothing is aborted.
                await self.on_kill()
            raise
        yield TriggerEvent(event)  # type: ignore[no-untyped-call]

    def _event(
        self,
        status: EventStatus,
        jobs: dict[str, JobSummary],
        message: str | None = None,
        *,
        credentials_refused: bool = False,
    ) -> JobsEvent:
        """The one event of this trigger: how the wait ended and the jobs' last known state (and the
        state an earlier release's trigger carried, echoed)."""
        return jobs_event(
            status,
            self._ordered(jobs),
            message=message,
            instance_url=self.instance_url,
            record_counts=self.record_counts,
            history=self.history,
            resubmit=self.resubmit,
            credentials_refused=credentials_refused,
        )

    def _remaining(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.time()

    async def _wait(self) -> JobsEvent:
        latest: dict[str, JobSummary] = {}
        remaining = self._remaining()
        # Bounds even a login that never answers: the event fires a little after the deadline.
        overall = None if remaining is None else max(remaining, 0) + ABORT_BUDGET + 10
        try:
            return await asyncio.wait_for(self._session(latest), overall)
        except asyncio.TimeoutError:
            return self._timeout_event(latest, "and Salesforce could not be reached to abort them")
        except (AuthenticationError, SessionExpiredError) as exc:
            # A session refused right after a fresh login (it logs in again once per request) is a
            # refusal too; the operator fails the task without retries.
            message = f"Salesforce refused the connection's credentials: {type(exc).__name__}: {exc}"
            return self._event("error", latest, message, credentials_refused=True)
        except (SalesforceBulkError, ConnectionConfigError) as exc:
            return self._event("error", latest, f"{type(exc).__name__}: {exc}")

    async def _session(self, latest: dict[str, JobSummary]) -> JobsEvent:
        async with self._hook().client(self._settings) as client:
            remaining = self._remaining()
            try:
                return await asyncio.wait_for(
                    self._poll(client, latest), None if remaining is None else max(remaining, 0)
                )
            except asyncio.TimeoutError:
                pass
            unfinished = [j for j in self.job_ids if j not in self._final]
            aborted = await self._abort(client, unfinished, latest)
            note = "aborted them" if aborted == len(unfinished) else f"aborted {aborted} of them"
            return self._timeout_event(latest, note)

    def _timeout_event(self, latest: dict[str, JobSummary], note: str) -> JobsEvent:
        unfinished = len(self.job_ids) - len(self._final)
        message = f"{unfinished} of {len(self.job_ids)} job(s) not finished by the deadline; {note}"
        return self._event("timeout", latest, message)

    async def _poll(self, client: BulkIngestClient, latest: dict[str, JobSummary]) -> JobsEvent:
        limit = asyncio.Semaphore(_POLL_CONCURRENCY)
        jobs = self._jobs(client)

        async def poll(job_id: str) -> JobInfo:
            async with limit:
                return await jobs.get_job(job_id)

        policy = PollPolicy(initial=min(1.0, self.poll_interval), maximum=self.poll_interval)
        for wait in policy.intervals():
            pending = [j for j in self.job_ids if j not in self._final]
            finished_before = len(self._final)
            for job in await asyncio.gather(*(poll(j) for j in pending)):
                summary = job_summary(job)
                previous = latest.get(job.id)
                latest[job.id] = summary
                if job.is_terminal:
                    self._final[job.id] = summary
                changed = previous is None or previous["state"] != summary["state"]
                if changed and (job.is_terminal or len(self.job_ids) <= _DETAIL_JOBS):
                    self._log_job(summary)
            self._log_total(latest, force=len(self._final) != finished_before)
            if len(self._final) == len(self.job_ids):
                return self._event("success", self._final)
            await asyncio.sleep(wait)
        raise AssertionError("unreachable")  # pragma: no cover

    def _ordered(self, jobs: dict[str, JobSummary]) -> dict[str, JobSummary]:
        return {j: jobs[j] for j in self.job_ids if j in jobs}

    def _log_job(self, job: JobSummary) -> None:
        self.log.info(
            "Job %s %s: %d processed, %d failed",
            job["id"],
            job["state"],
            job["numberRecordsProcessed"],
            job["numberRecordsFailed"],
        )

    def _log_total(self, latest: dict[str, JobSummary], force: bool) -> None:
        """One line for all jobs: when a job finishes, else at most every ``_TOTAL_EVERY`` seconds."""
        now = time.monotonic()
        totals = (
            len(self._final),
            sum(j["numberRecordsProcessed"] for j in latest.values()),
            sum(j["numberRecordsFailed"] for j in latest.values()),
        )
        if totals == self._logged_totals or (not force and now - self._last_total < _TOTAL_EVERY):
            return
        self._last_total, self._logged_totals = now, totals
        self.log.info(
            "%d of %d jobs finished: %d records processed, %d failed so far",
            totals[0],
            len(self.job_ids),
            totals[1],
            totals[2],
        )

    async def _abort(
        self, client: BulkIngestClient, job_ids: list[str], latest: dict[str, JobSummary]
    ) -> int:
        """Abort ``job_ids`` (see :func:`~.abort.abort_jobs`); returns how many are known to have ended,
        which are final now; the others keep their last known state."""
        ended = await abort_jobs(self._jobs(client), job_ids, latest, log=self.log)
        for job_id in ended:
            self._final[job_id] = latest[job_id]
        return len(ended)

    async def on_kill(self) -> None:
        """Abort the unfinished jobs, only if the user ended this try. Idempotent.

        Called by the triggerer on a user's action (Airflow 3.3+), by :meth:`run` on any cancel before.
        """
        if await atry_is_over(getattr(self, "task_instance", None)) is not True:
            return
        try:
            async with self._hook().client() as client:
                await self._abort(client, [j for j in self.job_ids if j not in self._final], {})
        except (SalesforceBulkError, ConnectionConfigError) as exc:
            self.log.warning("on_kill could not abort the jobs: %s", exc)

    async def cleanup(self) -> None:
        """Nothing to abort: the trigger may just be moving to another triggerer."""
