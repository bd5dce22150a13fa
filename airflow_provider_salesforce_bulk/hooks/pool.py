"""One HTTP connection pool per event loop and connection, shared by every trigger and task using it.

Tokens are already shared per credentials and loop by the client's ``default_token_cache``; this
registry shares the ``httpx.AsyncClient`` too, so 500 triggers on one connection in one triggerer
use one pool (and one TLS handshake per connection in it), not 500. A pool is closed when its last
user leaves, so nothing outlives the work that needed it.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import weakref
from collections.abc import AsyncIterator

import httpx

from airflow_provider_salesforce_bulk.client.session import DEFAULT_TIMEOUT

__all__ = ["SharedPools", "shared_pools"]


class _Pool:
    def __init__(self, max_connections: int) -> None:
        self.http = httpx.AsyncClient(
            timeout=DEFAULT_TIMEOUT,
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            follow_redirects=False,
        )
        self.slots = asyncio.Semaphore(max_connections)
        self.users = 0


class SharedPools:
    """Reference-counted ``httpx.AsyncClient`` objects keyed by event loop and connection fingerprint."""

    def __init__(self, max_connections: int = 20) -> None:
        self.max_connections = max_connections
        self._pools: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, _Pool]] = (
            weakref.WeakKeyDictionary()
        )
        self._guard = threading.Lock()
        self.created = 0
        """Pools created so far (the benchmark checks that 500 triggers make one)."""

    @contextlib.asynccontextmanager
    async def acquire(self, key: str) -> AsyncIterator[tuple[httpx.AsyncClient, asyncio.Semaphore]]:
        """Borrow the pool of ``key`` in the running loop, creating it for the first user.

        Yields the client and the request slots every user of the pool must share.
        """
        loop = asyncio.get_running_loop()
        with self._guard:
            per_loop = self._pools.setdefault(loop, {})
            pool = per_loop.get(key)
            if pool is None:
                pool = per_loop[key] = _Pool(self.max_connections)
                self.created += 1
            pool.users += 1
        try:
            yield pool.http, pool.slots
        finally:
            with self._guard:
                pool.users -= 1
                last = pool.users == 0
                if last and per_loop.get(key) is pool:
                    del per_loop[key]
            if last:
                await asyncio.shield(pool.http.aclose())

    def open_pools(self) -> int:
        """Pools in use in the running loop."""
        loop = asyncio.get_running_loop()
        with self._guard:
            return len(self._pools.get(loop, {}))


shared_pools = SharedPools()
"""The process-wide registry the hook uses."""
