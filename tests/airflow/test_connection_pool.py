"""The hook's shared connection pools: one per connection and event loop, closed by its last user."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading

import httpx

from airflow_provider_salesforce_bulk.hooks.pool import SharedPools


def ok(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, json={})


async def test_users_of_one_connection_share_a_pool_until_the_last_leaves() -> None:
    transports: list[httpx.MockTransport] = []

    def transport() -> httpx.AsyncBaseTransport:
        transports.append(httpx.MockTransport(ok))
        return transports[-1]

    pools = SharedPools(max_connections=3, transport=transport)
    async with pools.acquire("conn-a") as (http_a, slots_a), pools.acquire("conn-a") as (again, slots_again):
        assert again is http_a
        assert slots_again is slots_a
        async with pools.acquire("conn-b") as (http_b, _):
            assert http_b is not http_a
            assert pools.open_pools() == 2
        assert http_b.is_closed
        assert not http_a.is_closed
        assert (await http_a.get("https://acme.my.salesforce.com/")).status_code == 200
    assert http_a.is_closed
    assert pools.open_pools() == 0
    assert (pools.created, len(transports)) == (2, 2)
    async with pools.acquire("conn-a") as (fresh, _):
        assert fresh is not http_a
    assert pools.created == 3


async def test_a_pool_bounds_requests_in_flight_with_its_slots() -> None:
    pools = SharedPools(max_connections=2, transport=lambda: httpx.MockTransport(ok))
    async with pools.acquire("conn") as (_, slots):
        await slots.acquire()
        await slots.acquire()
        assert slots.locked()
        slots.release()
        slots.release()


def test_each_event_loop_gets_its_own_pool() -> None:
    # Two threads each running a loop hold the same connection's pool at the same time.
    pools = SharedPools(transport=lambda: httpx.MockTransport(ok))
    both_hold = threading.Barrier(2, timeout=30)

    async def borrow() -> int:
        async with pools.acquire("conn") as (http, _):
            await asyncio.to_thread(both_hold.wait)
            return id(http)

    with concurrent.futures.ThreadPoolExecutor(2) as threads:
        clients = list(threads.map(lambda _: asyncio.run(borrow()), range(2)))
    assert clients[0] != clients[1]
    assert pools.created == 2
