"""How long any one HTTP exchange may take: httpx's per-phase limits plus whole-exchange deadlines."""

from __future__ import annotations

import asyncio
import dataclasses
import math
import sys
from collections.abc import Awaitable
from typing import TypeVar

import httpx

from airflow_provider_salesforce_bulk.client.errors import InputError

__all__ = ["DEFAULT_TIMEOUTS", "Timeouts", "no_answer", "within"]

T = TypeVar("T")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Timeouts:
    """Every time limit of the HTTP layer, in seconds, validated once when built.

    httpx's limits (``connect``, ``read``, ``write``, ``pool``) bound each network operation, not a
    whole request: a server sending valid headers and then one body byte every few seconds never
    trips them. ``exchange`` and ``download`` are the overall deadlines that catch it.

    Parameters
    ----------
    connect, read, write, pool : float
        httpx's per-operation limits.
    exchange : float
        Whole exchange of a request whose body is read at once (sending the request, the headers and
        the whole body): every API call, upload and login. Generous by default because an upload of
        100 MB counts against it. Reaching it is a transport failure: retried for idempotent requests,
        an unknown outcome for uploads.
    download : float
        Whole download of one streamed result file (headers and body); each restart of a dropped
        download gets its own.

    Raises
    ------
    InputError
        A value is not a finite number above 0 (NaN, infinity, zero, negative, not a number).
    """

    connect: float = 15.0
    read: float = 120.0
    write: float = 300.0
    pool: float = 60.0
    exchange: float = 900.0
    download: float = 3600.0

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
                or value <= 0
            ):
                raise InputError(
                    f"Timeouts.{field.name} must be a finite number of seconds above 0, got {value!r}",
                    field=field.name,
                )
            object.__setattr__(self, field.name, float(value))

    @classmethod
    def from_httpx(cls, timeout: httpx.Timeout, *, exchange: float | None = None) -> Timeouts:
        """Limits from an ``httpx.Timeout``; a phase it leaves unbounded (``None``) keeps the default."""
        defaults = cls()
        return cls(
            connect=defaults.connect if timeout.connect is None else timeout.connect,
            read=defaults.read if timeout.read is None else timeout.read,
            write=defaults.write if timeout.write is None else timeout.write,
            pool=defaults.pool if timeout.pool is None else timeout.pool,
            exchange=defaults.exchange if exchange is None else exchange,
        )

    def as_httpx(self) -> httpx.Timeout:
        """The per-operation part, for an ``httpx.AsyncClient``."""
        return httpx.Timeout(connect=self.connect, read=self.read, write=self.write, pool=self.pool)


DEFAULT_TIMEOUTS = Timeouts()


async def within(awaitable: Awaitable[T], seconds: float) -> T:
    """Await ``awaitable`` in the calling task, raising ``asyncio.TimeoutError`` once ``seconds`` have
    passed.

    No extra task is made (``asyncio.wait_for`` makes one, and can swallow a cancellation of the caller
    that arrives as the awaitable finishes, which would make a cancelled or timed-out load run on): a
    cancellation always reaches the caller, at the latest at its next ``await``. Python 3.11+ uses
    ``asyncio.timeout``; 3.10 cancels the calling task itself at the deadline.
    """
    if sys.version_info >= (3, 11):
        async with asyncio.timeout(seconds):
            return await awaitable
    return await _within_by_cancelling(awaitable, seconds)


async def _within_by_cancelling(awaitable: Awaitable[T], seconds: float) -> T:
    """``asyncio.timeout`` for Python 3.10, as the async-timeout backport does it: the deadline cancels
    this task, and a cancellation once the deadline fired becomes ``asyncio.TimeoutError`` (on 3.10 not
    yet the builtin ``TimeoutError``, which is what callers catch; a caller's cancel landing in that same
    instant ends the wait as a timeout: either way the wait ends)."""
    task = asyncio.current_task()
    if task is None:
        raise RuntimeError("within() must be awaited inside a task")
    expired = False

    def expire() -> None:
        nonlocal expired
        expired = task.cancel(f"no answer within {seconds:g}s")

    handle = asyncio.get_running_loop().call_later(seconds, expire)
    try:
        return await awaitable
    except asyncio.CancelledError:
        if expired:
            raise asyncio.TimeoutError(f"no answer within {seconds:g}s") from None
        raise
    finally:
        handle.cancel()


def no_answer(exc: BaseException, seconds: float) -> str:
    """Why an exchange bounded by :func:`within` got no usable answer, for a ``TransportError``."""
    if isinstance(exc, httpx.HTTPError):
        return f"{type(exc).__name__}: {exc}"
    return f"no complete answer within {seconds:g}s"
