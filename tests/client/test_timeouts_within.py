"""``within()``: a deadline on an await that never loses the caller's cancellation.

Both implementations are tested on every Python: ``asyncio.timeout`` (3.11+) and the one that cancels
the calling task itself (3.10), so the 3.10 path is proven in the pinned run too.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from airflow_provider_salesforce_bulk.client.timeouts import _within_by_cancelling, within

IMPLEMENTATIONS: list[Callable[[Awaitable[Any], float], Awaitable[Any]]] = [_within_by_cancelling]
if sys.version_info >= (3, 11):
    IMPLEMENTATIONS.append(within)


@pytest.fixture(params=IMPLEMENTATIONS, ids=lambda f: f.__name__)
def bounded(request: pytest.FixtureRequest) -> Callable[[Awaitable[Any], float], Awaitable[Any]]:
    return request.param  # type: ignore[no-any-return]


async def test_an_answer_in_time_is_returned(bounded: Any) -> None:
    async def answer() -> str:
        await asyncio.sleep(0.01)
        return "ok"

    assert await bounded(answer(), 5) == "ok"
    await asyncio.sleep(0.05)  # the deadline's timer was cancelled: nothing fires later


async def test_no_answer_in_time_is_a_timeout_error(bounded: Any) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(asyncio.TimeoutError):
        await bounded(asyncio.sleep(30), 0.05)
    assert loop.time() - started < 10
    await asyncio.sleep(0)  # the task is not left cancelled


async def test_the_callers_cancellation_goes_through_not_as_a_timeout(bounded: Any) -> None:
    async def waiter() -> None:
        await bounded(asyncio.sleep(30), 20)

    task = asyncio.ensure_future(waiter())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_cancellation_arriving_with_the_answer_is_not_lost(bounded: Any) -> None:
    """The answer and the caller's cancellation land in the same step: the caller ends cancelled at
    its next await (asyncio.wait_for dropped such a cancellation, and a load polled on)."""
    after: list[str] = []

    async def caller() -> None:
        me = asyncio.current_task()
        assert me is not None

        async def answer() -> str:
            me.cancel()
            return "answer"

        assert await bounded(answer(), 5) == "answer"
        after.append("got the answer")
        await asyncio.sleep(1)
        after.append("polled on")

    with pytest.raises(asyncio.CancelledError):
        await asyncio.ensure_future(caller())
    assert after == ["got the answer"]
