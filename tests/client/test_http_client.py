"""The HTTP clients' shared TLS context."""

from __future__ import annotations

import ssl
from collections.abc import Iterator

import certifi
import httpx
import pytest

from airflow_provider_salesforce_bulk.client import http_client
from airflow_provider_salesforce_bulk.client.http_client import build_http_client, default_ssl_context


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[ssl.SSLContext]]:
    """Every context httpx builds from now on (the cache emptied first)."""
    made: list[ssl.SSLContext] = []
    real = httpx.create_ssl_context

    def create() -> ssl.SSLContext:
        made.append(real())
        return made[-1]

    monkeypatch.setattr(http_client.httpx, "create_ssl_context", create)
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    http_client._ssl_context.cache_clear()
    yield made
    http_client._ssl_context.cache_clear()


async def test_clients_share_one_verifying_context(counted: list[ssl.SSLContext]) -> None:
    clients = [build_http_client() for _ in range(3)]
    try:
        assert len(counted) == 1  # the CA bundle is loaded once, not per client
        context = counted[0]
        assert context.verify_mode is ssl.CERT_REQUIRED
        assert context.check_hostname
        assert context.cert_store_stats()["x509_ca"] > 0
    finally:
        for client in clients:
            await client.aclose()


def test_ssl_cert_file_is_honoured_as_httpx_does(
    counted: list[ssl.SSLContext], monkeypatch: pytest.MonkeyPatch
) -> None:
    default = default_ssl_context()
    monkeypatch.setenv("SSL_CERT_FILE", certifi.where())
    chosen = default_ssl_context()
    assert chosen is not default
    assert len(counted) == 2
    assert default_ssl_context() is chosen  # and kept for the same settings
    monkeypatch.delenv("SSL_CERT_FILE")
    assert default_ssl_context() is default
