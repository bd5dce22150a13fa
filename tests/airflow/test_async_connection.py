"""The triggerer's connection lookups with common-compat's helpers and without them (Python 3.10).

common-compat 1.21+ needs Python 3.11, so a Python 3.10 install has 1.20, which lacks the helpers the
hook prefers. Both paths run here on every Airflow: the helpers are hidden to take the fallback, and
``Connection.aextra_dejson`` (Airflow 3.3.2+) is added or removed to take either of its branches.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest
from airflow.providers.common.compat import connection as compat
from airflow.providers.common.compat.sdk import Connection

from airflow_provider_salesforce_bulk.hooks.async_connection import aget_connection, aget_extra_dejson

CONN = Connection(conn_id="sf", conn_type="salesforce_bulk", extra='{"client_id": "abc"}')


class RecordingHook:
    """Stands in for the hook: which lookup ran, and on which thread."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, bool]] = []

    def get_connection(self, conn_id: str) -> Connection:
        self.calls.append(("get_connection", conn_id, threading.current_thread() is threading.main_thread()))
        return CONN

    async def aget_connection(self, conn_id: str) -> Connection:
        self.calls.append(("aget_connection", conn_id, threading.current_thread() is threading.main_thread()))
        return CONN


@pytest.fixture
def without_compat_helpers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(compat, "get_async_extra_dejson", raising=False)


async def _aextra_dejson(self: Any) -> dict[str, Any]:
    return {"from": "aextra_dejson"}


@pytest.mark.usefixtures("without_compat_helpers")
async def test_before_airflow_3_3_2_the_sync_lookup_runs_in_a_worker_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delattr(Connection, "aextra_dejson", raising=False)
    hook: Any = RecordingHook()
    assert await aget_connection("sf", hook=hook) is CONN
    # Off the loop's thread: there the blocking secret masking raises DeadlockImminentError.
    assert hook.calls == [("get_connection", "sf", False)]


@pytest.mark.usefixtures("without_compat_helpers")
async def test_from_airflow_3_3_2_the_async_lookup_runs_on_the_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Connection, "aextra_dejson", _aextra_dejson, raising=False)
    hook: Any = RecordingHook()
    assert await aget_connection("sf", hook=hook) is CONN
    assert hook.calls == [("aget_connection", "sf", True)]


async def test_the_extra_is_read_in_a_worker_thread_without_aextra_dejson(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delattr(Connection, "aextra_dejson", raising=False)
    threads: list[bool] = []

    def extra_dejson(self: Any) -> dict[str, Any]:
        threads.append(threading.current_thread() is threading.main_thread())
        return {"client_id": "abc"}

    monkeypatch.setattr(Connection, "extra_dejson", property(extra_dejson))
    assert await aget_extra_dejson(CONN) == {"client_id": "abc"}
    assert threads == [False]


async def test_the_extra_is_awaited_with_aextra_dejson(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Connection, "aextra_dejson", _aextra_dejson, raising=False)
    assert await aget_extra_dejson(CONN) == {"from": "aextra_dejson"}


async def test_common_compat_helpers_are_used_when_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []

    async def helper(conn_id: str, hook: Any = None) -> Connection:
        seen.append(conn_id)
        return CONN

    monkeypatch.setattr(compat, "get_async_extra_dejson", _aextra_dejson, raising=False)
    monkeypatch.setattr(compat, "get_async_connection", helper)
    hook: Any = RecordingHook()
    assert await aget_connection("sf", hook=hook) is CONN
    assert seen == ["sf"]
