"""The ingest operator's input: staged once before any job, replayed by a retry, then submitted.

A fresh load reads its source once into the staging area, recorded in the plan before any job; every
later try sends those bytes (checked against the plan's digests), never the live source. This module is
the first step of one try: the operator calls it, and it calls nothing of the steps after it.
"""

from __future__ import annotations

import asyncio
import os
import threading
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from airflow.providers.common.compat.sdk import AirflowException, AirflowFailException

from airflow_provider_salesforce_bulk.client import (
    InputError,
    JobInfo,
    JobSpec,
    LimitsCheckError,
    RequestLimitExceededError,
)
from airflow_provider_salesforce_bulk.client.csv_format import Chunk
from airflow_provider_salesforce_bulk.client.limits import check_limits_before_load
from airflow_provider_salesforce_bulk.hooks.connection import ConnectionSettings
from airflow_provider_salesforce_bulk.hooks.salesforce_bulk import SalesforceBulkHook, run_sync
from airflow_provider_salesforce_bulk.operators import columnar_sources as columnar
from airflow_provider_salesforce_bulk.operators.base import task_path_parts
from airflow_provider_salesforce_bulk.operators.field_check import check_columns_exist
from airflow_provider_salesforce_bulk.operators.grouping import GroupedSource
from airflow_provider_salesforce_bulk.operators.links import LINK_XCOM_KEY, job_url
from airflow_provider_salesforce_bulk.operators.load_completion import push_summary
from airflow_provider_salesforce_bulk.operators.refusals import fail_on_refused_credentials, limit_named
from airflow_provider_salesforce_bulk.operators.resubmit_rounds import RoundPlan
from airflow_provider_salesforce_bulk.operators.sources import ChunkSource
from airflow_provider_salesforce_bulk.operators.staging import Manifest, StagingArea, replay, stage
from airflow_provider_salesforce_bulk.operators.submit import JobPlan, reconcile, submit_chunks
from airflow_provider_salesforce_bulk.operators.summary import unfinished_summary
from airflow_provider_salesforce_bulk.operators.try_stop import until_stopped
from airflow_provider_salesforce_bulk.triggers.events import job_summary

__all__ = [
    "DEFAULT_STAGING_FOLDER",
    "done_before",
    "limit_summary",
    "read_input",
    "replay_chunks",
    "send_load",
    "stage_input",
    "staging_area",
    "submit_load",
]

DEFAULT_STAGING_FOLDER = "salesforce_bulk_staging"
"""Under ``$AIRFLOW_HOME`` when neither ``staging_path`` nor ``results_path`` is given."""


def staging_area(ti: Any, staging_path: Any, results_dir: Callable[[], Any] | None) -> StagingArea:
    """The task instance's staging folder: ``staging_path``, else ``_staging`` under the results folder
    (``results_dir``, ``None`` without ``results_path``), else under ``$AIRFLOW_HOME``."""
    from airflow.providers.common.compat.sdk import ObjectStoragePath

    parts = task_path_parts(ti) if ti is not None else ["_", uuid.uuid4().hex]
    if staging_path:
        path = staging_path
        root = path if isinstance(path, ObjectStoragePath) else ObjectStoragePath(str(path))
    elif results_dir is not None:
        root = results_dir() / "_staging"
    else:
        home = os.environ.get("AIRFLOW_HOME") or os.path.expanduser("~/airflow")
        local = os.path.join(home, DEFAULT_STAGING_FOLDER)
        root = ObjectStoragePath(f"file://{os.path.abspath(local)}")
    for part in parts:
        root = root / part
    return StagingArea(root)


def read_input(source: ChunkSource, area: StagingArea, try_number: int | None, spec: JobSpec) -> Manifest:
    """Read the source once, writing its chunks to ``area``: bad input fails before any job."""
    prefix = area.new_prefix(try_number)
    local = area.local_folder(prefix)
    if isinstance(source, GroupedSource) and local is not None:
        # Its SQLite spool goes with the try's staged files: a killed try's is removed with them.
        source.spool_dir = local
    try:
        return stage(source, area, prefix, spec)
    except InputError as exc:
        raise AirflowFailException(f"Bad input ({source.description}): {exc}") from None
    except columnar.SqlSourceError as exc:
        raise AirflowException(f"Reading {source.description} failed: {exc}") from None


def stage_input(
    source: ChunkSource, plan: JobPlan, area: StagingArea, try_number: int | None, spec: JobSpec, log: Any
) -> Manifest | None:
    """A fresh load: read the source once into the staging area, recorded in the plan before any
    job (every later try sends these bytes, never the live source). ``None`` when it has no record."""
    RoundPlan.reset(plan.store)  # rounds of an earlier, finished run of this task
    # No job exists: what earlier tries staged was never sent; the source is read afresh.
    area.remove_others(None)
    manifest = read_input(source, area, try_number, spec)
    log.info(
        "Input checked and staged: %d records in %d chunk(s) from %s, under %s",
        manifest.total,
        len(manifest.chunks),
        source.description,
        area.folder(manifest.prefix),
    )
    if manifest.total == 0:
        area.remove_all()
        return None
    plan.staged = manifest.dump()
    plan.save_now()
    return manifest


def replay_chunks(
    source: ChunkSource, plan: JobPlan, area: StagingArea, try_number: int | None, spec: JobSpec
) -> list[Chunk]:
    """The chunks of a retry: the staged files, checked against the plan's digests; when they are
    gone or corrupt, the chunks cut again from the live source, if they are exactly those staged.
    """
    manifest = Manifest.load(plan.staged)
    assert manifest is not None
    needed = [
        entry
        for entry in manifest.chunks
        if entry.first not in plan.chunks or plan._waiting_for_input(plan.chunks[entry.first])
    ]
    jobs_of = {first: [job["job"] for job in chunk["jobs"]] for first, chunk in plan.chunks.items()}
    staged, chunks = replay(
        area,
        manifest,
        needed,
        lambda: read_input(source, area, try_number, spec),
        jobs_of,
        source.description,
    )
    if staged is not manifest:
        plan.staged = staged.dump()
        plan.save_now()
        area.remove(manifest.prefix)
    return chunks


async def submit_load(
    hook: SalesforceBulkHook,
    settings: ConnectionSettings,
    source: ChunkSource,
    plan: JobPlan,
    area: StagingArea,
    try_number: int | None,
    spec: JobSpec,
    *,
    latest: dict[str, JobInfo],
    staged: Manifest | None,
    field_mapping: Mapping[str, str] | None,
    limits_check: str,
    stop: threading.Event,
) -> dict[str, JobInfo]:
    """Reattach to the plan's jobs, then send the chunks that have none (``staged``: this try's fresh
    load, checked against the org first). ``latest`` is filled as jobs are seen: a try stopped by a
    limit reports it."""
    async with hook.client(settings) as client:
        plan.instance_url = await client.session.instance_url()
        if plan.chunks:
            latest.update(await reconcile(client, plan, spec))
        if plan.complete:
            return latest
        if not plan.chunks:
            await check_columns_exist(
                client,
                spec.object,
                list(staged.fieldnames) if staged is not None else [],
                field_mapping=field_mapping,
                external_id_field=spec.external_id_field,
            )
            counts = [entry.count for entry in staged.chunks] if staged is not None else []
            try:
                await check_limits_before_load(client, counts, limits_check)
            except LimitsCheckError as exc:
                raise AirflowFailException(f"Limits check before the load: {exc}") from None
        if plan.staged is None:
            # A plan written before staging existed: the live source, matched by position.
            with source.open() as live:
                latest.update(await submit_chunks(client, plan, until_stopped(live, stop, "chunk"), spec))
            return latest
        # Files are read and hashed in a thread: the loop keeps serving the session meanwhile.
        chunks = await asyncio.to_thread(replay_chunks, source, plan, area, try_number, spec)
        latest.update(await submit_chunks(client, plan, until_stopped(chunks, stop, "chunk"), spec))
        return latest


def send_load(
    ti: Any,
    hook: SalesforceBulkHook,
    settings: ConnectionSettings,
    source: ChunkSource,
    plan: JobPlan,
    area: StagingArea,
    spec: JobSpec,
    *,
    staged: Manifest | None,
    field_mapping: Mapping[str, str] | None,
    limits_check: str,
    stop: threading.Event,
) -> dict[str, JobInfo]:
    """:func:`submit_load` run to its end: bad input fails the task; a daily limit reached part way
    pushes the summary of what exists (see :func:`limit_summary`), then fails the try."""
    latest: dict[str, JobInfo] = {}  # filled as jobs are seen: a try stopped by a limit reports it
    try_number = getattr(ti, "try_number", None)

    async def submit() -> dict[str, JobInfo]:
        return await submit_load(
            hook,
            settings,
            source,
            plan,
            area,
            try_number,
            spec,
            latest=latest,
            staged=staged,
            field_mapping=field_mapping,
            limits_check=limits_check,
            stop=stop,
        )

    try:
        with fail_on_refused_credentials():
            return run_sync(submit)
    except InputError as exc:
        raise AirflowFailException(f"Bad input ({source.description}): {exc}") from None
    except RequestLimitExceededError as exc:
        message, summary = limit_summary(plan, exc, staged, latest, spec.operation, spec.object)
    push_summary(ti, summary)
    raise AirflowException(message)


def limit_summary(
    plan: JobPlan,
    exc: RequestLimitExceededError,
    staged: Manifest | None,
    latest: Mapping[str, JobInfo],
    operation: str,
    object_name: str,
) -> tuple[str, dict[str, Any]]:
    """Salesforce refused a request for a daily limit part way: the failure message and the summary
    of what exists. Airflow's retry reattaches to the jobs recorded so far and sends only the chunks
    that have none, so it completes without duplicates once the allowance refilled."""
    limit = limit_named(exc)
    counts: dict[str, int] = {}
    for _, chunk in sorted(plan.chunks.items()):
        current = JobPlan.current(chunk)
        if current is not None and not current.get("outcome"):
            counts[current["job"]] = int(chunk["count"])
    total = sum(entry.count for entry in staged.chunks) if staged is not None and staged.chunks else None
    sent = sum(counts.values())
    message = (
        f"Salesforce refused a request with REQUEST_LIMIT_EXCEEDED: the org's {limit} allowance is "
        f"spent ({exc}). {sent:,} of {total if total is not None else '?'} records are in "
        f"{len(counts)} job(s) ({', '.join(counts) or 'none'}); the rest were not sent. The "
        "allowance refills over a rolling 24 hours: a retry reattaches to these jobs and sends only "
        "the rest"
    )
    summary = unfinished_summary(
        operation,
        object_name,
        {job_id: job_summary(latest[job_id]) for job_id in counts if job_id in latest},
        counts,
        total,
        plan.instance_url,
        message,
    )
    return message, summary


def done_before(ti: Any, plan: JobPlan, area: StagingArea, log: Any) -> Any:
    """An earlier try of this task instance succeeded: its summary again, nothing loaded."""
    done = plan.done or {}
    log.warning(
        "Try %s of this task instance already loaded every record and succeeded (jobs %s); "
        "finishing without loading anything. Airflow may have failed that try after it succeeded "
        "(a late report); to load the records again on purpose, clear the task with "
        "reload_on_clear=True",
        done.get("try_number"),
        ", ".join(plan.all_job_ids) or "none",
    )
    area.remove_all()  # left by the done try if Airflow failed it after
    if ti is not None and plan.job_ids:
        ti.xcom_push(key=LINK_XCOM_KEY, value=job_url(plan.instance_url or "", plan.job_ids))
    return done.get("summary")
