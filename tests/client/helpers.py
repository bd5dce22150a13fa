"""Sessions the client tests share: a fixed token against a fake transport, or a login to the emulator."""

from __future__ import annotations

from typing import Any

from airflow_provider_salesforce_bulk.client import (
    ClientCredentialsAuth,
    SalesforceSession,
    StaticTokenAuth,
    TokenCache,
    TokenProvider,
)
from airflow_provider_salesforce_bulk.emulator.server import RunningEmulator
from tests.client import fake_query


def mock_session(token: str, instance: str, **options: Any) -> SalesforceSession:
    """A session holding the fixed ``token`` for ``instance`` (``transport=`` a fake API), with a token
    cache of its own so no test sees another's token."""
    return SalesforceSession(StaticTokenAuth(token, instance), token_cache=TokenCache(), **options)


def query_api_session(api: fake_query.FakeQueryApi, **options: Any) -> SalesforceSession:
    """A fixed-token session talking to the in-memory query API ``api``, in its API version."""
    return mock_session(
        "fixed-token", fake_query.INSTANCE, transport=api.transport(), api_version=api.version, **options
    )


def emulator_session(
    emulator: RunningEmulator, auth: TokenProvider | None = None, **options: Any
) -> SalesforceSession:
    """A session logging in to ``emulator`` (client credentials unless ``auth`` is given), with a token
    cache of its own."""
    c = emulator.credentials
    auth = auth or ClientCredentialsAuth(c.client_id, c.client_secret, emulator.base_url)
    return SalesforceSession(auth, token_cache=TokenCache(), **options)
