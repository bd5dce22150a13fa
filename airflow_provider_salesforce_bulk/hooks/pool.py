"""One HTTP connection pool per event loop and connection, shared by every trigger and task using it.

Tokens are already shared per credentials and loop by the client's ``default_token_cache``; this
registry shares the ``httpx.AsyncClient`` too, so 500 triggers on one connection in one triggerer
use one pool (and one TLS handshake per connection in it), not 500. A pool is closed when its last
user leaves, so nothing outlives the work that needed it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import httpx

from airflow_provider_salesforce_bulk.client.http_client import DEFAULT_MAX_CONNECTIONS, build_http_client
from airflow_provider_salesforce_bulk.client.per_loop import PerLoop

__all__ = ["SharedPools", "shared_pools"]


class _Pool:
    def __init__(self, http: httpx.AsyncClient, max_connections: int) -> None:
        self.http = http
        self.slots = asyncio.Semaphore(max_connections)
        self.users = 0


class SharedPools:
    """Reference-counted ``httpx.AsyncClient`` objects keyed by event loop and connection fingerprint.

    Parameters
    ----------
    max_connections : int
        Size of each pool, and of its request slots.
    transport : Callable[[], httpx.AsyncBaseTransport], optional
        Makes the transport of each new pool (tests wrap the real one to lose or hold answers).
    """

    def __init__(
        self,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        transport: Callable[[], httpx.AsyncBaseTransport] | None = None,
    ) -> None:
        self.max_connections = max_connections
        self.transport = transport
        self._pools: PerLoop[_Pool] = PerLoop()
        self.created = 0
        """Pools created so far (the benchmark checks that 500 triggers make one)."""

    def _open(self) -> _Pool:
        # Runs under the registry's lock, so the count stays exact across threads.
        self.created += 1
        transport = self.transport() if self.transport is not None else None
        http = build_http_client(max_connections=self.max_connections, transport=transport)
        return _Pool(http, self.max_connections)

    @contextlib.asynccontextmanager
    async def acquire(self, key: str) -> AsyncIterator[tuple[httpx.AsyncClient, asyncio.Semaphore]]:
        """Borrow the pool of ``key`` in the running loop, creating it for the first user.

        Yields the client and the request slots every user of the pool must share.
        """
        pool = self._pools.get(key, self._open)
        # Only this loop's thread touches its pools, and nothing is awaited between the lookup and
        # the count: no other user can see the pool closing.
        pool.users += 1
        try:
            yield pool.http, pool.slots
        finally:
            pool.users -= 1
            if pool.users == 0:
                self._pools.discard(key, pool)
                await asyncio.shield(pool.http.aclose())

    def open_pools(self) -> int:
        """Pools in use in the running loop."""
        return self._pools.count()


shared_pools = SharedPools()
"""The process-wide registry the hook uses."""
