"""Submitting chunks as jobs, remembering every job in the task state store before its upload.

The stored state lets a retry of the task reattach: chunks whose job was closed are not sent again,
a job left Open (its upload may or may not have arrived, and it was never closed, so Salesforce never
processes it) is aborted and its chunk goes to a new job.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any, Protocol

from airflow_provider_salesforce_bulk.client import BulkIngestClient, InputError, NotFoundError, submit_job
from airflow_provider_salesforce_bulk.client.csv_split import CsvChunk
from airflow_provider_salesforce_bulk.client.models import JobInfo, OperationType

__all__ = ["STATE_KEY", "JobPlan", "StateStore", "reconcile", "submit_chunks"]

log = logging.getLogger(__name__)

STATE_KEY = "salesforce_bulk"
_CLOSED = frozenset({"UploadComplete", "InProgress", "JobComplete", "Failed"})


class StateStore(Protocol):
    def get(self, key: str, default: Any = None) -> Any: ...

    def set(self, key: str, value: Any) -> None: ...

    def delete(self, key: str) -> None: ...


class JobPlan:
    """What the state store holds: per chunk (by first record index) its job, size and whether closed."""

    def __init__(self, store: StateStore | None, raw: Any = None) -> None:
        self.store = store
        raw = raw if isinstance(raw, dict) else {}
        self.chunks: dict[int, dict[str, Any]] = {
            int(first): dict(entry) for first, entry in (raw.get("chunks") or {}).items()
        }
        self.complete = bool(raw.get("complete"))
        self.instance_url: str | None = raw.get("instance_url")

    @classmethod
    def load(cls, store: StateStore | None) -> JobPlan:
        return cls(store, store.get(STATE_KEY) if store is not None else None)

    def dump(self) -> dict[str, Any]:
        return {
            "chunks": {str(first): entry for first, entry in sorted(self.chunks.items())},
            "complete": self.complete,
            "instance_url": self.instance_url,
        }

    async def save(self) -> None:
        if self.store is not None:
            # A thread, so the sync round trip to the supervisor never runs on the event loop thread.
            await asyncio.to_thread(self.store.set, STATE_KEY, self.dump())

    @property
    def job_ids(self) -> list[str]:
        return [entry["job"] for _, entry in sorted(self.chunks.items())]

    @property
    def records(self) -> int:
        return sum(int(entry["count"]) for entry in self.chunks.values())

    def record_counts(self) -> dict[str, int]:
        return {entry["job"]: int(entry["count"]) for entry in self.chunks.values()}


async def reconcile(client: BulkIngestClient, plan: JobPlan) -> None:
    """Keep the chunks whose job was closed; abort and forget those whose job never was."""
    for first, entry in sorted(plan.chunks.items()):
        if entry.get("closed"):
            continue
        try:
            job = await client.get_job(entry["job"])
        except NotFoundError:
            job = JobInfo(id=entry["job"], state="Deleted")
        if job.state in _CLOSED:
            entry["closed"] = True
            log.info("Reattaching to job %s (%s) of records %d+%d", job.id, job.state, first, entry["count"])
            continue
        if job.state == "Open":
            await client.abort_job(job.id)
        log.warning(
            "Job %s of records %d..%d was never closed (%s): sending those records again to a new job",
            job.id,
            first,
            first + int(entry["count"]) - 1,
            job.state,
        )
        del plan.chunks[first]
    await plan.save()


async def submit_chunks(
    client: BulkIngestClient,
    plan: JobPlan,
    chunks: Iterator[CsvChunk],
    *,
    operation: OperationType,
    sobject: str,
    external_id_field: str | None,
    assignment_rule_id: str | None,
    column_delimiter: str,
    line_ending: str,
) -> None:
    """Send every chunk not already covered by a closed job, one job per chunk, in input order."""
    for chunk in chunks:
        known = plan.chunks.get(chunk.first_record_index)
        if known is not None:
            if int(known["count"]) != chunk.record_count:
                raise InputError(
                    f"records {chunk.first_record_index}.. were loaded by job {known['job']} in a chunk "
                    f"of {known['count']} records, but this try cut {chunk.record_count}: the input or the "
                    "chunk limits changed between tries: reattaching could load records twice or not at all",
                    record_index=chunk.first_record_index,
                )
            continue
        last = chunk.first_record_index + chunk.record_count
        start = chunk.first_record_index
        overlap = [f for f, e in plan.chunks.items() if f < last and f + int(e["count"]) > start]
        if overlap:
            raise InputError(
                f"records {chunk.first_record_index}..{last - 1} overlap a chunk loaded by an earlier try: "
                "the input or the chunk limits changed between tries",
                record_index=chunk.first_record_index,
            )

        async def remember(job: JobInfo, first: int = start, count: int = chunk.record_count) -> None:
            plan.chunks[first] = {"job": job.id, "count": count, "closed": False}
            await plan.save()

        job, replaced = await submit_job(
            client,
            operation,
            sobject,
            chunk.data,
            external_id_field=external_id_field,
            assignment_rule_id=assignment_rule_id,
            column_delimiter=column_delimiter,
            line_ending=line_ending,
            on_job_created=remember,
        )
        plan.chunks[chunk.first_record_index]["closed"] = True
        await plan.save()
        log.info(
            "Job %s: records %d..%d uploaded (%s)%s",
            job.id,
            chunk.first_record_index,
            last - 1,
            job.state,
            f"; replaced jobs {', '.join(replaced)} whose upload answer was lost" if replaced else "",
        )
    plan.complete = True
    await plan.save()
