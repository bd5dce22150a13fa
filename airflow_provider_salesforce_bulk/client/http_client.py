"""The one place an ``httpx.AsyncClient`` is configured, for a session's own pool and for shared ones."""

from __future__ import annotations

import functools
import os
import ssl

import httpx

from airflow_provider_salesforce_bulk import __version__
from airflow_provider_salesforce_bulk.client.timeouts import DEFAULT_TIMEOUTS, Timeouts

__all__ = ["DEFAULT_MAX_CONNECTIONS", "USER_AGENT", "build_http_client", "default_ssl_context"]

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
        verify=default_ssl_context(),
        transport=transport,
        limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
        follow_redirects=False,
    )


def default_ssl_context() -> ssl.SSLContext:
    """httpx's default verifying context, made once per process and CA settings, shared by every client.

    httpx would build one per client, loading the whole CA bundle each time (30-60 ms of CPU): on the
    triggerer's event loop whenever a connection's first trigger opens a pool, and twice per task.
    A context is safe to share between clients, threads and loops. ``SSL_CERT_FILE`` and
    ``SSL_CERT_DIR`` are honoured as httpx honours them, read at each call.
    """
    return _ssl_context(os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR"))


@functools.cache
def _ssl_context(cert_file: str | None, cert_dir: str | None) -> ssl.SSLContext:
    # The arguments are the cache key: httpx reads the same variables itself.
    return httpx.create_ssl_context()
