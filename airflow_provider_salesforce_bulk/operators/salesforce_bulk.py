"""``SalesforceBulkOperator``: load records with the Salesforce Bulk API 2.0, waiting in the triggerer."""

from __future__ import annotations

import collections
import dataclasses
import datetime
import functools
import threading
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from airflow.providers.common.compat.sdk import conf

from airflow_provider_salesforce_bulk.client import ChunkFormat, ChunkLimits, JobInfo, JobSpec, ResubmitPolicy
from airflow_provider_salesforce_bulk.client.csv_format import COLUMN_DELIMITERS
from airflow_provider_salesforce_bulk.client.limits import check_limits_mode
from airflow_provider_salesforce_bulk.hooks.connection import ConnectionSettings
from airflow_provider_salesforce_bulk.hooks.salesforce_bulk import SalesforceBulkHook
from airflow_provider_salesforce_bulk.operators import change_sync, load_input, sync_finish
from airflow_provider_salesforce_bulk.operators import load_completion as completion
from airflow_provider_salesforce_bulk.operators import resubmit_rounds as rounds
from airflow_provider_salesforce_bulk.operators.base import (
    SalesforceBulkBaseOperator,
    one_loop,
    output_folder,
)
from airflow_provider_salesforce_bulk.operators.grouping import GroupedSource
from airflow_provider_salesforce_bulk.operators.lineage import load_lineage
from airflow_provider_salesforce_bulk.operators.links import LINK_XCOM_KEY, SalesforceBulkJobLink, job_url
from airflow_provider_salesforce_bulk.operators.plan_store import PlanStore, plan_store_for
from airflow_provider_salesforce_bulk.operators.query_output import display_path
from airflow_provider_salesforce_bulk.operators.resubmit_rounds import resubmit_codes
from airflow_provider_salesforce_bulk.operators.round_state import RoundState, rebuild_wait
from airflow_provider_salesforce_bulk.operators.source_spec import SourceSpec
from airflow_provider_salesforce_bulk.operators.sources import ChunkSource, make_source
from airflow_provider_salesforce_bulk.operators.staging import StagingArea
from airflow_provider_salesforce_bulk.operators.submit import JobPlan
from airflow_provider_salesforce_bulk.operators.summary import (
    RoundCount,
    count_round,
    job_outcomes,
    jobs_to_copy,
    summarize,
)
from airflow_provider_salesforce_bulk.operators.sync_operator import ChangeSyncMixin
from airflow_provider_salesforce_bulk.operators.task_start import start_task
from airflow_provider_salesforce_bulk.operators.try_stop import abort_targets, settled_targets
from airflow_provider_salesforce_bulk.operators.worker_local import warn_if_worker_local
from airflow_provider_salesforce_bulk.triggers.events import (
    JobsEvent,
    job_summary,
    jobs_event,
    validate_event,
)

__all__ = ["DEFAULT_RESULTS_FOLDER", "DEFAULT_STAGING_FOLDER", "SalesforceBulkOperator"]

DEFAULT_STAGING_FOLDER = load_input.DEFAULT_STAGING_FOLDER

DEFAULT_RESULTS_FOLDER = "salesforce_bulk_results"
"""Under ``$AIRFLOW_HOME``: ``<folder>/<dag_id>/<run_id>/<task_id>[/<map_index>]/<job_id>/*.csv``."""


class SalesforceBulkOperator(ChangeSyncMixin, SalesforceBulkBaseOperator):
    """Insert, update, upsert, delete or hard-delete records with the Salesforce Bulk API 2.0.

    The input (``records``, ``source`` or ``sql``) is read once into the staging area, then sent in jobs
    recorded in the task's plan store before their upload, so a retry reattaches to them and never
    sends a record twice; the jobs are waited for in the triggerer (``deferrable``) or the worker;
    records that failed with a transient error are resubmitted in rounds; the summary (the XCom return
    value) counts each record once, at its final outcome, and is pushed before the failure policy can
    fail the task. Every parameter, the guarantees and the summary: ``docs/operators/salesforce_bulk.md``.
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
        "sync_state_path",
        "conn_id",
    )
    template_fields_renderers: ClassVar[dict[str, str]] = {"records": "json", "sql": "sql"}
    operator_extra_links = (SalesforceBulkJobLink(),)
    ui_color = "#9fd7f5"
    _opened_source: ChunkSource | None = None
    _instance_url: str | None = None  # for lineage
    _succeeded: int | None = None
    _active_job_ids: Sequence[str] = ()  # the jobs waited for now (on_kill's abort targets)

    # The parameters are stored as given (templated, untyped DAG input) and checked when the task runs
    # (_check_settings): a bad one fails the task, naming it, before any job.
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
        changes_only: bool = False,
        sync_state_path: Any = None,
        delete_missing: bool = False,
        max_delete_ratio: float = change_sync.DEFAULT_MAX_DELETE_RATIO,
        full_sync: bool = False,
        **kwargs: Any,
    ) -> None:
        kwargs.update(poll_interval=poll_interval, timeout=timeout, conn_id=conn_id, deferrable=deferrable)
        super().__init__(salesforce_bulk_conn_id=salesforce_bulk_conn_id, **kwargs)
        self.operation, self.object_name, self.allow_empty = operation, object_name, allow_empty
        self.records, self.source, self.source_format, self.sql = records, source, source_format, sql
        self.sql_conn_id, self.parameters, self.fieldnames = sql_conn_id, parameters, fieldnames
        self.field_mapping, self.group_by_parent = field_mapping, group_by_parent
        self.external_id_field, self.assignment_rule_id = external_id_field, assignment_rule_id
        self.max_records_per_job, self.max_bytes_per_job = max_records_per_job, max_bytes_per_job
        self.column_delimiter, self.line_ending, self.none_as = column_delimiter, line_ending, none_as
        self.allow_na_marker, self.reload_on_clear = allow_na_marker, reload_on_clear
        self.max_failed_records, self.max_failed_ratio = max_failed_records, max_failed_ratio
        self.resubmit_error_codes, self._codes_name = resubmit_codes(resubmit_error_codes, retry_error_codes)
        self.resubmit_rounds, self.resubmit_backoff = resubmit_rounds, resubmit_backoff
        self.results_path, self.staging_path, self.limits_check = results_path, staging_path, limits_check
        self._keep_sync(changes_only, sync_state_path, delete_missing, max_delete_ratio, full_sync)

    # -- validation -----------------------------------------------------------------------------

    def _check_settings(self) -> None:
        self._job_spec()
        completion.check_thresholds(self.max_failed_records, self.max_failed_ratio)
        self._check_wait_settings()
        self._source_spec()
        self._chunk_format()
        check_limits_mode(self.limits_check)
        self._policy()
        self._sync()

    def _policy(self) -> ResubmitPolicy:
        return rounds.resubmit_policy(
            self.resubmit_error_codes, self._codes_name, self.resubmit_rounds, self.resubmit_backoff
        )

    def _source_spec(self) -> SourceSpec:
        """The source options as one value, checked the first time it is asked for (an ``InputError``
        naming the bad option): when the task runs, since ``records``, ``source`` and ``sql`` are
        templated."""
        spec: SourceSpec | None = getattr(self, "_checked_source", None)
        if spec is None:
            names = [field.name for field in dataclasses.fields(SourceSpec) if field.init]
            spec = self._checked_source = SourceSpec(**{name: getattr(self, name) for name in names})
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
                change_sync.forget(store)
            elif done.get("summary") is not None:
                return self._done_before(context, plan)
            else:
                # Done, but its summary did not fit the store: reattach to the finished jobs (nothing
                # is sent again) to count and copy their results once more.
                self.log.info("An earlier try succeeded; reading its jobs again for the summary")
        self._plan = plan
        area = self._staging_area(context)
        try_number = getattr(context.get("ti"), "try_number", None)
        spec, staged = self._job_spec(), None  # staged: this try's fresh load (a retry's jobs exist)
        sync = self._sync()
        if plan.chunks:
            self.log.info("Jobs of an earlier try: %s; reading their state", ", ".join(plan.all_job_ids))
        elif sync is not None:
            staged, source = self._sync_input(source, plan, area, sync)
            if staged is None:  # nothing to upsert: the deletes and the advance only
                return self._end_sync(context)
        elif (staged := load_input.stage_input(source, plan, area, try_number, spec, self.log)) is None:
            self.log.info("No records: no job created")
            self._succeeded = 0
            return summarize(self.operation, self.object_name, {}, collections.Counter(), None, None)
        latest = load_input.send_load(
            context.get("ti"),
            hook,
            settings,
            source,
            plan,
            area,
            spec,
            staged=staged,
            field_mapping=self.field_mapping,
            limits_check=self.limits_check,
            stop=self._stop_event(),
        )
        return self._wait_or_finish(context, plan, latest, settings)

    def _wait_or_finish(
        self, context: Any, plan: JobPlan, latest: dict[str, JobInfo], settings: ConnectionSettings
    ) -> Any:
        """Every job of the plan sent: wait for them, or finish at once when they have all ended."""
        if context.get("ti") is not None:
            context["ti"].xcom_push(key=LINK_XCOM_KEY, value=job_url(plan.instance_url or "", plan.job_ids))
        # What the resumed task rebuilds its accounting from, stored before the wait: the trigger
        # carries only what polling needs.
        plan.save_now()
        self._save_wait_state(plan.store, None)
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
        trigger = self._trigger(job_ids, settings=settings)
        self._active_job_ids = list(job_ids)
        event = self._wait_for(trigger)
        self._active_job_ids = []
        return self.execute_complete(context, event)

    def _done_before(self, context: Any, plan: JobPlan) -> Any:
        """An earlier try of this task instance succeeded: its summary again, nothing loaded."""
        self._instance_url = plan.instance_url
        summary = load_input.done_before(context.get("ti"), plan, self._staging_area(context), self.log)
        if isinstance(summary, Mapping):
            self._succeeded = int(summary.get("totals", {}).get("succeeded", 0))
        return summary

    def _staging_area(self, context: Any) -> StagingArea:
        """The task instance's staging folder (see ``staging_path``)."""
        results_dir = functools.partial(self._results_dir, context) if self.results_path else None
        return load_input.staging_area(context.get("ti"), self.staging_path, results_dir)

    def _abort_targets(self) -> tuple[list[str], Any]:
        return abort_targets(self._active_job_ids, getattr(self, "_plan", None))

    def _settled_targets(self, job_ids: list[str]) -> list[str]:
        return settled_targets(job_ids, getattr(self, "_settled", None), getattr(self, "_plan", None))

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
            completion.refused(self._ti, self.operation, self.object_name, checked, waited)
        self._instance_url = waited.instance_url
        state = waited.state
        hook = SalesforceBulkHook(salesforce_bulk_conn_id=self.conn_id)
        to_copy = jobs_to_copy(checked["jobs"], waited.history)
        results_dir = self._results_dir(context)
        round_dir = results_dir / f"round-{state.round}" if state.round > 1 else results_dir
        try_number = getattr(self._ti, "try_number", None)
        copied = completion.copy_results(hook, to_copy, round_dir, try_number, self._stop_event())
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
        summary, samples = completion.final_summary(
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
        summary = self._sync_section(context, summary, checked["status"])  # deletes and advance
        self._succeeded = int(summary["totals"]["succeeded"])
        completion.push_summary(context.get("ti"), summary)  # before any failure: a failed task reports too
        # Every job of the load was closed before this point, so no later try sends a chunk from the
        # input again (a retry reattaches; Aborted or Failed jobs resend Salesforce's unprocessed
        # records): the staged copy is of no more use, whether the failure policy passes or not.
        self._staging_area(context).remove_all()
        completion.apply_failure_policy(
            checked, summary, samples, self.max_failed_records, self.max_failed_ratio
        )
        sync_finish.raise_on_failed_deletes(summary, self.max_failed_records)
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
        return rounds.load_wait_state(self._plan_store(context), getattr(self, "_round_state", None))

    def _save_wait_state(self, store: PlanStore | None, state: RoundState | None) -> None:
        """Record the state of the wait about to start (``None``: round 1, nothing carried)."""
        self._round_state = state
        rounds.save_wait_state(store, state)

    def send_next_round(self, context: Any, event: Mapping[str, Any] | None = None) -> Any:
        """Resumed after the backoff between two rounds (deferred to the triggerer): send the next round.

        ``event`` is :class:`ResubmitBackoffTrigger`'s, echoing the round's state.
        """
        state, jobs, instance_url = rounds.round_to_send(
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
        rounds.back_off(number, delay, policy, state, save=save, defer=defer, log=self.log)
        settings = hook.get_settings()
        spec, limits = self._job_spec(), self._chunk_limits()
        counts = rounds.send_round(
            hook, settings, store, state, policy, spec, limits, stop=self._stop_event()
        )
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
        """Output: the Salesforce object, with the records that succeeded; input: a ``source`` file.

        ``None`` without the OpenLineage provider; the datasets: :func:`~.lineage.load_lineage`."""
        return load_lineage(self.source, self.object_name, self._instance_url, self._succeeded)
