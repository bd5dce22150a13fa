"""``SalesforceBulkOperator``: load records with the Salesforce Bulk API 2.0, waiting in the triggerer."""

from __future__ import annotations

import collections
import datetime
import os
import re
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from airflow.providers.common.compat.sdk import AirflowException, AirflowFailException, BaseOperator, conf

from airflow_provider_salesforce_bulk.client import InputError, OperationType
from airflow_provider_salesforce_bulk.client.ingest import check_job_options
from airflow_provider_salesforce_bulk.client.models import TERMINAL_STATES
from airflow_provider_salesforce_bulk.client.serialize import validate_operation_fields
from airflow_provider_salesforce_bulk.hooks.connection import ConnectionConfigError, ConnectionSettings
from airflow_provider_salesforce_bulk.hooks.salesforce_bulk import SalesforceBulkHook, run_sync
from airflow_provider_salesforce_bulk.operators.links import LINK_XCOM_KEY, SalesforceBulkJobLink, job_url
from airflow_provider_salesforce_bulk.operators.results import copy_job_results
from airflow_provider_salesforce_bulk.operators.sources import ChunkSource, make_source
from airflow_provider_salesforce_bulk.operators.submit import STATE_KEY, JobPlan, reconcile, submit_chunks
from airflow_provider_salesforce_bulk.operators.summary import failure_message, job_entry, summarize
from airflow_provider_salesforce_bulk.triggers.salesforce_bulk import SalesforceBulkJobTrigger

__all__ = ["DEFAULT_RESULTS_FOLDER", "SalesforceBulkOperator"]

DEFAULT_RESULTS_FOLDER = "salesforce_bulk_results"
"""Under ``$AIRFLOW_HOME``: ``<folder>/<dag_id>/<run_id>/<task_id>[/<map_index>]/<job_id>/*.csv``."""

_UNSAFE = re.compile(r"[^A-Za-z0-9._=+-]")


class SalesforceBulkOperator(BaseOperator):
    """Insert, update, upsert, delete or hard-delete records with the Salesforce Bulk API 2.0.

    Parameters
    ----------
    operation : {"insert", "update", "upsert", "delete", "hardDelete"}
    object_name : str
        The Salesforce object, e.g. ``Contact``.
    records : list of dict or XComArg, optional
        The records (field name to value). Exactly one of ``records`` and ``source``.
    source : str or ObjectStoragePath, optional
        A CSV file already in the job's format (header row of field names; copied byte for byte) or a
        newline-delimited JSON file (one object per line). Streamed, never read whole.
    source_format : {"csv", "ndjson"}, optional
        Defaults from the file name (``.csv``; ``.ndjson``, ``.jsonl``, ``.json``).
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
    conn_id : str
        A ``salesforce_bulk`` (or ``salesforce``) connection.
    deferrable : bool
        Wait in the triggerer (default from ``[operators] default_deferrable``); otherwise poll in the worker.

    Notes
    -----
    Every job id is stored in ``task_state_store`` (Airflow 3.3+) before its upload, so a retry
    reattaches to the jobs of the earlier try instead of loading the data twice. The summary is the
    XCom return value, pushed before the failure policy can fail the task.
    """

    template_fields: Sequence[str] = (
        "operation",
        "object_name",
        "records",
        "source",
        "fieldnames",
        "external_id_field",
        "assignment_rule_id",
        "results_path",
        "conn_id",
    )
    template_fields_renderers: ClassVar[dict[str, str]] = {"records": "json"}
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
        conn_id: str = SalesforceBulkHook.default_conn_name,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
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
        self.timeout = timeout.total_seconds() if isinstance(timeout, datetime.timedelta) else float(timeout)
        self.conn_id = conn_id
        self.deferrable = deferrable
        self._instance_url: str | None = None

    # -- validation -----------------------------------------------------------------------------

    def _check_settings(self) -> None:
        check_job_options(
            self.operation, self.object_name, self.external_id_field, self.column_delimiter, self.line_ending
        )
        if self.max_failed_records is not None and (
            isinstance(self.max_failed_records, bool)
            or not isinstance(self.max_failed_records, int)
            or self.max_failed_records < 0
        ):
            raise InputError("max_failed_records must be an int >= 0", field="max_failed_records")
        if self.max_failed_ratio is not None and not 0 <= float(self.max_failed_ratio) <= 1:
            raise InputError("max_failed_ratio must be between 0 and 1", field="max_failed_ratio")
        if not self.poll_interval or float(self.poll_interval) <= 0:
            raise InputError("poll_interval must be positive", field="poll_interval")
        if self.timeout <= 0:
            raise InputError("timeout must be positive", field="timeout")

    def _source(self) -> ChunkSource:
        records = self.records
        if (
            records is not None
            and not isinstance(records, (list, tuple))
            and hasattr(records, "__iter__")
            and not isinstance(records, (str, bytes, Mapping))
        ):
            records = list(records)  # a resolved XComArg may arrive as a lazy sequence
        return make_source(
            records=records,
            source=self.source,
            source_format=self.source_format,
            fieldnames=self.fieldnames,
            max_size_bytes=self.max_bytes_per_job,
            max_records=self.max_records_per_job,
            column_delimiter=self.column_delimiter,
            line_ending=self.line_ending,
            none_as=self.none_as,
        )

    def _validate_all(self, source: ChunkSource) -> int:
        """Serialize the whole input once without sending it: bad data fails before any job exists."""
        total = 0
        with source.open() as chunks:
            for chunk in chunks:
                if total == 0:
                    names = chunk.fieldnames(self.column_delimiter)
                    validate_operation_fields(self.operation, names, self.external_id_field)
                total += chunk.record_count
        return total

    # -- execution --------------------------------------------------------------------------------

    def execute(self, context: Any) -> Any:
        hook = SalesforceBulkHook(salesforce_bulk_conn_id=self.conn_id)
        try:
            self._check_settings()
            source = self._source()
            settings = hook.get_settings()
        except (InputError, ConnectionConfigError) as exc:
            raise AirflowFailException(f"{type(exc).__name__}: {exc}") from None
        store = context.get("task_state_store")
        if store is None:
            self.log.warning("No task_state_store (Airflow < 3.3): a retry cannot reattach to submitted jobs")
        plan = JobPlan.load(store)
        if not plan.complete:
            try:
                total = self._validate_all(source)
            except InputError as exc:
                raise AirflowFailException(f"Bad input ({source.description}): {exc}") from None
            self.log.info("Input checked: %d records from %s", total, source.description)
            if total == 0 and not plan.chunks:
                summary = summarize(self.operation, self.object_name, {}, collections.Counter(), None, None)
                self.log.info("No records: no job created")
                return summary
        elif plan.chunks:
            self.log.info("Reattaching to jobs %s submitted by an earlier try", ", ".join(plan.job_ids))
        try:
            run_sync(lambda: self._submit(hook, settings, source, plan))
        except InputError as exc:
            raise AirflowFailException(f"Bad input ({source.description}): {exc}") from None
        instance_url = plan.instance_url or ""
        context["ti"].xcom_push(key=LINK_XCOM_KEY, value=job_url(instance_url, plan.job_ids))
        deadline = time.time() + self.timeout
        trigger = SalesforceBulkJobTrigger(
            conn_id=self.conn_id, job_ids=plan.job_ids, deadline=deadline, poll_interval=self.poll_interval
        )
        kwargs: dict[str, Any] = {"record_counts": plan.record_counts(), "instance_url": instance_url}
        if self.deferrable:
            # The trigger aborts at its own deadline; this backstop only fires if the trigger cannot.
            self.defer(
                trigger=trigger,
                method_name="execute_complete",
                kwargs=kwargs,
                timeout=datetime.timedelta(seconds=self.timeout + 10 * self.poll_interval + 300),
            )
        event = run_sync(lambda: _first_event(trigger, settings))
        return self.execute_complete(context, event, **kwargs)

    async def _submit(
        self, hook: SalesforceBulkHook, settings: ConnectionSettings, source: ChunkSource, plan: JobPlan
    ) -> None:
        async with hook.client(settings) as client:
            plan.instance_url = await client.session.instance_url()
            if plan.chunks:
                await reconcile(client, plan)
            if plan.complete:
                return
            operation: OperationType = self.operation  # type: ignore[assignment]
            with source.open() as chunks:
                await submit_chunks(
                    client,
                    plan,
                    chunks,
                    operation=operation,
                    sobject=self.object_name,
                    external_id_field=self.external_id_field,
                    assignment_rule_id=self.assignment_rule_id,
                    column_delimiter=self.column_delimiter,
                    line_ending=self.line_ending,
                )

    def execute_complete(
        self,
        context: Any,
        event: Mapping[str, Any],
        record_counts: Mapping[str, int] | None = None,
        instance_url: str | None = None,
    ) -> Any:
        """Copy the result files, push the summary, then apply the failure policy."""
        self._instance_url = instance_url
        status = event.get("status")
        jobs: dict[str, dict[str, Any]] = dict(event.get("jobs") or {})
        counts = dict(record_counts or {})
        hook = SalesforceBulkHook(salesforce_bulk_conn_id=self.conn_id)
        finished = {j: job for j, job in jobs.items() if job.get("state") in TERMINAL_STATES}
        directory = self._results_dir(context)
        entries: dict[str, dict[str, Any]] = {}
        by_code: collections.Counter[str] = collections.Counter()
        samples: dict[str, str] = {}
        if finished:
            settings = hook.get_settings()
            copied = run_sync(lambda: self._copy(hook, settings, finished, directory))
            for job_id, (uris, rows, codes, job_samples) in copied.items():
                entries[job_id] = job_entry(finished[job_id], counts.get(job_id), uris, rows)
                by_code.update(codes)
                for code, sample in job_samples.items():
                    samples.setdefault(code, sample)
        for job_id, job in jobs.items():
            if job_id not in entries:
                entries[job_id] = job_entry(job, counts.get(job_id), {}, {})
        summary = summarize(
            self.operation,
            self.object_name,
            entries,
            by_code,
            str(directory) if finished else None,
            instance_url,
        )
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
        context["ti"].xcom_push(key="return_value", value=summary)
        if status not in ("success", "timeout"):
            raise AirflowException(
                f"Waiting for the Salesforce jobs failed ({status}): {event.get('message')}; "
                "a retry reattaches to the same jobs"
            )
        problem = failure_message(summary, samples, self.max_failed_records, self.max_failed_ratio)
        if status == "timeout":
            problem = f"{event.get('message')}; " + (problem or "")
        if problem:
            raise AirflowException(problem)
        store = context.get("task_state_store")
        if store is not None:
            # Done: a deliberate re-run (clear) of this task loads the data again instead of reattaching.
            store.delete(STATE_KEY)
        return summary

    async def _copy(
        self,
        hook: SalesforceBulkHook,
        settings: ConnectionSettings,
        jobs: dict[str, dict[str, Any]],
        directory: Any,
    ) -> dict[str, Any]:
        out: dict[str, Any] = {}
        async with hook.client(settings) as client:
            for job_id, job in jobs.items():
                out[job_id] = await copy_job_results(client, job, directory)
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
        return ObjectStoragePath(f"file://{os.path.abspath(local)}")

    # -- lineage ----------------------------------------------------------------------------------

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """Output: the Salesforce object (namespace from the instance URL); input: ``source``.

        Returns ``None`` when the OpenLineage provider is not installed. The output dataset is
        ``salesforce://<instance host>`` / ``object_name``; a ``source`` file is the input dataset
        (a local path: namespace ``file``, its absolute path; ``s3://bucket/key``: ``s3://bucket``,
        ``key``); records passed directly have no input dataset.
        """
        try:
            from airflow.providers.openlineage.extractors import OperatorLineage
            from openlineage.client.event_v2 import Dataset  # type: ignore[import-not-found]
        except ImportError:
            return None
        host = urllib.parse.urlsplit(self._instance_url or "").netloc or "unknown"
        inputs = []
        if self.source is not None:
            namespace, name = _source_dataset(self.source)
            inputs.append(Dataset(namespace=namespace, name=name))
        outputs = [Dataset(namespace=f"salesforce://{host}", name=self.object_name)]
        return OperatorLineage(inputs=inputs, outputs=outputs)


def _source_dataset(source: Any) -> tuple[str, str]:
    """OpenLineage namespace and name of a ``source`` path or URL (``ObjectStoragePath`` rules)."""
    from airflow.providers.common.compat.sdk import ObjectStoragePath

    if not isinstance(source, ObjectStoragePath):
        text = os.fspath(source) if isinstance(source, os.PathLike) else str(source)
        if "://" not in text:
            return "file", os.path.abspath(text)
        # Parsed as the operator opens it: a conn id in the URL (s3://conn@bucket/key) is not the bucket.
        source = ObjectStoragePath(text)
    if source.protocol in ("", "file", "local"):
        return "file", str(source.path)
    # Not ``source.namespace``: before Airflow 3.2 it keeps the conn id (s3://conn@bucket).
    bucket = str(source.bucket).rpartition("@")[2]
    namespace = f"{source.protocol}://{bucket}" if bucket else str(source.protocol)
    return namespace, str(source.key) or "/"


async def _first_event(trigger: SalesforceBulkJobTrigger, settings: ConnectionSettings) -> dict[str, Any]:
    trigger.settings = settings
    async for event in trigger.run():
        return dict(event.payload)
    raise AirflowException("the trigger ended without an event")
