"""Objects kept per event loop: asyncio locks and pools belong to the loop that made them.

The token cache and the Airflow hook's shared connection pools both keep one object per key and
event loop (a triggerer runs one loop; tests and ``asyncio.run`` calls make many). A loop's objects are
forgotten with the loop.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["PerLoop"]

V = TypeVar("V")


class PerLoop(Generic[V]):
    """A mapping from a key to one value per running event loop, safe to share between threads."""

    def __init__(self) -> None:
        self._by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, V]] = (
            weakref.WeakKeyDictionary()
        )
        # Several threads each running a loop may reach the outer mapping at once.
        self._guard = threading.Lock()

    def get(self, key: str, create: Callable[[], V]) -> V:
        """The running loop's value for ``key``, made by ``create`` for the first caller."""
        loop = asyncio.get_running_loop()
        with self._guard:
            values = self._by_loop.setdefault(loop, {})
            value = values.get(key)
            if value is None:
                value = values[key] = create()
            return value

    def discard(self, key: str, value: V) -> None:
        """Forget ``key`` in the running loop if it still holds ``value``."""
        loop = asyncio.get_running_loop()
        with self._guard:
            values = self._by_loop.get(loop, {})
            if values.get(key) is value:
                del values[key]

    def count(self) -> int:
        """Values held for the running loop."""
        loop = asyncio.get_running_loop()
        with self._guard:
            return len(self._by_loop.get(loop, {}))

    def clear(self) -> None:
        """Forget every value of every loop."""
        with self._guard:
            self._by_loop.clear()
