"""``SalesforceBulkOperator``: load records with the Salesforce Bulk API 2.0, waiting in the triggerer."""

from __future__ import annotations

import asyncio
import collections
import datetime
import math
import os
import re
import secrets
import threading
import time
import urllib.parse
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, NoReturn

from airflow.providers.common.compat.sdk import AirflowException, AirflowFailException, BaseOperator, conf

from airflow_provider_salesforce_bulk.client import (
    BulkIngestClient,
    ChunkLimits,
    InputError,
    JobInfo,
    JobSpec,
    LimitsCheckError,
    RequestLimitExceededError,
    ResubmitPolicy,
    SalesforceSession,
    TokenCache,
)
from airflow_provider_salesforce_bulk.client.csv_format import COLUMN_DELIMITERS, Chunk
from airflow_provider_salesforce_bulk.client.limits import check_limits_before_load, check_limits_mode
from airflow_provider_salesforce_bulk.client.models import TERMINAL_STATES
from airflow_provider_salesforce_bulk.client.resubmit import DEFAULT_RETRY_ERROR_CODES, ResubmitLedger
from airflow_provider_salesforce_bulk.hooks.connection import ConnectionSettings
from airflow_provider_salesforce_bulk.hooks.salesforce_bulk import (
    SalesforceBulkHook,
    resolve_conn_id,
    run_sync,
)
from airflow_provider_salesforce_bulk.operators import columnar_sources as columnar
from airflow_provider_salesforce_bulk.operators.deferral import defer_or_wait
from airflow_provider_salesforce_bulk.operators.field_check import check_columns_exist
from airflow_provider_salesforce_bulk.operators.final_failures import write_final_failures
from airflow_provider_salesforce_bulk.operators.grouping import GroupedSource, group_by_parent
from airflow_provider_salesforce_bulk.operators.lineage import lineage_classes, path_dataset
from airflow_provider_salesforce_bulk.operators.links import LINK_XCOM_KEY, SalesforceBulkJobLink, job_url
from airflow_provider_salesforce_bulk.operators.plan_store import plan_store_for
from airflow_provider_salesforce_bulk.operators.refusals import fail_on_refused_credentials, limit_named
from airflow_provider_salesforce_bulk.operators.resubmit_rounds import RoundPlan, submit_round
from airflow_provider_salesforce_bulk.operators.result_files import copy_job_results
from airflow_provider_salesforce_bulk.operators.sources import ChunkSource, make_source
from airflow_provider_salesforce_bulk.operators.staging import Manifest, StagingArea, compare, stage
from airflow_provider_salesforce_bulk.operators.submit import (
    RESENT,
    JobPlan,
    reconcile,
    submit_chunks,
)
from airflow_provider_salesforce_bulk.operators.summary import (
    failure_message,
    job_entry,
    summarize,
    unfinished_summary,
)
from airflow_provider_salesforce_bulk.operators.task_start import start_task
from airflow_provider_salesforce_bulk.operators.try_stop import check_stop, until_stopped
from airflow_provider_salesforce_bulk.operators.worker_local import warn_if_worker_local
from airflow_provider_salesforce_bulk.triggers.events import (
    JobSummary,
    ResubmitState,
    check_job_id,
    check_resubmit_state,
    job_summary,
    jobs_event,
    validate_event,
)
from airflow_provider_salesforce_bulk.triggers.round_backoff import ResubmitBackoffTrigger
from airflow_provider_salesforce_bulk.triggers.salesforce_bulk import (
    SalesforceBulkJobTrigger,
    check_positive_number,
)
from airflow_provider_salesforce_bulk.triggers.task_state import try_is_over

__all__ = ["DEFAULT_RESULTS_FOLDER", "DEFAULT_STAGING_FOLDER", "SalesforceBulkOperator"]

DEFAULT_RESULTS_FOLDER = "salesforce_bulk_results"
"""Under ``$AIRFLOW_HOME``: ``<folder>/<dag_id>/<run_id>/<task_id>[/<map_index>]/<job_id>/*.csv``."""
DEFAULT_STAGING_FOLDER = "salesforce_bulk_staging"
"""Under ``$AIRFLOW_HOME`` when neither ``staging_path`` nor ``results_path`` is given."""

_UNSAFE = re.compile(r"[^A-Za-z0-9._=+-]")

# A shorter backoff between resubmission rounds is slept in the worker: deferring costs a round trip
# through the triggerer of a few seconds, more than the wait itself.
_DEFER_BACKOFF_FROM = 5.0
# defer()'s timeout is a backstop for a triggerer down for long; the trigger itself fires on time.
_BACKOFF_BACKSTOP_SECONDS = 3600
# How long on_kill's abort waits for the stopped try to settle (see _kill_jobs).
_SETTLE_SECONDS = 2.0


class SalesforceBulkOperator(BaseOperator):
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
    retry_error_codes, resubmit_rounds, resubmit_backoff
        Records that failed with one of ``retry_error_codes`` (default ``UNABLE_TO_LOCK_ROW``; empty:
        never) are sent again in new jobs once their round of jobs has ended, up to
        ``resubmit_rounds`` rounds in all (the load included; 1: never), waiting ``resubmit_backoff``
        seconds before the second round (doubling after): deferred to the triggerer from 5 seconds
        when ``deferrable``, slept in the worker otherwise. Each record is counted once in
        the summary, at its final outcome; the failure policy applies to final failures only.
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
        retry_error_codes: Sequence[str] = DEFAULT_RETRY_ERROR_CODES,
        resubmit_rounds: int = 3,
        resubmit_backoff: float = 30.0,
        reload_on_clear: bool = False,
        staging_path: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
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
        self.poll_interval = poll_interval
        # Checked when the task runs (an AirflowFailException there), not when the DAG file is parsed.
        self.timeout: Any = timeout.total_seconds() if isinstance(timeout, datetime.timedelta) else timeout
        self.conn_id = resolve_conn_id(salesforce_bulk_conn_id, conn_id)
        self.deferrable = deferrable
        self.sql = sql
        self.sql_conn_id = sql_conn_id
        self.parameters = parameters
        self.field_mapping = field_mapping
        self.allow_empty = allow_empty
        self.allow_na_marker = allow_na_marker
        self.group_by_parent = group_by_parent
        self.limits_check = limits_check
        self.retry_error_codes = retry_error_codes
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
        self._check_source_settings()
        check_limits_mode(self.limits_check)
        self._policy()

    def _check_source_settings(self) -> None:
        given = [n for n in ("records", "source", "sql") if getattr(self, n) is not None]
        if len(given) != 1:
            raise InputError(
                f"give exactly one of records and source or sql, got {', '.join(given) or 'none'}",
                field=given[-1] if given else "records",
            )
        if self.sql is not None:
            if not isinstance(self.sql, str) or not self.sql.strip():
                raise InputError("sql must be a non-empty query", field="sql")
            if not isinstance(self.sql_conn_id, str) or not self.sql_conn_id:
                raise InputError("sql needs sql_conn_id, the connection to run it on", field="sql_conn_id")
        elif self.sql_conn_id is not None or self.parameters is not None:
            name = "sql_conn_id" if self.sql_conn_id is not None else "parameters"
            raise InputError(f"{name} is only used with sql", field=name)
        if self.parameters is not None and (
            isinstance(self.parameters, (str, bytes)) or not isinstance(self.parameters, (Mapping, Sequence))
        ):
            raise InputError(
                f"parameters must be a dict or a list, got {type(self.parameters).__name__}",
                field="parameters",
            )
        if self.field_mapping is not None:
            mapping = self.field_mapping
            if (
                not isinstance(mapping, Mapping)
                or not mapping
                or not all(isinstance(k, str) and k and isinstance(v, str) and v for k, v in mapping.items())
            ):
                raise InputError(
                    "field_mapping must be a non-empty dict of source column to Salesforce field (strings)",
                    field="field_mapping",
                )
        for name in ("allow_empty", "allow_na_marker"):
            if not isinstance(getattr(self, name), bool):
                raise InputError(f"{name} must be True or False, got {getattr(self, name)!r}", field=name)
        parent = self.group_by_parent
        if parent is not None and (not isinstance(parent, str) or not parent.strip()):
            raise InputError(
                f"group_by_parent must be a field name such as 'AccountId', got {parent!r}",
                field="group_by_parent",
            )

    def _policy(self) -> ResubmitPolicy:
        codes = self.retry_error_codes
        if codes is None or isinstance(codes, str):
            raise InputError(
                f"retry_error_codes must be a list of status codes (empty: no resubmission), got {codes!r}",
                field="retry_error_codes",
            )
        rounds = self.resubmit_rounds
        if isinstance(rounds, bool) or not isinstance(rounds, int) or not 1 <= rounds <= 10:
            raise InputError(
                f"resubmit_rounds must be an int from 1 to 10, got {rounds!r}", field="resubmit_rounds"
            )
        backoff = self.resubmit_backoff
        if isinstance(backoff, bool) or not isinstance(backoff, (int, float)) or not 0 <= backoff <= 3600:
            raise InputError(
                f"resubmit_backoff must be a number of seconds from 0 to 3600, got {backoff!r}",
                field="resubmit_backoff",
            )
        return ResubmitPolicy(codes=tuple(codes), max_rounds=rounds, backoff=float(backoff))

    def _source(self) -> ChunkSource:
        records = self.records
        if (
            records is not None
            and not isinstance(records, (list, tuple))
            and hasattr(records, "__iter__")
            and not isinstance(records, (str, bytes, Mapping))
            and not _is_arrow_object(records)
        ):
            records = list(records)  # a resolved XComArg may arrive as a lazy sequence
        spec = self._job_spec()
        limits = self._chunk_limits()
        # The operator's arguments are untyped DAG input: ChunkFormat's check makes none_as one of its values.
        chunk_format = spec.chunk_format(self.none_as, self.allow_na_marker)  # type: ignore[arg-type]
        if (
            self.sql is not None
            or _is_arrow_object(records)
            or columnar.columnar_format(self.source, self.source_format)
        ):
            source = columnar.make_columnar_source(
                source=self.source,
                source_format=self.source_format,
                table=records,
                sql=self.sql,
                sql_conn_id=self.sql_conn_id,
                parameters=self.parameters,
                field_mapping=self.field_mapping,
                fieldnames=self.fieldnames,
                allow_empty=self.allow_empty,
                limits=limits,
                chunk_format=chunk_format,
                # Read once (staged): nothing to spool for a second pass.
                spool=False,
            )
        else:
            if self.field_mapping is not None:
                raise InputError(
                    "field_mapping applies to sql, Parquet/Arrow files and DataFrames/Arrow tables; "
                    "name the fields in the records or the file's header instead",
                    field="field_mapping",
                )
            source = make_source(
                records=records,
                source=self.source,
                source_format=self.source_format,
                fieldnames=self.fieldnames,
                limits=limits,
                chunk_format=chunk_format,
            )
        if self.group_by_parent is not None:
            source = group_by_parent(source, self.group_by_parent, limits=limits, chunk_format=chunk_format)
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

    # -- execution --------------------------------------------------------------------------------

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
        else:
            RoundPlan.reset(store)  # rounds of an earlier, finished run of this task
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
                summary = summarize(self.operation, self.object_name, {}, collections.Counter(), None, None)
                self.log.info("No records: no job created")
                self._succeeded = 0
                return summary
            self._chunk_counts = [entry.count for entry in manifest.chunks]
            self._fieldnames = list(manifest.fieldnames)
            # Recorded before the first job: every later try sends these bytes, never the live source.
            plan.staged = manifest.dump()
            plan.save_now()
        self._latest = {}
        try:
            with fail_on_refused_credentials():
                latest = run_sync(lambda: self._submit(hook, settings, source, plan, area, try_number))
        except InputError as exc:
            raise AirflowFailException(f"Bad input ({source.description}): {exc}") from None
        except RequestLimitExceededError as exc:
            self._stop_on_limit(context, plan, exc)
        instance_url = plan.instance_url or ""
        if context.get("ti") is not None:
            context["ti"].xcom_push(key=LINK_XCOM_KEY, value=job_url(instance_url, plan.job_ids))
        trigger = SalesforceBulkJobTrigger(
            conn_id=self.conn_id,
            job_ids=plan.job_ids,
            deadline=time.time() + float(self.timeout),
            poll_interval=float(self.poll_interval),
            instance_url=instance_url,
            record_counts=plan.record_counts(),
            history=plan.history(),
            settings=settings,
        )
        kwargs: dict[str, Any] = {"record_counts": plan.record_counts(), "instance_url": instance_url}
        active = plan.job_ids
        if all(job_id in latest and latest[job_id].is_terminal for job_id in active):
            # Every job already ended: finish here. Deferring now would fire the trigger within a
            # second, which meets Airflow's stale-report race (the scheduler can fail such a try).
            self.log.info("Every job already ended: finishing without deferring")
            event = jobs_event(
                "success",
                {job_id: job_summary(latest[job_id]) for job_id in active},
                instance_url=instance_url,
                record_counts=trigger.record_counts,
                history=trigger.history,
            )
            return self.execute_complete(context, event)
        self._active_job_ids = active
        event = defer_or_wait(
            self,
            trigger,
            timeout=float(self.timeout),
            poll_interval=float(self.poll_interval),
            kwargs=kwargs,
        )
        self._active_job_ids = []
        return self.execute_complete(context, event)

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
        if context.get("ti") is not None:
            context["ti"].xcom_push(key="return_value", value=summary)
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
        area.remove_others(manifest.prefix)
        needed = [
            entry
            for entry in manifest.chunks
            if entry.first not in plan.chunks or plan._waiting_for_input(plan.chunks[entry.first])
        ]
        problems = [problem for entry in needed if (problem := area.check(manifest.prefix, entry))]
        if not problems:
            self.log.info("Sending the chunks staged by the first try from %s", area.folder(manifest.prefix))
            return [area.chunk(manifest.prefix, entry) for entry in manifest.chunks]
        self.log.warning(
            "The staged copy cannot be used (%s%s): cutting the chunks again from %s to compare them",
            problems[0],
            f" and {len(problems) - 1} more" if len(problems) > 1 else "",
            source.description,
        )
        rebuilt = self._read_input(source, area, try_number)
        jobs_of = {first: [job["job"] for job in chunk["jobs"]] for first, chunk in plan.chunks.items()}
        problem = compare(manifest, rebuilt, jobs_of, source.description)
        if problem is not None:
            area.remove(rebuilt.prefix)
            raise AirflowFailException(problem)
        self.log.info("The source gives exactly the staged chunks again: sending from %s", rebuilt.prefix)
        plan.staged = rebuilt.dump()
        plan.save_now()
        area.remove(manifest.prefix)
        return [area.chunk(rebuilt.prefix, entry) for entry in rebuilt.chunks]

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

    def on_kill(self) -> None:
        """Stop this try at the next chunk or result file; abort its jobs only if a user ended it.

        A worker shut down or evicted also lands here: the task is still running then, and its jobs
        go on; a retry reattaches to them. So does a try that froze past the heartbeat timeout and
        woke up after Airflow started its retry: the task's plan store names the newer try, and
        nothing is aborted (:func:`~airflow_provider_salesforce_bulk.triggers.task_state.try_is_over`).
        Either way the try stops sending and writing at the next boundary (Airflow's task runner
        calls this on SIGTERM and lets the task run on until its SIGKILL). Airflow calls this from a
        signal handler, which may have interrupted the task while it held a lock (a pool, a token
        cache, a log handler): the work runs in a thread of its own, with its own session, and this
        returns at once, so the task releases those locks (waiting here, the thread's first log line
        waited for the handler's lock).
        The thread is not a daemon: a task that ends normally waits for it; Airflow's SIGKILL, 5 s
        after the SIGTERM, bounds it.
        """
        self._stop_event().set()
        job_ids = list(self._active_job_ids)
        plan: JobPlan | None = getattr(self, "_plan", None)
        if not job_ids and plan is not None:
            job_ids = plan.job_ids
        settings: ConnectionSettings | None = getattr(self, "_settings", None)
        if not job_ids or settings is None:
            return
        ti = getattr(self, "_ti", None)
        store = plan.store if plan is not None else None
        worker = threading.Thread(
            target=self._kill_jobs,
            args=(ti, store, settings, job_ids),
            name="salesforce-bulk-on-kill",
            daemon=False,
        )
        worker.start()
        self._kill_thread = worker

    def _stop_event(self) -> threading.Event:
        stop: threading.Event | None = getattr(self, "_stop", None)
        if stop is None:
            stop = self._stop = threading.Event()
        return stop

    def _kill_jobs(self, ti: Any, store: Any, settings: ConnectionSettings, job_ids: list[str]) -> None:
        if try_is_over(ti, store) is not True:
            return
        # A job created while the signal arrived is in the plan once the try has stopped, at its
        # next chunk: waited for briefly (Airflow's SIGKILL follows the SIGTERM by 5 s).
        settled: threading.Event | None = getattr(self, "_settled", None)
        if settled is not None:
            settled.wait(_SETTLE_SECONDS)
        plan: JobPlan | None = getattr(self, "_plan", None)
        if plan is not None:
            job_ids = list(dict.fromkeys([*job_ids, *plan.job_ids]))
        self.log.warning("The task was ended by a user: aborting jobs %s", ", ".join(job_ids))
        trigger = SalesforceBulkJobTrigger(self.conn_id, job_ids, poll_interval=float(self.poll_interval))

        async def abort() -> None:
            session = SalesforceSession(
                settings.auth, api_version=settings.api_version, token_cache=TokenCache()
            )
            async with session:
                await trigger._abort(BulkIngestClient(session), job_ids, {})

        try:
            asyncio.run(abort())
        except Exception as exc:
            self.log.warning("Could not abort the jobs: %s: %s", type(exc).__name__, exc)

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
        copied. The keyword arguments are the ones given to ``defer()``; the event echoes them.
        """
        checked = validate_event(event)
        self._ti = context.get("ti") or getattr(self, "_ti", None)
        status, jobs, history = checked["status"], checked["jobs"], checked["history"]
        # The defer() kwargs are a fallback only: the event echoes the state.
        state = _RoundState.load(
            checked["resubmit"] or (check_resubmit_state(resubmit) if resubmit else None)
        )
        instance_url = checked["instance_url"] or instance_url
        counts: dict[str, int] = dict(record_counts or {})
        counts.update(checked["record_counts"])
        if checked["credentials_refused"]:
            # No result file can be read without credentials: the jobs as last seen, then no retry.
            message = f"{checked['message']}; not retried, since retrying a wrong password locks the user"
            summary = unfinished_summary(
                self.operation,
                self.object_name,
                jobs,
                {j: n for j, n in counts.items() if j not in {old["id"] for old in history}},
                None,
                instance_url,
                message,
            )
            if context.get("ti") is not None:
                context["ti"].xcom_push(key="return_value", value=summary)
            raise AirflowFailException(
                f"{message}: fix the connection, then clear the task (it reattaches to the jobs)"
            )
        self._instance_url = instance_url
        hook = SalesforceBulkHook(salesforce_bulk_conn_id=self.conn_id)
        # Every job that may hold processed records: the current ones that ended, and earlier tries'
        # jobs whose unprocessed records were resent. Replaced jobs never processed anything.
        to_copy = {j: job for j, job in jobs.items() if job["state"] in TERMINAL_STATES}
        for old in history:
            if old["outcome"] == RESENT:
                to_copy[old["id"]] = old["info"]
        directory = self._results_dir(context)
        if state.round > 1:
            directory = directory / f"round-{state.round}"
        entries: dict[str, dict[str, Any]] = {}
        by_code: collections.Counter[str] = collections.Counter()
        samples: dict[str, str] = {}
        copied: dict[str, Any] = {}
        if to_copy:
            settings = hook.get_settings()
            try:
                with fail_on_refused_credentials():
                    copied = run_sync(lambda: self._copy(hook, settings, to_copy, directory))
            except RequestLimitExceededError as exc:
                raise AirflowException(
                    f"Reading the results of the jobs met REQUEST_LIMIT_EXCEEDED: the org's "
                    f"{limit_named(exc)} allowance is spent ({exc}); the jobs ended, a retry once it "
                    "refilled reattaches to them and reads their results"
                ) from None
            for uris_rows_codes_samples in copied.values():
                by_code.update(uris_rows_codes_samples[2])
                for code, sample in uris_rows_codes_samples[3].items():
                    samples.setdefault(code, sample)
        for old in history:
            uris, rows = copied[old["id"]][:2] if old["id"] in copied else ({}, {})
            entries[old["id"]] = job_entry(old["info"], old["count"], uris, rows, old["outcome"], old["next"])
        for job_id, job in jobs.items():
            uris, rows = copied[job_id][:2] if job_id in copied else ({}, {})
            entries[job_id] = job_entry(job, counts.get(job_id), uris, rows)
        # The input: the records of each chunk's first job (no other job's successor); every
        # later job of a chunk holds records counted there already.
        successors = {old["next"] for old in history if old["next"]}
        input_records: int | None = None
        if all(j in counts for j in jobs):
            input_records = sum(int(old["count"]) for old in history if old["id"] not in successors)
            input_records += sum(counts[j] for j in jobs if j not in successors)
        if state.round > 1:
            input_records = state.input_records
        for job_id in to_copy:
            entry = entries[job_id]
            info = JobInfo(
                id=job_id, number_records_processed=entry["processed"], number_records_failed=entry["failed"]
            )
            state.ledger.add_job(info, state.round, int(entry["records"]))
        for entry in entries.values():
            entry["round"] = state.round
        by_code.update(state.by_code)
        for code, sample in state.samples.items():
            samples.setdefault(code, sample)
        policy = self._policy()
        retry_from = [
            job_id
            for job_id in to_copy
            if job_id in copied and any(copied[job_id][2].get(code) for code in policy.codes)
        ]
        if status == "success" and retry_from and policy.may_follow(state.round):
            for job_id in retry_from:
                for code in policy.codes:
                    by_code[code] -= copied[job_id][2].get(code, 0)
            state.entries.update(entries)
            state.by_code = {code: n for code, n in by_code.items() if n > 0}
            state.samples = {code: text for code, text in samples.items() if code in state.by_code}
            state.input_records = input_records
            return self._next_round(context, hook, state, policy, retry_from, instance_url or "")
        entries = {**state.entries, **entries}
        for job_id, entry in entries.items():
            resent = state.ledger.resubmitted.get(job_id, 0)
            if resent:
                # Counted where they ended, in a later round's job.
                entry["failed"] = max(0, entry["failed"] - resent)
                entry["resubmitted"] = resent
        by_code = collections.Counter({code: n for code, n in by_code.items() if n > 0})
        samples = {code: text for code, text in samples.items() if code in by_code}
        summary = summarize(
            self.operation,
            self.object_name,
            entries,
            by_code,
            str(self._results_dir(context)) if to_copy or state.entries else None,
            instance_url,
            input_records,
        )
        resubmitted = sum(state.ledger.resubmitted.values())
        if resubmitted:
            summary["totals"]["resubmitted"] = resubmitted
            summary["rounds"] = state.round
        if summary["results_path"] is not None:
            summary.update(self._final_failures(context, entries, state.ledger, policy))
        self._succeeded = int(summary["totals"]["succeeded"])
        self.log.info(
            "Summary: %s records, %s succeeded, %s failed, %s unprocessed in %s job(s); failed by code %s; "
            "results in %s",
            summary["totals"]["records"],
            summary["totals"]["succeeded"],
            summary["totals"]["failed"],
            summary["totals"]["unprocessed"],
            summary["totals"]["jobs"],
            summary["failed_by_error_code"],
            summary["results_path"],
        )
        # Pushed before any failure, so a failed task still reports what happened.
        if context.get("ti") is not None:
            context["ti"].xcom_push(key="return_value", value=summary)
        # Every job of the load was closed before this point, so no later try sends a chunk from the
        # input again (a retry reattaches; Aborted or Failed jobs resend Salesforce's unprocessed
        # records): the staged copy is of no more use, whether the failure policy passes or not.
        self._staging_area(context).remove_all()
        if status == "error":
            raise AirflowException(
                f"Waiting for the Salesforce jobs failed: {checked['message']}; "
                "a retry reattaches to the same jobs"
            )
        problem = failure_message(summary, samples, self.max_failed_records, self.max_failed_ratio)
        if status == "timeout":
            problem = f"{checked['message']}; " + (problem or "")
        if problem:
            raise AirflowException(problem)
        store = plan_store_for(context)
        if store is not None:
            # Kept, marked done: a try failed by Airflow after this success (a late stale report)
            # must not load again on its retry. A clear reloads only with ``reload_on_clear``.
            ti = context.get("ti")
            JobPlan.mark_done(store, getattr(ti, "try_number", None), summary)
        return summary

    def _final_failures(
        self,
        context: Any,
        entries: dict[str, dict[str, Any]],
        ledger: ResubmitLedger,
        policy: ResubmitPolicy,
    ) -> dict[str, Any]:
        """The summary's ``failed_results`` (the task's final failed-results file) and its row count."""
        files = {
            j: e["result_files"]["failed"] for j, e in entries.items() if e["result_files"].get("failed")
        }
        missing = [j for j, uri in files.items() if not _exists(uri)]
        if missing:
            # Earlier rounds ran on another worker and the results path is local to each worker.
            self.log.warning(
                "No final failed-results file: the failed results of job(s) %s are not readable here "
                "(results_path is not shared by the workers); each job's own files are named in the summary",
                ", ".join(missing),
            )
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
        if not isinstance(event, Mapping) or not isinstance(event.get("retry_from"), list):
            raise AirflowException(
                f"send_next_round needs the backoff trigger's event, got {type(event).__name__}"
            )
        state = _RoundState.load(check_resubmit_state(event.get("resubmit"), first_round=1))
        instance_url = event.get("instance_url")
        if not isinstance(instance_url, str):
            raise AirflowException("malformed backoff event: instance_url is not a string")
        hook = SalesforceBulkHook(salesforce_bulk_conn_id=self.conn_id)
        jobs = [check_job_id(job_id) for job_id in event["retry_from"]]
        return self._next_round(context, hook, state, self._policy(), jobs, instance_url, waited=True)

    def _next_round(
        self,
        context: Any,
        hook: SalesforceBulkHook,
        state: _RoundState,
        policy: ResubmitPolicy,
        retry_from: list[str],
        instance_url: str,
        *,
        waited: bool = False,
    ) -> Any:
        """Send the transient failures of ``retry_from`` to round ``state.round + 1``'s jobs and wait,
        after the backoff (unless ``waited``: resumed from the backoff trigger)."""
        number = state.round + 1
        delay = 0.0 if waited else policy.delay_before(number)
        self.log.info(
            "Records of %d job(s) failed with %s: round %d of %d in %.0fs",
            len(retry_from),
            "/".join(policy.codes),
            number,
            policy.max_rounds,
            delay,
        )
        if self.deferrable and delay >= _DEFER_BACKOFF_FROM:
            # The wait frees the worker slot; the round's state travels in the trigger's event, so any
            # worker can send the round after it.
            self.defer(
                trigger=ResubmitBackoffTrigger(time.time() + delay, state.dump(), retry_from, instance_url),
                method_name="send_next_round",
                timeout=datetime.timedelta(seconds=delay + _BACKOFF_BACKSTOP_SECONDS),
            )
        time.sleep(delay)
        check_stop(self._stop_event(), f"sending round {number}")
        plan: JobPlan | None = getattr(self, "_plan", None)
        store = plan.store if plan is not None else plan_store_for(context)
        rounds = RoundPlan(store)
        settings = hook.get_settings()

        async def send() -> dict[str, int]:
            async with hook.client(settings) as client:
                return await submit_round(
                    client,
                    rounds,
                    number,
                    retry_from,
                    policy,
                    state.ledger,
                    self._job_spec(),
                    self._chunk_limits(),
                    stop=self._stop_event(),
                )

        with fail_on_refused_credentials():
            counts = run_sync(send)
        state.round = number
        payload = state.dump()
        if not counts:
            self.log.info("Round %d found nothing to send again", number)
            return self.execute_complete(
                context, jobs_event("success", {}, instance_url=instance_url, resubmit=payload)
            )
        trigger = SalesforceBulkJobTrigger(
            conn_id=self.conn_id,
            job_ids=list(counts),
            deadline=time.time() + float(self.timeout),
            poll_interval=float(self.poll_interval),
            instance_url=instance_url,
            record_counts=counts,
            resubmit=payload,
            settings=settings,
        )
        self._active_job_ids = list(counts)
        event = defer_or_wait(
            self,
            trigger,
            timeout=float(self.timeout),
            poll_interval=float(self.poll_interval),
            kwargs={"record_counts": counts, "instance_url": instance_url, "resubmit": payload},
        )
        self._active_job_ids = []
        return self.execute_complete(context, event)

    async def _copy(
        self,
        hook: SalesforceBulkHook,
        settings: ConnectionSettings,
        jobs: dict[str, JobSummary],
        directory: Any,
    ) -> dict[str, Any]:
        out: dict[str, Any] = {}
        try_number = getattr(getattr(self, "_ti", None), "try_number", None)
        token = f"try{try_number or 0}-{secrets.token_hex(4)}"  # this try's partial files
        async with hook.client(settings) as client:
            for job_id, job in jobs.items():
                out[job_id] = await copy_job_results(
                    client, job_id, directory, job["columnDelimiter"], stop=self._stop_event(), token=token
                )
        return out

    def _results_dir(self, context: Any) -> Any:
        from airflow.providers.common.compat.sdk import ObjectStoragePath

        if self.results_path:
            path = self.results_path
            return path if isinstance(path, ObjectStoragePath) else ObjectStoragePath(str(path))
        home = os.environ.get("AIRFLOW_HOME") or os.path.expanduser("~/airflow")
        ti = context["ti"]
        parts = [DEFAULT_RESULTS_FOLDER, ti.dag_id, ti.run_id, ti.task_id]
        if getattr(ti, "map_index", -1) not in (None, -1):
            parts.append(str(ti.map_index))
        local = os.path.join(home, *(_UNSAFE.sub("_", part) for part in parts))
        if not getattr(self, "_warned_local", False):
            self._warned_local = True
            warn_if_worker_local("results_path", local, self.log.warning)
        return ObjectStoragePath(f"file://{os.path.abspath(local)}")

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
        host = urllib.parse.urlsplit(self._instance_url or "").netloc or "unknown"
        inputs = []
        if self.source is not None:
            namespace, name = path_dataset(self.source)
            inputs.append(ol.dataset(namespace=namespace, name=name))
        facets = {}
        if self._succeeded is not None:
            facets["outputStatistics"] = ol.output_statistics(rowCount=self._succeeded)
        outputs = [
            ol.output_dataset(namespace=f"salesforce://{host}", name=self.object_name, outputFacets=facets)
        ]
        return ol.operator_lineage(inputs=inputs, outputs=outputs)


def _exists(uri: str) -> bool:
    from airflow.providers.common.compat.sdk import ObjectStoragePath

    try:
        return bool(ObjectStoragePath(uri).exists())
    except OSError:
        return False


def _is_arrow_object(value: Any) -> bool:
    """A DataFrame or Arrow data: never turned into ``list(records)`` (that would give column names)."""
    if value is None or isinstance(value, (list, tuple, str, bytes, Mapping)):
        return False
    if columnar.is_arrow_data(value):
        return True
    kind = type(value)
    return kind.__module__.split(".")[0] == "pyarrow" and kind.__name__ in (
        "Table",
        "RecordBatch",
        "RecordBatchReader",
    )


class _RoundState:
    """What execute_complete carries from one resubmission round to the next (plain JSON)."""

    def __init__(self) -> None:
        self.round = 1
        self.ledger = ResubmitLedger()
        self.entries: dict[str, dict[str, Any]] = {}
        self.by_code: dict[str, int] = {}
        self.samples: dict[str, str] = {}
        self.input_records: int | None = None

    @classmethod
    def load(cls, checked: ResubmitState | None) -> _RoundState:
        """The state of round 2 or later from its checked event form; round 1 for ``None``."""
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

    def dump(self) -> ResubmitState:
        return {
            "round": self.round,
            "ledger": self.ledger.to_dict(),
            "entries": self.entries,
            "by_code": self.by_code,
            "samples": self.samples,
            "input_records": self.input_records,
        }
