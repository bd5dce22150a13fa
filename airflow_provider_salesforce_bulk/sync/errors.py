"""The sync engine's errors.

All are :class:`~..client.errors.InputError`: a state that cannot be trusted, a guard that refuses
or a state another run advanced are for a person to settle, so nothing retries them, and each is
raised before a job is created (or, for :class:`StateMovedError`, before the state is replaced).
"""

from __future__ import annotations

from airflow_provider_salesforce_bulk.client.errors import InputError


class SyncStateError(InputError):
    """The sync state at a path cannot be used: unreadable, corrupt, or written for another sync.

    Never answered by a silent full reload: ``full_sync=True`` is the user's way to rebuild it.
    """


class StateMovedError(SyncStateError):
    """The state's CURRENT pointer changed since this run read it: another run advanced it."""


class DeleteGuardError(InputError):
    """More records would be deleted than ``max_delete_ratio`` of the state allows."""
