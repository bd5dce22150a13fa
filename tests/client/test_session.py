"""The HTTP layer: retries and their limits, 401 refresh, error mapping, limit info, no bare httpx errors."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from airflow_provider_salesforce_bulk.client import (
    ApiDisabledError,
    ApiVersionError,
    ClientCredentialsAuth,
    InputError,
    InvalidJobError,
    InvalidJobStateError,
    MalformedRequestError,
    NotFoundError,
    RequestLimitExceededError,
    RetryPolicy,
    SalesforceSession,
    ServerError,
    ServerUnavailableError,
    SessionExpiredError,
    TokenCache,
    TransportError,
)
from airflow_provider_salesforce_bulk.client.retry import RetrySafety, parse_retry_after

INSTANCE = "https://org.my.salesforce.com"
FAST = RetryPolicy(max_attempts=4, initial_delay=0.001, max_delay=0.01, max_total=5)


def token_response(n: int) -> httpx.Response:
    return httpx.Response(200, json={"access_token": f"token-{n}", "instance_url": INSTANCE})


class Server:
    """Answers the token endpoint and delegates the rest to ``answer``."""

    def __init__(self, answer):
        self.answer = answer
        self.tokens = 0
        self.calls: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/services/oauth2/token":
            self.tokens += 1
            return token_response(self.tokens)
        self.calls.append(request)
        result = self.answer(request, len(self.calls))
        if isinstance(result, Exception):
            raise result
        return result


def session_for(server: Server, **kwargs) -> SalesforceSession:
    auth = ClientCredentialsAuth("client-id", "client-secret", INSTANCE)
    return SalesforceSession(
        auth, transport=httpx.MockTransport(server), retry_policy=FAST, token_cache=TokenCache(), **kwargs
    )


async def test_request_uses_instance_url_version_and_headers():
    server = Server(
        lambda r, n: httpx.Response(
            200, json={"ok": True}, headers={"Sforce-Limit-Info": "api-usage=18/15000"}
        )
    )
    async with session_for(server, api_version="v61.0") as session:
        response = await session.request("GET", "jobs/ingest")
        assert response.json() == {"ok": True}
        assert session.api_usage is not None
        assert (session.api_usage.used, session.api_usage.limit, session.api_usage.remaining) == (
            18,
            15000,
            14982,
        )
    request = server.calls[0]
    assert str(request.url) == f"{INSTANCE}/services/data/v61.0/jobs/ingest"
    assert request.headers["Authorization"] == "Bearer token-1"
    assert request.headers["Accept-Encoding"] == "gzip"
    assert request.headers["User-Agent"].startswith("airflow-provider-salesforce-bulk/")


def test_bad_api_version_is_refused():
    with pytest.raises(InputError, match="api_version"):
        SalesforceSession(ClientCredentialsAuth("a", "b", INSTANCE), api_version="latest")


@pytest.mark.parametrize("status", [500, 502, 503, 504, 429])
async def test_idempotent_requests_are_retried_on_transient_statuses(status):
    server = Server(
        lambda r, n: (
            httpx.Response(status, json=[{"errorCode": "X", "message": "busy"}])
            if n < 3
            else httpx.Response(200, json={})
        )
    )
    async with session_for(server) as session:
        await session.request("GET", "jobs/ingest/750x")
    assert len(server.calls) == 3


async def test_retries_stop_at_max_attempts_with_the_mapped_error():
    server = Server(
        lambda r, n: httpx.Response(503, json=[{"errorCode": "SERVER_UNAVAILABLE", "message": "m"}])
    )
    async with session_for(server) as session:
        with pytest.raises(ServerUnavailableError) as info:
            await session.request("GET", "jobs/ingest/750x")
    assert len(server.calls) == FAST.max_attempts
    assert info.value.status_code == 503


async def test_retries_stop_at_max_total_time():
    policy = RetryPolicy(max_attempts=100, initial_delay=0.05, max_delay=0.05, max_total=0.2)
    server = Server(lambda r, n: httpx.Response(500))
    async with session_for(server) as session:
        session.retry_policy = policy
        with pytest.raises(ServerError):
            await session.request("GET", "jobs/ingest")
    assert 2 <= len(server.calls) < 20


async def test_retry_after_is_honoured(monkeypatch):
    waits: list[float] = []
    real_sleep = asyncio.sleep

    async def fake_sleep(seconds: float) -> None:
        waits.append(seconds)
        await real_sleep(0)

    monkeypatch.setattr("airflow_provider_salesforce_bulk.client.session.asyncio.sleep", fake_sleep)
    server = Server(
        lambda r, n: (
            httpx.Response(429, headers={"Retry-After": "0.007"}) if n == 1 else httpx.Response(200, json={})
        )
    )
    async with session_for(server) as session:
        await session.request("GET", "limits")
    assert waits == [0.007]


def test_parse_retry_after_forms():
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0


async def test_transport_errors_are_retried_then_wrapped():
    server = Server(lambda r, n: httpx.ReadError("reset by peer"))
    async with session_for(server) as session:
        with pytest.raises(TransportError) as info:
            await session.request("GET", "jobs/ingest")
    assert len(server.calls) == FAST.max_attempts
    assert not isinstance(info.value, httpx.HTTPError)
    assert isinstance(info.value.__cause__, httpx.ReadError)


async def test_upload_is_not_retried_when_it_may_have_arrived():
    server = Server(lambda r, n: httpx.ReadError("dropped mid-response"))
    async with session_for(server) as session:
        with pytest.raises(TransportError):
            await session.request(
                "PUT", "jobs/ingest/750x/batches", content=b"Name\nA\n", safety=RetrySafety.NOT_SENT_ONLY
            )
    assert len(server.calls) == 1


@pytest.mark.parametrize("status", [500, 502, 503])
async def test_upload_is_not_retried_on_server_errors(status):
    server = Server(lambda r, n: httpx.Response(status))
    async with session_for(server) as session:
        with pytest.raises(ServerError):
            await session.request(
                "PUT", "jobs/ingest/750x/batches", content=b"x", safety=RetrySafety.NOT_SENT_ONLY
            )
    assert len(server.calls) == 1


async def test_upload_is_retried_when_it_never_left():
    server = Server(lambda r, n: httpx.ConnectError("refused") if n == 1 else httpx.Response(201))
    async with session_for(server) as session:
        await session.request(
            "PUT", "jobs/ingest/750x/batches", content=b"x", safety=RetrySafety.NOT_SENT_ONLY
        )
    assert len(server.calls) == 2


async def test_expired_session_refreshes_once_and_retries():
    def answer(request, n):
        if request.headers["Authorization"] == "Bearer token-1":
            return httpx.Response(
                401, json=[{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}]
            )
        return httpx.Response(200, json={})

    server = Server(answer)
    async with session_for(server) as session:
        await session.request("GET", "jobs/ingest")
    assert server.tokens == 2
    assert [c.headers["Authorization"] for c in server.calls] == ["Bearer token-1", "Bearer token-2"]


async def test_a_second_401_after_refresh_is_raised():
    server = Server(
        lambda r, n: httpx.Response(401, json=[{"message": "no", "errorCode": "INVALID_SESSION_ID"}])
    )
    async with session_for(server) as session:
        with pytest.raises(SessionExpiredError):
            await session.request("GET", "jobs/ingest")
    assert server.tokens == 2
    assert len(server.calls) == 2


async def test_many_concurrent_401s_cause_exactly_one_refresh():
    def answer(request, n):
        if request.headers["Authorization"] == "Bearer token-1":
            return httpx.Response(401, json=[{"message": "expired", "errorCode": "INVALID_SESSION_ID"}])
        return httpx.Response(200, json={})

    server = Server(answer)

    async def slow(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0.01)  # keep all 50 in flight at once, as on a real network
        return server(request)

    session = SalesforceSession(
        ClientCredentialsAuth("client-id", "client-secret", INSTANCE),
        transport=httpx.MockTransport(slow),
        retry_policy=FAST,
        token_cache=TokenCache(),
    )
    async with session:
        await session.token()
        await asyncio.gather(*(session.request("GET", f"jobs/ingest/750{i}") for i in range(50)))
    assert server.tokens == 2
    assert len(server.calls) == 100  # each request: one rejected, one retried


async def test_sessions_with_same_credentials_share_one_token():
    server = Server(lambda r, n: httpx.Response(200, json={}))
    cache = TokenCache()
    auth = ClientCredentialsAuth("client-id", "client-secret", INSTANCE)
    sessions = [
        SalesforceSession(auth, transport=httpx.MockTransport(server), token_cache=cache) for _ in range(5)
    ]
    await asyncio.gather(*(s.request("GET", "limits") for s in sessions))
    for s in sessions:
        await s.aclose()
    assert server.tokens == 1


@pytest.mark.parametrize(
    ("status", "code", "cls"),
    [
        (401, "INVALID_SESSION_ID", SessionExpiredError),
        (403, "REQUEST_LIMIT_EXCEEDED", RequestLimitExceededError),
        (403, "API_DISABLED_FOR_ORG", ApiDisabledError),
        (404, "NOT_FOUND", NotFoundError),
        (400, "INVALIDJOBSTATE", InvalidJobStateError),
        (400, "INVALIDJOB", InvalidJobError),
        (400, "JSON_PARSER_ERROR", MalformedRequestError),
        (405, "METHOD_NOT_ALLOWED", MalformedRequestError),
        (409, "CONFLICT", ApiVersionError),
        (410, "GONE", ApiVersionError),
        (415, "UNSUPPORTED", MalformedRequestError),
        (500, "UNKNOWN_EXCEPTION", ServerError),
        (503, "SERVER_UNAVAILABLE", ServerUnavailableError),
    ],
)
async def test_error_mapping(status, code, cls):
    server = Server(lambda r, n: httpx.Response(status, json=[{"errorCode": code, "message": "the message"}]))
    async with session_for(server) as session:
        session.retry_policy = RetryPolicy(max_attempts=1)
        with pytest.raises(cls) as info:
            await session.request("GET", "jobs/ingest/750x")
    error = info.value
    assert error.status_code == status
    assert error.error_code == code
    assert error.errors == [{"errorCode": code, "message": "the message"}]
    assert code in str(error)
    assert "the message" in str(error)
    assert "token-" not in str(error)


async def test_non_json_error_body_is_summarised():
    server = Server(lambda r, n: httpx.Response(502, content=b"<html>Bad gateway</html>"))
    async with session_for(server) as session:
        session.retry_policy = RetryPolicy(max_attempts=1)
        with pytest.raises(ServerUnavailableError, match="Bad gateway"):
            await session.request("GET", "jobs/ingest")
