"""Stopping a try that Airflow has ended at the next chunk, page or file boundary.

Airflow 3's task runner answers SIGTERM by calling the operator's ``on_kill`` and returning: the
task goes on until the supervisor's SIGKILL a few seconds later. A try that froze past the
heartbeat timeout and woke up after its retry took over would go on writing in those seconds, over
files its successor reported. ``on_kill`` sets the try's stop flag instead, and the operator checks
it between the chunks it sends, the result files it copies and the network pieces of each file: the
try raises :class:`TryStopped` there, writes nothing more and leaves the plan as it is (the next
try reattaches to every job the plan names).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from typing import TypeVar

from airflow.providers.common.compat.sdk import AirflowException

__all__ = ["TryStopped", "check_stop", "until_stopped"]

T = TypeVar("T")


class TryStopped(AirflowException):
    """This try was ended (SIGTERM or ``on_kill``): stopped at a boundary, nothing more written."""


def check_stop(stop: threading.Event | None, before: str) -> None:
    """Raise :class:`TryStopped` if ``stop`` is set; ``before`` says what is not done."""
    if stop is not None and stop.is_set():
        raise TryStopped(
            f"This try was ended by Airflow (SIGTERM or on_kill): stopped before {before}; nothing more "
            "is written and the job plan is kept for the next try"
        )


def until_stopped(items: Iterable[T], stop: threading.Event | None, what: str) -> Iterator[T]:
    """``items`` one by one, checking ``stop`` before each (``what``: what one item is)."""
    for number, item in enumerate(items):
        check_stop(stop, f"{what} {number + 1}")
        yield item
