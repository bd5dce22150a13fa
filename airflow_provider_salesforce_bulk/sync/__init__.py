"""Change-only syncs: send only the records that changed since the last successful sync.

The engine knows nothing of Airflow; the operator drives it in three steps:

1. :func:`plan_sync` compares the input with the state at ``sync_state_path`` (streamed, bounded
   memory) and returns a :class:`SyncPlan`: the records to send, the deletes, the counts; bad input,
   an untrustworthy state and the delete guard fail here, before any job.
2. :meth:`SyncPlan.pending` publishes the change set next to the state; the plan store records the
   returned :class:`PendingChanges` before the first job is created.
3. After the jobs' final outcomes, :func:`advance_state` writes and publishes the next state version.

Wiring into the operator (issue 18, after issue 17): ``changes_only``, ``sync_state_path``,
``delete_missing``, ``max_delete_ratio`` and ``full_sync`` become one :class:`SyncSpec` (built with
the job's columns after ``field_mapping``, ``none_as`` and ``allow_na_marker``). On the first try the
operator calls :func:`plan_sync` on the mapped records (or Arrow batches), then
:meth:`SyncPlan.pending` with a run key unique to the task instance (dag/run/task/map index), and
records ``PendingChanges.to_dict()`` in the plan store BEFORE creating any job; it sends
:meth:`SyncPlan.records` as the upsert and ``{"Id": sf_id}`` for each of :meth:`SyncPlan.deletes` as a
``delete`` job. Once every job's final outcome is known it calls :func:`advance_state` with the
successful upsert results' ``(external id, sf__Id)`` and the successful delete results' ``sf__Id``
(read again from Salesforce on a retry), then records "advanced" with the returned
:class:`StateInfo`. A retried try that finds the pending value but not "advanced" calls
:func:`advance_state` again with the same inputs: it writes the same version, or finds it written.

How it is fast: a record's digest is the MD5 of its CSV line as the client's serializer writes it
(:mod:`.digest`; the same for dicts and Arrow input, so a sync may switch between them), and the
comparison and the advance run in DuckDB (:mod:`.engine`: one thread, a memory limit, spilling to
``workdir``), so Python works per batch, not per row. It needs the ``[sync]`` extra (pyarrow, duckdb).

The layer rule: this package imports the client only; the operators import it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow_provider_salesforce_bulk.sync.advance import advance_state
    from airflow_provider_salesforce_bulk.sync.diff import SyncCounts, SyncPlan, SyncSpec, plan_sync
    from airflow_provider_salesforce_bulk.sync.digest import RowFormatter, digest_of, fields_fingerprint
    from airflow_provider_salesforce_bulk.sync.errors import DeleteGuardError, StateMovedError, SyncStateError
    from airflow_provider_salesforce_bulk.sync.pending import PendingChanges
    from airflow_provider_salesforce_bulk.sync.state import StateInfo, read_current
    from airflow_provider_salesforce_bulk.sync.storage import SyncStorage, storage_for

__all__ = [
    "DeleteGuardError",
    "PendingChanges",
    "RowFormatter",
    "StateInfo",
    "StateMovedError",
    "SyncCounts",
    "SyncPlan",
    "SyncSpec",
    "SyncStateError",
    "SyncStorage",
    "advance_state",
    "digest_of",
    "fields_fingerprint",
    "plan_sync",
    "read_current",
    "require_engine",
    "storage_for",
]

# Loaded on first use: most of the engine imports pyarrow, an extra, and the operators import this
# package whether or not a task syncs, so a plain install must be able to import it.
_HOMES = {
    "advance_state": "advance",
    "SyncCounts": "diff",
    "SyncPlan": "diff",
    "SyncSpec": "diff",
    "plan_sync": "diff",
    "RowFormatter": "digest",
    "digest_of": "digest",
    "fields_fingerprint": "digest",
    "DeleteGuardError": "errors",
    "StateMovedError": "errors",
    "SyncStateError": "errors",
    "PendingChanges": "pending",
    "StateInfo": "state",
    "read_current": "state",
    "SyncStorage": "storage",
    "storage_for": "storage",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{home}"), name)


def require_engine() -> None:
    """An :class:`ImportError` saying how to install the ``[sync]`` extra without DuckDB or pyarrow."""
    try:
        import duckdb  # noqa: F401
        import pyarrow  # noqa: F401
    except ImportError as exc:
        raise ImportError(
            f"change-only syncs need DuckDB and pyarrow ({exc.name} is missing): install "
            "airflow-provider-salesforce-bulk[sync]"
        ) from exc
