"""Connection parsing (no Airflow DB needed) and the hook's test_connection against the emulator."""

from __future__ import annotations

import pathlib
import re

import pytest

from airflow_provider_salesforce_bulk.client import (
    ClientCredentialsAuth,
    InputError,
    JwtBearerAuth,
    PasswordAuth,
    RefreshTokenAuth,
    SalesforceBulkError,
    SoapLoginAuth,
    StaticTokenAuth,
)
from airflow_provider_salesforce_bulk.emulator.credentials import Credentials
from airflow_provider_salesforce_bulk.emulator.server import RunningEmulator
from airflow_provider_salesforce_bulk.hooks.connection import (
    AUTH_TYPES,
    ConnectionConfigError,
    ConnectionFields,
    parse_connection,
)
from tests.airflow.helpers import conn_uri_json

KEY = Credentials().private_key_pem


@pytest.mark.parametrize(
    ("fields", "auth_type", "cls"),
    [
        (
            ConnectionFields(
                "c",
                "salesforce_bulk",
                "acme.my.salesforce.com",
                extra={"client_id": "id", "client_secret": "s"},
            ),
            "client_credentials",
            ClientCredentialsAuth,
        ),
        (
            ConnectionFields(
                "c", "salesforce_bulk", "login", "u@x.com", extra={"client_id": "id", "private_key": KEY}
            ),
            "jwt_bearer",
            JwtBearerAuth,
        ),
        (
            ConnectionFields("c", "salesforce_bulk", "test", extra={"client_id": "id", "refresh_token": "r"}),
            "refresh_token",
            RefreshTokenAuth,
        ),
        (
            ConnectionFields(
                "c", "salesforce_bulk", None, "u", "p", extra={"client_id": "id", "client_secret": "s"}
            ),
            "password",
            PasswordAuth,
        ),
        (ConnectionFields("c", "salesforce_bulk", None, "u", "p"), "soap_login", SoapLoginAuth),
        (
            ConnectionFields(
                "c",
                "salesforce_bulk",
                None,
                extra={"access_token": "t", "instance_url": "https://acme.my.salesforce.com"},
            ),
            "access_token",
            StaticTokenAuth,
        ),
        # The official provider's conn type and extra names.
        (
            ConnectionFields(
                "c",
                "salesforce",
                None,
                "u",
                "p",
                extra={"security_token": "t", "domain": "test", "version": "62.0"},
            ),
            "soap_login",
            SoapLoginAuth,
        ),
        (
            ConnectionFields(
                "c",
                "salesforce",
                None,
                "u",
                "p",
                extra={"consumer_key": "k", "consumer_secret": "s", "domain": "acme.my"},
            ),
            "password",
            PasswordAuth,
        ),
        (
            ConnectionFields("c", "salesforce", None, "u", extra={"consumer_key": "k", "private_key": KEY}),
            "jwt_bearer",
            JwtBearerAuth,
        ),
    ],
)
def test_auth_type_and_provider(fields: ConnectionFields, auth_type: str, cls: type) -> None:
    settings = parse_connection(fields)
    assert settings.auth_type == auth_type
    assert isinstance(settings.auth, cls)


def test_the_form_and_the_guide_offer_exactly_the_auth_types_the_parser_reads() -> None:
    from airflow_provider_salesforce_bulk.get_provider_info import AUTH_TYPE_CHOICES, conn_fields

    schema = conn_fields()["auth_type"]["schema"]
    assert tuple(AUTH_TYPE_CHOICES) == AUTH_TYPES
    assert tuple(schema["enum"]) == AUTH_TYPES
    assert tuple(schema["values_display"]) == AUTH_TYPES
    # And the user guide's table of what each auth type needs.
    guide = (pathlib.Path(__file__).parents[2] / "docs" / "connection.md").read_text()
    table = guide.split("| auth_type | needs |", 1)[1].split("\n\n", 1)[0]
    assert tuple(re.findall(r"^\| `(\w+)` \|", table, flags=re.MULTILINE)) == AUTH_TYPES


@pytest.mark.parametrize("auth_type", AUTH_TYPES)
def test_every_auth_type_can_be_named_explicitly(auth_type: str) -> None:
    everything = {
        "auth_type": auth_type.replace("_", "-").upper(),
        "client_id": "id",
        "client_secret": "s",
        "private_key": KEY,
        "refresh_token": "r",
        "access_token": "t",
        "instance_url": "https://acme.my.salesforce.com",
    }
    fields = ConnectionFields("c", "salesforce_bulk", "acme.my.salesforce.com", "u", "p", extra=everything)
    settings = parse_connection(fields)
    assert settings.auth_type == auth_type


def test_a_connection_error_is_an_input_error_and_a_value_error() -> None:
    with pytest.raises(ConnectionConfigError) as info:
        parse_connection(ConnectionFields("c", "salesforce_bulk", None, extra={"auth_type": "kerberos"}))
    # Callers catching the client's InputError (never retried), its base class or ValueError all see it.
    assert isinstance(info.value, InputError)
    assert isinstance(info.value, SalesforceBulkError)
    assert isinstance(info.value, ValueError)
    assert (info.value.field, info.value.auth_type, info.value.conn_id) == ("auth_type", None, "c")
    assert "kerberos" in str(info.value)


def test_official_extras_map_onto_ours() -> None:
    settings = parse_connection(
        ConnectionFields(
            "c",
            "salesforce",
            None,
            "u",
            "p",
            extra={"consumer_key": "k", "consumer_secret": "s", "domain": "acme.my", "version": "v61.0"},
        )
    )
    assert settings.api_version == "61.0"
    assert settings.login_url == "https://acme.my.salesforce.com"


@pytest.mark.parametrize(
    ("fields", "field", "auth_type"),
    [
        (
            ConnectionFields(
                "c",
                "salesforce_bulk",
                "acme.my.salesforce.com",
                extra={"auth_type": "client_credentials", "client_id": "id"},
            ),
            "client_secret",
            "client_credentials",
        ),
        (
            ConnectionFields(
                "c",
                "salesforce_bulk",
                "login",
                extra={"auth_type": "jwt_bearer", "client_id": "id", "private_key": KEY},
            ),
            "login",
            "jwt_bearer",
        ),
        (
            ConnectionFields(
                "c", "salesforce_bulk", "login", "u", extra={"auth_type": "jwt_bearer", "client_id": "id"}
            ),
            "private_key",
            "jwt_bearer",
        ),
        (
            ConnectionFields(
                "c",
                "salesforce_bulk",
                "login",
                "u",
                extra={"client_id": "id", "private_key": "-----BEGIN NOT A KEY"},
            ),
            "private_key",
            "jwt_bearer",
        ),
        (
            ConnectionFields(
                "c",
                "salesforce_bulk",
                "login",
                extra={"auth_type": "client_credentials", "client_id": "id", "client_secret": "s"},
            ),
            "host",
            "client_credentials",
        ),
        (
            ConnectionFields("c", "salesforce_bulk", "login", extra={"auth_type": "kerberos"}),
            "auth_type",
            None,
        ),
        (ConnectionFields("c", "salesforce_bulk", "login"), "auth_type", None),
        (ConnectionFields("c", "salesforce_bulk", "http://example.com", "u", "p"), "host", "soap_login"),
        (
            ConnectionFields("c", "salesforce_bulk", None, "u", "p", extra={"api_version": "sixty"}),
            "api_version",
            "soap_login",
        ),
        (
            ConnectionFields(
                "c", "salesforce_bulk", None, extra={"auth_type": "access_token", "access_token": "t"}
            ),
            "instance_url",
            "access_token",
        ),
    ],
)
def test_bad_connection_names_field_and_auth_type(
    fields: ConnectionFields, field: str, auth_type: str | None
) -> None:
    with pytest.raises(ConnectionConfigError) as info:
        parse_connection(fields)
    assert info.value.field == field, str(info.value)
    assert info.value.auth_type == auth_type
    assert "connection 'c'" in str(info.value)
    if auth_type:
        assert f"auth type {auth_type}" in str(info.value)


def test_errors_and_repr_hold_no_secret() -> None:
    secret = "S3CRET-VALUE-123"
    fields = ConnectionFields(
        "c",
        "salesforce_bulk",
        "login",
        "u",
        secret,
        extra={"auth_type": "password", "client_id": "id", "client_secret": secret},
    )
    with pytest.raises(ConnectionConfigError) as info:
        parse_connection(
            ConnectionFields(
                "c",
                "salesforce_bulk",
                "login",
                None,
                secret,
                extra={"auth_type": "password", "client_secret": secret},
            )
        )
    assert secret not in str(info.value)
    settings = parse_connection(fields)
    assert secret not in repr(settings)
    assert secret not in repr(fields)
    assert secret in settings.secrets()


def test_test_connection_against_the_emulator(
    airflow_db: object, emulator: RunningEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow_provider_salesforce_bulk.hooks.salesforce_bulk import SalesforceBulkHook

    monkeypatch.setenv("AIRFLOW_CONN_SF_OK", conn_uri_json(emulator))
    monkeypatch.setenv("AIRFLOW_CONN_SF_WRONG", conn_uri_json(emulator, client_secret="NOT-THE-SECRET"))
    ok, message = SalesforceBulkHook("sf_ok").test_connection()
    assert ok, message
    assert emulator.base_url in message
    assert "daily API requests" in message
    ok, message = SalesforceBulkHook("sf_wrong").test_connection()
    assert not ok
    assert "NOT-THE-SECRET" not in message
    assert "invalid_client" in message or "Authentication" in message


def test_provider_info_registers_everything() -> None:
    import importlib

    from airflow_provider_salesforce_bulk.get_provider_info import get_provider_info

    info = get_provider_info()
    assert info["package-name"] == "airflow-provider-salesforce-bulk"
    conn = info["connection-types"][0]
    assert conn["connection-type"] == "salesforce_bulk"
    fields = conn["conn-fields"]
    for secret in (
        "client_secret",
        "private_key_passphrase",
        "security_token",
        "refresh_token",
        "access_token",
    ):
        assert fields[secret]["schema"]["format"] == "password"
    assert fields["private_key"]["schema"]["format"] == "multiline"
    assert "jwt_bearer" in fields["auth_type"]["schema"]["enum"]
    for group in ("hooks", "operators", "triggers"):
        for module in info[group][0]["python-modules"]:
            importlib.import_module(module)
    module, _, name = info["extra-links"][0].rpartition(".")
    assert hasattr(importlib.import_module(module), name)


def test_allowed_hosts_extra_is_parsed_and_validated() -> None:
    base = {"client_id": "id", "client_secret": "s"}
    fields = ConnectionFields(
        "c",
        "salesforce_bulk",
        "acme.my.salesforce.com",
        extra={**base, "allowed_hosts": " SF-Proxy.example.com, *.example.org  api.example.net"},
    )
    settings = parse_connection(fields)
    assert settings.allowed_hosts == ("sf-proxy.example.com", "*.example.org", "api.example.net")
    assert (
        parse_connection(
            ConnectionFields("c", "salesforce_bulk", "acme.my.salesforce.com", extra=base)
        ).allowed_hosts
        == ()
    )
    with pytest.raises(ConnectionConfigError) as info:
        parse_connection(
            ConnectionFields(
                "c",
                "salesforce_bulk",
                "acme.my.salesforce.com",
                extra={**base, "allowed_hosts": "https://proxy.example.com/path"},
            )
        )
    assert info.value.field == "allowed_hosts"
    assert "proxy.example.com/path" in str(info.value)


def test_the_hook_masks_every_token_including_refreshed_ones(
    airflow_db: object, emulator: RunningEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    try:
        from airflow.sdk.log import _secrets_masker
    except ImportError:  # before Airflow 3.3
        from airflow.sdk._shared.secrets_masker.secrets_masker import _secrets_masker

    from airflow_provider_salesforce_bulk.hooks.salesforce_bulk import SalesforceBulkHook, run_sync

    monkeypatch.setenv("AIRFLOW_CONN_SF_MASK", conn_uri_json(emulator))
    hook = SalesforceBulkHook("sf_mask")

    async def use() -> list[str]:
        tokens: list[str] = []
        async with hook.client() as client:
            await client.session.request("GET", "limits")
            tokens.append((await client.session.token()).access_token)
            # Wide margins: the new session must outlive its login and the resent request on a busy
            # machine (at 0.2 s it expired again before use, and the request failed after a re-login).
            emulator.update_settings(session_expiry_every_seconds=3.0)
            await asyncio.sleep(3.5)  # every session older than 3 s is now expired
            await client.session.request("GET", "limits")  # INVALID_SESSION_ID, then a new login
            tokens.append((await client.session.token()).access_token)
        emulator.update_settings(session_expiry_every_seconds=None)
        return tokens

    first, refreshed = run_sync(use)
    assert first != refreshed
    masker = _secrets_masker()
    for token in (first, refreshed):
        assert token not in masker.redact(f"token={token}"), "a token was not registered with the masker"
