"""Rolling 24-hour usage counters behind ``/limits`` and ``Sforce-Limit-Info``."""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable

_WINDOW_SECONDS = 24 * 3600
_BUCKET_SECONDS = 60


class RollingCounter:
    """Counts events over the last 24 hours in one-minute buckets."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._buckets: collections.deque[list[int]] = collections.deque()
        self._total = 0
        self._lock = threading.Lock()

    def _expire(self, now_bucket: int) -> None:
        while self._buckets and self._buckets[0][0] <= now_bucket - _WINDOW_SECONDS // _BUCKET_SECONDS:
            self._total -= self._buckets.popleft()[1]

    def add(self, count: int = 1) -> None:
        """Record ``count`` events now."""
        bucket = int(self._clock() // _BUCKET_SECONDS)
        with self._lock:
            self._expire(bucket)
            if self._buckets and self._buckets[-1][0] == bucket:
                self._buckets[-1][1] += count
            else:
                self._buckets.append([bucket, count])
            self._total += count

    def used(self) -> int:
        """Events in the last 24 hours."""
        with self._lock:
            self._expire(int(self._clock() // _BUCKET_SECONDS))
            return self._total

    def clear(self) -> None:
        """Forget every event."""
        with self._lock:
            self._buckets.clear()
            self._total = 0


class Limits:
    """The org's DailyApiRequests, DailyBulkApiBatches and DailyBulkV2QueryJobs usage."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.api_requests = RollingCounter(clock)
        self.bulk_batches = RollingCounter(clock)
        self.query_jobs = RollingCounter(clock)

    def clear(self) -> None:
        """Reset every counter."""
        self.api_requests.clear()
        self.bulk_batches.clear()
        self.query_jobs.clear()
