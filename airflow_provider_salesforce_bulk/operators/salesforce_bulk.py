"""``SalesforceBulkOperator``: load records with the Salesforce Bulk API 2.0, waiting in the triggerer."""

from __future__ import annotations

import asyncio
import collections
import datetime
import functools
import math
import os
import re
import secrets
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, NoReturn

from airflow.providers.common.compat.sdk import AirflowException, AirflowFailException, conf

from airflow_provider_salesforce_bulk.client import (
    ChunkFormat,
    ChunkLimits,
    InputError,
    JobInfo,
    JobSpec,
    LimitsCheckError,
    RequestLimitExceededError,
    ResubmitPolicy,
)
from airflow_provider_salesforce_bulk.client.csv_format import COLUMN_DELIMITERS, Chunk
from airflow_provider_salesforce_bulk.client.limits import check_limits_before_load, check_limits_mode
from airflow_provider_salesforce_bulk.client.resubmit import ResubmitLedger
from airflow_provider_salesforce_bulk.hooks.connection import ConnectionSettings
from airflow_provider_salesforce_bulk.hooks.salesforce_bulk import (
    SalesforceBulkHook,
    run_sync,
)
from airflow_provider_salesforce_bulk.operators import columnar_sources as columnar
from airflow_provider_salesforce_bulk.operators.base import (
    SalesforceBulkBaseOperator,
    one_loop,
    output_folder,
)
from airflow_provider_salesforce_bulk.operators.field_check import check_columns_exist
from airflow_provider_salesforce_bulk.operators.final_failures import (
    readable_failed_files,
    write_final_failures,
)
from airflow_provider_salesforce_bulk.operators.grouping import GroupedSource
from airflow_provider_salesforce_bulk.operators.lineage import (
    lineage_classes,
    path_dataset,
    salesforce_namespace,
)
from airflow_provider_salesforce_bulk.operators.links import LINK_XCOM_KEY, SalesforceBulkJobLink, job_url
from airflow_provider_salesforce_bulk.operators.plan_store import PlanStore, plan_store_for
from airflow_provider_salesforce_bulk.operators.query_output import display_path
from airflow_provider_salesforce_bulk.operators.refusals import fail_on_refused_credentials, limit_named
from airflow_provider_salesforce_bulk.operators.resubmit_rounds import (
    RoundPlan,
    back_off,
    load_wait_state,
    resubmit_codes,
    resubmit_policy,
    round_to_send,
    save_wait_state,
    send_round,
)
from airflow_provider_salesforce_bulk.operators.result_files import JobResults, copy_job_results
from airflow_provider_salesforce_bulk.operators.round_state import RoundState, Waited, rebuild_wait
from airflow_provider_salesforce_bulk.operators.source_spec import SourceSpec
from airflow_provider_salesforce_bulk.operators.sources import ChunkSource, make_source
from airflow_provider_salesforce_bulk.operators.staging import Manifest, StagingArea, replay, stage
from airflow_provider_salesforce_bulk.operators.submit import (
    JobPlan,
    reconcile,
    submit_chunks,
)
from airflow_provider_salesforce_bulk.operators.summary import (
    RoundCount,
    count_round,
    failure_message,
    final_entries,
    job_outcomes,
    jobs_to_copy,
    summarize,
    unfinished_summary,
)
from airflow_provider_salesforce_bulk.operators.task_start import start_task
from airflow_provider_salesforce_bulk.operators.try_stop import until_stopped
from airflow_provider_salesforce_bulk.operators.worker_local import warn_if_worker_local
from airflow_provider_salesforce_bulk.triggers.events import (
    JobsEvent,
    JobSummary,
    job_summary,
    jobs_event,
    validate_event,
)
from airflow_provider_salesforce_bulk.triggers.salesforce_bulk import (
    SalesforceBulkJobTrigger,
    check_positive_number,
)

__all__ = ["DEFAULT_RESULTS_FOLDER", "DEFAULT_STAGING_FOLDER", "SalesforceBulkOperator"]

DEFAULT_RESULTS_FOLDER = "salesforce_bulk_results"
"""Under ``$AIRFLOW_HOME``: ``<folder>/<dag_id>/<run_id>/<task_id>[/<map_index>]/<job_id>/*.csv``."""
DEFAULT_STAGING_FOLDER = "salesforce_bulk_staging"
"""Under ``$AIRFLOW_HOME`` when neither ``staging_path`` nor ``results_path`` is given."""

_UNSAFE = re.compile(r"[^A-Za-z0-9._=+-]")

# How long on_kill's abort waits for the stopped try to settle (see _kill_jobs).
_SETTLE_SECONDS = 2.0


class SalesforceBulkOperator(SalesforceBulkBaseOperator):
    """Insert, update, upsert, delete or hard-delete records with the Salesforce Bulk API 2.0.

    Parameters
    ----------
    operation : {"insert", "update", "upsert", "delete", "hardDelete"}
    object_name : str
        The Salesforce object, e.g. ``Contact``.
    records : list of dict, DataFrame, Arrow table or XComArg, optional
        The records (field name to value), or a pandas/polars DataFrame or pyarrow Table/RecordBatch/
        RecordBatchReader (the Arrow path). Exactly one of ``records``, ``source`` and ``sql``.
    source : str or ObjectStoragePath, optional
        A CSV file already in the job's format (header row of field names; copied byte for byte), a
        newline-delimited JSON file (one object per line), or a Parquet or Arrow IPC/Feather file.
        Streamed, never read whole.
    source_format : {"csv", "ndjson", "parquet", "arrow"}, optional
        Defaults from the file name (``.csv``; ``.ndjson``, ``.jsonl``, ``.json``; ``.parquet``,
        ``.pq``; ``.arrow``, ``.feather``, ``.ipc``, ``.arrows``).
    sql, sql_conn_id, parameters : optional
        A query (templated) run on ``sql_conn_id`` (any common-sql ``DbApiHook`` connection), fetched in
        bounded batches; ``parameters`` go to ``cursor.execute``. Column names from the cursor.
    field_mapping : dict, optional
        Source column to Salesforce field, for ``sql``, Parquet/Arrow files and tables: only these
        columns are loaded, renamed; a column the data lacks fails the task before any job.
    allow_empty : bool
        A query that returns no row loads nothing instead of failing the task.
    allow_na_marker : bool
        Let a value be the literal ``#N/A`` (sets the field to null); a CSV file is sent as it is.
    group_by_parent : str, optional
        A parent field (``AccountId``): records are ordered by it so one parent's children share a job
        (fewer ``UNABLE_TO_LOCK_ROW``); spooled to a temporary file, memory stays flat.
    limits_check : {"fail", "warn", "off"}
        Before the first job, compare the org's daily allowances left (``/limits``) with what the
        load needs: fail the task, warn, or skip the check.
    resubmit_error_codes, resubmit_rounds, resubmit_backoff
        Records that failed with one of ``resubmit_error_codes`` (default ``UNABLE_TO_LOCK_ROW``;
        empty: never) are sent again in new jobs once their round of jobs has ended, up to
        ``resubmit_rounds`` rounds in all (the load included; 1: never), waiting ``resubmit_backoff``
        seconds before the second round (doubling after): deferred to the triggerer from 5 seconds
        when ``deferrable``, slept in the worker otherwise. Each record is counted once in
        the summary, at its final outcome; the failure policy applies to final failures only.
    retry_error_codes
        Deprecated name of ``resubmit_error_codes`` (warns; "retry" names requests sent again).
    fieldnames : list of str, optional
        Columns for ``records`` or NDJSON; inferred from the data when omitted.
    external_id_field : str, optional
        Required for upsert (``External_Id__c`` or ``Id``).
    assignment_rule_id : str, optional
        Lead or Case assignment rule.
    max_records_per_job, max_bytes_per_job : int
        Chunk limits: each chunk becomes one job (Salesforce's limit is 100 MB of CSV per job).
    column_delimiter : {"COMMA", "BACKQUOTE", "CARET", "PIPE", "SEMICOLON", "TAB"}
    line_ending : {"LF", "CRLF"}
    none_as : {"empty", "null"}
        ``None`` left unchanged (empty value) or set to null (``#N/A``).
    results_path : str or ObjectStoragePath, optional
        Where the successful, failed and unprocessed result files go (any ObjectStoragePath, e.g.
        ``s3://bucket/prefix``). Default: ``$AIRFLOW_HOME/salesforce_bulk_results/<dag>/<run>/<task>``,
        local to the worker that runs the task.
    max_failed_records, max_failed_ratio : optional
        Failure thresholds; the task fails when either is exceeded. With neither set, any failed record
        fails the task. A Failed or Aborted job always fails it.
    poll_interval : float
        Longest wait between two polls of the jobs, in seconds.
    timeout : float or timedelta
        Deadline for the jobs to finish after they are submitted; they are aborted when it passes.
    salesforce_bulk_conn_id : str
        A ``salesforce_bulk`` (or ``salesforce``) connection, as the hook names it. ``conn_id``, the name
        of the first releases, is still accepted; default ``salesforce_bulk_default``.
    deferrable : bool
        Wait in the triggerer (default from ``[operators] default_deferrable``); otherwise poll in the worker.
    staging_path : str or ObjectStoragePath, optional
        Where the chunks cut from the input are kept until every job of the load has ended, so that a
        retry sends exactly the bytes the first try read (see :mod:`.staging`). Default: next to the
        results, ``<results_path>/_staging/<dag>/<run>/<task>`` (or
        ``$AIRFLOW_HOME/salesforce_bulk_staging/...`` without ``results_path``): local to the worker
        unless ``results_path`` is object storage, a single-machine setting; with several workers use
        object storage, which every worker reads.
    reload_on_clear : bool
        A later try of a task instance whose earlier try succeeded (its plan is marked done) loads
        every record again when True. Default False: it finishes without loading and returns the
        done try's summary, since Airflow may fail a try after it succeeded (a late stale report)
        and its retry cannot tell that from a user's clear. Clear with this set to load again.

    Notes
    -----
    Every job id is stored in ``task_state_store`` (Airflow 3.3+) before its upload, and marked
    before its close, so a retry reads the state of each job of the earlier try and never resends a
    record Salesforce may have processed: a job never closed is aborted and its chunk resent; a job
    whose close may have been sent is kept (closed if still Open); an Aborted or Failed job's
    unprocessed records (only those) go to a new job. The summary is the XCom return value, pushed
    before the failure policy can fail the task; it lists every job of every try and counts each
    input record once, at its final outcome. Jobs are aborted only on a user's decision: the
    ``timeout``, or a kill after which Airflow says the task is no longer running or deferred.

    A resubmission round's jobs are recorded in the same store (its round and retry chunk) before
    their upload: a retry replays the rounds, reattaching to each round's jobs instead of sending
    their records again.
    Before Airflow 3.3 the plan is an Airflow Variable per task instance (see
    :mod:`~airflow_provider_salesforce_bulk.operators.plan_store`); on success it is kept, marked done.
    """

    template_fields: Sequence[str] = (
        "operation",
        "object_name",
        "records",
        "source",
        "sql",
        "parameters",
        "fieldnames",
        "external_id_field",
        "assignment_rule_id",
        "results_path",
        "staging_path",
        "conn_id",
    )
    template_fields_renderers: ClassVar[dict[str, str]] = {"records": "json", "sql": "sql"}
    operator_extra_links = (SalesforceBulkJobLink(),)
    ui_color = "#9fd7f5"

    def __init__(
        self,
        *,
        operation: str,
        object_name: str,
        records: Any = None,
        source: Any = None,
        source_format: str | None = None,
        fieldnames: Sequence[str] | None = None,
        external_id_field: str | None = None,
        assignment_rule_id: str | None = None,
        max_records_per_job: int = 150_000_000,
        max_bytes_per_job: int = 100_000_000,
        column_delimiter: str = "COMMA",
        line_ending: str = "LF",
        none_as: str = "empty",
        results_path: Any = None,
        max_failed_records: int | None = None,
        max_failed_ratio: float | None = None,
        poll_interval: float = 5.0,
        timeout: float | datetime.timedelta = datetime.timedelta(hours=24),
        salesforce_bulk_conn_id: str | None = None,
        conn_id: str | None = None,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        sql: str | None = None,
        sql_conn_id: str | None = None,
        parameters: Mapping[str, Any] | Sequence[Any] | None = None,
        field_mapping: Mapping[str, str] | None = None,
        allow_empty: bool = False,
        allow_na_marker: bool = False,
        group_by_parent: str | None = None,
        limits_check: str = "warn",
        resubmit_error_codes: Sequence[str] | None = None,
        retry_error_codes: Sequence[str] | None = None,
        resubmit_rounds: int = 3,
        resubmit_backoff: float = 30.0,
        reload_on_clear: bool = False,
        staging_path: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            poll_interval=poll_interval,
            timeout=timeout,
            salesforce_bulk_conn_id=salesforce_bulk_conn_id,
            conn_id=conn_id,
            deferrable=deferrable,
            **kwargs,
        )
        self.operation = operation
        self.object_name = object_name
        self.records = records
        self.source = source
        self.source_format = source_format
        self.fieldnames = fieldnames
        self.external_id_field = external_id_field
        self.assignment_rule_id = assignment_rule_id
        self.max_records_per_job = max_records_per_job
        self.max_bytes_per_job = max_bytes_per_job
        self.column_delimiter = column_delimiter
        self.line_ending = line_ending
        self.none_as = none_as
        self.results_path = results_path
        self.max_failed_records = max_failed_records
        self.max_failed_ratio = max_failed_ratio
        self.sql = sql
        self.sql_conn_id = sql_conn_id
        self.parameters = parameters
        self.field_mapping = field_mapping
        self.allow_empty = allow_empty
        self.allow_na_marker = allow_na_marker
        self.group_by_parent = group_by_parent
        self.limits_check = limits_check
        self.resubmit_error_codes, self._resubmit_codes_name = resubmit_codes(
            resubmit_error_codes, retry_error_codes
        )
        self.resubmit_rounds = resubmit_rounds
        self.resubmit_backoff = resubmit_backoff
        self._chunk_counts: list[int] = []
        self._fieldnames: list[str] = []
        self._latest: dict[str, JobInfo] = {}
        self._opened_source: ChunkSource | None = None
        self.reload_on_clear = reload_on_clear
        self.staging_path = staging_path
        self._instance_url: str | None = None
        self._succeeded: int | None = None
        self._active_job_ids: list[str] = []

    # -- validation -----------------------------------------------------------------------------

    def _check_settings(self) -> None:
        self._job_spec()
        if self.max_failed_records is not None and (
            isinstance(self.max_failed_records, bool)
            or not isinstance(self.max_failed_records, int)
            or self.max_failed_records < 0
        ):
            raise InputError("max_failed_records must be an int >= 0", field="max_failed_records")
        if self.max_failed_ratio is not None:
            ratio = self.max_failed_ratio
            try:
                number = float(ratio)
            except (TypeError, ValueError):
                number = math.nan
            if isinstance(ratio, bool) or not 0 <= number <= 1:
                raise InputError(
                    f"max_failed_ratio must be a number between 0 and 1, not {ratio!r}",
                    field="max_failed_ratio",
                )
        for name in ("poll_interval", "timeout"):
            try:
                check_positive_number(name, getattr(self, name))
            except ValueError as exc:
                raise InputError(str(exc), field=name) from None
        self._source_spec()
        self._chunk_format()
        check_limits_mode(self.limits_check)
        self._policy()

    def _policy(self) -> ResubmitPolicy:
        return resubmit_policy(
            self.resubmit_error_codes, self._resubmit_codes_name, self.resubmit_rounds, self.resubmit_backoff
        )

    def _source_spec(self) -> SourceSpec:
        """The source options as one value, checked the first time it is asked for (an ``InputError``
        naming the bad option): when the task runs, since ``records``, ``source`` and ``sql`` are
        templated."""
        spec: SourceSpec | None = getattr(self, "_checked_source", None)
        if spec is None:
            spec = self._checked_source = SourceSpec(
                records=self.records,
                source=self.source,
                source_format=self.source_format,
                fieldnames=self.fieldnames,
                sql=self.sql,
                sql_conn_id=self.sql_conn_id,
                parameters=self.parameters,
                field_mapping=self.field_mapping,
                allow_empty=self.allow_empty,
                group_by_parent=self.group_by_parent,
            )
        return spec

    def _source(self) -> ChunkSource:
        source = make_source(
            self._source_spec(),
            limits=self._chunk_limits(),
            chunk_format=self._chunk_format(),
            spool=False,  # read once (staged): nothing to spool for a second pass
        )
        self._opened_source = source
        return source

    def _job_spec(self) -> JobSpec:
        """What every job of this task is created with, checked the first time it is asked for (an
        ``InputError`` naming the bad option); the operator's arguments are untyped DAG input, so the
        check, not the annotation, makes them a job's options."""
        spec: JobSpec | None = getattr(self, "_spec", None)
        if spec is None:
            spec = self._spec = JobSpec(
                operation=self.operation,  # type: ignore[arg-type]
                object=self.object_name,
                external_id_field=self.external_id_field,
                assignment_rule_id=self.assignment_rule_id,
                column_delimiter=self.column_delimiter,  # type: ignore[arg-type]
                line_ending=self.line_ending,  # type: ignore[arg-type]
            )
        return spec

    def _chunk_limits(self) -> ChunkLimits:
        """How large each job's CSV may be (an ``InputError`` naming a limit out of range)."""
        return ChunkLimits(max_size_bytes=self.max_bytes_per_job, max_records=self.max_records_per_job)

    def _chunk_format(self) -> ChunkFormat:
        """How records are written (an ``InputError`` naming ``none_as`` or ``allow_na_marker``)."""
        # The operator's arguments are untyped DAG input: ChunkFormat's check makes them its values.
        return self._job_spec().chunk_format(self.none_as, self.allow_na_marker)  # type: ignore[arg-type]

    # -- execution --------------------------------------------------------------------------------

    @one_loop
    def execute(self, context: Any) -> Any:
        self._stop = threading.Event()  # set by on_kill (SIGTERM): this try writes nothing more
        self._settled = threading.Event()
        try:
            return self._execute(context)
        finally:
            self._settled.set()  # on_kill's abort now sees every job this try created
            opened, self._opened_source = self._opened_source, None
            if isinstance(opened, GroupedSource):
                opened.close()  # its spool file

    def _execute(self, context: Any) -> Any:
        hook = SalesforceBulkHook(salesforce_bulk_conn_id=self.conn_id)

        def checked_source() -> ChunkSource:
            self._check_settings()
            return self._source()

        source, settings, store = start_task(
            context,
            hook,
            checked_source,
            warn=self.log.warning,
            without_store="No task instance: a retry cannot reattach to submitted jobs",
        )
        self._ti = context.get("ti")
        self._settings = settings
        plan = JobPlan.load(store)
        done = plan.done
        if done is not None:
            if self.reload_on_clear:
                self.log.info("An earlier try succeeded; reload_on_clear is set: loading every record again")
                plan = JobPlan(store)
            elif done.get("summary") is not None:
                return self._done_before(context, plan)
            else:
                # Done, but its summary did not fit the store: reattach to the finished jobs (nothing
                # is sent again) to count and copy their results once more.
                self.log.info("An earlier try succeeded; reading its jobs again for the summary")
        self._plan = plan
        area = self._staging_area(context)
        try_number = getattr(context.get("ti"), "try_number", None)
        if plan.chunks:
            self.log.info("Jobs of an earlier try: %s; reading their state", ", ".join(plan.all_job_ids))
        elif not self._stage_input(source, plan, area, try_number):
            self.log.info("No records: no job created")
            self._succeeded = 0
            return summarize(self.operation, self.object_name, {}, collections.Counter(), None, None)
        self._latest = {}
        try:
            with fail_on_refused_credentials():
                latest = run_sync(lambda: self._submit(hook, settings, source, plan, area, try_number))
        except InputError as exc:
            raise AirflowFailException(f"Bad input ({source.description}): {exc}") from None
        except RequestLimitExceededError as exc:
            self._stop_on_limit(context, plan, exc)
        if context.get("ti") is not None:
            context["ti"].xcom_push(key=LINK_XCOM_KEY, value=job_url(plan.instance_url or "", plan.job_ids))
        # What the resumed task rebuilds its accounting from, stored before the wait: the trigger
        # carries only what polling needs.
        plan.save_now()
        self._save_wait_state(store, None)
        active = plan.job_ids
        if all(job_id in latest and latest[job_id].is_terminal for job_id in active):
            # Every job already ended: finish here. Deferring now would fire the trigger within a
            # second, which meets Airflow's stale-report race (the scheduler can fail such a try).
            self.log.info("Every job already ended: finishing without deferring")
            event = jobs_event("success", {job_id: job_summary(latest[job_id]) for job_id in active})
            return self.execute_complete(context, event)
        return self._wait(context, active, settings)

    def _wait(self, context: Any, job_ids: list[str], settings: ConnectionSettings) -> Any:
        """Wait for ``job_ids`` (deferred, or polled in the worker), then finish from their final states."""
        trigger = SalesforceBulkJobTrigger(
            conn_id=self.conn_id,
            job_ids=job_ids,
            deadline=time.time() + float(self.timeout),
            poll_interval=float(self.poll_interval),
            settings=settings,
        )
        self._active_job_ids = list(job_ids)
        event = self._wait_for(trigger)
        self._active_job_ids = []
        return self.execute_complete(context, event)

    def _stage_input(
        self, source: ChunkSource, plan: JobPlan, area: StagingArea, try_number: int | None
    ) -> bool:
        """A fresh load: read the source once into the staging area, recorded in the plan before any
        job (every later try sends these bytes, never the live source). False when it has no record."""
        RoundPlan.reset(plan.store)  # rounds of an earlier, finished run of this task
        # No job exists: what earlier tries staged was never sent; the source is read afresh.
        area.remove_others(None)
        manifest = self._read_input(source, area, try_number)
        self.log.info(
            "Input checked and staged: %d records in %d chunk(s) from %s, under %s",
            manifest.total,
            len(manifest.chunks),
            source.description,
            area.folder(manifest.prefix),
        )
        if manifest.total == 0:
            area.remove_all()
            return False
        self._chunk_counts = [entry.count for entry in manifest.chunks]
        self._fieldnames = list(manifest.fieldnames)
        plan.staged = manifest.dump()
        plan.save_now()
        return True

    def _stop_on_limit(self, context: Any, plan: JobPlan, exc: RequestLimitExceededError) -> NoReturn:
        """Salesforce refused a request for a daily limit part way: push what exists, then fail the try.

        Airflow's retry reattaches to the jobs recorded so far and sends only the chunks that have
        none, so it completes without duplicates once the allowance refilled.
        """
        limit = limit_named(exc)
        counts: dict[str, int] = {}
        for _, chunk in sorted(plan.chunks.items()):
            current = JobPlan.current(chunk)
            if current is not None and not current.get("outcome"):
                counts[current["job"]] = int(chunk["count"])
        total = sum(self._chunk_counts) if self._chunk_counts else None
        sent = sum(counts.values())
        message = (
            f"Salesforce refused a request with REQUEST_LIMIT_EXCEEDED: the org's {limit} allowance is "
            f"spent ({exc}). {sent:,} of {total if total is not None else '?'} records are in "
            f"{len(counts)} job(s) ({', '.join(counts) or 'none'}); the rest were not sent. The "
            "allowance refills over a rolling 24 hours: a retry reattaches to these jobs and sends only "
            "the rest"
        )
        summary = unfinished_summary(
            self.operation,
            self.object_name,
            {job_id: job_summary(self._latest[job_id]) for job_id in counts if job_id in self._latest},
            counts,
            total,
            plan.instance_url,
            message,
        )
        _push_summary(context, summary)
        raise AirflowException(message)

    def _done_before(self, context: Any, plan: JobPlan) -> Any:
        """An earlier try of this task instance succeeded: its summary again, nothing loaded."""
        done = plan.done or {}
        self.log.warning(
            "Try %s of this task instance already loaded every record and succeeded (jobs %s); "
            "finishing without loading anything. Airflow may have failed that try after it succeeded "
            "(a late report); to load the records again on purpose, clear the task with "
            "reload_on_clear=True",
            done.get("try_number"),
            ", ".join(plan.all_job_ids) or "none",
        )
        self._instance_url = plan.instance_url
        self._staging_area(context).remove_all()  # left by the done try if Airflow failed it after
        summary = done.get("summary")
        if isinstance(summary, Mapping):
            self._succeeded = int(summary.get("totals", {}).get("succeeded", 0))
        if context.get("ti") is not None and plan.job_ids:
            context["ti"].xcom_push(key=LINK_XCOM_KEY, value=job_url(plan.instance_url or "", plan.job_ids))
        return summary

    def _read_input(self, source: ChunkSource, area: StagingArea, try_number: int | None) -> Manifest:
        """Read the source once, writing its chunks to ``area``: bad input fails before any job."""
        prefix = area.new_prefix(try_number)
        local = area.local_folder(prefix)
        if isinstance(source, GroupedSource) and local is not None:
            # Its SQLite spool goes with the try's staged files: a killed try's is removed with them.
            source.spool_dir = local
        try:
            return stage(source, area, prefix, self._job_spec())
        except InputError as exc:
            raise AirflowFailException(f"Bad input ({source.description}): {exc}") from None
        except columnar.SqlSourceError as exc:
            raise AirflowException(f"Reading {source.description} failed: {exc}") from None

    def _replay(
        self, source: ChunkSource, plan: JobPlan, area: StagingArea, try_number: int | None
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
            lambda: self._read_input(source, area, try_number),
            jobs_of,
            source.description,
        )
        if staged is not manifest:
            plan.staged = staged.dump()
            plan.save_now()
            area.remove(manifest.prefix)
        return chunks

    def _staging_area(self, context: Any) -> StagingArea:
        """The task instance's staging folder (see ``staging_path``)."""
        from airflow.providers.common.compat.sdk import ObjectStoragePath

        ti = context.get("ti")
        parts = [ti.dag_id, ti.run_id, ti.task_id] if ti is not None else ["_", uuid.uuid4().hex]
        if ti is not None and getattr(ti, "map_index", -1) not in (None, -1):
            parts.append(str(ti.map_index))
        parts = [_UNSAFE.sub("_", part) for part in parts]
        if self.staging_path:
            path = self.staging_path
            root = path if isinstance(path, ObjectStoragePath) else ObjectStoragePath(str(path))
        elif self.results_path:
            root = self._results_dir(context) / "_staging"
        else:
            home = os.environ.get("AIRFLOW_HOME") or os.path.expanduser("~/airflow")
            local = os.path.join(home, DEFAULT_STAGING_FOLDER)
            root = ObjectStoragePath(f"file://{os.path.abspath(local)}")
        for part in parts:
            root = root / part
        return StagingArea(root)

    async def _submit(
        self,
        hook: SalesforceBulkHook,
        settings: ConnectionSettings,
        source: ChunkSource,
        plan: JobPlan,
        area: StagingArea,
        try_number: int | None,
    ) -> dict[str, JobInfo]:
        spec = self._job_spec()
        async with hook.client(settings) as client:
            plan.instance_url = await client.session.instance_url()
            latest = self._latest  # kept by the operator: a try stopped by a limit reports it
            if plan.chunks:
                latest.update(await reconcile(client, plan, spec))
            if plan.complete:
                return latest
            if not plan.chunks:
                await check_columns_exist(
                    client,
                    spec.object,
                    self._fieldnames,
                    field_mapping=self.field_mapping,
                    external_id_field=spec.external_id_field,
                )
                try:
                    await check_limits_before_load(client, self._chunk_counts, self.limits_check)
                except LimitsCheckError as exc:
                    raise AirflowFailException(f"Limits check before the load: {exc}") from None
            stop = self._stop_event()
            if plan.staged is None:
                # A plan written before staging existed: the live source, matched by position.
                with source.open() as live:
                    latest.update(await submit_chunks(client, plan, until_stopped(live, stop, "chunk"), spec))
                return latest
            # Files are read and hashed in a thread: the loop keeps serving the session meanwhile.
            chunks = await asyncio.to_thread(self._replay, source, plan, area, try_number)
            latest.update(await submit_chunks(client, plan, until_stopped(chunks, stop, "chunk"), spec))
            return latest

    def _abort_targets(self) -> tuple[list[str], Any]:
        """The jobs waited for now, else every job of the plan; the plan's store names the try."""
        plan: JobPlan | None = getattr(self, "_plan", None)
        job_ids = list(self._active_job_ids)
        if not job_ids and plan is not None:
            job_ids = plan.job_ids
        return job_ids, plan.store if plan is not None else None

    def _settled_targets(self, job_ids: list[str]) -> list[str]:
        # A job created while the signal arrived is in the plan once the try has stopped, at its
        # next chunk: waited for briefly (Airflow's SIGKILL follows the SIGTERM by 5 s).
        settled: threading.Event | None = getattr(self, "_settled", None)
        if settled is not None:
            settled.wait(_SETTLE_SECONDS)
        plan: JobPlan | None = getattr(self, "_plan", None)
        if plan is not None:
            job_ids = list(dict.fromkeys([*job_ids, *plan.job_ids]))
        return job_ids

    def execute_complete(
        self,
        context: Any,
        event: Mapping[str, Any] | None = None,
        record_counts: Mapping[str, int] | None = None,
        instance_url: str | None = None,
        resubmit: Mapping[str, Any] | None = None,
    ) -> Any:
        """Copy the result files; send transient failures again (and defer) while rounds are left;
        then push the summary and apply the failure policy.

        ``event`` is checked first (:func:`~airflow_provider_salesforce_bulk.triggers.events.validate_event`):
        none, or a malformed one, is an ``AirflowException`` naming what is wrong, before anything is
        copied. It holds the jobs' final states; the rest (records per job, earlier tries' jobs, the
        rounds so far) is read from the plan store. The keyword arguments are the ``defer()`` kwargs
        of a task deferred by an earlier release, whose trigger carried that state.
        """
        checked = validate_event(event)
        self._ti = context.get("ti") or getattr(self, "_ti", None)
        plan: JobPlan | None = getattr(self, "_plan", None)
        waited = rebuild_wait(
            checked,
            plan if plan is not None else JobPlan.load(plan_store_for(context)),
            self._wait_state(context),
            record_counts=record_counts,
            instance_url=instance_url,
            resubmit=resubmit,
        )
        if checked["credentials_refused"]:
            self._refused(context, checked, waited)
        self._instance_url = waited.instance_url
        state = waited.state
        hook = SalesforceBulkHook(salesforce_bulk_conn_id=self.conn_id)
        to_copy = jobs_to_copy(checked["jobs"], waited.history)
        copied = self._copy_results(context, hook, to_copy, state.round)
        outcomes = job_outcomes(checked["jobs"], waited.history, waited.record_counts, copied)
        policy = self._policy()
        counted = count_round(outcomes, state.round, to_copy, state.ledger, policy.codes)
        if checked["status"] == "success" and counted.resubmittable and policy.may_follow(state.round):
            resubmit_from = state.carry(counted)
            return self._next_round(context, hook, state, policy, resubmit_from, waited.instance_url or "")
        summary, samples = self._summary(context, state, counted, policy, waited.instance_url)
        _push_summary(context, summary)  # before any failure: a failed task still reports what happened
        # Every job of the load was closed before this point, so no later try sends a chunk from the
        # input again (a retry reattaches; Aborted or Failed jobs resend Salesforce's unprocessed
        # records): the staged copy is of no more use, whether the failure policy passes or not.
        self._staging_area(context).remove_all()
        self._apply_failure_policy(checked, summary, samples)
        store = plan_store_for(context)
        if store is not None:
            # Kept, marked done: a try failed by Airflow after this success (a late stale report)
            # must not load again on its retry. A clear reloads only with ``reload_on_clear``.
            JobPlan.mark_done(store, getattr(context.get("ti"), "try_number", None), summary)
        return summary

    def _plan_store(self, context: Any) -> PlanStore | None:
        plan: JobPlan | None = getattr(self, "_plan", None)
        return plan.store if plan is not None else plan_store_for(context)

    def _wait_state(self, context: Any) -> RoundState | None:
        """The state saved before the current wait: in the plan store, or in memory without one."""
        return load_wait_state(self._plan_store(context), getattr(self, "_round_state", None))

    def _save_wait_state(self, store: PlanStore | None, state: RoundState | None) -> None:
        """Record the state of the wait about to start (``None``: round 1, nothing carried)."""
        self._round_state = state
        save_wait_state(store, state)

    def _refused(self, context: Any, checked: JobsEvent, waited: Waited) -> NoReturn:
        """No result file can be read without credentials: the jobs as last seen, then no retry."""
        message = f"{checked['message']}; not retried, since retrying a wrong password locks the user"
        settled = {old["id"] for old in waited.history}
        summary = unfinished_summary(
            self.operation,
            self.object_name,
            checked["jobs"],
            {job_id: n for job_id, n in waited.record_counts.items() if job_id not in settled},
            None,
            waited.instance_url,
            message,
        )
        _push_summary(context, summary)
        raise AirflowFailException(
            f"{message}: fix the connection, then clear the task (it reattaches to the jobs)"
        )

    def _copy_results(
        self, context: Any, hook: SalesforceBulkHook, to_copy: dict[str, JobSummary], round_number: int
    ) -> dict[str, JobResults]:
        """The result files of every job in ``to_copy``, copied under the round's folder."""
        directory = self._results_dir(context)
        if round_number > 1:
            directory = directory / f"round-{round_number}"
        if not to_copy:
            return {}
        settings = hook.get_settings()
        try:
            with fail_on_refused_credentials():
                return run_sync(lambda: self._copy(hook, settings, to_copy, directory))
        except RequestLimitExceededError as exc:
            raise AirflowException(
                f"Reading the results of the jobs met REQUEST_LIMIT_EXCEEDED: the org's "
                f"{limit_named(exc)} allowance is spent ({exc}); the jobs ended, a retry once it "
                "refilled reattaches to them and reads their results"
            ) from None

    def _summary(
        self,
        context: Any,
        state: RoundState,
        counted: RoundCount,
        policy: ResubmitPolicy,
        instance_url: str | None,
    ) -> tuple[dict[str, Any], dict[str, str]]:
        """The task's summary over every round, and a failure message per error code."""
        entries = final_entries({**state.entries, **counted.entries}, state.ledger)
        by_code, samples = state.merged(counted)
        by_code = collections.Counter({code: n for code, n in by_code.items() if n > 0})
        samples = {code: text for code, text in samples.items() if code in by_code}
        copied_any = any(entry["result_files"] for entry in counted.entries.values())
        results_path = str(self._results_dir(context)) if copied_any or state.entries else None
        summary = summarize(
            self.operation,
            self.object_name,
            entries,
            by_code,
            results_path,
            instance_url,
            state.input_of(counted),
            resubmitted=sum(state.ledger.resubmitted.values()),
            rounds=state.round,
            failed_results=None
            if results_path is None
            else self._final_failures(context, entries, state.ledger, policy),
        )
        self._succeeded = int(summary["totals"]["succeeded"])
        self.log.info(
            "Summary: %s records, %s succeeded, %s failed, %s unprocessed in %s job(s); failed by code %s; "
            "results in %s",
            *(summary["totals"][key] for key in ("records", "succeeded", "failed", "unprocessed", "jobs")),
            summary["failed_by_error_code"],
            summary["results_path"],
        )
        return summary, samples

    def _apply_failure_policy(
        self, checked: JobsEvent, summary: dict[str, Any], samples: dict[str, str]
    ) -> None:
        """Fail the task when the wait failed, ran out of time, or the summary breaks the policy."""
        if checked["status"] == "error":
            raise AirflowException(
                f"Waiting for the Salesforce jobs failed: {checked['message']}; "
                "a retry reattaches to the same jobs"
            )
        problem = failure_message(summary, samples, self.max_failed_records, self.max_failed_ratio)
        if checked["status"] == "timeout":
            problem = f"{checked['message']}; " + (problem or "")
        if problem:
            raise AirflowException(problem)

    def _final_failures(
        self,
        context: Any,
        entries: dict[str, dict[str, Any]],
        ledger: ResubmitLedger,
        policy: ResubmitPolicy,
    ) -> dict[str, Any]:
        """The summary's ``failed_results`` (the task's final failed-results file) and its row count."""
        files = readable_failed_files(entries, self.log.warning)
        if files is None:
            return {"failed_results": None}
        delimiter = COLUMN_DELIMITERS[self._job_spec().column_delimiter]
        token = f"try{getattr(self._ti, 'try_number', None) or 0}-{secrets.token_hex(4)}"
        uri, rows = run_sync(
            lambda: write_final_failures(
                self._results_dir(context),
                files,
                ledger,
                policy,
                delimiter,
                token=token,
                stop=self._stop_event(),
            )
        )
        self.log.info("Records whose final outcome is failed: %d, in %s", rows, uri)
        return {"failed_results": uri, "failed_results_rows": rows}

    def send_next_round(self, context: Any, event: Mapping[str, Any] | None = None) -> Any:
        """Resumed after the backoff between two rounds (deferred to the triggerer): send the next round.

        ``event`` is :class:`ResubmitBackoffTrigger`'s, echoing the round's state.
        """
        state, jobs, instance_url = round_to_send(
            event, lambda: self._wait_state(context), plan_store_for(context)
        )
        hook = SalesforceBulkHook(salesforce_bulk_conn_id=self.conn_id)
        return self._next_round(context, hook, state, self._policy(), jobs, instance_url, waited=True)

    def _next_round(
        self,
        context: Any,
        hook: SalesforceBulkHook,
        state: RoundState,
        policy: ResubmitPolicy,
        resubmit_from: list[str],
        instance_url: str,
        *,
        waited: bool = False,
    ) -> Any:
        """Send the transient failures of ``resubmit_from`` to round ``state.round + 1``'s jobs and wait,
        after the backoff (unless ``waited``: resumed from the backoff trigger)."""
        number = state.round + 1
        state.resubmit_from = resubmit_from
        store = self._plan_store(context)
        delay = 0.0 if waited else policy.delay_before(number)
        save = functools.partial(self._save_wait_state, store)
        defer = self.defer if self.deferrable else None
        back_off(number, delay, policy, state, save=save, defer=defer, log=self.log)
        settings = hook.get_settings()
        spec, limits = self._job_spec(), self._chunk_limits()
        counts = send_round(hook, settings, store, state, policy, spec, limits, stop=self._stop_event())
        self._save_wait_state(store, state)
        if not counts:
            self.log.info("Round %d found nothing to send again", number)
            return self.execute_complete(context, jobs_event("success", {}, instance_url=instance_url))
        return self._wait(context, list(counts), settings)

    async def _copy(
        self,
        hook: SalesforceBulkHook,
        settings: ConnectionSettings,
        jobs: dict[str, JobSummary],
        directory: Any,
    ) -> dict[str, JobResults]:
        out: dict[str, JobResults] = {}
        try_number = getattr(getattr(self, "_ti", None), "try_number", None)
        token = f"try{try_number or 0}-{secrets.token_hex(4)}"  # this try's partial files
        async with hook.client(settings) as client:
            for job_id, job in jobs.items():
                out[job_id] = await copy_job_results(
                    client, job_id, directory, job["columnDelimiter"], stop=self._stop_event(), token=token
                )
        return out

    def _results_dir(self, context: Any) -> Any:
        """The results folder (``results_path``, see :func:`~.base.output_folder` for the rule)."""
        if not self.results_path and not getattr(self, "_warned_local", False):
            self._warned_local = True
            local = output_folder(None, context["ti"], DEFAULT_RESULTS_FOLDER)
            warn_if_worker_local("results_path", display_path(local), self.log.warning)
        return self._output_folder(self.results_path, context, DEFAULT_RESULTS_FOLDER)

    # -- lineage ----------------------------------------------------------------------------------

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """Output: the Salesforce object (namespace from the instance URL); input: ``source``.

        Returns ``None`` when the OpenLineage provider is not installed. The output dataset is
        ``salesforce://<instance host>`` / ``object_name``, with an output statistics facet holding the
        records that succeeded; a ``source`` file is the input dataset (a local path: namespace
        ``file``, its absolute path; ``s3://bucket/key``: ``s3://bucket``, ``key``); records passed
        directly have no input dataset.
        """
        ol = lineage_classes()
        if ol is None:
            return None
        inputs = []
        if self.source is not None:
            namespace, name = path_dataset(self.source)
            inputs.append(ol.dataset(namespace=namespace, name=name))
        facets = {}
        if self._succeeded is not None:
            facets["outputStatistics"] = ol.output_statistics(rowCount=self._succeeded)
        outputs = [
            ol.output_dataset(
                namespace=salesforce_namespace(self._instance_url), name=self.object_name, outputFacets=facets
            )
        ]
        return ol.operator_lineage(inputs=inputs, outputs=outputs)


def _push_summary(context: Any, summary: dict[str, Any]) -> None:
    """The summary as the XCom return value (pushed before the task can fail, so it reports what happened)."""
    if context.get("ti") is not None:
        context["ti"].xcom_push(key="return_value", value=summary)
