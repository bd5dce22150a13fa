"""Did a user end this try of the task? Asked of Airflow before aborting anything on a kill.

A kill reaches the provider on a user's decision (task marked failed or success) but also when
nothing was decided: a triggerer that lost its lease cancels triggers another triggerer is still
running, a worker shut down or evicted terminates its tasks, and a worker that froze past the
heartbeat timeout wakes up after Airflow failed its try and started the next one elsewhere. Only the
first may abort jobs that can hold data: the jobs belong to the task, and the next try reattaches
to them.

Two answers of Airflow tell them apart. The task instance's state: only an ended state (``failed``,
``success``, ...) can be a user's decision; ``running``, ``deferred``, ``up_for_retry``,
``scheduled``, ``queued``, a clear (no state) and any other state mean the task goes on, in this try
or a newer one. And which try the task is at: every try records its try number and task-instance id
in the task's plan store when it starts (:func:`record_try`), so an ended state is this try's only
while the store still names this try. A newer try that ran (and succeeded or failed on its own) has
replaced the record; on Airflow 3.3 an older try's task-instance id no longer reads the store at all.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Mapping
from typing import Any

__all__ = [
    "COMMS_GUARD",
    "ENDED",
    "TRY_KEY",
    "atry_is_over",
    "names_this_try",
    "read_task_state",
    "record_try",
    "try_is_over",
]

log = logging.getLogger(__name__)

COMMS_GUARD = threading.Lock()
"""One request at a time on the task's channel to its supervisor (no lock of its own before
Airflow 3.2): the operator saves its plan and reads the task's state from worker threads, and two
requests in flight could get each other's answers."""

ENDED = frozenset({"success", "failed", "skipped", "removed", "upstream_failed"})
"""States a user's decision can leave a try in; any other state means the task goes on."""
TRY_KEY = "salesforce_bulk_try"
"""The plan store key naming the try that started last: ``{"try_number": n, "ti_id": "..."}``."""
_READ_TIMEOUT = 10.0


def read_task_state(ti: Any) -> str | None:
    """The task instance's current state as Airflow's API server knows it (``None``: cleared).

    Runs through the task SDK's supervisor channel, in a worker or in the triggerer (call it from a
    thread there: the sync channel must not run on the event loop's thread).

    Raises
    ------
    LookupError
        The answer does not name this task instance.
    """
    from airflow.sdk.execution_time.task_runner import RuntimeTaskInstance

    map_index = getattr(ti, "map_index", -1)
    map_index = -1 if map_index is None else int(map_index)
    # The worker's channel has no lock before Airflow 3.2 and a plan save may be in flight in
    # another thread: one request at a time, as the plan store sends them.
    with COMMS_GUARD:
        states = RuntimeTaskInstance.get_task_states(
            dag_id=ti.dag_id,
            task_ids=[ti.task_id],
            run_ids=[ti.run_id],
            map_index=map_index if map_index >= 0 else None,
        )
    key = ti.task_id if map_index < 0 else f"{ti.task_id}_{map_index}"
    run = (states or {}).get(ti.run_id) or {}
    if key not in run:
        raise LookupError(f"Airflow did not return the state of {ti.dag_id}.{key} in run {ti.run_id}")
    state = run[key]
    return None if state is None else str(getattr(state, "value", state))


def _try_of(ti: Any) -> dict[str, Any]:
    ti_id = getattr(ti, "id", None)
    return {"try_number": getattr(ti, "try_number", None), "ti_id": None if ti_id is None else str(ti_id)}


def record_try(store: Any, ti: Any) -> None:
    """Name ``ti``'s try as the task's current one in its plan store (at the start of every try)."""
    if store is not None and ti is not None:
        store.set(TRY_KEY, _try_of(ti))


def names_this_try(recorded: Mapping[str, Any], ti: Any) -> bool:
    """Whether ``recorded`` (the store's :data:`TRY_KEY` value) names ``ti``'s try."""
    mine = _try_of(ti)
    return recorded.get("try_number") == mine["try_number"] and (
        recorded.get("ti_id") in (None, mine["ti_id"]) or mine["ti_id"] is None
    )


def _store_names_this_try(store: Any, ti: Any) -> bool:
    """Whether the plan store still names ``ti``'s try as the task's latest (``False`` if unreadable)."""
    try:
        recorded = store.get(TRY_KEY)
    except Exception as exc:
        log.warning(
            "Could not read which try the task is at (%s: %s): aborting nothing", type(exc).__name__, exc
        )
        return False
    mine = _try_of(ti)
    if not isinstance(recorded, dict):
        # Every try records itself when it starts; on Airflow 3.3 the store answers nothing to the
        # task-instance id of a try that a newer one replaced.
        log.warning(
            "The task's plan store names no try for try %s: another try owns the task; aborting nothing",
            mine["try_number"],
        )
        return False
    same = names_this_try(recorded, ti)
    if not same:
        log.warning(
            "The task is at try %s now, this is try %s: the task goes on there; aborting nothing",
            recorded.get("try_number"),
            mine["try_number"],
        )
    return same


def try_is_over(ti: Any, store: Any = None) -> bool | None:
    """``True`` only when a user ended this try: the task is in an :data:`ENDED` state and, when
    ``store`` (the task's plan store) is given, the store still names this try; ``None`` when unknown.
    """
    if ti is None:
        log.warning("No task instance to ask whether this try is over: aborting nothing")
        return None
    try:
        state = read_task_state(ti)
    except Exception as exc:
        log.warning("Could not read the task's state (%s: %s): aborting nothing", type(exc).__name__, exc)
        return None
    if state not in ENDED:
        log.warning(
            "The task is still %s (this try goes on elsewhere, or a newer try will take over its jobs, "
            "or the worker is being shut down): aborting nothing",
            state or "cleared",
        )
        return False
    if store is not None and not _store_names_this_try(store, ti):
        return False
    log.info("The task is now %s: the try was ended by a user", state)
    return True


async def atry_is_over(ti: Any, store: Any = None) -> bool | None:
    """:func:`try_is_over` from the event loop: in a thread, bounded in time.

    The thread is asgiref's: before Airflow 3.3 the triggerer's supervisor channel sends through
    ``async_to_sync``, which reaches the triggerer's own loop (where the channel lives) only from a
    ``sync_to_async`` thread; from a plain thread it would start a loop of its own and fail.
    """
    from asgiref.sync import sync_to_async

    try:
        return await asyncio.wait_for(
            sync_to_async(try_is_over, thread_sensitive=False)(ti, store), _READ_TIMEOUT
        )
    except asyncio.TimeoutError:
        log.warning("Reading the task's state took over %.0fs: aborting nothing", _READ_TIMEOUT)
        return None
