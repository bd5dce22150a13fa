"""When and how long to wait before sending a request again."""

from __future__ import annotations

import dataclasses
import datetime
import email.utils
import enum
import random

__all__ = ["RetryPolicy", "RetrySafety", "parse_retry_after"]


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


@dataclasses.dataclass(frozen=True)
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
        if self.max_attempts < 1:
            raise ValueError("RetryPolicy.max_attempts must be at least 1")
        if self.initial_delay < 0 or self.max_delay < 0 or self.max_total < 0:
            raise ValueError("RetryPolicy delays must not be negative")

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
