"""What the ingest operator carries from one wait to the next, kept in the plan store, not in a trigger.

Before each wait (the jobs of a round, or the backoff before the next round) the operator saves a
:class:`RoundState`: the round waited for, the records given to each of its jobs, and the accounting
of the rounds before it (their summary lines, failures by code, the resubmission ledger). The task
resumed after the wait, in any worker, reads it back: the triggers carry only what polling needs.
Without a plan store (no task instance, so no deferral either) the operator keeps it in memory.
"""

from __future__ import annotations

import collections
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from airflow.providers.common.compat.sdk import AirflowException

from airflow_provider_salesforce_bulk.client import InputError
from airflow_provider_salesforce_bulk.client.resubmit import ResubmitLedger
from airflow_provider_salesforce_bulk.operators.plan_store import PlanStore
from airflow_provider_salesforce_bulk.operators.submit import JobPlan
from airflow_provider_salesforce_bulk.operators.summary import RoundCount
from airflow_provider_salesforce_bulk.triggers.events import (
    HistoryEntry,
    JobsEvent,
    ResubmitState,
    check_history,
    check_job_id,
    check_resubmit_state,
)

__all__ = ["ROUND_STATE_KEY", "RoundState", "Waited", "rebuild_wait"]

ROUND_STATE_KEY = "salesforce_bulk_wait"
"""The plan store key of the state of the current wait (beside the plan and the rounds)."""
_VERSION = 1


@dataclass
class RoundState:
    """The ingest operator's resubmission rounds so far, and the wait it is in."""

    round: int = 1
    ledger: ResubmitLedger = field(default_factory=ResubmitLedger)
    entries: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Summary lines of the rounds before this one."""
    by_code: dict[str, int] = field(default_factory=dict)
    """Final failures by error code of the rounds before this one."""
    samples: dict[str, str] = field(default_factory=dict)
    input_records: int | None = None
    waiting: dict[str, int] = field(default_factory=dict)
    """The jobs of round ``round`` (2 or later) and the records given to each."""
    resubmit_from: list[str] = field(default_factory=list)
    """Between two rounds: the ended jobs of round ``round`` whose transient failures go to the next."""

    @classmethod
    def from_event(cls, checked: ResubmitState | None) -> RoundState:
        """The state a trigger of an earlier release echoed (round 1 for ``None``)."""
        state = cls()
        if checked is None:
            return state
        try:
            state.ledger = ResubmitLedger.from_dict(checked["ledger"])
        except InputError as exc:
            raise AirflowException(f"malformed resubmission state in the trigger event: {exc}") from None
        state.round = checked["round"]
        state.entries = checked["entries"]
        state.by_code = checked["by_code"]
        state.samples = checked["samples"]
        state.input_records = checked["input_records"]
        return state

    def dump(self) -> dict[str, Any]:
        return {
            "version": _VERSION,
            "round": self.round,
            "ledger": self.ledger.to_dict(),
            "entries": self.entries,
            "by_code": self.by_code,
            "samples": self.samples,
            "input_records": self.input_records,
            "waiting": self.waiting,
            "resubmit_from": self.resubmit_from,
        }

    def save(self, store: PlanStore | None) -> None:
        """Recorded before the wait it describes starts (called from the worker, never the loop)."""
        if store is not None:
            store.set(ROUND_STATE_KEY, self.dump())

    @classmethod
    def load(cls, store: PlanStore | None) -> RoundState | None:
        """The state saved before the current wait, checked; ``None`` when there is none."""
        raw = store.get(ROUND_STATE_KEY) if store is not None else None
        if raw is None:
            return None
        checked = check_resubmit_state(raw, first_round=1)
        state = cls.from_event(checked)
        waiting = raw.get("waiting") or {}
        resubmit_from = raw.get("resubmit_from") or []
        if not isinstance(waiting, dict) or not isinstance(resubmit_from, list):
            raise AirflowException(f"malformed state of the wait in the plan store: {str(raw)[:300]}")
        state.waiting = {check_job_id(job_id): int(count) for job_id, count in waiting.items()}
        state.resubmit_from = [check_job_id(job_id) for job_id in resubmit_from]
        return state

    @staticmethod
    def reset(store: PlanStore | None) -> None:
        """Forget the waits of an earlier run: a fresh load starts at round 1."""
        if store is not None and store.get(ROUND_STATE_KEY) is not None:
            store.delete(ROUND_STATE_KEY)

    def input_of(self, counted: RoundCount) -> int | None:
        """The task's input records: counted in round 1, kept since."""
        return counted.input_records if self.round == 1 else self.input_records

    def merged(self, counted: RoundCount) -> tuple[collections.Counter[str], dict[str, str]]:
        """Failures by code and a sample per code, this round's and the rounds' before it."""
        by_code = collections.Counter(counted.by_code)
        by_code.update(self.by_code)
        samples = dict(counted.samples)
        for code, sample in self.samples.items():
            samples.setdefault(code, sample)
        return by_code, samples

    def carry(self, counted: RoundCount) -> list[str]:
        """Keep round ``round``'s accounting for the rounds after it; the jobs to resubmit from.

        Their failures with a resubmittable code leave the counts by code: they are sent again and
        counted at their final outcome, in a later round.
        """
        by_code, samples = self.merged(counted)
        for codes in counted.resubmittable.values():
            by_code.subtract(codes)
        self.entries.update(counted.entries)
        self.by_code = {code: n for code, n in by_code.items() if n > 0}
        self.samples = {code: text for code, text in samples.items() if code in self.by_code}
        self.input_records = self.input_of(counted)
        self.resubmit_from = list(counted.resubmittable)
        return self.resubmit_from


@dataclass(frozen=True)
class Waited:
    """What the operator waited for, beside the jobs' final states: rebuilt from the plan store."""

    state: RoundState
    record_counts: Mapping[str, int]
    """Records given to each job (every job of every try, in round 1)."""
    history: list[HistoryEntry]
    """Jobs of earlier tries that were settled (replaced or resent), in round 1."""
    instance_url: str | None


def rebuild_wait(
    checked: JobsEvent,
    plan: JobPlan,
    stored: RoundState | None,
    *,
    record_counts: Mapping[str, int] | None = None,
    instance_url: str | None = None,
    resubmit: Mapping[str, Any] | None = None,
) -> Waited:
    """The wait ``checked`` ended, from the plan and the state ``stored`` before it.

    ``record_counts``, ``instance_url`` and ``resubmit`` are the ``defer()`` kwargs of an earlier
    release: its triggers carried the working state, echoed in their events, and are used as given.
    """
    legacy = checked["resubmit"] or (check_resubmit_state(resubmit) if resubmit else None)
    url = checked["instance_url"] or instance_url or plan.instance_url
    if legacy is not None or checked["record_counts"] or checked["history"] or record_counts:
        counts = {**(record_counts or {}), **checked["record_counts"]}
        return Waited(RoundState.from_event(legacy), counts, checked["history"], url)
    if stored is not None and stored.round > 1:
        return Waited(stored, stored.waiting, [], url)
    return Waited(RoundState(), plan.record_counts(), check_history(plan.history()), url)
