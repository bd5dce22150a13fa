"""The one place an ``httpx.AsyncClient`` is configured, for a session's own pool and for shared ones."""

from __future__ import annotations

import httpx

from airflow_provider_salesforce_bulk import __version__
from airflow_provider_salesforce_bulk.client.timeouts import DEFAULT_TIMEOUTS, Timeouts

__all__ = ["DEFAULT_MAX_CONNECTIONS", "USER_AGENT", "build_http_client"]

DEFAULT_MAX_CONNECTIONS = 20

USER_AGENT = f"airflow-provider-salesforce-bulk/{__version__} httpx/{httpx.__version__}"


def build_http_client(
    timeouts: Timeouts = DEFAULT_TIMEOUTS,
    *,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    transport: httpx.AsyncBaseTransport | None = None,
) -> httpx.AsyncClient:
    """A client with ``timeouts``' per-operation limits and a pool of ``max_connections``.

    Redirects are not followed (httpx's default, stated): only URLs the session checked against its
    allowed hosts are requested.
    """
    return httpx.AsyncClient(
        timeout=timeouts.as_httpx(),
        transport=transport,
        limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
        follow_redirects=False,
    )
