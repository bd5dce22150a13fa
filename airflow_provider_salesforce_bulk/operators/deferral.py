"""Waiting for the trigger: deferred to the triggerer or polled in the worker, one path for both operators."""

from __future__ import annotations

import datetime
from typing import Any

from airflow.providers.common.compat.sdk import AirflowException, BaseOperator

from airflow_provider_salesforce_bulk.hooks.salesforce_bulk import run_sync
from airflow_provider_salesforce_bulk.triggers.events import JobsEvent, validate_event
from airflow_provider_salesforce_bulk.triggers.salesforce_bulk import SalesforceBulkJobTrigger

__all__ = ["defer_or_wait"]

# The trigger aborts at its own deadline; defer()'s timeout is only a backstop for a trigger that cannot
# (a triggerer down for long), so it leaves room for the last polls and the abort.
_BACKSTOP_SECONDS = 300


def defer_or_wait(
    operator: BaseOperator,
    trigger: SalesforceBulkJobTrigger,
    *,
    timeout: float,
    poll_interval: float,
    kwargs: dict[str, Any] | None = None,
) -> JobsEvent:
    """Defer to ``trigger`` (resuming in ``execute_complete``) when the operator is deferrable, which
    raises ``TaskDeferred``; otherwise run the trigger's poll loop in the worker and return its event,
    checked as ``execute_complete`` checks a deferred one. The trigger was given the connection's
    settings when it was built, so the worker does not read the connection again."""
    if getattr(operator, "deferrable", False):
        operator.defer(
            trigger=trigger,
            method_name="execute_complete",
            kwargs=kwargs,
            timeout=datetime.timedelta(seconds=timeout + 10 * poll_interval + _BACKSTOP_SECONDS),
        )
    return validate_event(run_sync(lambda: _first_event(trigger)))


async def _first_event(trigger: SalesforceBulkJobTrigger) -> object:
    # Closed here, not when the loop ends: a try's loop outlives this wait (see hooks/try_loop.py).
    events = trigger.run()
    try:
        async for event in events:
            return event.payload
    finally:
        await events.aclose()  # type: ignore[attr-defined]  # an async generator
    raise AirflowException("the trigger ended without an event")
