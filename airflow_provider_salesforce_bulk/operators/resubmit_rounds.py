"""The operator's resubmission rounds: transient failures sent again in new jobs, every job recorded first.

After a round of jobs has ended, the records that failed with one of the policy's codes
(``UNABLE_TO_LOCK_ROW``) go to new jobs: round 2, 3, ... Each new job is recorded in the task's plan
store under its round and the ``first_record_index`` of its resubmit chunk *before* its upload, and
marked before its close. A task retry replays the rounds: a round already recorded is reattached to,
never computed and sent again (its records could be stored twice); within a round left half done,
the chunks already given to a job whose close may have been sent are kept, and only the others are
sent. The chunks of a round are the same on every try: the failed results of ended jobs do not change.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import threading
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from airflow.providers.common.compat.sdk import AirflowException, AirflowFailException

from airflow_provider_salesforce_bulk.client import (
    BulkIngestClient,
    ChunkLimits,
    InputError,
    JobInfo,
    JobSpec,
    ResubmitPolicy,
    SalesforceBulkError,
)
from airflow_provider_salesforce_bulk.client.resubmit import (
    DEFAULT_RESUBMIT_ERROR_CODES,
    ResubmitChunk,
    ResubmitLedger,
    resubmit_round,
)
from airflow_provider_salesforce_bulk.hooks.connection import ConnectionSettings
from airflow_provider_salesforce_bulk.hooks.salesforce_bulk import SalesforceBulkHook, run_sync
from airflow_provider_salesforce_bulk.operators.job_plan import CLOSED, CLOSING, CREATED
from airflow_provider_salesforce_bulk.operators.plan_store import PlanStore
from airflow_provider_salesforce_bulk.operators.refusals import fail_on_refused_credentials
from airflow_provider_salesforce_bulk.operators.round_state import RoundState
from airflow_provider_salesforce_bulk.operators.submit import JobPlan
from airflow_provider_salesforce_bulk.operators.try_stop import check_stop
from airflow_provider_salesforce_bulk.triggers.events import check_job_id, check_resubmit_state
from airflow_provider_salesforce_bulk.triggers.round_backoff import ResubmitBackoffTrigger

__all__ = [
    "ROUNDS_KEY",
    "RoundPlan",
    "back_off",
    "load_wait_state",
    "resubmit_codes",
    "resubmit_policy",
    "round_to_send",
    "save_wait_state",
    "send_round",
    "submit_round",
]

log = logging.getLogger(__name__)

ROUNDS_KEY = "salesforce_bulk_rounds"
"""The plan store key of the rounds (beside the first round's plan)."""
_VERSION = 1


class RoundPlan:
    """Per round (2, 3, ...): the jobs it was given to, by resubmit chunk, and whether it was all sent."""

    def __init__(self, store: PlanStore | None) -> None:
        self.store = store
        raw = store.get(ROUNDS_KEY) if store is not None else None
        rounds = raw.get("rounds") if isinstance(raw, dict) else None
        self.rounds: dict[str, dict[str, Any]] = dict(rounds) if isinstance(rounds, dict) else {}

    @staticmethod
    def reset(store: PlanStore | None) -> None:
        """Forget every round: a fresh load (nothing of the first round submitted yet) starts here."""
        if store is not None and store.get(ROUNDS_KEY) is not None:
            store.delete(ROUNDS_KEY)

    def round(self, number: int) -> dict[str, Any]:
        return self.rounds.setdefault(str(number), {"sources": None, "jobs": {}, "complete": False})

    async def save(self) -> None:
        if self.store is not None:
            # A thread: the sync round trip to the supervisor never runs on the event loop's thread.
            await asyncio.to_thread(self.store.set, ROUNDS_KEY, {"version": _VERSION, "rounds": self.rounds})


def _chunk_of(record: dict[str, Any], first: int) -> ResubmitChunk:
    origins = tuple((str(job_id), int(count)) for job_id, count in record["origins"])
    return ResubmitChunk(b"", first, int(record["count"]), origins=origins)


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
    in jobs created as ``spec`` says and chunks within ``limits``, through the client's
    :func:`resubmit_round` with each step recorded in ``plan`` before it is taken.

    Every chunk whose job may process it is added to ``ledger``. Returns every job of the round
    (sent now or by an earlier try) with the records it was given. A set ``stop`` (the try was
    ended) stops the round before its next chunk; the plan keeps what was sent for the next try.
    """
    entry = _round_entry(plan, number, list(source_job_ids))
    jobs: dict[str, dict[str, Any]] = entry["jobs"]
    if entry["complete"]:
        log.info("Round %d was sent by an earlier try: reattaching to its %d job(s)", number, len(jobs))
        for first, known_job in jobs.items():
            ledger.add_resubmitted(_chunk_of(known_job, int(first)))
        return {known_job["job"]: int(known_job["count"]) for known_job in jobs.values()}
    await plan.save()
    hooks = _RoundHooks(client, plan, number, ledger, stop)
    await resubmit_round(
        client,
        entry["sources"],
        policy,
        ledger,
        spec,
        limits=limits,
        sent_before=hooks.sent_before,
        on_job_created=hooks.created,
        on_job_closing=hooks.closing,
        on_job_closed=hooks.closed,
        # As for the load's jobs: an unclosed job is settled by the try that owns the plan.
        abort_on_interruption=False,
    )
    entry["complete"] = True
    await plan.save()
    return {record["job"]: int(record["count"]) for record in jobs.values()}


def _round_entry(plan: RoundPlan, number: int, sources: list[str]) -> dict[str, Any]:
    """Round ``number``'s record, checked to be computed from ``sources`` if an earlier try began it."""
    entry = plan.round(number)
    if entry["sources"] is not None and sorted(entry["sources"]) != sorted(sources):
        raise AirflowFailException(
            f"round {number} of resubmission was computed by an earlier try from jobs {entry['sources']}, "
            f"but this try would take it from {sources}: the task's plan does not match the jobs; check "
            "the org and clear the task's state by hand"
        )
    entry["sources"] = sources
    return entry


class _RoundHooks:
    """``resubmit_round``'s callbacks for round ``number``: its jobs, by resubmit chunk, in the plan."""

    def __init__(
        self,
        client: BulkIngestClient,
        plan: RoundPlan,
        number: int,
        ledger: ResubmitLedger,
        stop: threading.Event | None,
    ) -> None:
        self.client = client
        self.plan = plan
        self.number = number
        self.jobs: dict[str, dict[str, Any]] = plan.round(number)["jobs"]
        self.ledger = ledger
        self.stop = stop

    async def sent_before(self, chunk: ResubmitChunk) -> bool:
        """Whether an earlier try's job holds ``chunk`` and may process it; a never-closed one is aborted."""
        number = self.number
        check_stop(self.stop, f"resubmit chunk {chunk.first_record_index} of round {number}")
        key = str(chunk.first_record_index)
        known = self.jobs.get(key)
        if known is None:
            return False
        if int(known["count"]) != chunk.record_count:
            raise AirflowFailException(
                f"round {number}: job {known['job']} was given {known['count']} records from resubmit "
                f"chunk {key}, but the failed results now give {chunk.record_count}: check the org and "
                "clear the task's state by hand"
            )
        if known["phase"] != CREATED:
            log.info("Round %d: reattaching to job %s (%d records)", number, known["job"], known["count"])
            self.ledger.add_resubmitted(chunk)
            return True
        # Never closed, so it processes nothing: aborted (harmless if it is gone), chunk sent again.
        with contextlib.suppress(SalesforceBulkError):
            await self.client.abort_job(check_job_id(known["job"]))
        return False

    async def created(self, job: JobInfo, chunk: ResubmitChunk) -> None:
        check_job_id(job.id)
        self.jobs[str(chunk.first_record_index)] = {
            "job": job.id,
            "count": chunk.record_count,
            "origins": [[job_id, count] for job_id, count in chunk.origins],
            "phase": CREATED,
        }
        await self.plan.save()

    async def closing(self, _job: JobInfo, chunk: ResubmitChunk) -> None:
        # Saved before resubmit_round adds the chunk to the ledger: from then on the job may process it.
        self.jobs[str(chunk.first_record_index)]["phase"] = CLOSING
        await self.plan.save()

    async def closed(self, job: JobInfo, chunk: ResubmitChunk) -> None:
        self.jobs[str(chunk.first_record_index)]["phase"] = CLOSED
        await self.plan.save()
        log.info(
            "Round %d: job %s holds %d records sent again (%s)",
            self.number,
            job.id,
            chunk.record_count,
            job.state,
        )


def resubmit_codes(
    resubmit_error_codes: Sequence[str] | None, retry_error_codes: Sequence[str] | None
) -> tuple[Sequence[str], str]:
    """The operator's resubmit codes and the name of the parameter they came by (for its errors).

    ``retry_error_codes`` is the first releases' name of ``resubmit_error_codes`` ("retry" now
    names only requests sent again): still accepted, with a DeprecationWarning.
    """
    if retry_error_codes is None:
        codes = DEFAULT_RESUBMIT_ERROR_CODES if resubmit_error_codes is None else resubmit_error_codes
        return codes, "resubmit_error_codes"
    warnings.warn(
        "retry_error_codes is deprecated: use resubmit_error_codes (records sent again are resubmitted)",
        DeprecationWarning,
        stacklevel=3,
    )
    if resubmit_error_codes is not None:
        raise ValueError(
            "give resubmit_error_codes or retry_error_codes (its older name), not both: got "
            f"{resubmit_error_codes!r} and {retry_error_codes!r}"
        )
    return retry_error_codes, "retry_error_codes"


def resubmit_policy(codes: Any, codes_name: str, rounds: Any, backoff: Any) -> ResubmitPolicy:
    """The operator's resubmission settings checked once, errors naming the operator's parameters."""
    if codes is None or isinstance(codes, str):
        raise InputError(
            f"{codes_name} must be a list of status codes (empty: no resubmission), got {codes!r}",
            field=codes_name,
        )
    if isinstance(rounds, bool) or not isinstance(rounds, int) or not 1 <= rounds <= 10:
        raise InputError(
            f"resubmit_rounds must be an int from 1 to 10, got {rounds!r}", field="resubmit_rounds"
        )
    if isinstance(backoff, bool) or not isinstance(backoff, (int, float)) or not 0 <= backoff <= 3600:
        raise InputError(
            f"resubmit_backoff must be a number of seconds from 0 to 3600, got {backoff!r}",
            field="resubmit_backoff",
        )
    try:
        return ResubmitPolicy(codes=tuple(codes), max_rounds=rounds, backoff=float(backoff))
    except InputError as exc:
        if exc.field != "codes":
            raise
        # The policy names its own field; the operator's user knows the parameter they set.
        raise InputError(f"{codes_name}{str(exc)[len('codes') :]}", field=codes_name) from None


# -- driving the rounds (the operator's send_next_round and the end of each round's wait) ----------

# A shorter backoff between resubmission rounds is slept in the worker: deferring costs a round trip
# through the triggerer of a few seconds, more than the wait itself.
_DEFER_BACKOFF_FROM = 5.0
# defer()'s timeout is a backstop for a triggerer down for long; the trigger itself fires on time.
_BACKOFF_BACKSTOP_SECONDS = 3600


def load_wait_state(store: PlanStore | None, in_memory: RoundState | None) -> RoundState | None:
    """The state saved before the current wait: in the plan store, or ``in_memory`` without one."""
    return RoundState.load(store) if store is not None else in_memory


def save_wait_state(store: PlanStore | None, state: RoundState | None) -> None:
    """Record the state of the wait about to start (``None``: round 1, nothing carried)."""
    if store is None:
        return
    if state is None:
        RoundState.reset(store)
    else:
        state.save(store)


def round_to_send(
    event: Mapping[str, Any] | None, stored: Callable[[], RoundState | None], store: PlanStore | None
) -> tuple[RoundState, list[str], str]:
    """The round state, the jobs whose failures are resubmitted and the instance URL of the round
    :class:`ResubmitBackoffTrigger`'s ``event`` resumes: read from the plan store, or from the event of
    a backoff trigger deferred by an earlier release, which carried the state."""
    if isinstance(event, Mapping) and "next_round" in event and "retry_from" not in event:
        state = stored()
        if state is None or state.round + 1 != event["next_round"]:
            raise AirflowException(
                f"the plan store holds no state of round {event['next_round']!r} to send: "
                f"{'none' if state is None else f'round {state.round} ended'}; a retry replays the rounds"
            )
        return state, state.resubmit_from, JobPlan.load(store).instance_url or ""
    if not isinstance(event, Mapping) or not isinstance(event.get("retry_from"), list):
        raise AirflowException(
            f"send_next_round needs the backoff trigger's event, got {type(event).__name__}"
        )
    state = RoundState.from_event(check_resubmit_state(event.get("resubmit"), first_round=1))
    if not isinstance(event.get("instance_url"), str):
        raise AirflowException("malformed backoff event: instance_url is not a string")
    return state, [check_job_id(job_id) for job_id in event["retry_from"]], str(event["instance_url"])


def back_off(
    number: int,
    delay: float,
    policy: ResubmitPolicy,
    state: RoundState,
    *,
    save: Callable[[RoundState], None],
    defer: Callable[..., Any] | None,
    log: logging.Logger | Any,
) -> None:
    """Wait ``delay`` before round ``number``: deferred to the triggerer (``defer``, ``None`` when the
    task is not deferrable) when long enough, else slept here."""
    log.info(
        "Records of %d job(s) failed with %s: round %d of %d in %.0fs",
        len(state.resubmit_from),
        "/".join(policy.codes),
        number,
        policy.max_rounds,
        delay,
    )
    if defer is not None and delay >= _DEFER_BACKOFF_FROM:
        # The wait frees the worker slot; the round's state (with ``resubmit_from``) is in the plan
        # store, so any worker can send the round after it.
        save(state)
        defer(
            trigger=ResubmitBackoffTrigger(time.time() + delay, next_round=number),
            method_name="send_next_round",
            timeout=datetime.timedelta(seconds=delay + _BACKOFF_BACKSTOP_SECONDS),
        )
    time.sleep(delay)


def send_round(
    hook: SalesforceBulkHook,
    settings: ConnectionSettings,
    store: PlanStore | None,
    state: RoundState,
    policy: ResubmitPolicy,
    spec: JobSpec,
    limits: ChunkLimits,
    *,
    stop: threading.Event,
) -> dict[str, int]:
    """Send the failures of ``state.resubmit_from`` to round ``state.round + 1``'s jobs (recorded in
    ``store`` first); ``state`` becomes that round's, waiting for the returned jobs (records each)."""
    number = state.round + 1
    check_stop(stop, f"sending round {number}")
    rounds = RoundPlan(store)

    async def send() -> dict[str, int]:
        async with hook.client(settings) as client:
            return await submit_round(
                client, rounds, number, state.resubmit_from, policy, state.ledger, spec, limits, stop=stop
            )

    with fail_on_refused_credentials():
        counts = run_sync(send)
    state.round, state.waiting, state.resubmit_from = number, counts, []
    return counts
