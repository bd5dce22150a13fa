"""A try's stop flag (set by ``on_kill``) and the error a try raises where it finds it set.

Apart from :mod:`.try_stop` (what ``on_kill`` aborts) so that the plan store, which the job plan
uses, can raise :class:`TryStopped` without an import cycle.
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
