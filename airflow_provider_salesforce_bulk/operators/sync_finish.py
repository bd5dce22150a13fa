"""The end of a change-only run: the delete job, the state's advance, the summary's ``sync`` section.

Called by the operator once the upsert's final outcome is known (or at once when nothing was to be
upserted), in the worker, before the summary is pushed and the failure policy applied, so the records
that succeeded advance the state even when the task then fails on a threshold.

Decisions:

- The delete job runs after the upsert, in the worker, and is waited for there (bounded by the
  operator's ``timeout``): deletes are at most ``max_delete_ratio`` of the state, and one job of Ids
  is quick next to the upsert; deferring it would need a second trigger round for little gain.
- Exactly once: the delete job has a :class:`~.job_plan.JobPlan` of its own in the plan store
  (under :data:`~.change_sync.DELETE_KEY`), written by the same submit path as the load's, so its id
  is recorded as soon as Salesforce created it; a retry reconciles that plan (asking Salesforce what
  became of each job) instead of sending the deletes again.
- The advance reads what succeeded from Salesforce itself (each job's successful results, upsert
  and delete), never from local files a killed try may have left half written.
- A delete that failed stays in the state, so the next run tries it again; the task fails loudly
  (after the summary) unless ``max_failed_records`` allows that many failures.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import tempfile
import threading
from collections.abc import Iterator, Mapping
from typing import IO, Any

from airflow.providers.common.compat.sdk import AirflowException, AirflowFailException

from airflow_provider_salesforce_bulk import sync  # lazy: the engine needs the [sync] extra
from airflow_provider_salesforce_bulk.client import (
    BulkIngestClient,
    ChunkFormat,
    ChunkLimits,
    InputError,
    JobSpec,
    PollPolicy,
)
from airflow_provider_salesforce_bulk.client.serialize import iter_record_chunks
from airflow_provider_salesforce_bulk.hooks.salesforce_bulk import SalesforceBulkHook, run_sync
from airflow_provider_salesforce_bulk.operators.change_sync import DELETE_KEY, SYNC_KEY, SyncOptions
from airflow_provider_salesforce_bulk.operators.job_plan import STATE_KEY, JobPlan
from airflow_provider_salesforce_bulk.operators.plan_store import PlanStore
from airflow_provider_salesforce_bulk.operators.refusals import fail_on_refused_credentials
from airflow_provider_salesforce_bulk.operators.submit import reconcile, submit_chunks
from airflow_provider_salesforce_bulk.operators.summary import summarize
from airflow_provider_salesforce_bulk.operators.try_stop import check_stop

__all__ = ["complete", "empty_summary", "raise_on_failed_deletes"]


class _KeyedStore:
    """The plan store with the job plan's key moved to ``key``: a second plan beside the load's."""

    def __init__(self, store: PlanStore, key: str) -> None:
        self.store, self.key = store, key

    def _name(self, key: str) -> str:
        return self.key if key == STATE_KEY else key

    def get(self, key: str, default: Any = None) -> Any:
        return self.store.get(self._name(key), default)

    def set(self, key: str, value: Any) -> None:
        self.store.set(self._name(key), value)

    def delete(self, key: str) -> None:
        self.store.delete(self._name(key))


def empty_summary(operation: str, object_name: str, instance_url: str | None) -> dict[str, Any]:
    """The summary of a change-only run that upserted nothing (no job)."""
    return summarize(operation, object_name, {}, collections.Counter(), None, instance_url)


@dataclasses.dataclass(frozen=True)
class _Run:
    """What the end of one change-only run works with."""

    store: PlanStore | None
    pending: sync.PendingChanges
    options: SyncOptions
    hook: SalesforceBulkHook
    spec: JobSpec
    limits: ChunkLimits
    timeout: float
    poll: PollPolicy
    waited: list[str]  # the delete jobs waited for now (the operator's on_kill abort targets)
    stop: threading.Event | None  # set by on_kill: this try writes nothing more


def complete(
    store: PlanStore | None,
    this_try: dict[str, Any] | None,
    summary: dict[str, Any],
    options: SyncOptions,
    hook: SalesforceBulkHook,
    spec: JobSpec,
    *,
    limits: ChunkLimits,
    timeout: float,
    poll_interval: float,
    log: Any,
    waited: list[str] | None = None,
    stop: threading.Event | None = None,
) -> dict[str, Any]:
    """``summary`` with its ``sync`` section, the deletes sent and the state advanced exactly once;
    ``waited`` holds the delete jobs while they are waited for; ``stop`` set (a kill) stops the try
    before it reads their outcome, so a killed try never advances the state."""
    recorded = store.get(SYNC_KEY) if store is not None else this_try
    if not isinstance(recorded, dict):
        raise AirflowFailException(
            "A change-only run ended without its change set in the plan store: the state is not advanced"
        )
    if isinstance(recorded.get("section"), dict):
        log.info("The sync state was advanced by an earlier try (version %s)", recorded["section"]["version"])
        return {**summary, "sync": recorded["section"]}
    pending = sync.PendingChanges.from_dict(recorded["pending"])
    poll = PollPolicy(initial=poll_interval, maximum=max(poll_interval, 5.0))
    waiting = [] if waited is None else waited  # the caller's own list (an empty one is falsy)
    run = _Run(store, pending, options, hook, spec, limits, timeout, poll, waiting, stop)
    upserted = {job_id: int(job.get("succeeded", 0)) for job_id, job in summary["jobs"].items()}
    upserted = {job_id: succeeded for job_id, succeeded in upserted.items() if succeeded}
    with tempfile.TemporaryDirectory(prefix="sf-sync-advance-") as workdir:
        accepted, deleted = os.path.join(workdir, "accepted.ndjson"), os.path.join(workdir, "deleted.ndjson")
        with open(accepted, "w") as accepted_out, open(deleted, "w") as deleted_out:
            delete_jobs, deleted_count = _results(run, upserted, accepted_out, deleted_out, workdir)
        check_stop(run.stop, "advancing the sync state")
        pairs = ((row[0], row[1]) for row in _lines(accepted))
        try:
            info = sync.advance_state(
                options.sync_state_path, pending, pairs, (row[0] for row in _lines(deleted)), workdir
            )
        except InputError as exc:  # a state moved by another run, or damaged since: for a person
            raise AirflowFailException(
                f"Change-only sync: the jobs ended ({summary['totals']['succeeded']} upserted, "
                f"{deleted_count} deleted) but the state at {options.where} was not advanced: "
                f"{type(exc).__name__}: {exc}"
            ) from None
    section = _section(recorded, run, info, delete_jobs, deleted_count)
    if store is not None:
        store.set(SYNC_KEY, {**recorded, "section": section})  # advanced: a retry does not advance again
    log.info(
        "Sync state at %s advanced to version %d (%d records)", options.where, info.version, info.row_count
    )
    return {**summary, "sync": section}


def _section(
    recorded: Mapping[str, Any], run: _Run, info: sync.StateInfo, delete_jobs: list[str], deleted: int
) -> dict[str, Any]:
    """The summary's ``sync`` section: what was compared, sent, deleted, and the state's versions."""
    counts, pending = recorded["counts"], run.pending
    return {
        "state": run.options.where,
        "records_read": counts["read"],
        "unchanged": counts["unchanged"],
        "sent": counts["new"] + counts["changed"],
        "new": counts["new"],
        "changed": counts["changed"],
        "to_delete": pending.deletes_rows,
        "deleted": deleted,
        "delete_failed": pending.deletes_rows - deleted,
        "delete_jobs": delete_jobs,
        "full_sync": pending.full_sync,
        "version_before": recorded.get("version_before"),
        "version": info.version,
        "state_records": info.row_count,
    }


def _lines(path: str) -> Iterator[list[str]]:
    with open(path, "rb") as handle:
        for line in handle:
            yield json.loads(line)


def _results(
    run: _Run, upserted: Mapping[str, int], accepted: IO[str], deleted: IO[str], workdir: str
) -> tuple[list[str], int]:
    """Write what Salesforce accepted (upserts, then deletes: sent now or reattached to)."""
    assert run.spec.external_id_field is not None
    ext_field = run.spec.external_id_field

    async def read_and_delete() -> tuple[list[str], int]:
        async with run.hook.client() as client:
            for job_id, succeeded in upserted.items():
                rows = 0
                async for row in client.iter_successful_results(job_id):
                    accepted.write(json.dumps([row[ext_field], row["sf__Id"]]) + "\n")
                    rows += 1
                # The state advances from these rows: a short or long read must not advance it.
                _check_rows(job_id, rows, succeeded)
            if run.pending.deletes_rows == 0:
                return [], 0
            return await _delete(client, run, deleted, workdir)

    try:
        with fail_on_refused_credentials():
            return run_sync(read_and_delete)
    except InputError as exc:
        raise AirflowFailException(f"Change-only sync deletes: {exc}") from None
    except AirflowException:
        raise
    except Exception as exc:
        raise AirflowException(
            f"Change-only sync: reading the results or deleting failed ({type(exc).__name__}: {exc}); "
            "a retry reattaches to the same jobs"
        ) from exc


async def _delete(
    client: BulkIngestClient, run: _Run, deleted: IO[str], workdir: str
) -> tuple[list[str], int]:
    """The delete job(s): reattached to from the plan store, else sent; waited for; their successes."""
    spec = run.spec
    delete_spec = JobSpec(
        operation="delete",
        object=spec.object,
        column_delimiter=spec.column_delimiter,
        line_ending=spec.line_ending,
    )
    plan = JobPlan.load(_KeyedStore(run.store, DELETE_KEY) if run.store is not None else None)
    if plan.chunks:
        await reconcile(client, plan, delete_spec)
    if not plan.complete:
        ids = _delete_ids(run.pending, run.options, workdir)
        chunk_format = ChunkFormat(spec.column_delimiter, spec.line_ending)
        await submit_chunks(
            client, plan, iter_record_chunks(ids, ["Id"], run.limits, chunk_format), delete_spec
        )
    run.waited[:] = plan.job_ids
    for job_id in plan.job_ids:
        await client.wait_for_job(job_id, poll=run.poll, timeout=run.timeout)
    run.waited.clear()
    # A kill during the wait (on_kill may have aborted the jobs on a user's decision): the next try,
    # if any, reattaches to the jobs and advances from their outcome; this one stops here.
    check_stop(run.stop, "reading the delete jobs' outcome and advancing the sync state")
    count = 0
    for job_id in plan.all_job_ids:
        rows = 0
        async for row in client.iter_successful_results(job_id):
            deleted.write(json.dumps([row["sf__Id"]]) + "\n")
            rows += 1
        _check_rows(job_id, rows, (await client.get_job(job_id)).number_records_succeeded)
        count += rows
    return plan.all_job_ids, count


def _check_rows(job_id: str, rows: int, succeeded: int) -> None:
    """The successful results read for ``job_id`` are as many as its counters say succeeded."""
    if rows != succeeded:
        raise AirflowException(
            f"Change-only sync: job {job_id}'s successful results hold {rows} rows, its counters say "
            f"{succeeded} succeeded: the state is not advanced; a retry reads them again"
        )


def _delete_ids(pending: sync.PendingChanges, options: SyncOptions, workdir: str) -> Iterator[dict[str, str]]:
    _, deletes = pending.fetch(sync.storage_for(options.sync_state_path), workdir)
    for _, sf_id in deletes.rows():
        yield {"Id": str(sf_id)}


def raise_on_failed_deletes(summary: Mapping[str, Any], max_failed_records: int | None) -> None:
    """Fail the task (after the summary) when deletes failed beyond ``max_failed_records``."""
    section = summary.get("sync") or {}
    failed = int(section.get("delete_failed", 0))
    if failed and failed > (max_failed_records or 0):
        raise AirflowException(
            f"Change-only sync: {failed} of {section['to_delete']} deletes failed (jobs "
            f"{', '.join(section['delete_jobs']) or 'none'}); they stay in the sync state, so the next run "
            "tries them again"
        )
