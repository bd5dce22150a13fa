"""Change-only syncs: send only the records that changed since the last successful sync.

The engine knows nothing of Airflow; the operator drives it in three steps:

1. :func:`plan_sync` compares the input with the state at ``sync_state_path`` (streamed, bounded
   memory) and returns a :class:`SyncPlan`: the records to send, the deletes, the counts; bad input,
   an untrustworthy state and the delete guard fail here, before any job.
2. :meth:`SyncPlan.pending` publishes the change set next to the state; the plan store records the
   returned :class:`PendingChanges` before the first job is created.
3. After the jobs' final outcomes, :func:`advance_state` writes and publishes the next state version.

The layer rule: this package imports the client only; the operators import it.
"""

from airflow_provider_salesforce_bulk.sync.advance import advance_state
from airflow_provider_salesforce_bulk.sync.diff import SyncCounts, SyncPlan, SyncSpec, plan_sync
from airflow_provider_salesforce_bulk.sync.digest import RecordDigester, fields_fingerprint
from airflow_provider_salesforce_bulk.sync.errors import DeleteGuardError, StateMovedError, SyncStateError
from airflow_provider_salesforce_bulk.sync.pending import PendingChanges
from airflow_provider_salesforce_bulk.sync.state import StateInfo, read_current
from airflow_provider_salesforce_bulk.sync.storage import SyncStorage, storage_for

__all__ = [
    "DeleteGuardError",
    "PendingChanges",
    "RecordDigester",
    "StateInfo",
    "StateMovedError",
    "SyncCounts",
    "SyncPlan",
    "SyncSpec",
    "SyncStateError",
    "SyncStorage",
    "advance_state",
    "fields_fingerprint",
    "plan_sync",
    "read_current",
    "storage_for",
]
