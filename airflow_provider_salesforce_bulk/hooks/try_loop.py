"""One event loop per task try: a ``deferrable=False`` try logs in once and opens one HTTP pool.

A worker's sync code runs its async steps (submit, wait, copy results) one after the other. Each
``asyncio.run`` made a new loop, and tokens and pools are kept per loop, so every step logged in and
built a pool again. A :class:`TryLoop` keeps one loop for the whole try and holds every pool it
opened until the try ends, so the token cache and the pool carry from one step to the next.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AbstractAsyncContextManager
from typing import Any, TypeVar

__all__ = ["TryLoop", "current_try_loop", "one_loop_per_try"]

T = TypeVar("T")

_CURRENT = threading.local()


class TryLoop:
    """An event loop owned by this thread for one task try, and the pools kept open on it.

    Use it through :func:`one_loop_per_try`; :func:`~.salesforce_bulk.run_sync` runs on it while it is
    open in the calling thread, and :meth:`~.salesforce_bulk.SalesforceBulkHook.client` keeps each pool
    it borrows on it open until :meth:`close`.
    """

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._kept = contextlib.AsyncExitStack()
        self._keys: set[str] = set()

    def runs_here(self) -> bool:
        """True inside a coroutine this loop runs."""
        try:
            return asyncio.get_running_loop() is self._loop
        except RuntimeError:
            return False

    def run(self, factory: Callable[[], Awaitable[T]]) -> T:
        """Run ``factory()`` to completion on the try's loop, as ``asyncio.run`` would (tasks it left
        are cancelled), but keep the loop, its token cache and its pools for the next step."""
        try:
            return self._loop.run_until_complete(_await(factory))
        finally:
            _cancel_leftovers(self._loop)

    async def keep(self, key: str, acquire: Callable[[], AbstractAsyncContextManager[Any]]) -> None:
        """Hold ``acquire()`` (a pool) until the try ends: its last user leaving would close it."""
        if key not in self._keys:
            self._keys.add(key)
            await self._kept.enter_async_context(acquire())

    def close(self) -> None:
        """Release the pools, then close the loop; never raises."""
        loop = self._loop
        for step in (self._kept.aclose, loop.shutdown_asyncgens, loop.shutdown_default_executor):
            with contextlib.suppress(Exception):
                loop.run_until_complete(step())
            _cancel_leftovers(loop)
        loop.close()


def current_try_loop() -> TryLoop | None:
    """The try loop open in this thread, if any."""
    loop: TryLoop | None = getattr(_CURRENT, "loop", None)
    return loop


@contextlib.contextmanager
def one_loop_per_try() -> Iterator[TryLoop | None]:
    """Open a :class:`TryLoop` for this thread until the block ends (also when it fails).

    Re-entrant: inside an open one it yields that one and leaves it open. In a thread that already
    runs an event loop (a test calling ``execute`` from a coroutine) it yields ``None`` and each step
    runs on a loop of its own, as before.
    """
    current = current_try_loop()
    if current is not None:
        yield current
        return
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        yield None
        return
    loop = _CURRENT.loop = TryLoop()
    try:
        yield loop
    finally:
        _CURRENT.loop = None
        loop.close()


async def _await(factory: Callable[[], Awaitable[T]]) -> T:
    return await factory()


def _cancel_leftovers(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel and reap the tasks a step left behind, as ``asyncio.run`` does at its end."""
    pending = [task for task in asyncio.all_tasks(loop) if not task.done()]
    if not pending:
        return
    for task in pending:
        task.cancel()
    loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
