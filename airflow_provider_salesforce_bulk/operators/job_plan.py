"""The job plan: per chunk of input, every job it was given to, in order, with how far each got.

The plan store (:mod:`.plan_store`) keeps it under :data:`STATE_KEY` and :mod:`.submit` writes it
before every step, so a later try knows which jobs Salesforce may be processing. Its views
(:meth:`JobPlan.active`, :meth:`JobPlan.history`, :meth:`JobPlan.record_counts`, ...) are what the
operator reads to wait for the jobs and account for them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

from airflow_provider_salesforce_bulk.operators.plan_store import PlanStore

__all__ = ["CHUNK", "CLOSED", "CLOSING", "CREATED", "REPLACED", "RESENT", "STATE_KEY", "JobPlan"]

log = logging.getLogger(__name__)

STATE_KEY = "salesforce_bulk"
_VERSION = 2

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

CHUNK = "chunk"
"""``source`` of a job given its chunk from the input (otherwise the id of the job it resends)."""


class JobPlan:
    """What the state store holds: per chunk, its record count and every job it was given to."""

    def __init__(self, store: PlanStore | None, raw: Any = None) -> None:
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
    def load(cls, store: PlanStore | None) -> JobPlan:
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
    def mark_done(store: PlanStore, try_number: int | None, summary: Mapping[str, Any]) -> None:
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
