"""Token sharing and single-flight refresh, the fixed token, and secrets kept out of sight."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

import airflow_provider_salesforce_bulk.client.auth as auth
from airflow_provider_salesforce_bulk.client.auth import (
    ClientCredentialsAuth,
    JwtBearerAuth,
    PasswordAuth,
    RefreshTokenAuth,
    SoapLoginAuth,
    StaticTokenAuth,
    Token,
    TokenCache,
    TokenProvider,
    default_token_cache,
    fingerprint,
    normalize_login_url,
)
from airflow_provider_salesforce_bulk.client.errors import (
    AuthenticationError,
    InputError,
    ServerError,
    TransportError,
)
from airflow_provider_salesforce_bulk.client.retry import RetryPolicy

MY_DOMAIN = "https://acme.my.salesforce.com"


FAST = RetryPolicy(max_attempts=3, initial_delay=0.0, max_delay=0.0, max_total=10.0)


class TokenServer:
    """A token endpoint handing out ``token-1``, ``token-2``, ... slowly enough for requests to overlap."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        number = len(self.requests)
        await asyncio.sleep(0.01)
        return httpx.Response(200, json={"access_token": f"token-{number}", "instance_url": MY_DOMAIN})


@pytest.fixture
def server() -> TokenServer:
    return TokenServer()


@pytest.fixture
async def http(server: TokenServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.MockTransport(server)) as client:
        yield client


# --- concurrency ------------------------------------------------------------------------------------


async def test_concurrent_gets_make_one_request(server: TokenServer, http: httpx.AsyncClient) -> None:
    cache = TokenCache()
    provider = ClientCredentialsAuth("cid", "csecret", MY_DOMAIN)
    tokens = await asyncio.gather(*(cache.get(provider, http) for _ in range(50)))
    assert len(server.requests) == 1
    assert {t.access_token for t in tokens} == {"token-1"}
    assert all(t is tokens[0] for t in tokens)


async def test_concurrent_refreshes_of_a_stale_token_make_one_request(
    server: TokenServer, http: httpx.AsyncClient
) -> None:
    cache = TokenCache()
    provider = PasswordAuth("cid", "csecret", "user@acme.com", "pw")
    stale = await cache.get(provider, http)
    fresh = await asyncio.gather(*(cache.refresh(provider, http, stale) for _ in range(50)))
    assert len(server.requests) == 2
    assert {t.access_token for t in fresh} == {"token-2"}
    assert await cache.get(provider, http) is fresh[0]


async def test_equal_credentials_share_a_token_across_provider_instances(
    server: TokenServer, http: httpx.AsyncClient
) -> None:
    cache = TokenCache()
    one = RefreshTokenAuth("cid", "refresh-1", login_url=MY_DOMAIN)
    two = RefreshTokenAuth("cid", "refresh-1", login_url=MY_DOMAIN + "/")
    assert one.cache_key == two.cache_key
    tokens = await asyncio.gather(*(cache.get(p, http) for p in (one, two) * 10))
    assert len(server.requests) == 1
    assert {t.access_token for t in tokens} == {"token-1"}


def test_each_event_loop_has_its_own_token_and_clear_forgets_them_all() -> None:
    # An asyncio.Lock serves one loop only: a triggerer's loop and a worker thread's asyncio.run
    # each log in once, and share nothing that belongs to the other's loop.
    server = TokenServer()
    cache = TokenCache()
    provider = ClientCredentialsAuth("cid", "csecret", MY_DOMAIN)

    async def two_gets() -> tuple[Token, Token]:
        async with httpx.AsyncClient(transport=httpx.MockTransport(server)) as http:
            return await cache.get(provider, http), await cache.get(provider, http)

    first, again = asyncio.run(two_gets())
    second, _ = asyncio.run(two_gets())
    assert first is again
    assert (first.access_token, second.access_token) == ("token-1", "token-2")
    cache.clear()
    assert asyncio.run(two_gets())[0].access_token == "token-3"


def _variants(pem: str, other_pem: str) -> dict[str, Callable[[], TokenProvider]]:
    return {
        "cc": lambda: ClientCredentialsAuth("cid", "csecret", MY_DOMAIN),
        "cc other secret": lambda: ClientCredentialsAuth("cid", "csecret2", MY_DOMAIN),
        "cc other id": lambda: ClientCredentialsAuth("cid2", "csecret", MY_DOMAIN),
        "cc other host": lambda: ClientCredentialsAuth("cid", "csecret", "other.my.salesforce.com"),
        "pw": lambda: PasswordAuth("cid", "csecret", "user@acme.com", "pw", "tok"),
        "pw other token": lambda: PasswordAuth("cid", "csecret", "user@acme.com", "pw", "tok2"),
        "pw other password": lambda: PasswordAuth("cid", "csecret", "user@acme.com", "pw2", "tok"),
        "pw split differently": lambda: PasswordAuth("cid", "csecret", "user@acme.com", "pwt", "ok"),
        "pw other user": lambda: PasswordAuth("cid", "csecret", "other@acme.com", "pw", "tok"),
        "pw sandbox": lambda: PasswordAuth("cid", "csecret", "user@acme.com", "pw", "tok", login_url="test"),
        "rt": lambda: RefreshTokenAuth("cid", "refresh"),
        "rt with secret": lambda: RefreshTokenAuth("cid", "refresh", client_secret="csecret"),
        "rt other token": lambda: RefreshTokenAuth("cid", "refresh2"),
        "jwt": lambda: JwtBearerAuth("cid", "user@acme.com", private_key=pem),
        "jwt other key": lambda: JwtBearerAuth("cid", "user@acme.com", private_key=other_pem),
        "jwt other user": lambda: JwtBearerAuth("cid", "other@acme.com", private_key=pem),
        "jwt other audience": lambda: JwtBearerAuth("cid", "user@acme.com", private_key=pem, audience="test"),
        "static": lambda: StaticTokenAuth("00D!fixed", MY_DOMAIN),
        "static other token": lambda: StaticTokenAuth("00D!fixed2", MY_DOMAIN),
    }


@pytest.fixture(scope="module")
def pems() -> tuple[str, str]:
    def make() -> str:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode()

    return make(), make()


def test_different_credentials_never_share_a_cache_key(pems: tuple[str, str]) -> None:
    providers = {name: factory() for name, factory in _variants(*pems).items()}
    keys = {name: p.cache_key for name, p in providers.items()}
    assert len(set(keys.values())) == len(keys), keys
    # Stable for equal credentials, so every client of the same credentials shares the token.
    for name, factory in _variants(*pems).items():
        assert factory().cache_key == keys[name]


async def test_different_credentials_get_different_tokens(
    server: TokenServer, http: httpx.AsyncClient
) -> None:
    cache = TokenCache()
    one = ClientCredentialsAuth("cid", "csecret", MY_DOMAIN)
    two = ClientCredentialsAuth("cid", "other-secret", MY_DOMAIN)
    first, second = await asyncio.gather(cache.get(one, http), cache.get(two, http))
    assert len(server.requests) == 2
    assert first.access_token != second.access_token


async def test_failed_refresh_leaves_no_token_behind(http: httpx.AsyncClient) -> None:
    cache = TokenCache()
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if calls == 2:
            return httpx.Response(400, json={"error": "invalid_grant", "error_description": "expired"})
        return httpx.Response(200, json={"access_token": f"t{calls}", "instance_url": MY_DOMAIN})

    provider = RefreshTokenAuth("cid", "refresh")
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        stale = await cache.get(provider, client)
        with pytest.raises(AuthenticationError):
            await cache.refresh(provider, client, stale)
        assert (await cache.get(provider, client)).access_token == "t3"


# --- the fixed token --------------------------------------------------------------------------------


async def test_static_token_is_returned_without_a_request(
    server: TokenServer, http: httpx.AsyncClient
) -> None:
    provider = StaticTokenAuth("00D!fixed", "acme.my.salesforce.com/")
    token = await TokenCache().get(provider, http)
    assert token.access_token == "00D!fixed"
    assert token.instance_url == MY_DOMAIN
    assert server.requests == []
    assert provider.can_refresh is False


async def test_static_token_refresh_is_refused(server: TokenServer, http: httpx.AsyncClient) -> None:
    cache = TokenCache()
    provider = StaticTokenAuth("00D!fixed", MY_DOMAIN)
    stale = await cache.get(provider, http)
    results = await asyncio.gather(
        *(cache.refresh(provider, http, stale) for _ in range(5)), return_exceptions=True
    )
    for result in results:
        assert isinstance(result, AuthenticationError)
        assert "the fixed access token was rejected and cannot be refreshed" in str(result)
        assert "00D!fixed" not in str(result)
    assert server.requests == []


async def test_static_token_refresh_without_a_stale_token_just_gets_it(http: httpx.AsyncClient) -> None:
    provider = StaticTokenAuth("00D!fixed", MY_DOMAIN)
    assert (await TokenCache().refresh(provider, http, None)).access_token == "00D!fixed"


def test_oauth_providers_can_refresh() -> None:
    assert ClientCredentialsAuth("cid", "csecret", MY_DOMAIN).can_refresh is True


@pytest.mark.parametrize("url", ["http://acme.my.salesforce.com", "login-", ""])
def test_static_token_rejects_bad_instance_url(url: str) -> None:
    with pytest.raises(InputError) as info:
        StaticTokenAuth("00D!fixed", url)
    assert info.value.field == "instance_url"
    assert "00D!fixed" not in str(info.value)


def test_static_token_keeps_loopback_http() -> None:
    assert StaticTokenAuth("t", "http://127.0.0.1:8080/").instance_url == "http://127.0.0.1:8080"


# --- secrets ----------------------------------------------------------------------------------------


SECRETS = ["CSECRET-zz9", "PASSWORD-zz9", "SECTOKEN-zz9", "REFRESH-zz9", "FIXEDTOKEN-zz9", "PASSPHRASE-zz9"]


@pytest.fixture(scope="module")
def encrypted_pem() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"PASSPHRASE-zz9"),
    ).decode()


@pytest.fixture
def providers(encrypted_pem: str) -> tuple[list[TokenProvider], list[str]]:
    with pytest.warns(DeprecationWarning, match="login"):
        soap = SoapLoginAuth("user@acme.com", "PASSWORD-zz9", "SECTOKEN-zz9")
    all_providers: list[TokenProvider] = [
        ClientCredentialsAuth("cid", "CSECRET-zz9", MY_DOMAIN),
        ClientCredentialsAuth("cid", "CSECRET-zz9", MY_DOMAIN, use_basic_auth=True),
        PasswordAuth("cid", "CSECRET-zz9", "user@acme.com", "PASSWORD-zz9", "SECTOKEN-zz9"),
        RefreshTokenAuth("cid", "REFRESH-zz9", client_secret="CSECRET-zz9"),
        JwtBearerAuth(
            "cid", "user@acme.com", private_key=encrypted_pem, private_key_passphrase="PASSPHRASE-zz9"
        ),
        soap,
        StaticTokenAuth("FIXEDTOKEN-zz9", MY_DOMAIN),
    ]
    key_lines = [line for line in encrypted_pem.splitlines() if not line.startswith("-----")]
    return all_providers, [*SECRETS, *key_lines[:3]]


def _assert_absent(text: str, secrets: list[str]) -> None:
    for secret in secrets:
        assert secret not in text, f"a secret leaked into: {text[:200]}"


def test_secrets_absent_from_repr_and_str(providers: tuple[list[TokenProvider], list[str]]) -> None:
    all_providers, secrets = providers
    for provider in all_providers:
        _assert_absent(repr(provider), secrets)
        _assert_absent(str(provider), secrets)
        _assert_absent(provider.cache_key, secrets)
        assert type(provider).__name__ in repr(provider)
        assert provider.secrets(), type(provider).__name__
        assert len(provider.cache_key) == 32


def test_secrets_lists_every_secret(providers: tuple[list[TokenProvider], list[str]]) -> None:
    all_providers, _ = providers
    listed = {s for p in all_providers for s in p.secrets()}
    for secret in SECRETS:
        assert any(secret in value for value in listed), secret
    assert "cid" not in listed
    assert "user@acme.com" not in listed


def test_token_repr_hides_tokens() -> None:
    token = Token(access_token="ACCESS-zz9", instance_url=MY_DOMAIN, refresh_token="REFRESH-zz9")
    _assert_absent(repr(token), ["ACCESS-zz9", "REFRESH-zz9"])
    assert MY_DOMAIN in repr(token)


ERROR_ANSWERS: list[Callable[[], httpx.Response | Exception]] = [
    lambda: httpx.Response(
        400, json={"error": "invalid_grant", "error_description": "authentication failure"}
    ),
    lambda: httpx.Response(500, content=b"<html>oops</html>"),
    lambda: httpx.Response(200, json={"token_type": "Bearer"}),
    lambda: httpx.ConnectError("connection refused"),
]


@pytest.mark.parametrize("answer", ERROR_ANSWERS)
async def test_secrets_absent_from_errors_and_logs(
    providers: tuple[list[TokenProvider], list[str]],
    answer: Callable[[], httpx.Response | Exception],
    caplog: pytest.LogCaptureFixture,
) -> None:
    all_providers, secrets = providers

    def handler(request: httpx.Request) -> httpx.Response:
        result = answer()
        if isinstance(result, Exception):
            raise result
        return result

    caplog.set_level(logging.DEBUG, logger="airflow_provider_salesforce_bulk")
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        for provider in all_providers:
            if not provider.can_refresh:
                continue
            with pytest.raises((AuthenticationError, ServerError, TransportError)) as info:
                await provider.fetch_token(http, retry=FAST)
            _assert_absent(str(info.value), secrets)
            _assert_absent(repr(info.value), secrets)
            _assert_absent(repr(vars(info.value)), secrets)
    assert caplog.records, "the login flows log at debug level"
    _assert_absent(caplog.text, secrets)


# --- the package's public names ---------------------------------------------------------------------


def test_public_names() -> None:
    assert set(auth.__all__) == {
        "ClientCredentialsAuth",
        "JwtBearerAuth",
        "PasswordAuth",
        "RefreshTokenAuth",
        "SoapLoginAuth",
        "StaticTokenAuth",
        "Token",
        "TokenCache",
        "TokenProvider",
        "default_token_cache",
        "fingerprint",
        "normalize_login_url",
    }
    assert isinstance(default_token_cache, TokenCache)
    assert fingerprint("a", None) != fingerprint("a", "")
    assert normalize_login_url("login") == "https://login.salesforce.com"
