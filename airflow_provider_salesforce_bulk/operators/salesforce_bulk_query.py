"""``SalesforceBulkQueryOperator``: extract records with a Bulk API 2.0 query job to CSV or Parquet files."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import functools
import hashlib
import threading
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from airflow.providers.common.compat.sdk import AirflowException, AirflowFailException, BaseOperator, conf

from airflow_provider_salesforce_bulk.client import (
    BulkIngestClient,
    BulkQueryClient,
    InputError,
    JobInfo,
    NotFoundError,
    QueryError,
    RequestLimitExceededError,
    SalesforceBulkError,
    SalesforceSession,
    TokenCache,
    UnexpectedResponseError,
)
from airflow_provider_salesforce_bulk.client.describe import DescribeCache, describe_columns
from airflow_provider_salesforce_bulk.client.models import FAILED_STATES
from airflow_provider_salesforce_bulk.client.query import check_max_records, check_query_options
from airflow_provider_salesforce_bulk.client.query_pages import PageSummary, ResultPage
from airflow_provider_salesforce_bulk.client.query_parquet import (
    arrow_schema,
    copy_results_to_parquet,
    require_parquet,
)
from airflow_provider_salesforce_bulk.hooks.connection import ConnectionConfigError, ConnectionSettings
from airflow_provider_salesforce_bulk.hooks.salesforce_bulk import (
    SalesforceBulkHook,
    resolve_conn_id,
    run_sync,
)
from airflow_provider_salesforce_bulk.operators.deferral import defer_or_wait
from airflow_provider_salesforce_bulk.operators.extract_output import (
    MANIFEST_NAME,
    Staging,
    check_output_dir,
    manifest,
    published_manifest,
)
from airflow_provider_salesforce_bulk.operators.lineage import lineage_classes, path_dataset
from airflow_provider_salesforce_bulk.operators.links import LINK_XCOM_KEY, SalesforceBulkJobLink, job_url
from airflow_provider_salesforce_bulk.operators.plan_store import PlanStore, plan_store_for
from airflow_provider_salesforce_bulk.operators.query_output import (
    OUTPUT_FORMATS,
    OffLoopSinks,
    display_path,
    part_name,
    resolve_output_dir,
)
from airflow_provider_salesforce_bulk.operators.refusals import fail_on_refused_credentials
from airflow_provider_salesforce_bulk.operators.soql_filter import (
    add_condition,
    check_incremental_soql,
    select_columns,
)
from airflow_provider_salesforce_bulk.operators.task_start import start_task
from airflow_provider_salesforce_bulk.operators.watermark import (
    Watermark,
    incremental_condition,
    parse_datetime,
    scan_marks,
    upper_bound,
    watermark_store_for,
)
from airflow_provider_salesforce_bulk.operators.worker_local import warn_if_worker_local
from airflow_provider_salesforce_bulk.triggers.events import (
    JobsEvent,
    JobSummary,
    check_job_id,
    job_summary,
    jobs_event,
    validate_event,
)
from airflow_provider_salesforce_bulk.triggers.salesforce_bulk import (
    SalesforceBulkJobTrigger,
    check_positive_number,
)
from airflow_provider_salesforce_bulk.triggers.task_state import try_is_over

__all__ = ["QUERY_STATE_KEY", "SalesforceBulkQueryOperator"]

QUERY_STATE_KEY = "salesforce_bulk_query"
"""The plan store key holding the task's query job (next to the ingest operator's own key)."""


def _fingerprint(operation: str, soql: str) -> str:
    # The plan keeps a digest, not the SOQL: a long query would bloat a Variable for nothing.
    return hashlib.sha256(f"{operation}\n{soql}".encode()).hexdigest()


class SalesforceBulkQueryOperator(BaseOperator):
    """Extract records with a Salesforce Bulk API 2.0 query job into CSV or typed Parquet files.

    Parameters
    ----------
    soql : str
        The query (templated), e.g. ``SELECT Id, Name, SystemModstamp FROM Account``.
    incremental_field : str, optional
        A datetime field (``SystemModstamp``): each run extracts only the records whose field is past
        the task's mark, kept across DAG runs (see Notes). The query must select ``Id`` and this field,
        and have no LIMIT, OFFSET, GROUP BY or HAVING.
    initial_watermark : datetime or str, optional
        With ``incremental_field``: the first run extracts from here (default: everything).
    watermark_overlap : timedelta
        With ``incremental_field``: how far before the mark each run looks again, for records
        committed late with an earlier value (default 5 minutes); records the last run already
        wrote are not written again.
    include_deleted : bool
        Run ``queryAll``: deleted (and archived) records too (select ``IsDeleted`` to tell them).
    output_path : str or ObjectStoragePath, optional
        The folder of the files (templated; any ObjectStoragePath, e.g. ``s3://bucket/prefix``).
        Default: ``$AIRFLOW_HOME/salesforce_bulk_extracts/<dag>/<run>/<task>``, local to the worker.
    output_format : {"csv", "parquet"}
        ``csv``: the pages as Salesforce sends them (header in every file); ``parquet``: typed
        columns from the object's describe (needs pyarrow).
    records_per_file : int, optional
        At most this many records per file (one file per result page); default: Salesforce's pages.
    timeout : float or timedelta
        Deadline for the query job to finish after it is submitted; it is aborted when it passes.
    poll_interval : float
        Longest wait between two polls of the job, in seconds.
    salesforce_bulk_conn_id : str
        A ``salesforce_bulk`` (or ``salesforce``) connection, as the hook names it. ``conn_id``, the name
        of the first releases, is still accepted; default ``salesforce_bulk_default``.
    deferrable : bool
        Wait in the triggerer (default from ``[operators] default_deferrable``); otherwise poll in the worker.

    Notes
    -----
    Output is atomic: pages are written under ``<output_path>/_staging/``, every page's records are
    counted and checked (a page that fails is read again once, then the task fails), and only then
    are the parts published under their ``part-NNNNN`` names, followed by ``_manifest.json`` and an
    empty ``_SUCCESS`` written last. A folder without ``_SUCCESS`` is not a complete extract.

    With ``incremental_field`` the task's mark lives in an Airflow Variable
    (``salesforce_bulk_watermark.<dag>.<task>.<digest>``) and moves only when a run's output is
    published; a run that fails leaves it, so the next run extracts from the same point. Any run
    (scheduled, manual, back-dated, cleared, backfilled) extracts what changed since the last
    published run of the task, whatever its logical date; ``max_active_tis_per_dag`` defaults to 1
    so two runs never read the same mark.

    The job id is stored in the task's plan store (``task_state_store`` on Airflow 3.3+, a Variable
    before) before the task defers, so a retry reattaches to the same query job instead of running
    the query again; a stored job that ended Failed or Aborted, or a changed SOQL, runs a new one
    (a query changes nothing in Salesforce). Files are named ``part-00000.csv``... by page. The
    return value (XCom) is a summary: job id, state, records, files with their record counts and
    bytes, the manifest, the watermark before and after, seconds. A Failed or Aborted job fails the
    task after the summary is pushed. The job is aborted only on a user's decision: the
    ``timeout``, or a kill after which Airflow says the try is over.
    """

    template_fields: Sequence[str] = ("soql", "output_path", "conn_id")
    template_fields_renderers: ClassVar[dict[str, str]] = {"soql": "sql"}
    operator_extra_links = (SalesforceBulkJobLink(),)
    ui_color = "#c3e8f9"

    def __init__(
        self,
        *,
        soql: str,
        incremental_field: str | None = None,
        initial_watermark: datetime.datetime | str | None = None,
        watermark_overlap: datetime.timedelta = datetime.timedelta(minutes=5),
        include_deleted: bool = False,
        output_path: Any = None,
        output_format: str = "csv",
        records_per_file: int | None = None,
        timeout: float | datetime.timedelta = datetime.timedelta(hours=24),
        poll_interval: float = 5.0,
        salesforce_bulk_conn_id: str | None = None,
        conn_id: str | None = None,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        **kwargs: Any,
    ) -> None:
        if incremental_field is not None:
            # Two runs of the task at once would read the same mark and extract the same records.
            kwargs.setdefault("max_active_tis_per_dag", 1)
        super().__init__(**kwargs)
        self.soql = soql
        self.incremental_field = incremental_field
        self.initial_watermark = initial_watermark
        self.watermark_overlap = watermark_overlap
        self.include_deleted = include_deleted
        self.output_path = output_path
        self.output_format = output_format
        self.records_per_file = records_per_file
        # Checked when the task runs (an AirflowFailException there), not when the DAG file is parsed.
        self.timeout: Any = timeout.total_seconds() if isinstance(timeout, datetime.timedelta) else timeout
        self.poll_interval = poll_interval
        self.conn_id = resolve_conn_id(salesforce_bulk_conn_id, conn_id)
        self.deferrable = deferrable
        self._instance_url: str | None = None
        self._object_name: str | None = None
        self._files: list[tuple[str, int, int]] = []
        self._active_job_id: str | None = None

    @property
    def operation(self) -> str:
        return "queryAll" if self.include_deleted else "query"

    # -- validation -----------------------------------------------------------------------------

    def _check_settings(self) -> None:
        if not isinstance(self.include_deleted, bool):
            raise InputError("include_deleted must be True or False", field="include_deleted")
        check_query_options(self.soql, self.operation, "COMMA", "LF")
        if self.output_format not in OUTPUT_FORMATS:
            raise InputError(
                f"output_format must be one of {', '.join(OUTPUT_FORMATS)}, not {self.output_format!r}",
                field="output_format",
            )
        try:
            check_max_records(self.records_per_file)
        except InputError as exc:
            raise InputError(
                str(exc).replace("max_records", "records_per_file"), field="records_per_file"
            ) from None
        for name in ("poll_interval", "timeout"):
            try:
                check_positive_number(name, getattr(self, name))
            except ValueError as exc:
                raise InputError(str(exc), field=name) from None
        if self.output_format == "parquet":
            require_parquet()  # before any job: a missing pyarrow is the DAG's problem, not the org's
        if self.incremental_field is not None:
            check_incremental_soql(self.soql, self.incremental_field)
            overlap = self.watermark_overlap
            if not isinstance(overlap, datetime.timedelta) or overlap < datetime.timedelta(0):
                raise InputError(
                    f"watermark_overlap must be a timedelta >= 0, got {overlap!r}", field="watermark_overlap"
                )
            if self.initial_watermark is not None:
                try:
                    parse_datetime(self.initial_watermark, what="initial_watermark")
                except UnexpectedResponseError as exc:
                    raise InputError(str(exc), field="initial_watermark") from None
        elif self.initial_watermark is not None:
            raise InputError("initial_watermark needs incremental_field", field="initial_watermark")

    def _incremental(self, context: Any, plan: Any) -> tuple[str, Watermark | None, str | None]:
        """The query to run (the SOQL with the incremental filter), the mark it starts from, and the
        upper bound it reads to (the earlier try's, in ``plan``, when it started from the same mark:
        the retry then runs the same query and reattaches to its job)."""
        field = self.incremental_field
        if field is None:
            return self.soql, None, None
        store = watermark_store_for(context)
        raw = store.get()
        before = Watermark.from_json(raw)
        if raw is not None and before is None:
            raise AirflowFailException(
                f"The stored watermark of this task is unreadable ({raw!r:.200}): delete the Variable "
                f"{store.variable_key()} to extract everything again"
            )
        if before is not None and before.field != field:
            self.log.warning(
                "The stored mark is for %s, not %s: extracting from initial_watermark", before.field, field
            )
            before = None
        window = self._published_window(context, field)
        if window is not None:
            return window
        self._rerun_window = False
        mark = before.mark.isoformat() if before is not None else None
        upper = None
        if isinstance(plan, Mapping) and plan.get("mark_before", "") == mark:
            upper = plan.get("upper")
        upper_at = parse_datetime(upper) if isinstance(upper, str) else upper_bound()
        initial = None if self.initial_watermark is None else parse_datetime(self.initial_watermark)
        condition = incremental_condition(field, before, initial, self.watermark_overlap, upper_at)
        return add_condition(self.soql, condition), before, upper_at.isoformat()

    def _task_identity(self, context: Any) -> dict[str, Any]:
        ti = context.get("ti")
        map_index = getattr(ti, "map_index", -1)
        return {
            "dag_id": getattr(ti, "dag_id", None),
            "task_id": getattr(ti, "task_id", None),
            "map_index": -1 if map_index is None else map_index,
        }

    def _published_window(self, context: Any, field: str) -> tuple[str, Watermark | None, str] | None:
        """When ``output_path`` already holds a complete incremental extract of this task (a cleared
        run, a retry after publishing, or a second run sharing a ``{{ ds }}`` folder), the query that
        reads that same window again: publishing another window there would drop its records from
        the lake. The mark is then left alone."""
        directory = resolve_output_dir(self.output_path, context.get("ti"))
        published = published_manifest(directory)
        marks = published.get("watermark") if published is not None else None
        if not isinstance(marks, Mapping) or published is None:
            return None
        if published.get("task") != self._task_identity(context) or marks.get("field") != field:
            return None
        try:
            upper_at = parse_datetime(marks.get("after"))
            initial = None if marks.get("initial") is None else parse_datetime(marks["initial"])
        except UnexpectedResponseError:
            return None
        before = None
        if marks.get("before") is not None:
            before = Watermark.from_json(
                {"field": field, "mark": marks["before"], "boundary": marks.get("before_boundary") or []}
            )
        self._rerun_window = True
        self.log.info(
            "%s already holds this task's extract of %s from %s to %s: reading that window again "
            "(the mark stays)",
            display_path(directory),
            field,
            marks.get("before"),
            marks.get("after"),
        )
        condition = incremental_condition(field, before, initial, self.watermark_overlap, upper_at)
        return add_condition(self.soql, condition), before, upper_at.isoformat()

    # -- execution --------------------------------------------------------------------------------

    def execute(self, context: Any) -> Any:
        hook = SalesforceBulkHook(salesforce_bulk_conn_id=self.conn_id)
        _, settings, store = start_task(
            context,
            hook,
            self._check_settings,
            warn=self.log.warning,
            without_store="No plan store (no task instance): a retry cannot reattach to the query job",
        )
        self._ti = context.get("ti")
        self._settings = settings
        self._store = store
        if not self.output_path:
            warn_if_worker_local("output_path", "a folder under $AIRFLOW_HOME", self.log.warning)
        try:
            check_output_dir(
                lambda: resolve_output_dir(self.output_path, context.get("ti")), str(self.output_path or "")
            )
        except InputError as exc:
            raise AirflowFailException(f"{type(exc).__name__}: {exc}") from None
        query, before, upper = self._incremental(context, store.get(QUERY_STATE_KEY) if store else None)
        if self.incremental_field is not None:
            mark = before.mark.isoformat() if before is not None else None
            self.log.info(
                "Incremental extract on %s from mark %s to %s: %s", self.incremental_field, mark, upper, query
            )
        fingerprint = _fingerprint(self.operation, query)
        earlier = self._earlier_job_id(store, fingerprint)
        try:
            with fail_on_refused_credentials():
                job, instance_url, reattached = run_sync(lambda: self._start(hook, settings, earlier, query))
        except (QueryError, InputError) as exc:
            raise AirflowFailException(f"Salesforce refused the query: {exc}") from None
        except RequestLimitExceededError as exc:
            # Not the query's fault: the org's allowance (DailyBulkV2QueryJobs for a daily limit) frees
            # up with time, so the task fails for this try only and Airflow may retry it.
            raise AirflowException(
                f"Salesforce refused the query job because an org limit is reached: {exc}. "
                "Bulk API 2.0 allows a fixed number of query jobs per 24 hours (DailyBulkV2QueryJobs in "
                "/limits); a retry after the allowance frees up runs the query"
            ) from None
        check_job_id(job.id)
        submitted_at = time.time()
        if reattached and store is not None:
            submitted_at = float((store.get(QUERY_STATE_KEY) or {}).get("submitted_at") or submitted_at)
            self.log.info("Reattached to query job %s of an earlier try (%s)", job.id, job.state)
        else:
            self.log.info("Submitted query job %s (%s)", job.id, self.operation)
        if store is not None:
            # Before deferring: a retry of this try finds the job here and reattaches to it.
            plan = {
                "job_id": job.id,
                "query": fingerprint,
                "instance_url": instance_url,
                "submitted_at": submitted_at,
            }
            if upper is not None:
                plan["upper"] = upper
                plan["mark_before"] = before.mark.isoformat() if before is not None else None
            store.set(QUERY_STATE_KEY, plan)
        if context.get("ti") is not None:
            context["ti"].xcom_push(key=LINK_XCOM_KEY, value=job_url(instance_url, [job.id]))
        kwargs: dict[str, Any] = {"instance_url": instance_url, "submitted_at": submitted_at}
        if job.is_terminal:
            # Deferring now would fire the trigger within a second: Airflow's stale-report race.
            event = jobs_event("success", {job.id: job_summary(job)}, instance_url=instance_url)
            return self.execute_complete(context, event, **kwargs)
        trigger = SalesforceBulkJobTrigger(
            conn_id=self.conn_id,
            job_ids=[job.id],
            deadline=time.time() + float(self.timeout),
            poll_interval=float(self.poll_interval),
            instance_url=instance_url,
            job_kind="query",
            settings=settings,
        )
        self._active_job_id = job.id
        event = defer_or_wait(
            self,
            trigger,
            timeout=float(self.timeout),
            poll_interval=float(self.poll_interval),
            kwargs=kwargs,
        )
        self._active_job_id = None
        return self.execute_complete(context, event, **kwargs)

    def _earlier_job_id(self, store: PlanStore | None, fingerprint: str) -> str | None:
        """The query job of an earlier try of this task, if it ran the same query."""
        plan = store.get(QUERY_STATE_KEY) if store is not None else None
        if not isinstance(plan, Mapping):
            return None
        job_id = plan.get("job_id")
        try:
            check_job_id(job_id)
        except AirflowFailException:
            self.log.warning("Ignoring a stored query plan without a valid job id: %.100r", job_id)
            return None
        if plan.get("query") != fingerprint:
            self.log.info("The SOQL changed since query job %s was submitted: running the new query", job_id)
            return None
        return str(job_id)

    async def _start(
        self, hook: SalesforceBulkHook, settings: ConnectionSettings, earlier: str | None, query: str
    ) -> tuple[JobInfo, str, bool]:
        """The earlier try's job if it may still give results, else a new query job."""
        async with hook.client(settings) as ingest:
            client = BulkQueryClient(ingest.session)
            instance_url = await ingest.session.instance_url()
            if earlier is not None:
                try:
                    job = await client.get_job(earlier)
                except NotFoundError:
                    self.log.info("Query job %s of an earlier try is gone: running the query again", earlier)
                else:
                    if job.state not in FAILED_STATES:
                        return job, instance_url, True
                    self.log.info(
                        "Query job %s of an earlier try ended %s (%s): running the query again",
                        earlier,
                        job.state,
                        job.error_message or "no error message",
                    )
            job = await client.create_job(query, operation="queryAll" if self.include_deleted else "query")
            return job, instance_url, False

    def execute_complete(
        self,
        context: Any,
        event: Mapping[str, Any] | None = None,
        instance_url: str | None = None,
        submitted_at: float | None = None,
    ) -> Any:
        """Write the files of a JobComplete job, push the summary, then fail if the job did not complete.

        ``event`` is checked first: none, a malformed one, or one without exactly one query job is an
        ``AirflowException`` naming what is wrong, before any file is written.
        """
        checked, job = _query_job(event)
        status = checked["status"]
        self._instance_url = checked["instance_url"] or instance_url
        self._object_name = job["object"]
        job_id = job["id"]
        store = plan_store_for(context)
        if submitted_at is None and store is not None:
            submitted_at = (store.get(QUERY_STATE_KEY) or {}).get("submitted_at")
        summary: dict[str, Any] = {
            "job_id": job_id,
            "operation": job["operation"],
            "object": self._object_name,
            "state": job["state"],
            "records": job["numberRecordsProcessed"],
            "output_format": self.output_format,
            "output_path": None,
            "files": [],
            "seconds": None,
            "error_message": job["errorMessage"],
            "instance_url": self._instance_url,
            "manifest": None,
            "watermark": None,
        }
        if checked["credentials_refused"]:
            if context.get("ti") is not None:
                context["ti"].xcom_push(key="return_value", value=summary)
            raise AirflowFailException(
                f"Waiting for query job {job_id} failed: {checked['message']}; not retried, since "
                "retrying a wrong password locks the user: fix the connection, then clear the task"
            )
        if status == "error":
            raise AirflowException(
                f"Waiting for query job {job_id} failed: {checked['message']}; a retry reattaches to it"
            )
        if status == "success" and job["state"] == "JobComplete":
            self._extract(context, job_id, summary)
        if submitted_at is not None:
            summary["seconds"] = round(max(time.time() - float(submitted_at), 0.0), 3)
        self.log.info(
            "Summary: query job %s %s, %d records in %d file(s) under %s",
            job_id,
            summary["state"],
            summary["records"],
            len(summary["files"]),
            summary["output_path"],
        )
        # Pushed before any failure, so a failed task still reports what happened.
        if context.get("ti") is not None:
            context["ti"].xcom_push(key="return_value", value=summary)
        if status == "timeout":
            raise AirflowException(f"{checked['message']} (query job {job_id})")
        if job["state"] != "JobComplete":
            message = job["errorMessage"] or "no error message"
            raise AirflowException(f"Query job {job_id} ended {job['state']}: {message}")
        if store is not None:
            # Done: a deliberate re-run (clear) of this task runs the query again instead of reattaching.
            store.delete(QUERY_STATE_KEY)
        return summary

    def _extract(self, context: Any, job_id: str, summary: dict[str, Any]) -> None:
        """Stage every page, verified; read the next mark; publish; then advance the mark."""
        directory = resolve_output_dir(self.output_path, context.get("ti"))
        summary["output_path"] = display_path(directory)
        store = plan_store_for(context)
        query, before, upper = self._incremental(context, store.get(QUERY_STATE_KEY) if store else None)
        ti = context.get("ti")
        label = f"try{getattr(ti, 'try_number', 0)}"
        try:
            hook = SalesforceBulkHook(salesforce_bulk_conn_id=self.conn_id)
            settings = hook.get_settings()
            with fail_on_refused_credentials():
                staging, files = self._stage(hook, settings, job_id, directory, label)
        except ConnectionConfigError as exc:
            raise AirflowFailException(f"{type(exc).__name__}: {exc}") from None
        except (SalesforceBulkError, OSError) as exc:
            raise AirflowException(
                f"Writing the results of query job {job_id} failed: {type(exc).__name__}: {exc}; "
                "nothing was published, a retry reattaches to the job and writes them again"
            ) from None
        try:
            if sum(int(f["records"]) for f in files) == 0:
                files = self._empty_part(staging, files, query)
            watermark = self._next_mark(staging, files, before, query, upper)
            if self._stop_event().is_set():
                raise AirflowException(f"Stopped before publishing the results of query job {job_id}")
            body = manifest(
                files=files,
                job_id=job_id,
                soql=query,
                operation=self.operation,
                object_name=self._object_name,
                output_format=self.output_format,
                watermark=watermark,
                task=self._task_identity(context),
            )
            published = staging.publish([f["name"] for f in files], body)
        except BaseException:
            staging.discard()
            raise
        summary["files"] = [
            {"path": display_path(path), "records": f["records"], "bytes": f["bytes"]}
            for path, f in zip(published, files, strict=True)
        ]
        summary["manifest"] = display_path(directory / MANIFEST_NAME)
        summary["watermark"] = watermark
        self._files = [(str(f["path"]), int(f["records"]), int(f["bytes"])) for f in summary["files"]]
        if watermark is not None and getattr(self, "_rerun_window", False):
            watermark["mark_moved"] = False
        elif watermark is not None:
            # Only now: the run's output is published. A failure before leaves the mark where it was.
            after = {
                "field": watermark["field"],
                "mark": watermark["after"],
                "boundary": watermark["boundary"],
            }
            after["job_id"] = job_id
            after["run_id"] = getattr(ti, "run_id", None)
            watermark_store_for(context).set(after)
            watermark["mark_moved"] = True
        if watermark is not None:
            # The summary (XCom) counts the overlap's Ids rather than listing them.
            watermark["boundary"] = len(watermark["boundary"])
            watermark["before_boundary"] = len(watermark["before_boundary"])

    def _empty_part(self, staging: Staging, files: list[dict[str, Any]], query: str) -> list[dict[str, Any]]:
        """An empty extract still publishes one part with the columns: Salesforce may answer an empty
        result with an empty body (no header), which leaves no file (Parquet) or an empty one (CSV)."""
        if any(int(f["bytes"]) > 0 for f in files):
            return files
        columns = select_columns(query)
        if columns is None:
            self.log.warning("The result is empty and its columns are unknown: the part has no header")
            return files
        name = part_name(0, self.output_format)
        with staging.part(name).open("wb") as file:
            if self.output_format == "csv":
                data = (",".join(f'"{c}"' for c in columns) + "\n").encode()
                file.write(data)
                size = len(data)
            else:
                size = run_sync(lambda: self._write_empty_parquet(file, columns))
        return [{"name": name, "records": 0, "bytes": size}]

    async def _write_empty_parquet(self, file: Any, columns: list[str]) -> int:
        hook = SalesforceBulkHook(salesforce_bulk_conn_id=self.conn_id)
        async with hook.client(hook.get_settings()) as ingest:
            fields = await describe_columns(DescribeCache(ingest.session), self._object_name or "", columns)
        schema = arrow_schema(columns, fields)
        pyarrow = require_parquet()
        sink = pyarrow.BufferOutputStream()
        pyarrow.parquet.write_table(schema.empty_table(), sink)
        data = sink.getvalue().to_pybytes()
        file.write(data)
        return len(data)

    def _next_mark(
        self,
        staging: Staging,
        files: list[dict[str, Any]],
        before: Watermark | None,
        query: str,
        upper: str | None,
    ) -> dict[str, Any] | None:
        field = self.incremental_field
        if field is None or upper is None:
            return None
        paths = [staging.part(f["name"]) for f in files]
        after, dropped = scan_marks(
            paths, self.output_format, field, self.watermark_overlap, before, parse_datetime(upper)
        )
        if dropped:
            self.log.warning(
                "%d records share the overlap of the new mark beyond the %d Ids kept: the next run may "
                "write them again",
                dropped,
                len(after.boundary),
            )
        result = {
            "field": field,
            "before": before.mark.isoformat() if before is not None else None,
            "after": after.mark.isoformat(),
            "overlap_seconds": self.watermark_overlap.total_seconds(),
            "boundary": [list(b) for b in after.boundary],
            "before_boundary": [list(b) for b in before.boundary] if before is not None else [],
            "initial": None
            if self.initial_watermark is None
            else parse_datetime(self.initial_watermark).isoformat(),
            "query": query,
        }
        self.log.info("Watermark of %s: %s -> %s", field, result["before"], result["after"])
        return result

    def _stage(
        self, hook: SalesforceBulkHook, settings: ConnectionSettings, job_id: str, directory: Any, label: str
    ) -> tuple[Staging, list[dict[str, Any]]]:
        """Every page into a staging folder of this try, verified; read again once if a check fails."""
        for attempt in (1, 2):
            staging = Staging(directory, label)
            try:
                staging.folder.mkdir(parents=True, exist_ok=True)
                files = run_sync(functools.partial(self._write, hook, settings, job_id, staging))
            except UnexpectedResponseError as exc:
                staging.discard()
                if attempt == 2:
                    raise UnexpectedResponseError(
                        f"the results of query job {job_id} failed their checks twice: {exc}"
                    ) from None
                self.log.warning(
                    "The results of query job %s failed a check (%s): reading them again", job_id, exc
                )
                continue
            except BaseException:
                staging.discard()
                raise
            return staging, files
        raise AssertionError("unreachable")  # pragma: no cover

    async def _write(
        self, hook: SalesforceBulkHook, settings: ConnectionSettings, job_id: str, staging: Staging
    ) -> list[dict[str, Any]]:
        paths: dict[int, Any] = {}
        off_loop = OffLoopSinks()

        def sink(page: ResultPage) -> Any:
            if self._stop_event().is_set():
                raise AirflowException(f"Stopped at page {page.number} of query job {job_id}")
            path = staging.part(part_name(page.number, self.output_format))
            paths[page.number] = path
            if self.output_format == "parquet":
                return off_loop.open(path)
            return path.open("wb")  # CSV sinks are opened, written and closed in a thread already

        async with hook.client(settings) as ingest:
            client = BulkQueryClient(ingest.session)
            job = await client.finished_job(job_id)
            pages: list[PageSummary]
            if self.output_format == "parquet":
                try:
                    pages = await copy_results_to_parquet(
                        client, job, sink, max_records=self.records_per_file
                    )
                except BaseException:
                    with contextlib.suppress(Exception):
                        await off_loop.wait()
                    raise
                await off_loop.wait()
            else:
                pages = await client.copy_results_to(
                    job, sink, max_records=self.records_per_file, write_in_thread=True
                )
        if self._stop_event().is_set():
            raise AirflowException(f"Stopped after the last page of query job {job_id}")
        return [
            {"name": paths[p.number].name, "records": p.records, "bytes": p.bytes}
            for p in pages
            if p.number in paths  # an empty Parquet page writes no file
        ]

    def on_kill(self) -> None:
        """Stop writing at the next page (``self._stop``); abort the query job only if a user ended
        this try (an ended state while the plan store still names this try).

        A worker shut down or evicted also lands here: the task is still running then, and the job
        goes on; a retry reattaches to it. So does a try that froze past the heartbeat timeout and
        woke up after its retry started: the store names the newer try, and nothing is aborted.
        The abort runs in a thread of its own with its own session (Airflow calls this from a
        signal handler), and this returns at once so the task
        releases the locks the signal may have caught it holding (a log handler's, for one); the
        thread is not a daemon, and Airflow's SIGKILL, 5 s after the SIGTERM, bounds it.
        """
        self._stop_event().set()  # no page is written after this one
        job_id = self._active_job_id
        settings: ConnectionSettings | None = getattr(self, "_settings", None)
        if job_id is None or settings is None:
            return
        worker = threading.Thread(
            target=self._kill_job,
            args=(getattr(self, "_ti", None), getattr(self, "_store", None), settings, job_id),
            name="salesforce-bulk-query-on-kill",
            daemon=False,
        )
        worker.start()
        self._kill_thread = worker

    def _stop_event(self) -> threading.Event:
        """Set by ``on_kill`` to stop at the next page boundary: nothing more is written or published.
        Made on first use: an Event in ``__init__`` would break Airflow's deepcopy of the operator."""
        stop: threading.Event | None = getattr(self, "_stop", None)
        if stop is None:
            stop = self._stop = threading.Event()
        return stop

    def _kill_job(self, ti: Any, store: PlanStore | None, settings: ConnectionSettings, job_id: str) -> None:
        if try_is_over(ti, store) is not True:
            return
        self.log.warning("The task was ended by a user: aborting query job %s", job_id)
        trigger = SalesforceBulkJobTrigger(
            self.conn_id, [job_id], poll_interval=float(self.poll_interval), job_kind="query"
        )

        async def abort() -> None:
            session = SalesforceSession(
                settings.auth, api_version=settings.api_version, token_cache=TokenCache()
            )
            async with session:
                await trigger._abort(BulkIngestClient(session), [job_id], {})

        try:
            asyncio.run(abort())
        except Exception as exc:
            self.log.warning("Could not abort query job %s: %s: %s", job_id, type(exc).__name__, exc)

    # -- lineage ----------------------------------------------------------------------------------

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """Input: the Salesforce object (``salesforce://<instance host>``); outputs: the files written,
        each with an output statistics facet (its records and bytes).

        Returns ``None`` when the OpenLineage provider is not installed.
        """
        ol = lineage_classes()
        if ol is None:
            return None
        host = urllib.parse.urlsplit(self._instance_url or "").netloc or "unknown"
        inputs = [ol.dataset(namespace=f"salesforce://{host}", name=self._object_name or "unknown")]
        outputs = []
        for path, records, size in self._files:
            namespace, name = path_dataset(path)
            stats = ol.output_statistics(rowCount=records, size=size)
            outputs.append(
                ol.output_dataset(namespace=namespace, name=name, outputFacets={"outputStatistics": stats})
            )
        return ol.operator_lineage(inputs=inputs, outputs=outputs)


def _query_job(event: object) -> tuple[JobsEvent, JobSummary]:
    """The checked event and its one query job, or a clear error naming what is wrong with it."""
    checked = validate_event(event)
    jobs = checked["jobs"]
    if checked["status"] == "error" and not jobs:
        if checked["credentials_refused"]:
            raise AirflowFailException(
                f"Waiting for the query job failed: {checked['message']}; not retried, since retrying a "
                "wrong password locks the user: fix the connection, then clear the task"
            )
        raise AirflowException(
            f"Waiting for the query job failed: {checked['message']}; a retry reattaches to it"
        )
    if len(jobs) != 1:
        raise AirflowException(f"malformed trigger event: expected one query job, got {len(jobs)}")
    (job,) = jobs.values()
    return checked, job
