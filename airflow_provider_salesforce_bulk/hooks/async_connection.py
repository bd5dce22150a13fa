"""The connection and its extra, read without blocking the triggerer's event loop, on any common-compat.

common-compat 1.23 has both lookups (``get_async_extra_dejson`` is new there, and ``get_async_connection``
learnt to avoid the blocking secret masking of Airflow < 3.3.2), but it needs Python 3.11; on Python 3.10
the newest is 1.20. There the same two lookups are done here, the way 1.23 does them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow.providers.common.compat.sdk import BaseHook, Connection

__all__ = ["aget_connection", "aget_extra_dejson"]


async def aget_connection(conn_id: str, hook: BaseHook) -> Connection:
    """``conn_id`` through ``hook``: its async lookup where that masks secrets without blocking."""
    from airflow.providers.common.compat import connection as compat

    if hasattr(compat, "get_async_extra_dejson"):  # common-compat 1.23+
        return await compat.get_async_connection(conn_id, hook=hook)

    from airflow.providers.common.compat.sdk import Connection
    from asgiref.sync import sync_to_async

    if hasattr(Connection, "aextra_dejson"):  # Airflow 3.3.2+: secrets are masked asynchronously
        return await hook.aget_connection(conn_id=conn_id)
    # Older Airflow masks with a blocking call to the supervisor, which raises DeadlockImminentError
    # on the loop's thread while another request is in flight: the sync lookup, in a worker thread.
    return await sync_to_async(hook.get_connection)(conn_id=conn_id)


async def aget_extra_dejson(conn: Connection) -> dict[str, Any]:
    """The connection's extra as a dict, its secrets masked, without blocking the event loop."""
    if hasattr(conn, "aextra_dejson"):  # Airflow 3.3.2+
        extra: dict[str, Any] = await conn.aextra_dejson()
        return extra

    from asgiref.sync import sync_to_async

    return await sync_to_async(lambda: conn.extra_dejson)()
