"""``SalesforceBulkQueryOperator``: extract records with a Bulk API 2.0 query job to CSV or Parquet files."""

from __future__ import annotations

import datetime
import time
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from airflow.providers.common.compat.sdk import AirflowException, AirflowFailException, conf

from airflow_provider_salesforce_bulk.client import (
    InputError,
    JobInfo,
    QueryError,
    RequestLimitExceededError,
    SalesforceBulkError,
)
from airflow_provider_salesforce_bulk.client.query import check_max_records, check_query_options
from airflow_provider_salesforce_bulk.client.query_arrow import require_parquet
from airflow_provider_salesforce_bulk.hooks.connection import ConnectionConfigError, ConnectionSettings
from airflow_provider_salesforce_bulk.hooks.salesforce_bulk import SalesforceBulkHook, run_sync
from airflow_provider_salesforce_bulk.operators.base import SalesforceBulkBaseOperator, one_loop
from airflow_provider_salesforce_bulk.operators.extract_output import (
    MANIFEST_NAME,
    check_output_dir,
    manifest,
    published_manifest,
)
from airflow_provider_salesforce_bulk.operators.lineage import extract_lineage
from airflow_provider_salesforce_bulk.operators.links import LINK_XCOM_KEY, SalesforceBulkJobLink, job_url
from airflow_provider_salesforce_bulk.operators.plan_store import PlanStore, plan_store_for
from airflow_provider_salesforce_bulk.operators.query_job import (
    QUERY_STATE_KEY,
    checked_query_job,
    earlier_job_id,
    fail_on_wait_error,
    fingerprint,
    first_summary,
    start_query_job,
)
from airflow_provider_salesforce_bulk.operators.query_output import (
    DEFAULT_EXTRACTS_FOLDER,
    OUTPUT_FORMATS,
    display_path,
)
from airflow_provider_salesforce_bulk.operators.query_pages import PageWriter
from airflow_provider_salesforce_bulk.operators.refusals import fail_on_refused_credentials
from airflow_provider_salesforce_bulk.operators.task_start import start_task
from airflow_provider_salesforce_bulk.operators.watermark import (
    Window,
    check_incremental_settings,
    fresh_window,
    move_mark,
    next_mark,
    parse_datetime,
    published_window,
    stored_mark,
    watermark_store_for,
)
from airflow_provider_salesforce_bulk.operators.worker_local import warn_if_worker_local
from airflow_provider_salesforce_bulk.triggers.events import (
    check_job_id,
    job_summary,
    jobs_event,
)

__all__ = ["QUERY_STATE_KEY", "SalesforceBulkQueryOperator"]


class SalesforceBulkQueryOperator(SalesforceBulkBaseOperator):
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

    job_kind = "query"

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
        super().__init__(
            poll_interval=poll_interval,
            timeout=timeout,
            salesforce_bulk_conn_id=salesforce_bulk_conn_id,
            conn_id=conn_id,
            deferrable=deferrable,
            **kwargs,
        )
        self.soql = soql
        self.incremental_field = incremental_field
        self.initial_watermark = initial_watermark
        self.watermark_overlap = watermark_overlap
        self.include_deleted = include_deleted
        self.output_path = output_path
        self.output_format = output_format
        self.records_per_file = records_per_file
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
        self._check_wait_settings()
        if self.output_format == "parquet":
            require_parquet()  # before any job: a missing pyarrow is the DAG's problem, not the org's
        if self.incremental_field is not None:
            check_incremental_settings(
                self.soql, self.incremental_field, self.watermark_overlap, self.initial_watermark
            )
        elif self.initial_watermark is not None:
            raise InputError("initial_watermark needs incremental_field", field="initial_watermark")

    # -- the window an incremental run reads ------------------------------------------------------

    def _initial(self) -> datetime.datetime | None:
        return None if self.initial_watermark is None else parse_datetime(self.initial_watermark)

    def _window(self, context: Any, plan: Any) -> Window:
        """The query to run (the SOQL with the incremental filter), the mark it starts from, and the
        upper bound it reads to (see :func:`~.watermark.fresh_window`)."""
        field = self.incremental_field
        if field is None:
            return Window(self.soql, None, None)
        before = stored_mark(watermark_store_for(context), field, self.log.warning)
        directory = self._directory(context)
        task = self._task_identity(context)
        window = published_window(
            self.soql, field, self.watermark_overlap, published_manifest(directory), task
        )
        if window is not None:
            self.log.info(
                "%s already holds this task's extract of %s from %s to %s: reading that window again "
                "(the mark stays)",
                display_path(directory),
                field,
                window.before.mark.isoformat() if window.before is not None else None,
                window.upper,
            )
            return window
        return fresh_window(self.soql, field, before, self._initial(), self.watermark_overlap, plan)

    def _task_identity(self, context: Any) -> dict[str, Any]:
        ti = context.get("ti")
        map_index = getattr(ti, "map_index", -1)
        return {
            "dag_id": getattr(ti, "dag_id", None),
            "task_id": getattr(ti, "task_id", None),
            "map_index": -1 if map_index is None else map_index,
        }

    def _directory(self, context: Any) -> Any:
        return self._output_folder(self.output_path, context, DEFAULT_EXTRACTS_FOLDER)

    # -- execution --------------------------------------------------------------------------------

    @one_loop
    def execute(self, context: Any) -> Any:
        hook = self._hook()
        settings, store = self._start_try(context, hook)
        window = self._window(context, store.get(QUERY_STATE_KEY) if store else None)
        if self.incremental_field is not None:
            mark = window.before.mark.isoformat() if window.before is not None else None
            self.log.info(
                "Incremental extract on %s from mark %s to %s: %s",
                self.incremental_field,
                mark,
                window.upper,
                window.query,
            )
        job, instance_url, submitted_at = self._submit(hook, settings, store, window)
        if context.get("ti") is not None:
            context["ti"].xcom_push(key=LINK_XCOM_KEY, value=job_url(instance_url, [job.id]))
        kwargs: dict[str, Any] = {"instance_url": instance_url, "submitted_at": submitted_at}
        if job.is_terminal:
            # Deferring now would fire the trigger within a second: Airflow's stale-report race.
            event = jobs_event("success", {job.id: job_summary(job)}, instance_url=instance_url)
            return self.execute_complete(context, event, **kwargs)
        trigger = self._trigger([job.id], instance_url=instance_url, settings=settings)
        self._active_job_id = job.id
        event = self._wait_for(trigger, kwargs)
        self._active_job_id = None
        return self.execute_complete(context, event, **kwargs)

    def _start_try(
        self, context: Any, hook: SalesforceBulkHook
    ) -> tuple[ConnectionSettings, PlanStore | None]:
        """Check the settings and the output folder before any job; remember what ``on_kill`` needs."""
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
            check_output_dir(lambda: self._directory(context), str(self.output_path or ""))
        except InputError as exc:
            raise AirflowFailException(f"{type(exc).__name__}: {exc}") from None
        return settings, store

    def _submit(
        self, hook: SalesforceBulkHook, settings: ConnectionSettings, store: PlanStore | None, window: Window
    ) -> tuple[JobInfo, str, float]:
        """The query job (an earlier try's running the same query, else a new one), recorded in the
        plan store before any wait: a retry of this try finds it there and reattaches to it."""
        query_fingerprint = fingerprint(self.operation, window.query)
        earlier = earlier_job_id(store.get(QUERY_STATE_KEY) if store else None, query_fingerprint, self.log)

        async def start() -> tuple[JobInfo, str, bool]:
            async with hook.client(settings) as ingest:
                return await start_query_job(ingest, earlier, window.query, self.operation, self.log)

        try:
            with fail_on_refused_credentials():
                job, instance_url, reattached = run_sync(start)
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
            plan: dict[str, Any] = {
                "job_id": job.id,
                "query": query_fingerprint,
                "instance_url": instance_url,
            }
            plan["submitted_at"] = submitted_at
            if window.upper is not None:
                plan["upper"] = window.upper
                plan["mark_before"] = window.before.mark.isoformat() if window.before is not None else None
            store.set(QUERY_STATE_KEY, plan)
        return job, instance_url, submitted_at

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
        checked, job = checked_query_job(event)
        self._instance_url = checked["instance_url"] or instance_url
        self._object_name = job["object"]
        store = plan_store_for(context)
        if submitted_at is None and store is not None:
            submitted_at = (store.get(QUERY_STATE_KEY) or {}).get("submitted_at")
        summary = first_summary(job, self.output_format, self._instance_url)
        fail_on_wait_error(context, checked, job["id"], summary)
        if checked["status"] == "success" and job["state"] == "JobComplete":
            self._extract(context, job["id"], summary)
        if submitted_at is not None:
            summary["seconds"] = round(max(time.time() - float(submitted_at), 0.0), 3)
        self.log.info(
            "Summary: query job %s %s, %d records in %d file(s) under %s",
            job["id"],
            summary["state"],
            summary["records"],
            len(summary["files"]),
            summary["output_path"],
        )
        # Pushed before any failure, so a failed task still reports what happened.
        if context.get("ti") is not None:
            context["ti"].xcom_push(key="return_value", value=summary)
        if checked["status"] == "timeout":
            raise AirflowException(f"{checked['message']} (query job {job['id']})")
        if job["state"] != "JobComplete":
            message = job["errorMessage"] or "no error message"
            raise AirflowException(f"Query job {job['id']} ended {job['state']}: {message}")
        if store is not None:
            # Done: a deliberate re-run (clear) of this task runs the query again instead of reattaching.
            store.delete(QUERY_STATE_KEY)
        return summary

    # -- the files ------------------------------------------------------------------------------

    def _extract(self, context: Any, job_id: str, summary: dict[str, Any]) -> None:
        """Stage every page, verified; read the next mark; publish; then advance the mark."""
        directory = self._directory(context)
        summary["output_path"] = display_path(directory)
        store = plan_store_for(context)
        window = self._window(context, store.get(QUERY_STATE_KEY) if store else None)
        ti = context.get("ti")
        try:
            hook = self._hook()
            writer = PageWriter(
                hook=hook,
                settings=hook.get_settings(),
                job_id=job_id,
                output_format=self.output_format,
                records_per_file=self.records_per_file,
                stop=self._stop_event(),
                log=self.log,
            )
            with fail_on_refused_credentials():
                staging, files = writer.stage(directory, f"try{getattr(ti, 'try_number', 0)}")
        except ConnectionConfigError as exc:
            raise AirflowFailException(f"{type(exc).__name__}: {exc}") from None
        except (SalesforceBulkError, OSError) as exc:
            raise AirflowException(
                f"Writing the results of query job {job_id} failed: {type(exc).__name__}: {exc}; "
                "nothing was published, a retry reattaches to the job and writes them again"
            ) from None
        try:
            if sum(int(f["records"]) for f in files) == 0:
                files = writer.empty_part(staging, files, window.query, self._object_name)
            watermark = self._next_mark(staging, files, window)
            if self._stop_event().is_set():
                raise AirflowException(f"Stopped before publishing the results of query job {job_id}")
            body = manifest(
                files=files,
                job_id=job_id,
                soql=window.query,
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
        self._files = [(str(f["path"]), int(f["records"]), int(f["bytes"])) for f in summary["files"]]
        if watermark is not None:
            run_id = getattr(context.get("ti"), "run_id", None)
            watermark = move_mark(watermark_store_for(context), watermark, window, job_id, run_id)
        summary["watermark"] = watermark

    def _next_mark(self, staging: Any, files: list[dict[str, Any]], window: Window) -> dict[str, Any] | None:
        field = self.incremental_field
        if field is None or window.upper is None:
            return None
        paths = [staging.part(f["name"]) for f in files]
        result = next_mark(
            paths,
            self.output_format,
            field,
            self.watermark_overlap,
            window,
            self._initial(),
            self.log.warning,
        )
        self.log.info("Watermark of %s: %s -> %s", field, result["before"], result["after"])
        return result

    # -- on_kill ----------------------------------------------------------------------------------

    def _abort_targets(self) -> tuple[list[str], Any]:
        job_id = self._active_job_id
        return ([job_id] if job_id is not None else []), getattr(self, "_store", None)

    def _describe_jobs(self, job_ids: list[str]) -> str:
        return f"query job {', '.join(job_ids)}"

    # -- lineage ----------------------------------------------------------------------------------

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """Input: the Salesforce object (``salesforce://<instance host>``); outputs: the files written,
        each with an output statistics facet (its records and bytes).

        Returns ``None`` when the OpenLineage provider is not installed.
        """
        return extract_lineage(self._instance_url, self._object_name, self._files)
