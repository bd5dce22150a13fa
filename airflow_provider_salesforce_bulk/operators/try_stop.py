"""Stopping a try that Airflow has ended at the next chunk, page or file boundary.

Airflow 3's task runner answers SIGTERM by calling the operator's ``on_kill`` and returning: the
task goes on until the supervisor's SIGKILL a few seconds later. A try that froze past the
heartbeat timeout and woke up after its retry took over would go on writing in those seconds, over
files its successor reported. ``on_kill`` sets the try's stop flag instead, and the operator checks
it between the chunks it sends, the result files it copies and the network pieces of each file: the
try raises :class:`TryStopped` there, writes nothing more and leaves the plan as it is (the next
try reattaches to every job the plan names). The flag and the error are in :mod:`.stop_flag`
(re-exported here); this module holds what ``on_kill`` aborts.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

from airflow_provider_salesforce_bulk.operators.stop_flag import TryStopped, check_stop, until_stopped

if TYPE_CHECKING:
    from airflow_provider_salesforce_bulk.operators.job_plan import JobPlan
    from airflow_provider_salesforce_bulk.operators.plan_store import PlanStore

__all__ = ["TryStopped", "abort_targets", "check_stop", "settled_targets", "until_stopped"]

# How long on_kill's abort waits for the stopped try to settle (see settled_targets).
SETTLE_SECONDS = 2.0


def abort_targets(active: Sequence[str], plan: JobPlan | None) -> tuple[list[str], PlanStore | None]:
    """``on_kill``'s jobs: those waited for now, else every job of the plan (whose store names the try)."""
    job_ids = list(active)
    if not job_ids and plan is not None:
        job_ids = plan.job_ids
    return job_ids, plan.store if plan is not None else None


def settled_targets(job_ids: list[str], settled: threading.Event | None, plan: JobPlan | None) -> list[str]:
    """``job_ids`` and every job of the plan once the stopped try has settled."""
    # A job created while the signal arrived is in the plan once the try has stopped, at its
    # next chunk: waited for briefly (Airflow's SIGKILL follows the SIGTERM by 5 s).
    if settled is not None:
        settled.wait(SETTLE_SECONDS)
    if plan is not None:
        job_ids = list(dict.fromkeys([*job_ids, *plan.job_ids]))
    return job_ids
