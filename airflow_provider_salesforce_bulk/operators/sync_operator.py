"""The ingest operator's change-only steps, as a mixin: the operator calls them at three seams.

``_sync()`` checks the options (with the other settings, before any job); ``_sync_input`` replaces the
input with the records to send on a fresh load; ``_sync_section`` (from the operator's ``_finish``)
or ``_end_sync`` (nothing to upsert) sends the deletes, advances the state and adds the summary's
``sync`` section. The work itself is in :mod:`.change_sync` and :mod:`.sync_finish`.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow_provider_salesforce_bulk.hooks.salesforce_bulk import SalesforceBulkHook
from airflow_provider_salesforce_bulk.operators import change_sync, sync_finish
from airflow_provider_salesforce_bulk.operators import load_completion as completion
from airflow_provider_salesforce_bulk.operators.job_plan import JobPlan
from airflow_provider_salesforce_bulk.operators.sources import ChunkSource
from airflow_provider_salesforce_bulk.operators.staging import Manifest, StagingArea

if TYPE_CHECKING:
    from airflow_provider_salesforce_bulk.client import ChunkFormat, ChunkLimits, JobSpec
    from airflow_provider_salesforce_bulk.hooks.connection import ConnectionSettings
    from airflow_provider_salesforce_bulk.operators.plan_store import PlanStore

__all__ = ["ChangeSyncMixin"]

_NAMES = ("changes_only", "sync_state_path", "delete_missing", "max_delete_ratio", "full_sync")


class ChangeSyncMixin:
    """Change-only syncs for :class:`~.salesforce_bulk.SalesforceBulkOperator` (see its docs)."""

    changes_only: Any
    sync_state_path: Any
    delete_missing: Any
    max_delete_ratio: Any
    full_sync: Any
    _sync_record: dict[str, Any] | None = None  # this try's change set (also in the plan store)

    if TYPE_CHECKING:  # the operator's own
        operation: str
        object_name: str
        external_id_field: Any
        group_by_parent: Any
        max_failed_records: Any
        conn_id: Any
        timeout: Any
        poll_interval: Any
        log: Any
        _ti: Any
        _succeeded: int | None
        _active_job_ids: Sequence[str]
        _settings: ConnectionSettings

        def _job_spec(self) -> JobSpec: ...
        def _chunk_limits(self) -> ChunkLimits: ...
        def _chunk_format(self) -> ChunkFormat: ...
        def _plan_store(self, context: Any) -> PlanStore | None: ...
        def _staging_area(self, context: Any) -> StagingArea: ...
        def _stop_event(self) -> threading.Event: ...

    def _keep_sync(self, *values: Any) -> None:
        """The change-only options as given (templated DAG input: checked when the task runs)."""
        for name, value in zip(_NAMES, values, strict=True):
            setattr(self, name, value)

    def _sync(self) -> change_sync.SyncOptions | None:
        """The change-only options as one checked value (``None``: a plain load)."""
        values = {name: getattr(self, name) for name in _NAMES}
        return change_sync.check_sync_options(
            **values, operation=self.operation, external_id_field=self.external_id_field
        )

    def _sync_input(
        self, source: ChunkSource, plan: JobPlan, area: StagingArea, sync: change_sync.SyncOptions
    ) -> tuple[Manifest | None, ChunkSource]:
        """A fresh load's staged records to send (planned now, or by an earlier try)."""
        prepared = change_sync.prepare(
            source,
            plan,
            area,
            self._ti,
            self._job_spec(),
            sync,
            limits=self._chunk_limits(),
            chunk_format=self._chunk_format(),
            group_by=self.group_by_parent,
            log=self.log,
        )
        self._sync_record = prepared.record
        return prepared.staged, prepared.source

    def _sync_section(self, context: Any, summary: dict[str, Any], status: str = "success") -> dict[str, Any]:
        """The deletes sent, the state advanced (exactly once) and the ``sync`` section added; a plain
        load's ``summary`` as it is. A wait that failed (``status`` "error") leaves jobs whose outcome
        is not final: nothing advances, and the retry that reattaches to them advances."""
        sync = self._sync()
        if sync is None or status == "error":
            return summary
        hook = SalesforceBulkHook(salesforce_bulk_conn_id=self.conn_id)
        # The delete jobs are waited for here, in the worker: on_kill aborts them on a user's
        # decision as it does the load's (a resumed try has not read the settings yet).
        self._settings = hook.get_settings()
        waited: list[str] = []
        self._active_job_ids = waited
        try:
            return sync_finish.complete(
                self._plan_store(context),
                self._sync_record,
                summary,
                sync,
                hook,
                self._job_spec(),
                limits=self._chunk_limits(),
                timeout=float(self.timeout),
                poll_interval=float(self.poll_interval),
                log=self.log,
                waited=waited,
                stop=self._stop_event(),
            )
        finally:
            self._active_job_ids = []

    def _end_sync(self, context: Any) -> Any:
        """A change-only run with nothing to upsert: its deletes and advance, then done; an empty
        input compares nothing (the state stays as it is: an empty extract is more often a broken
        upstream than a table whose every row left)."""
        empty = sync_finish.empty_summary(self.operation, self.object_name, None)
        if self._sync_record is None:
            self.log.info("No records: nothing compared, no job; the sync state is left as it is")
            self._succeeded = 0
            return empty
        summary = self._sync_section(context, empty)
        self._succeeded = 0
        completion.push_summary(context.get("ti"), summary)
        self._staging_area(context).remove_all()
        sync_finish.raise_on_failed_deletes(summary, self.max_failed_records)
        store = self._plan_store(context)
        if store is not None:
            JobPlan.mark_done(store, getattr(context.get("ti"), "try_number", None), summary)
        return summary
