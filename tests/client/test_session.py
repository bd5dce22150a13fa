"""The HTTP layer: retries and their limits, 401 refresh, error mapping, limit info, no bare httpx errors."""

from __future__ import annotations

import asyncio
import contextlib
import io
import math
import urllib.parse
import warnings

import httpx
import pytest

from airflow_provider_salesforce_bulk.client import (
    ApiDisabledError,
    ApiVersionError,
    AuthenticationError,
    BulkIngestClient,
    ClientCredentialsAuth,
    InputError,
    InvalidJobError,
    InvalidJobStateError,
    MalformedRequestError,
    NotFoundError,
    RefreshTokenAuth,
    RequestLimitExceededError,
    RetryPolicy,
    SalesforceSession,
    ServerError,
    ServerUnavailableError,
    SessionExpiredError,
    SoapLoginAuth,
    TokenCache,
    TransportError,
    UploadOutcomeUnknownError,
)
from airflow_provider_salesforce_bulk.client.errors import UntrustedUrlError
from airflow_provider_salesforce_bulk.client.retry import RetrySafety, parse_retry_after
from airflow_provider_salesforce_bulk.client.timeouts import Timeouts
from tests.client.helpers import mock_session

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
        # Salesforce's answer to a second upload to a job ("Found multiple contents for job").
        (400, "BULK_API_ERROR", InvalidJobError),
        (500, "BULK_API_ERROR", ServerError),
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


# --- whole-exchange deadlines, against a real server trickling its body --------------------------


JOB_ID = "7505e000000AbCdAAK"


@contextlib.asynccontextmanager
async def trickling_server(body: bytes, *, delay: float, content_type: str = "application/json"):
    """A real HTTP server on loopback sending valid headers, then its body one byte every ``delay``
    seconds: each read gets a byte well within httpx's read timeout, so only a whole-exchange
    deadline ends the request. Yields its base URL and the list of request lines received."""
    requests: list[str] = []
    handlers: set[asyncio.Task[None]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
            requests.append(head.split("\r\n", 1)[0])
            length = 0
            for line in head.split("\r\n")[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            await reader.readexactly(length)
            writer.write(
                f"HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\n\r\n".encode()
            )
            await writer.drain()
            for index in range(len(body)):
                writer.write(body[index : index + 1])
                await writer.drain()
                await asyncio.sleep(delay)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            handlers.discard(task)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", requests
    finally:
        server.close()
        for task in list(handlers):
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)


def trickle_session(base_url: str, **timeouts: float) -> SalesforceSession:
    return mock_session(
        "00D!static",
        base_url,
        retry_policy=RetryPolicy(max_attempts=2, initial_delay=0.01, max_delay=0.01, max_total=120),
        timeout=Timeouts(read=30.0, **timeouts),
    )


JOB_BODY = (
    b'{"id":"7505e000000AbCdAAK","state":"InProgress","object":"Account","operation":"insert",'
    b'"padding":"' + b"x" * 200 + b'"}'
)


async def test_a_trickling_body_cannot_hang_get_job():
    # Unbounded, this answer would take 0.2 s x 270 bytes = 54 s per attempt.
    async with trickling_server(JOB_BODY, delay=0.2) as (url, requests):  # noqa: SIM117 (the session needs the url)
        async with trickle_session(url, exchange=1.0) as session:
            client = BulkIngestClient(session)
            with pytest.raises(TransportError, match=r"no complete answer within 1s"):
                await asyncio.wait_for(client.get_job(JOB_ID), 40)
    # Retryable like any transport failure: the policy's two attempts were made.
    assert requests == [f"GET /services/data/v64.0/jobs/ingest/{JOB_ID} HTTP/1.1"] * 2


async def test_a_trickling_answer_to_an_upload_is_an_unknown_outcome_never_resent():
    async with trickling_server(b'{"id":"x"}' * 30, delay=0.2) as (url, requests):  # noqa: SIM117 (the session needs the url)
        async with trickle_session(url, exchange=1.0) as session:
            client = BulkIngestClient(session)
            with pytest.raises(UploadOutcomeUnknownError) as info:
                await asyncio.wait_for(client.upload_job_data(JOB_ID, b"Name\nA\n"), 40)
    assert info.value.job_id == JOB_ID
    assert len(requests) == 1


async def test_a_trickling_result_download_is_bounded_and_restarted():
    csv_body = b"sf__Id,sf__Created,Name\n" + b"".join(b"001%015d,true,N\n" % i for i in range(20))
    async with trickling_server(csv_body, delay=0.1, content_type="text/csv") as (url, requests):  # noqa: SIM117 (the session needs the url)
        async with trickle_session(url, download=1.0) as session:
            client = BulkIngestClient(session)
            seen: list[dict[str, str]] = []

            async def read() -> None:
                async for record in client.iter_results(
                    JOB_ID, "successfulResults", column_delimiter="COMMA"
                ):
                    seen.append(record)

            with pytest.raises(TransportError, match="download took longer than 1s"):
                await asyncio.wait_for(read(), 60)
    # Restarted from the top once (the policy allows 2 attempts); nothing was yielded twice.
    assert len(requests) == 2
    assert len({r["sf__Id"] for r in seen}) == len(seen)


@pytest.mark.parametrize("field", ["connect", "read", "write", "pool", "exchange", "download"])
@pytest.mark.parametrize("value", [math.nan, math.inf, -1.0, 0.0, True, "5"])
def test_timeouts_refuse_nan_inf_and_non_positive(field, value):
    with pytest.raises(InputError, match=f"Timeouts.{field}") as info:
        Timeouts(**{field: value})
    assert info.value.field == field


def test_timeouts_from_httpx_keep_defaults_for_unbounded_phases():
    timeouts = Timeouts.from_httpx(httpx.Timeout(5.0, connect=None), exchange=30)
    assert (timeouts.connect, timeouts.read, timeouts.exchange) == (Timeouts().connect, 5.0, 30.0)
    session = SalesforceSession(ClientCredentialsAuth("a", "b", INSTANCE), timeout=httpx.Timeout(7.0))
    assert session.timeouts.read == 7.0
    assert session.timeouts.exchange == Timeouts().exchange


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_attempts": 0},
        {"max_attempts": 1.5},
        {"initial_delay": math.nan},
        {"max_total": math.inf},
        {"max_delay": -1},
    ],
)
def test_retry_policy_refuses_bad_values(kwargs):
    with pytest.raises(InputError):
        RetryPolicy(**kwargs)


# --- logins through the session's retry policy ---------------------------------------------------


class LoginServer:
    """A token endpoint answering from a script of statuses (200 hands out token-N), and an API
    rejecting every token but the newest with INVALID_SESSION_ID."""

    def __init__(self, *statuses: int, rotate: bool = False) -> None:
        self.statuses = list(statuses)
        self.logins = 0
        self.issued = 0
        self.rotate = rotate
        self.calls: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/services/oauth2/token":
            self.logins += 1
            status = self.statuses.pop(0) if self.statuses else 200
            if status != 200:
                return httpx.Response(status, json={"error": "unknown_error", "error_description": "busy"})
            self.issued += 1
            body = {"access_token": f"token-{self.issued}", "instance_url": INSTANCE}
            if self.rotate:
                body["refresh_token"] = f"rotated-{self.issued}"
            return httpx.Response(200, json=body)
        self.calls.append(request)
        if request.headers["Authorization"] != f"Bearer token-{self.issued}":
            return httpx.Response(401, json=[{"errorCode": "INVALID_SESSION_ID", "message": "expired"}])
        return httpx.Response(200, json={})


def login_session(server: LoginServer, policy: RetryPolicy, auth=None, **kwargs) -> SalesforceSession:
    return SalesforceSession(
        auth or ClientCredentialsAuth("client-id", "client-secret", INSTANCE),
        transport=httpx.MockTransport(server),
        retry_policy=policy,
        token_cache=TokenCache(),
        **kwargs,
    )


async def test_a_login_answering_5xx_is_retried_by_the_session_policy():
    server = LoginServer(503, 500, 502)
    async with login_session(server, FAST) as session:  # 4 attempts
        await session.request("GET", "limits")
    assert server.logins == 4


async def test_a_login_failing_past_the_policy_is_a_server_error_not_bad_credentials():
    server = LoginServer(503, 503, 503, 503, 503)
    policy = RetryPolicy(max_attempts=2, initial_delay=0.001, max_delay=0.001)
    async with login_session(server, policy) as session:
        with pytest.raises(ServerUnavailableError) as info:
            await session.request("GET", "limits")
    assert not isinstance(info.value, AuthenticationError)
    assert server.logins == 2
    assert server.calls == []


async def test_a_relogin_after_invalid_session_gets_the_session_policy():
    # The first login is fine; the re-login after INVALID_SESSION_ID meets three 503s (more than the
    # two retries logins used to get) and still succeeds under the session's 4 attempts.
    server = LoginServer(200, 503, 503, 503)
    async with login_session(server, FAST) as session:
        first = await session.token()
        server.issued = 5  # token-1 is now refused: the session must log in again
        await session.request("GET", "limits")
        assert (await session.token()) is not first
    assert server.logins == 5


# --- every secret reaches the masker callback ------------------------------------------------------


async def test_initial_and_refreshed_access_tokens_reach_on_secret():
    server = LoginServer()
    seen: list[str] = []
    async with login_session(server, FAST, on_secret=seen.append) as session:
        await session.request("GET", "limits")
        server.issued = 7  # expire token-1; the refresh hands out token-8
        await session.request("GET", "limits")
    assert "token-1" in seen
    assert "token-8" in seen
    assert "client-secret" in seen  # the provider's own secrets too
    assert len(seen) == len(set(seen))  # once each


async def test_rotated_refresh_tokens_reach_an_async_on_secret():
    server = LoginServer(rotate=True)
    seen: list[str] = []

    async def mask(secret: str) -> None:
        await asyncio.sleep(0)
        seen.append(secret)

    auth = RefreshTokenAuth("cid", "configured-refresh", login_url=INSTANCE)
    async with login_session(server, FAST, auth=auth, on_secret=mask) as session:
        await session.request("GET", "limits")
        server.issued = 3
        await session.request("GET", "limits")
    assert {"configured-refresh", "token-1", "rotated-1", "token-4", "rotated-4"} <= set(seen)


# --- server-supplied URLs checked before the token goes to them --------------------------------


def url_session(
    instance_url: str, *, allowed_hosts=(), answer=None
) -> tuple[SalesforceSession, list[httpx.Request]]:
    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        if request.url.path == "/services/oauth2/token":
            return httpx.Response(200, json={"access_token": "SECRET-TOKEN", "instance_url": instance_url})
        return answer(request) if answer else httpx.Response(200, json={})

    session = SalesforceSession(
        ClientCredentialsAuth("cid", "csecret", INSTANCE),
        transport=httpx.MockTransport(handler),
        retry_policy=FAST,
        token_cache=TokenCache(),
        allowed_hosts=allowed_hosts,
    )
    return session, sent


@pytest.mark.parametrize(
    ("instance_url", "host"),
    [
        ("https://evil.example.com", "evil.example.com"),
        ("https://salesforce.com.evil.example", "salesforce.com.evil.example"),
        ("https://evilsalesforce.com", "evilsalesforce.com"),
        ("http://org.my.salesforce.com", "org.my.salesforce.com"),
        ("ftp://org.my.salesforce.com", "org.my.salesforce.com"),
    ],
)
async def test_an_untrusted_instance_url_never_gets_the_token(instance_url, host):
    session, sent = url_session(instance_url)
    async with session:
        with pytest.raises(UntrustedUrlError) as info:
            await session.request("GET", "limits")
    assert [r.url.path for r in sent] == ["/services/oauth2/token"]  # nothing else was sent
    assert info.value.host == host
    assert host in str(info.value)
    assert "SECRET-TOKEN" not in str(info.value)
    assert isinstance(info.value, InputError)  # not retried: only the configuration can fix it


@pytest.mark.parametrize(
    "instance_url",
    [
        "https://acme.my.salesforce.com",
        "https://acme--dev.sandbox.my.salesforce.com",
        "https://acme.lightning.force.com",
        "https://na1.cloudforce.com",
        "https://acme.my.salesforce.mil",
        "https://acme.my.sfcrmproducts.cn",
        "https://acme.my.salesforce-setup.com",
        "https://acme.my.site.com",
        "https://api.example.com",
    ],
)
async def test_salesforce_hosts_and_allowed_hosts_get_the_token(instance_url):
    session, sent = url_session(instance_url, allowed_hosts="api.example.com, *.other.example")
    async with session:
        await session.request("GET", "limits")
    assert sent[-1].url.host == urllib.parse.urlsplit(instance_url).hostname
    assert sent[-1].headers["Authorization"] == "Bearer SECRET-TOKEN"


async def test_absolute_urls_and_dot_dot_paths_given_to_request_are_checked():
    session, sent = url_session(INSTANCE, allowed_hosts=["*.partner.example"])
    async with session:
        with pytest.raises(UntrustedUrlError, match=r"'elsewhere\.example\.com'"):
            await session.request("GET", "https://elsewhere.example.com/services/data/v64.0/limits")
        with pytest.raises(UntrustedUrlError, match="plain http"):
            await session.request("GET", "http://acme.my.salesforce.com/services/data")
        with pytest.raises(InputError, match=r"'\.\.'"):
            await session.request("GET", "jobs/ingest/../../../identity")
        with pytest.raises(InputError, match=r"'\.\.'"):
            await session.request("GET", "/services/data/v64.0/%2e%2e/x")
        with pytest.raises(InputError, match=r"'\.\.'"):
            await session.request("GET", "https://api.partner.example/services/data/../../x")
        await session.request("GET", "https://api.partner.example/services/data/v64.0/limits")
    assert [r.url.host for r in sent if r.url.path != "/services/oauth2/token"] == ["api.partner.example"]


def test_allowed_hosts_entries_are_validated():
    with pytest.raises(InputError, match="allowed_hosts") as info:
        SalesforceSession(ClientCredentialsAuth("a", "b", INSTANCE), allowed_hosts=["https://x.example/"])
    assert info.value.field == "allowed_hosts"


async def test_an_absolute_next_records_url_to_another_host_is_refused():
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200,
            json={
                "done": False,
                "records": [],
                "nextRecordsUrl": "https://collector.example.net/services/data/v64.0/jobs/ingest?queryLocator=x",
            },
        )

    session, sent = url_session(INSTANCE, answer=answer)
    async with session:
        with pytest.raises(UntrustedUrlError, match=r"collector\.example\.net"):
            [job async for job in BulkIngestClient(session).list_jobs()]
    assert all(r.url.host != "collector.example.net" for r in sent)


async def test_a_soap_server_url_to_another_host_is_refused():
    envelope = (
        '<?xml version="1.0"?><soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/">'
        "<soapenv:Body><loginResponse><result><serverUrl>https://evil.example.org/services/Soap/u/64.0"
        "</serverUrl><sessionId>00D!soap-session</sessionId></result></loginResponse></soapenv:Body>"
        "</soapenv:Envelope>"
    )
    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(200, content=envelope.encode(), headers={"Content-Type": "text/xml"})

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        auth = SoapLoginAuth("user@acme.com", "pw", login_url=INSTANCE)
    session = SalesforceSession(
        auth, transport=httpx.MockTransport(handler), retry_policy=FAST, token_cache=TokenCache()
    )
    async with session:
        with pytest.raises(UntrustedUrlError, match=r"evil\.example\.org") as info:
            await session.request("GET", "limits")
    assert "00D!soap-session" not in str(info.value)
    assert len(sent) == 1  # only the login


# --- job ids ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "job_id",
    [
        "../../x",
        "750",
        "750000000000000001/../x",
        "7505e000000AbC",
        "001000000000000AAA",
        "",
        "750" + "a" * 16,
    ],
)
async def test_job_ids_are_validated_before_any_request(job_id):
    server = Server(lambda r, n: httpx.Response(200, json={"id": job_id}))
    async with session_for(server) as session:
        client = BulkIngestClient(session)
        with pytest.raises(InputError, match="not a Bulk API job id") as info:
            await client.get_job(job_id)
        with pytest.raises(InputError):
            await client.copy_results(job_id, "successfulResults", io.BytesIO())
    assert info.value.field == "job_id"
    assert server.calls == []


async def test_15_and_18_character_job_ids_are_accepted():
    server = Server(lambda r, n: httpx.Response(200, json={"id": "x", "state": "Open"}))
    async with session_for(server) as session:
        client = BulkIngestClient(session)
        await client.get_job("7505e000000AbCd")
        await client.get_job("7505e000000AbCdAAK")
    assert [c.url.path.rsplit("/", 1)[1] for c in server.calls] == ["7505e000000AbCd", "7505e000000AbCdAAK"]


# --- request slots: each attempt takes one and gives it back exactly once -------------------------


async def test_every_outcome_gives_its_request_slot_back_exactly_once():
    # A BoundedSemaphore raises on a second release, and one slot would deadlock on a lost one.
    slots = asyncio.BoundedSemaphore(1)
    body = b"Name\n" + b"A\n" * 2000

    def answer(request: httpx.Request, n: int) -> httpx.Response | Exception:
        path = request.url.path
        if path.endswith("/expired") and request.headers["Authorization"] == "Bearer token-1":
            return httpx.Response(401, json=[{"errorCode": "INVALID_SESSION_ID", "message": "expired"}])
        if path.endswith("/busy") and n % 2:
            return httpx.Response(503)
        if path.endswith("/dropped"):
            return httpx.ReadError("reset by peer")
        if path.endswith("/refused"):
            return httpx.Response(400, json=[{"errorCode": "INVALIDJOB", "message": "no"}])
        return httpx.Response(200, content=body)

    server = Server(answer)
    async with session_for(server, request_slots=slots) as session:

        async def outcomes() -> None:
            await session.request("GET", "jobs/ingest/expired")
            await session.request("GET", "jobs/ingest/busy")
            with pytest.raises(TransportError):
                await session.request("GET", "jobs/ingest/dropped")
            with pytest.raises(InvalidJobError):
                await session.request("GET", "jobs/ingest/refused")
            async with session.stream("GET", "jobs/ingest/read") as response:
                assert slots.locked()  # the streamed body holds the slot...
                assert b"".join([chunk async for chunk in response.aiter_bytes()]) == body
            async with session.stream("GET", "jobs/ingest/abandoned") as response:
                await response.aiter_bytes().__anext__()
            with pytest.raises(InvalidJobError):
                async with session.stream("GET", "jobs/ingest/refused"):
                    pass
            with pytest.raises(RuntimeError, match="caller"):
                async with session.stream("GET", "jobs/ingest/failed"):
                    raise RuntimeError("the caller failed")

        await asyncio.wait_for(outcomes(), 30)
        assert not slots.locked()  # ...until it is closed, and every path gave its slot back
