"""``SalesforceBulkOperator``: load records with the Salesforce Bulk API 2.0, waiting in the triggerer."""

from __future__ import annotations

import collections
import datetime
import functools
import math
import re
import threading
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, NoReturn

from airflow.providers.common.compat.sdk import AirflowException, AirflowFailException, conf

from airflow_provider_salesforce_bulk.client import (
    ChunkFormat,
    ChunkLimits,
    InputError,
    JobInfo,
    JobSpec,
    RequestLimitExceededError,
    ResubmitPolicy,
)
from airflow_provider_salesforce_bulk.client.csv_format import COLUMN_DELIMITERS
from airflow_provider_salesforce_bulk.client.limits import check_limits_mode
from airflow_provider_salesforce_bulk.hooks.connection import ConnectionSettings
from airflow_provider_salesforce_bulk.hooks.salesforce_bulk import (
    SalesforceBulkHook,
    run_sync,
)
from airflow_provider_salesforce_bulk.operators.base import (
    SalesforceBulkBaseOperator,
    one_loop,
    output_folder,
)
from airflow_provider_salesforce_bulk.operators.grouping import GroupedSource
from airflow_provider_salesforce_bulk.operators.lineage import (
    lineage_classes,
    path_dataset,
    salesforce_namespace,
)
from airflow_provider_salesforce_bulk.operators.links import LINK_XCOM_KEY, SalesforceBulkJobLink, job_url
from airflow_provider_salesforce_bulk.operators.load_completion import (
    apply_failure_policy,
    copy_results,
    final_summary,
    push_summary,
    refused,
)
from airflow_provider_salesforce_bulk.operators.load_input import (
    DEFAULT_STAGING_FOLDER,
    done_before,
    limit_summary,
    stage_input,
    staging_area,
    submit_load,
)
from airflow_provider_salesforce_bulk.operators.plan_store import PlanStore, plan_store_for
from airflow_provider_salesforce_bulk.operators.query_output import display_path
from airflow_provider_salesforce_bulk.operators.refusals import fail_on_refused_credentials
from airflow_provider_salesforce_bulk.operators.resubmit_rounds import (
    back_off,
    load_wait_state,
    resubmit_codes,
    resubmit_policy,
    round_to_send,
    save_wait_state,
    send_round,
)
from airflow_provider_salesforce_bulk.operators.round_state import RoundState, rebuild_wait
from airflow_provider_salesforce_bulk.operators.source_spec import SourceSpec
from airflow_provider_salesforce_bulk.operators.sources import ChunkSource, make_source
from airflow_provider_salesforce_bulk.operators.staging import Manifest, StagingArea
from airflow_provider_salesforce_bulk.operators.submit import (
    JobPlan,
)
from airflow_provider_salesforce_bulk.operators.summary import (
    RoundCount,
    count_round,
    job_outcomes,
    jobs_to_copy,
    summarize,
)
from airflow_provider_salesforce_bulk.operators.task_start import start_task
from airflow_provider_salesforce_bulk.operators.worker_local import warn_if_worker_local
from airflow_provider_salesforce_bulk.triggers.events import (
    JobsEvent,
    job_summary,
    jobs_event,
    validate_event,
)
from airflow_provider_salesforce_bulk.triggers.salesforce_bulk import (
    check_positive_number,
)

__all__ = ["DEFAULT_RESULTS_FOLDER", "DEFAULT_STAGING_FOLDER", "SalesforceBulkOperator"]

DEFAULT_RESULTS_FOLDER = "salesforce_bulk_results"
"""Under ``$AIRFLOW_HOME``: ``<folder>/<dag_id>/<run_id>/<task_id>[/<map_index>]/<job_id>/*.csv``."""

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
        latest = self._submit(context, hook, settings, source, plan, area, try_number)
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

    def _submit(
        self,
        context: Any,
        hook: SalesforceBulkHook,
        settings: ConnectionSettings,
        source: ChunkSource,
        plan: JobPlan,
        area: StagingArea,
        try_number: int | None,
    ) -> dict[str, JobInfo]:
        """Reattach to the plan's jobs and send the chunks that have none (see :func:`.submit_load`)."""
        latest: dict[str, JobInfo] = {}  # filled as jobs are seen: a try stopped by a limit reports it
        staged: Manifest | None = getattr(self, "_staged", None)
        submit = functools.partial(
            submit_load,
            hook,
            settings,
            source,
            plan,
            area,
            try_number,
            self._job_spec(),
            latest=latest,
            staged=staged,
            field_mapping=self.field_mapping,
            limits_check=self.limits_check,
            stop=self._stop_event(),
        )
        try:
            with fail_on_refused_credentials():
                run_sync(submit)
        except InputError as exc:
            raise AirflowFailException(f"Bad input ({source.description}): {exc}") from None
        except RequestLimitExceededError as exc:
            self._stop_on_limit(context, plan, exc, staged, latest)
        return latest

    def _stop_on_limit(
        self,
        context: Any,
        plan: JobPlan,
        exc: RequestLimitExceededError,
        staged: Manifest | None,
        latest: dict[str, JobInfo],
    ) -> NoReturn:
        """A daily limit refused a request part way: push what exists, then fail the try (its retry
        reattaches to the jobs recorded so far and sends only the rest)."""
        message, summary = limit_summary(plan, exc, staged, latest, self.operation, self.object_name)
        push_summary(context.get("ti"), summary)
        raise AirflowException(message)

    def _wait(self, context: Any, job_ids: list[str], settings: ConnectionSettings) -> Any:
        """Wait for ``job_ids`` (deferred, or polled in the worker), then finish from their final states."""
        trigger = self._trigger(job_ids, settings=settings)
        self._active_job_ids = list(job_ids)
        event = self._wait_for(trigger)
        self._active_job_ids = []
        return self.execute_complete(context, event)

    def _stage_input(
        self, source: ChunkSource, plan: JobPlan, area: StagingArea, try_number: int | None
    ) -> bool:
        """A fresh load staged (see :func:`~.load_input.stage_input`); False when it has no record."""
        self._staged = stage_input(source, plan, area, try_number, self._job_spec(), self.log)
        return self._staged is not None

    def _done_before(self, context: Any, plan: JobPlan) -> Any:
        """An earlier try of this task instance succeeded: its summary again, nothing loaded."""
        self._instance_url = plan.instance_url
        summary = done_before(context.get("ti"), plan, self._staging_area(context), self.log)
        if isinstance(summary, Mapping):
            self._succeeded = int(summary.get("totals", {}).get("succeeded", 0))
        return summary

    def _staging_area(self, context: Any) -> StagingArea:
        """The task instance's staging folder (see ``staging_path``)."""
        results_dir = functools.partial(self._results_dir, context) if self.results_path else None
        return staging_area(context.get("ti"), self.staging_path, results_dir)

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
            refused(self._ti, self.operation, self.object_name, checked, waited)
        self._instance_url = waited.instance_url
        state = waited.state
        hook = SalesforceBulkHook(salesforce_bulk_conn_id=self.conn_id)
        to_copy = jobs_to_copy(checked["jobs"], waited.history)
        results_dir = self._results_dir(context)
        round_dir = results_dir / f"round-{state.round}" if state.round > 1 else results_dir
        try_number = getattr(self._ti, "try_number", None)
        copied = copy_results(hook, to_copy, round_dir, try_number, self._stop_event())
        outcomes = job_outcomes(checked["jobs"], waited.history, waited.record_counts, copied)
        policy = self._policy()
        counted = count_round(outcomes, state.round, to_copy, state.ledger, policy.codes)
        if checked["status"] == "success" and counted.resubmittable and policy.may_follow(state.round):
            resubmit_from = state.carry(counted)
            return self._next_round(context, hook, state, policy, resubmit_from, waited.instance_url or "")
        return self._finish(context, checked, state, counted, policy, waited.instance_url, results_dir)

    def _finish(
        self,
        context: Any,
        checked: JobsEvent,
        state: RoundState,
        counted: RoundCount,
        policy: ResubmitPolicy,
        instance_url: str | None,
        results_dir: Any,
    ) -> Any:
        """The last round ended: push the summary, then apply the failure policy and mark the plan done."""
        summary, samples = final_summary(
            self.operation,
            self.object_name,
            state,
            counted,
            policy,
            instance_url,
            results_dir=results_dir,
            delimiter=COLUMN_DELIMITERS[self._job_spec().column_delimiter],
            try_number=getattr(self._ti, "try_number", None),
            stop=self._stop_event(),
            log=self.log,
        )
        self._succeeded = int(summary["totals"]["succeeded"])
        push_summary(context.get("ti"), summary)  # before any failure: a failed task still reports it
        # Every job of the load was closed before this point, so no later try sends a chunk from the
        # input again (a retry reattaches; Aborted or Failed jobs resend Salesforce's unprocessed
        # records): the staged copy is of no more use, whether the failure policy passes or not.
        self._staging_area(context).remove_all()
        apply_failure_policy(checked, summary, samples, self.max_failed_records, self.max_failed_ratio)
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
