"""``SalesforceBulkHook``: an Airflow connection turned into an authenticated Bulk API 2.0 client."""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, TypeVar

from airflow.providers.common.compat.sdk import BaseHook

from airflow_provider_salesforce_bulk.client import BulkIngestClient, SalesforceBulkError, SalesforceSession
from airflow_provider_salesforce_bulk.hooks.async_connection import aget_connection, aget_extra_dejson
from airflow_provider_salesforce_bulk.hooks.connection import (
    ConnectionConfigError,
    ConnectionFields,
    ConnectionSettings,
    parse_connection,
)
from airflow_provider_salesforce_bulk.hooks.masking import amask, mask
from airflow_provider_salesforce_bulk.hooks.pool import shared_pools
from airflow_provider_salesforce_bulk.hooks.try_loop import current_try_loop

__all__ = ["SalesforceBulkHook", "resolve_conn_id", "run_sync"]

T = TypeVar("T")

# Parsed connections by fingerprint of all their fields: loading a JWT key for every one of 500
# triggers would be wasted CPU on the triggerer's loop. Bounded, since rotated secrets make new keys.
_SETTINGS: collections.OrderedDict[str, ConnectionSettings] = collections.OrderedDict()
_SETTINGS_GUARD = threading.Lock()
_SETTINGS_MAX = 64


def _cached_parse(fields: ConnectionFields) -> ConnectionSettings:
    key = fields.cache_key()
    with _SETTINGS_GUARD:
        settings = _SETTINGS.get(key)
        if settings is not None:
            _SETTINGS.move_to_end(key)
            return settings
    settings = parse_connection(fields)
    with _SETTINGS_GUARD:
        _SETTINGS[key] = settings
        while len(_SETTINGS) > _SETTINGS_MAX:
            _SETTINGS.popitem(last=False)
    return settings


def _cached_only(fields: ConnectionFields) -> ConnectionSettings | None:
    with _SETTINGS_GUARD:
        return _SETTINGS.get(fields.cache_key())


def run_sync(factory: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine to completion from sync code, even if this thread already runs a loop.

    Inside :func:`~.try_loop.one_loop_per_try` it runs on the try's loop, so the steps of one try
    share one login and one pool; otherwise on a loop of its own.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        try_loop = current_try_loop()
        if try_loop is not None:
            return try_loop.run(factory)
        return asyncio.run(_await(factory))
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, _await(factory)).result()


async def _await(factory: Callable[[], Awaitable[T]]) -> T:
    return await factory()


class SalesforceBulkHook(BaseHook):
    """Access to the Salesforce Bulk API 2.0 ingest through an Airflow connection.

    Parameters
    ----------
    salesforce_bulk_conn_id : str
        A connection of type ``salesforce_bulk`` (or the official provider's ``salesforce``).

    Notes
    -----
    In a worker use the sync methods (:meth:`get_settings`, :meth:`test_connection`); in a trigger use
    :meth:`aget_settings` and :meth:`client`, which never block the event loop. Every secret of the
    connection and every token the client receives (access tokens, also those obtained after
    ``INVALID_SESSION_ID``, and refresh tokens, also rotated ones) is registered with Airflow's secret
    masker, through the session's ``on_secret`` callback.
    """

    conn_name_attr = "salesforce_bulk_conn_id"
    default_conn_name = "salesforce_bulk_default"
    conn_type = "salesforce_bulk"
    hook_name = "Salesforce Bulk API 2.0"

    def __init__(self, salesforce_bulk_conn_id: str = default_conn_name, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.salesforce_bulk_conn_id = salesforce_bulk_conn_id

    def __repr__(self) -> str:
        return f"<SalesforceBulkHook conn_id={self.salesforce_bulk_conn_id!r}>"

    # -- connection form (Airflow 3.1; 3.2+ reads conn-fields from the provider info instead) -----

    @classmethod
    def get_connection_form_widgets(cls) -> dict[str, Any]:
        """The extra fields of the connection form on Airflow 3.1."""
        from airflow_provider_salesforce_bulk.hooks.form import connection_form_widgets

        return connection_form_widgets()

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        """Hidden, relabelled and placeholder standard fields of the form on Airflow 3.1."""
        from airflow_provider_salesforce_bulk.hooks.form import ui_field_behaviour_for_hook

        return ui_field_behaviour_for_hook()

    # -- connection -----------------------------------------------------------------------------

    @staticmethod
    def _fields(conn: Any, extra: Mapping[str, Any]) -> ConnectionFields:
        return ConnectionFields(
            conn_id=conn.conn_id,
            conn_type=conn.conn_type,
            host=conn.host,
            login=conn.login,
            password=conn.password,
            extra=dict(extra),
        )

    def get_settings(self) -> ConnectionSettings:
        """Read and parse the connection (sync: workers and the API server).

        Raises
        ------
        ConnectionConfigError
            The connection lacks a field its auth type needs, or a field is malformed.
        """
        conn = self.get_connection(self.salesforce_bulk_conn_id)
        fields = self._fields(conn, conn.extra_dejson)
        mask(fields.password)
        settings = _cached_parse(fields)
        for secret in settings.secrets():
            mask(secret)
        return settings

    async def aget_settings(self) -> ConnectionSettings:
        """Read and parse the connection without blocking the event loop (triggerer)."""
        # Before Airflow 3.3.2 the async lookups mask secrets with a blocking call to the supervisor;
        # the compat helpers then run the sync ones in a worker thread instead of on the loop.
        conn = await aget_connection(self.salesforce_bulk_conn_id, hook=self)
        extra = await aget_extra_dejson(conn)
        fields = self._fields(conn, extra)
        settings = _cached_only(fields)
        if settings is None:
            await amask(fields.password)
            # Building a provider may read a key file and parse an RSA key: keep that off the loop.
            settings = await asyncio.to_thread(_cached_parse, fields)
            for secret in settings.secrets():
                await amask(secret)
        return settings

    # -- client ---------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def client(self, settings: ConnectionSettings | None = None) -> AsyncIterator[BulkIngestClient]:
        """An authenticated client on the pool shared by everything using this connection in this loop."""
        if settings is None:
            settings = await self.aget_settings()
        key = settings.auth.cache_key
        try_loop = current_try_loop()
        if try_loop is not None and try_loop.runs_here():
            # The next step of this try finds the pool (and the loop's token) still there.
            await try_loop.keep(key, lambda: shared_pools.acquire(key))
        async with shared_pools.acquire(key) as (http, slots):
            session = SalesforceSession(
                settings.auth,
                api_version=settings.api_version,
                http=http,
                request_slots=slots,
                # Every token the session ever gets (refreshed and rotated ones too) is masked
                # before it can reach a log line.
                on_secret=amask,
                allowed_hosts=settings.allowed_hosts,
            )
            await session.token()
            yield BulkIngestClient(session)

    def test_connection(self) -> tuple[bool, str]:
        """Log in and read ``/limits`` (the UI's Test button); never raises."""
        try:
            settings = self.get_settings()
            return run_sync(lambda: self._probe(settings))
        except (ConnectionConfigError, SalesforceBulkError) as exc:
            return False, str(exc)
        except Exception as exc:
            return False, f"{type(exc).__name__}: {exc}"

    async def _probe(self, settings: ConnectionSettings) -> tuple[bool, str]:
        async with self.client(settings) as client:
            response = await client.session.request("GET", "limits")
            instance = await client.session.instance_url()
        limits = response.json()
        daily = limits.get("DailyApiRequests") or {}
        remaining = daily.get("Remaining")
        detail = ""
        if remaining is not None:
            detail = f"; {remaining} of {daily.get('Max')} daily API requests left"
        return True, f"Connected to {instance} ({settings.auth_type}, API v{settings.api_version}){detail}"


def resolve_conn_id(salesforce_bulk_conn_id: str | None, conn_id: str | None) -> str:
    """The connection id an operator was given: ``salesforce_bulk_conn_id`` (the hook's name for it) or
    ``conn_id`` (the name of the first releases, still accepted), the default when neither is set.

    Raises
    ------
    ValueError
        Both were given with different values, at DAG parse time.
    """
    if salesforce_bulk_conn_id and conn_id and salesforce_bulk_conn_id != conn_id:
        raise ValueError(
            f"salesforce_bulk_conn_id={salesforce_bulk_conn_id!r} and conn_id={conn_id!r} name two "
            "connections: give one of them (conn_id is the older name of salesforce_bulk_conn_id)"
        )
    return salesforce_bulk_conn_id or conn_id or SalesforceBulkHook.default_conn_name
