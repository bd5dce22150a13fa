"""When and how long to wait before sending a request again: the one retry engine of the client.

Every request the client makes, API calls and logins alike, goes through :func:`call_with_retries` with
a :class:`RetryPolicy`; a result download restarted after a dropped stream spends a :class:`RetryBudget`
of the same policy.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import email.utils
import enum
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from airflow_provider_salesforce_bulk.client.errors import InputError

__all__ = [
    "RetryBudget",
    "RetryPolicy",
    "RetrySafety",
    "Retryable",
    "call_with_retries",
    "check_count",
    "check_seconds",
    "parse_retry_after",
]

log = logging.getLogger(__name__)

T = TypeVar("T")


def check_seconds(field: str, value: object, *, allow_zero: bool = False) -> float:
    """A duration in seconds, refused (``InputError`` naming ``field``) unless a finite number > 0
    (or >= 0 with ``allow_zero``): a NaN deadline never passes and an infinite one never ends."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"{field} must be a number of seconds, got {value!r}", field=field)
    seconds = float(value)
    if not math.isfinite(seconds) or seconds < 0 or (seconds == 0 and not allow_zero):
        bound = "0 or more" if allow_zero else "more than 0"
        raise InputError(f"{field} must be a finite number of seconds, {bound}, got {value!r}", field=field)
    return seconds


def check_count(field: str, value: object, *, minimum: int = 1) -> int:
    """A whole number of at least ``minimum``, refused with an ``InputError`` naming ``field``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InputError(f"{field} must be a whole number of at least {minimum}, got {value!r}", field=field)
    return value


class RetrySafety(enum.Enum):
    """How safe it is to send a request again after a failure.

    ``IDEMPOTENT``
        Reads, job state changes and job creation: repeating them cannot load a record twice
        (a repeated job creation leaves at most an empty Open job, which loads nothing and
        expires after 24 hours). Retried on transport errors, 429 and 5xx.
    ``NOT_SENT_ONLY``
        Uploads: Salesforce accepts one upload per job, so the request is repeated only when it
        provably never reached Salesforce (no connection) or was refused before being read (429).
        Any other failure leaves the outcome unknown and is reported, never retried.
    """

    IDEMPOTENT = "idempotent"
    NOT_SENT_ONLY = "not_sent_only"


RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})


@dataclasses.dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """Exponential backoff with full jitter, bounded in attempts and in total time.

    Parameters
    ----------
    max_attempts : int
        Attempts in all, the first one included.
    initial_delay : float
        Upper bound of the first wait, in seconds.
    max_delay : float
        Upper bound of any single wait, in seconds (also caps ``Retry-After``).
    max_total : float
        No new attempt starts once this many seconds have passed since the first one.
    """

    max_attempts: int = 5
    initial_delay: float = 0.5
    max_delay: float = 30.0
    max_total: float = 300.0

    def __post_init__(self) -> None:
        # InputError is a ValueError: callers catching ValueError keep working.
        check_count("RetryPolicy.max_attempts", self.max_attempts)
        for name in ("initial_delay", "max_delay", "max_total"):
            check_seconds(f"RetryPolicy.{name}", getattr(self, name), allow_zero=True)

    def budget(self) -> RetryBudget:
        """A fresh count of attempts and time for one operation."""
        return RetryBudget(self)

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_delay)
        ceiling = min(self.max_delay, self.initial_delay * (2 ** (attempt - 1)))
        return random.uniform(0, ceiling)


def parse_retry_after(value: str | None, *, now: datetime.datetime | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta seconds or an HTTP date); ``None`` if absent or bad."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.timezone.utc)
    now = now or datetime.datetime.now(datetime.timezone.utc)
    return max((when - now).total_seconds(), 0.0)


class RetryBudget:
    """Attempts and time one operation has spent under a :class:`RetryPolicy`."""

    def __init__(self, policy: RetryPolicy) -> None:
        self.policy = policy
        self.failures = 0
        self._started = time.monotonic()

    def next_wait(self, retry_after: float | None = None) -> float | None:
        """Count one failed attempt; the pause before the next one, or ``None`` when none is left."""
        self.failures += 1
        wait = self.policy.delay(self.failures, retry_after)
        elapsed = time.monotonic() - self._started
        if self.failures >= self.policy.max_attempts or elapsed + wait > self.policy.max_total:
            return None
        return wait


class Retryable(Exception):
    """Raised by an attempt to say that ``failure`` may be retried (after ``retry_after`` seconds)."""

    def __init__(self, failure: Exception, retry_after: float | None = None) -> None:
        super().__init__(str(failure))
        self.failure = failure
        self.retry_after = retry_after


async def call_with_retries(policy: RetryPolicy, attempt: Callable[[], Awaitable[T]], *, what: str) -> T:
    """Run ``attempt`` until it returns, raises anything but :class:`Retryable`, or the budget is spent.

    Raises
    ------
    Exception
        The last :attr:`Retryable.failure` once the policy allows no more attempts, or whatever else
        the attempt raised.
    """
    budget = policy.budget()
    while True:
        try:
            return await attempt()
        except Retryable as retry:
            wait = budget.next_wait(retry.retry_after)
            if wait is None:
                raise retry.failure from retry.failure.__cause__
            log.debug("Retrying %s in %.2fs after: %s", what, wait, retry.failure)
        await asyncio.sleep(wait)
