"""Is this try of the task really over? Asked of Airflow before aborting anything on a kill.

A kill reaches the provider on a user's decision (task marked failed or success, cleared) but also
when nothing was decided: a triggerer that lost its lease cancels triggers another triggerer is
still running, a worker shut down or evicted terminates its tasks. Only the first may abort jobs
that can hold data. Airflow's own record of the task instance tells them apart: still ``deferred``
or ``running`` means this try goes on elsewhere (or will be retried), and nothing is aborted.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

__all__ = ["COMMS_GUARD", "STILL_GOING", "atry_is_over", "read_task_state", "try_is_over"]

log = logging.getLogger(__name__)

COMMS_GUARD = threading.Lock()
"""One request at a time on the task's channel to its supervisor (no lock of its own before
Airflow 3.2): the operator saves its plan and reads the task's state from worker threads, and two
requests in flight could get each other's answers."""

STILL_GOING = frozenset({"deferred", "running"})
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


def try_is_over(ti: Any) -> bool | None:
    """``True`` when the task instance is no longer deferred or running; ``None`` when unknown."""
    if ti is None:
        log.warning("No task instance to ask whether this try is over: aborting nothing")
        return None
    try:
        state = read_task_state(ti)
    except Exception as exc:
        log.warning("Could not read the task's state (%s: %s): aborting nothing", type(exc).__name__, exc)
        return None
    if state in STILL_GOING:
        log.warning(
            "The task is still %s (this try goes on elsewhere, or is being shut down, not killed): "
            "aborting nothing",
            state,
        )
        return False
    log.info("The task is now %s: the try was ended by a user", state)
    return True


async def atry_is_over(ti: Any) -> bool | None:
    """:func:`try_is_over` from the event loop: in a thread, bounded in time.

    The thread is asgiref's: before Airflow 3.3 the triggerer's supervisor channel sends through
    ``async_to_sync``, which reaches the triggerer's own loop (where the channel lives) only from a
    ``sync_to_async`` thread; from a plain thread it would start a loop of its own and fail.
    """
    from asgiref.sync import sync_to_async

    try:
        return await asyncio.wait_for(sync_to_async(try_is_over, thread_sensitive=False)(ti), _READ_TIMEOUT)
    except asyncio.TimeoutError:
        log.warning("Reading the task's state took over %.0fs: aborting nothing", _READ_TIMEOUT)
        return None
