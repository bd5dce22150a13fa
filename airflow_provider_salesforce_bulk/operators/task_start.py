"""The start both operators share: settings and connection checked, then the plan store found."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from airflow.providers.common.compat.sdk import AirflowFailException

from airflow_provider_salesforce_bulk.client import InputError
from airflow_provider_salesforce_bulk.hooks.connection import ConnectionConfigError, ConnectionSettings
from airflow_provider_salesforce_bulk.hooks.salesforce_bulk import SalesforceBulkHook
from airflow_provider_salesforce_bulk.operators.plan_store import PlanStore, plan_store_for
from airflow_provider_salesforce_bulk.triggers.task_state import record_try

__all__ = ["start_task"]

T = TypeVar("T")


def start_task(
    context: Mapping[str, Any],
    hook: SalesforceBulkHook,
    check: Callable[[], T],
    *,
    warn: Callable[[str], object],
    without_store: str,
) -> tuple[T, ConnectionSettings, PlanStore | None]:
    """``check()``'s result, the connection's settings and the plan store.

    Bad settings or a bad connection fail the task for good (``AirflowFailException``, no retry),
    before any request; ``warn(without_store)`` when there is no task instance to key a plan by.
    The store then names this try as the task's current one: a kill of an older try (a worker that
    froze past the heartbeat timeout and woke up) finds it there and aborts nothing.
    """
    try:
        checked = check()
        settings = hook.get_settings()
    except (InputError, ConnectionConfigError) as exc:
        raise AirflowFailException(f"{type(exc).__name__}: {exc}") from None
    store = plan_store_for(context)
    if store is None:
        warn(without_store)
    else:
        record_try(store, context.get("ti"))
    return checked, settings, store
