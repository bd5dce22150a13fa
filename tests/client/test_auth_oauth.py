"""OAuth form flows (client credentials, password, refresh token), login URLs, error mapping and retries."""

from __future__ import annotations

import asyncio
import base64
import urllib.parse

import httpx
import pytest

from airflow_provider_salesforce_bulk.client.auth import (
    ClientCredentialsAuth,
    PasswordAuth,
    RefreshTokenAuth,
    Token,
    TokenProvider,
    normalize_login_url,
)
from airflow_provider_salesforce_bulk.client.errors import (
    AuthenticationError,
    InputError,
    ServerError,
    ServerUnavailableError,
    TransportError,
)
from airflow_provider_salesforce_bulk.client.retry import RetryPolicy

MY_DOMAIN = "https://acme.my.salesforce.com"
INSTANCE = "https://acme.my.salesforce.com"
SUCCESS = {
    "access_token": "00Dxx0000001gPL!AQ4AQ.access",
    "instance_url": INSTANCE + "/",
    "id": "https://login.salesforce.com/id/00Dxx0000001gPLEAY/005xx000001SwiUAAS",
    "token_type": "Bearer",
    "issued_at": "1700000000000",
    "signature": "c2lnbmF0dXJl",
    "scope": "api",
}


class Recorder:
    """A MockTransport handler recording requests and answering from a script (the last answer repeats)."""

    def __init__(self, *answers: httpx.Response | Exception) -> None:
        self.requests: list[httpx.Request] = []
        self._answers = list(answers)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self._answers.pop(0) if len(self._answers) > 1 else self._answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer

    def form(self, index: int = -1) -> dict[str, str]:
        parsed = urllib.parse.parse_qs(self.requests[index].content.decode(), keep_blank_values=True)
        return {key: values[0] for key, values in parsed.items()}


def ok(body: dict[str, object] | None = None) -> httpx.Response:
    return httpx.Response(200, json=SUCCESS if body is None else body)


FAST = RetryPolicy(max_attempts=3, initial_delay=0.0, max_delay=0.0, max_total=10.0)
"""Logins retry through the policy they are given (a session gives its own): no pauses in tests."""


async def fetch(provider: TokenProvider, recorder: Recorder, retry: RetryPolicy = FAST) -> Token:
    async with httpx.AsyncClient(transport=httpx.MockTransport(recorder)) as http:
        return await provider.fetch_token(http, retry=retry)


# --- login URLs -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("login", "https://login.salesforce.com"),
        ("TEST", "https://test.salesforce.com"),
        ("https://login.salesforce.com/", "https://login.salesforce.com"),
        ("acme.my.salesforce.com", "https://acme.my.salesforce.com"),
        ("Acme.My.Salesforce.com/", "https://acme.my.salesforce.com"),
        ("  https://acme--dev.sandbox.my.salesforce.com//  ", "https://acme--dev.sandbox.my.salesforce.com"),
        ("https://acme.my.site.com/customers/", "https://acme.my.site.com/customers"),
        ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
        ("http://localhost:8080/", "http://localhost:8080"),
        ("http://[::1]:8080", "http://[::1]:8080"),
    ],
)
def test_normalize_login_url(value: str, expected: str) -> None:
    assert normalize_login_url(value) == expected


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("", "empty"),
        ("http://acme.my.salesforce.com", "plain http"),
        ("http://10.0.0.1:8080", "plain http"),
        ("ftp://acme.my.salesforce.com", r"not an http\(s\) URL"),
        ("https://acme.my.salesforce.com?x=1", "query"),
        ("https://acme host.com", "no valid host"),
        ("https://acme.my.salesforce.com:99999", "invalid port"),
    ],
)
def test_normalize_login_url_rejects(value: str, problem: str) -> None:
    with pytest.raises(InputError, match=problem) as info:
        normalize_login_url(value)
    assert info.value.field == "login_url"


def test_login_url_with_credentials_is_refused_without_echoing_them() -> None:
    with pytest.raises(InputError) as info:
        normalize_login_url("https://admin:hunter2@acme.my.salesforce.com")
    assert "hunter2" not in str(info.value)


# --- client credentials -----------------------------------------------------------------------------


async def test_client_credentials_form_body() -> None:
    recorder = Recorder(ok())
    token = await fetch(ClientCredentialsAuth("3MVG9.consumer", "s3cr3t", "acme.my.salesforce.com"), recorder)
    request = recorder.requests[0]
    assert request.method == "POST"
    assert str(request.url) == f"{MY_DOMAIN}/services/oauth2/token"
    assert request.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert "Authorization" not in request.headers
    assert recorder.form() == {
        "grant_type": "client_credentials",
        "client_id": "3MVG9.consumer",
        "client_secret": "s3cr3t",
    }
    assert token.access_token == SUCCESS["access_token"]
    assert token.instance_url == INSTANCE  # trailing slash of the answer dropped
    assert token.id_url == SUCCESS["id"]
    assert token.issued_at == "1700000000000"
    assert token.token_type == "Bearer"
    assert token.scope == "api"
    assert token.refresh_token is None
    assert token.authorization == f"Bearer {SUCCESS['access_token']}"


async def test_client_credentials_basic_auth() -> None:
    recorder = Recorder(ok())
    await fetch(ClientCredentialsAuth("3MVG9.consumer", "s3cr3t", MY_DOMAIN, use_basic_auth=True), recorder)
    assert recorder.form() == {"grant_type": "client_credentials"}
    scheme, _, value = recorder.requests[0].headers["Authorization"].partition(" ")
    assert scheme == "Basic"
    assert base64.b64decode(value).decode() == "3MVG9.consumer:s3cr3t"


@pytest.mark.parametrize("login_url", ["login", "test", "https://login.salesforce.com"])
def test_client_credentials_needs_my_domain(login_url: str) -> None:
    with pytest.raises(InputError, match="My Domain"):
        ClientCredentialsAuth("id", "secret", login_url)


# --- password ---------------------------------------------------------------------------------------


async def test_password_flow_appends_security_token() -> None:
    recorder = Recorder(ok())
    provider = PasswordAuth("cid", "csecret", "user@acme.com", "pa ss&word", "TOKEN123", login_url="test")
    token = await fetch(provider, recorder)
    assert str(recorder.requests[0].url) == "https://test.salesforce.com/services/oauth2/token"
    assert recorder.form() == {
        "grant_type": "password",
        "client_id": "cid",
        "client_secret": "csecret",
        "username": "user@acme.com",
        "password": "pa ss&wordTOKEN123",
    }
    assert token.instance_url == INSTANCE


async def test_password_flow_default_login_url_and_no_token() -> None:
    recorder = Recorder(ok())
    await fetch(PasswordAuth("cid", "csecret", "user@acme.com", "pw"), recorder)
    assert str(recorder.requests[0].url) == "https://login.salesforce.com/services/oauth2/token"
    assert recorder.form()["password"] == "pw"


# --- refresh token ----------------------------------------------------------------------------------


async def test_refresh_token_flow_keeps_original_refresh_token() -> None:
    recorder = Recorder(ok())
    token = await fetch(RefreshTokenAuth("cid", "5Aep861.refresh", login_url=MY_DOMAIN), recorder)
    assert recorder.form() == {
        "grant_type": "refresh_token",
        "client_id": "cid",
        "refresh_token": "5Aep861.refresh",
    }
    assert token.refresh_token == "5Aep861.refresh"


async def test_refresh_token_flow_with_client_secret() -> None:
    recorder = Recorder(ok())
    await fetch(RefreshTokenAuth("cid", "5Aep861.refresh", client_secret="csecret"), recorder)
    assert recorder.form()["client_secret"] == "csecret"
    assert str(recorder.requests[0].url) == "https://login.salesforce.com/services/oauth2/token"


async def test_refresh_token_rotation_is_adopted() -> None:
    recorder = Recorder(ok({**SUCCESS, "refresh_token": "5Aep861.rotated"}), ok())
    provider = RefreshTokenAuth("cid", "5Aep861.refresh")
    key = provider.cache_key
    async with httpx.AsyncClient(transport=httpx.MockTransport(recorder)) as http:
        first = await provider.fetch_token(http)
        second = await provider.fetch_token(http)
    assert first.refresh_token == "5Aep861.rotated"
    assert recorder.form(1)["refresh_token"] == "5Aep861.rotated"
    assert second.refresh_token == "5Aep861.rotated"
    assert provider.cache_key == key
    assert "5Aep861.rotated" in provider.secrets()
    assert "5Aep861.rotated" not in repr(provider)


# --- error mapping ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error", "description"),
    [
        (400, "invalid_grant", "authentication failure"),
        (400, "invalid_client_id", "client identifier invalid"),
        (401, "invalid_client", "invalid client credentials"),
    ],
)
async def test_token_errors_carry_salesforce_error(status: int, error: str, description: str) -> None:
    recorder = Recorder(httpx.Response(status, json={"error": error, "error_description": description}))
    with pytest.raises(AuthenticationError) as info:
        await fetch(PasswordAuth("cid", "csecret", "user@acme.com", "pw"), recorder)
    assert info.value.error_code == error
    assert info.value.error_description == description
    assert info.value.status_code == status
    assert error in str(info.value)
    assert description in str(info.value)
    assert len(recorder.requests) == 1  # a refusal is never retried


async def test_non_json_500_is_a_server_error_after_retries() -> None:
    page = b"<html><body>Internal Server Error " + b"x" * 1000 + b"</body></html>"
    recorder = Recorder(httpx.Response(500, content=page, headers={"Content-Type": "text/html"}))
    with pytest.raises(ServerError) as info:
        await fetch(ClientCredentialsAuth("cid", "csecret", MY_DOMAIN), recorder)
    assert not isinstance(info.value, AuthenticationError)  # the credentials were not judged
    assert info.value.status_code == 500
    assert "Internal Server Error" in str(info.value)
    assert len(str(info.value)) < 500
    assert len(recorder.requests) == FAST.max_attempts


@pytest.mark.parametrize("status", [500, 502, 503, 504])
async def test_token_endpoint_5xx_is_never_an_authentication_error(status: int) -> None:
    body = {"error": "unknown_error", "error_description": "retry your request"}
    recorder = Recorder(httpx.Response(status, json=body))
    with pytest.raises(ServerError) as info:
        await fetch(RefreshTokenAuth("cid", "refresh"), recorder)
    assert isinstance(info.value, ServerUnavailableError) == (status != 500)
    assert len(recorder.requests) == FAST.max_attempts


async def test_error_excerpt_blanks_echoed_secrets() -> None:
    recorder = Recorder(httpx.Response(502, content=b"bad gateway for client_secret=csecret&password=pw%26x"))
    with pytest.raises(ServerUnavailableError) as info:
        await fetch(PasswordAuth("cid", "csecret", "user@acme.com", "pw&x"), recorder)
    assert "csecret" not in str(info.value)
    assert "pw%26x" not in str(info.value)
    assert "***" in str(info.value)


@pytest.mark.parametrize(
    "body",
    [
        {"instance_url": INSTANCE, "token_type": "Bearer"},
        {"access_token": "00D!tok", "token_type": "Bearer"},
        {"access_token": "", "instance_url": INSTANCE},
    ],
)
async def test_success_without_access_token_or_instance_url(body: dict[str, object]) -> None:
    with pytest.raises(AuthenticationError, match="without") as info:
        await fetch(ClientCredentialsAuth("cid", "csecret", MY_DOMAIN), Recorder(ok(body)))
    assert "00D!tok" not in str(info.value)


async def test_success_with_non_json_body() -> None:
    recorder = Recorder(httpx.Response(200, content=b"access_token=00D!tok"))
    with pytest.raises(AuthenticationError, match="non-JSON") as info:
        await fetch(ClientCredentialsAuth("cid", "csecret", MY_DOMAIN), recorder)
    assert "00D!tok" not in str(info.value)


# --- retries ----------------------------------------------------------------------------------------


async def test_transport_error_is_retried_then_succeeds() -> None:
    recorder = Recorder(httpx.ConnectError("connection refused"), httpx.ReadTimeout("slow"), ok())
    token = await fetch(ClientCredentialsAuth("cid", "csecret", MY_DOMAIN), recorder)
    assert token.access_token == SUCCESS["access_token"]
    assert len(recorder.requests) == 3


async def test_transport_error_becomes_transport_error() -> None:
    recorder = Recorder(httpx.ConnectError("connection refused"))
    with pytest.raises(TransportError) as info:
        await fetch(ClientCredentialsAuth("cid", "csecret", MY_DOMAIN), recorder)
    assert not isinstance(info.value, httpx.HTTPError)
    assert isinstance(info.value.__cause__, httpx.ConnectError)
    assert "ConnectError" in str(info.value)
    assert "csecret" not in str(info.value)
    assert len(recorder.requests) == FAST.max_attempts


@pytest.mark.parametrize("status", [429, 503])
async def test_temporary_statuses_are_retried(status: int) -> None:
    recorder = Recorder(httpx.Response(status, headers={"Retry-After": "0"}), ok())
    token = await fetch(RefreshTokenAuth("cid", "refresh"), recorder)
    assert token.access_token == SUCCESS["access_token"]
    assert len(recorder.requests) == 2


async def test_retry_pauses_follow_the_given_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    pauses: list[float] = []
    real_sleep = asyncio.sleep

    async def fake_sleep(seconds: float) -> None:
        pauses.append(seconds)
        await real_sleep(0)

    monkeypatch.setattr(asyncio, "sleep", fake_sleep)
    policy = RetryPolicy(max_attempts=4, initial_delay=0.5, max_delay=3.0, max_total=60.0)
    recorder = Recorder(
        httpx.Response(503), httpx.Response(429, headers={"Retry-After": "2"}), httpx.ConnectError("x"), ok()
    )
    await fetch(RefreshTokenAuth("cid", "refresh"), recorder, retry=policy)
    assert len(recorder.requests) == 4
    assert len(pauses) == 3
    assert 0 <= pauses[0] <= 0.5  # full jitter under the first ceiling
    assert pauses[1] == 2.0  # Retry-After is honoured (capped at max_delay)
    assert 0 <= pauses[2] <= 2.0


async def test_retries_stop_where_the_policy_says() -> None:
    recorder = Recorder(httpx.Response(503))
    one_shot = RetryPolicy(max_attempts=1)
    with pytest.raises(ServerUnavailableError):
        await fetch(RefreshTokenAuth("cid", "refresh"), recorder, retry=one_shot)
    assert len(recorder.requests) == 1
