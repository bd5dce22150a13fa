"""The HTTP layer: one connection pool, authentication, retries and error mapping for every request."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
import logging
import re
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from types import TracebackType
from typing import Any

import httpx

from airflow_provider_salesforce_bulk import __version__
from airflow_provider_salesforce_bulk.client.auth.base import (
    Token,
    TokenCache,
    TokenProvider,
    default_token_cache,
)
from airflow_provider_salesforce_bulk.client.errors import (
    InputError,
    SessionExpiredError,
    TransportError,
    error_from_response,
)
from airflow_provider_salesforce_bulk.client.hosts import HostPolicy
from airflow_provider_salesforce_bulk.client.retry import (
    RETRYABLE_STATUSES,
    Retryable,
    RetryPolicy,
    RetrySafety,
    call_with_retries,
    parse_retry_after,
)
from airflow_provider_salesforce_bulk.client.timeouts import DEFAULT_TIMEOUTS, Timeouts, within

__all__ = [
    "DEFAULT_API_VERSION",
    "DEFAULT_TIMEOUT",
    "DEFAULT_TIMEOUTS",
    "ApiUsage",
    "SalesforceSession",
    "SecretCallback",
]

log = logging.getLogger(__name__)

DEFAULT_API_VERSION = "64.0"
"""Supported by every org in 2026 and the last version SOAP login works with."""

DEFAULT_TIMEOUT = DEFAULT_TIMEOUTS.as_httpx()
"""The per-operation part of :data:`DEFAULT_TIMEOUTS`, for clients built elsewhere (a shared pool)."""

USER_AGENT = f"airflow-provider-salesforce-bulk/{__version__} httpx/{httpx.__version__}"

SecretCallback = Callable[[str], "Awaitable[None] | None"]
"""Called with every secret the session receives (access and refresh tokens), e.g. a log masker."""

_API_VERSION = re.compile(r"^\d{2,3}\.\d$")
_LIMIT_INFO = re.compile(r"api-usage=(\d+)/(\d+)")
# Failures in which the request provably never reached the server.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


@dataclasses.dataclass(frozen=True)
class ApiUsage:
    """The org's API usage as last reported in ``Sforce-Limit-Info``."""

    used: int
    limit: int
    raw: str

    @property
    def remaining(self) -> int:
        return self.limit - self.used


class SalesforceSession:
    """Authenticated access to one org: a pooled ``httpx.AsyncClient``, the token and the retry rules.

    Parameters
    ----------
    auth : TokenProvider
        How to log in. The token is cached in ``token_cache`` and shared by every session using
        the same credentials in the same event loop.
    api_version : str
        REST API version, e.g. ``"64.0"``.
    timeout : Timeouts | httpx.Timeout
        Time limits: httpx's per-operation ones and the whole-exchange deadlines
        (:class:`~airflow_provider_salesforce_bulk.client.timeouts.Timeouts`). An ``httpx.Timeout`` gets
        the default deadlines. With a shared ``http`` client its own per-operation limits apply, the
        deadlines still come from here.
    retry_policy : RetryPolicy
        Backoff and limits for retried requests, logins included.
    token_cache : TokenCache, optional
        Defaults to the process-wide cache.
    http : httpx.AsyncClient, optional
        A client to share (its pool and settings are used; it is not closed by this session).
    transport : httpx.AsyncBaseTransport, optional
        Transport for the session's own client (tests use ``httpx.MockTransport``).
    max_connections : int
        Size of the session's own connection pool, and of its request slots.
    request_slots : asyncio.Semaphore, optional
        Requests in flight at once; sessions sharing ``http`` should share this too (default: a
        semaphore of ``max_connections``).
    on_secret : Callable[[str], Awaitable[None] | None], optional
        Called once with every access token the session gets (the first and every one obtained after
        ``INVALID_SESSION_ID``), every refresh token (rotated ones too) and the provider's own secrets,
        before any of them can reach a log line of this session: pass a secret masker.
    allowed_hosts : Iterable[str] | str
        Hosts besides Salesforce's domains and the configured login host that may receive the token
        (``api.example.com`` or ``*.example.com``); see
        :class:`~airflow_provider_salesforce_bulk.client.hosts.HostPolicy`.

    Raises
    ------
    InputError
        ``api_version``, a time limit or an ``allowed_hosts`` entry is malformed.
    """

    def __init__(
        self,
        auth: TokenProvider,
        *,
        api_version: str = DEFAULT_API_VERSION,
        timeout: Timeouts | httpx.Timeout = DEFAULT_TIMEOUTS,
        retry_policy: RetryPolicy | None = None,
        token_cache: TokenCache | None = None,
        http: httpx.AsyncClient | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        max_connections: int = 20,
        request_slots: asyncio.Semaphore | None = None,
        on_secret: SecretCallback | None = None,
        allowed_hosts: Iterable[str] | str = (),
    ) -> None:
        api_version = str(api_version).lstrip("vV")
        if not _API_VERSION.match(api_version):
            raise InputError(f"api_version must look like '64.0', got {api_version!r}", field="api_version")
        self.auth = auth
        self.api_version = api_version
        self.timeouts = timeout if isinstance(timeout, Timeouts) else Timeouts.from_httpx(timeout)
        self.retry_policy = retry_policy or RetryPolicy()
        self.token_cache = token_cache or default_token_cache
        self.hosts = HostPolicy.build(auth.home_url, allowed_hosts)
        self.on_secret = on_secret
        self._owns_http = http is None
        self.http = http or httpx.AsyncClient(
            timeout=self.timeouts.as_httpx(),
            transport=transport,
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            follow_redirects=False,
        )
        # httpcore's pool rescans every queued request against every connection on each change, so
        # hundreds of requests queued at once cost CPU quadratically; waiting here keeps its queue short.
        self.request_slots = request_slots or asyncio.Semaphore(max_connections)
        self.api_usage: ApiUsage | None = None
        self._accepted: Token | None = None
        self._provider_secrets_sent = False

    def __repr__(self) -> str:
        return f"<SalesforceSession api_version={self.api_version} auth={type(self.auth).__name__}>"

    async def __aenter__(self) -> SalesforceSession:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool if this session created it."""
        if self._owns_http:
            await self.http.aclose()

    async def token(self) -> Token:
        """The current token, logging in if needed.

        Raises
        ------
        UntrustedUrlError
            The token's ``instance_url`` is not an allowed host (nothing is sent to it).
        """
        token = await self.token_cache.get(
            self.auth, self.http, retry=self.retry_policy, timeouts=self.timeouts
        )
        return await self._accept(token)

    async def _refresh(self, stale: Token) -> Token:
        token = await self.token_cache.refresh(
            self.auth, self.http, stale, retry=self.retry_policy, timeouts=self.timeouts
        )
        return await self._accept(token)

    async def _accept(self, token: Token) -> Token:
        """Hand a token's secrets to ``on_secret`` and check its instance once per token."""
        if token is self._accepted:
            return token
        if self.on_secret is not None:
            secrets = [token.access_token, token.refresh_token]
            if not self._provider_secrets_sent:
                secrets.extend(self.auth.secrets())
            for secret in dict.fromkeys(s for s in secrets if s):
                outcome = self.on_secret(secret)
                if inspect.isawaitable(outcome):
                    await outcome
            self._provider_secrets_sent = True
        self.hosts.check(token.instance_url, what="the instance_url of the login answer")
        self._accepted = token
        return token

    async def instance_url(self) -> str:
        return (await self.token()).instance_url.rstrip("/")

    def _url(self, token: Token, path: str) -> str:
        absolute = "://" in _safe(path)
        # ".." would let a server-supplied value (a locator, an id) climb out of the API's paths.
        segments = urllib.parse.unquote(urllib.parse.urlsplit(path).path if absolute else _safe(path))
        if {".", ".."} & set(segments.split("/")):
            raise InputError(f"path {_safe(path)!r} has a '.' or '..' segment", field="path")
        if absolute:
            return self.hosts.check(path, what=f"the URL {_safe(path)!r}")
        base = token.instance_url.rstrip("/")
        if path.startswith("/"):
            # Absolute paths, e.g. nextRecordsUrl: "/services/data/v64.0/jobs/ingest?queryLocator=..."
            return f"{base}{path}"
        return f"{base}/services/data/v{self.api_version}/{path}"

    def _note_limits(self, response: httpx.Response) -> None:
        info = response.headers.get("Sforce-Limit-Info")
        if info:
            match = _LIMIT_INFO.search(info)
            if match:
                self.api_usage = ApiUsage(used=int(match[1]), limit=int(match[2]), raw=info)

    async def request(
        self,
        method: str,
        path: str,
        *,
        content: bytes | None = None,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        safety: RetrySafety = RetrySafety.IDEMPOTENT,
    ) -> httpx.Response:
        """Send a request and return its successful (2xx) response, body read.

        The whole exchange (request, headers and body) is bounded by ``timeouts.exchange``.

        Parameters
        ----------
        path : str
            Relative to ``/services/data/vXX.X/`` (``"jobs/ingest"``), absolute on the instance
            (``"/services/data/..."``) or a full URL (checked against the allowed hosts).
        safety : RetrySafety
            Which failures may be retried (see :class:`RetrySafety`).

        Raises
        ------
        SalesforceApiError
            (a subclass of it) for an error answer after retries.
        TransportError
            when no complete answer came after retries (the exchange deadline included). For
            ``NOT_SENT_ONLY`` requests, raised at once when the request may have reached Salesforce.
        InputError
            ``path`` has a ``..`` segment, or (:class:`UntrustedUrlError`) a URL's host is not allowed.
        """
        response, release = await self._send(
            method,
            path,
            content=content,
            json=json,
            params=params,
            headers=headers,
            safety=safety,
            stream=False,
        )
        release()
        return response

    @contextlib.asynccontextmanager
    async def stream(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> AsyncIterator[httpx.Response]:
        """Like :meth:`request`, but the body is left unread for ``aiter_bytes()``.

        Only the response head is covered by retries: a failure while reading the body raises
        :class:`TransportError` from ``aiter_bytes()``, as does a download (head and body) lasting
        longer than ``timeouts.download``.
        """
        response, release = await self._send(
            method, path, params=params, headers=headers, safety=RetrySafety.IDEMPOTENT, stream=True
        )
        try:
            yield response
        finally:
            try:
                await response.aclose()
                _release_body(response)
            finally:
                release()

    async def _send(
        self,
        method: str,
        path: str,
        *,
        content: bytes | None = None,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        safety: RetrySafety,
        stream: bool,
    ) -> tuple[httpx.Response, Callable[[], None]]:
        """Retries (:func:`call_with_retries`) around one attempt with its session refresh.

        Returns the successful response and the function releasing its request slot: at once for a
        read body, when the caller is done for a stream.
        """
        refreshed = False

        async def attempt() -> tuple[httpx.Response, Callable[[], None]]:
            nonlocal refreshed
            token = await self.token()
            while True:
                try:
                    return await self._attempt(
                        token, method, path, content, json, params, headers, safety=safety, stream=stream
                    )
                except SessionExpiredError:
                    if refreshed:
                        raise
                    # One refresh per request, not counted as an attempt; TokenCache makes concurrent
                    # refreshes collapse into one login.
                    refreshed = True
                    token = await self._refresh(token)

        return await call_with_retries(self.retry_policy, attempt, what=f"{method} {_safe(path)}")

    async def _attempt(
        self,
        token: Token,
        method: str,
        path: str,
        content: bytes | None,
        json: Any,
        params: Mapping[str, Any] | None,
        headers: Mapping[str, str] | None,
        *,
        safety: RetrySafety,
        stream: bool,
    ) -> tuple[httpx.Response, Callable[[], None]]:
        """One exchange: a success, or a raised error (:class:`Retryable` when it may be repeated)."""
        url = self._url(token, path)
        request = self.http.build_request(
            method,
            url,
            content=content,
            json=json,
            params=params,
            headers={
                "Authorization": token.authorization,
                "Accept-Encoding": "gzip",
                "User-Agent": USER_AGENT,
                **(headers or {}),
            },
        )
        limit = self.timeouts.download if stream else self.timeouts.exchange
        expires = time.monotonic() + limit
        await self.request_slots.acquire()
        try:
            response = await within(self._exchange(request, stream=stream), limit)
        except (httpx.HTTPError, asyncio.TimeoutError) as exc:
            self.request_slots.release()
            if isinstance(exc, httpx.HTTPError):
                detail = f"{type(exc).__name__}: {exc}"
            else:
                detail = f"no complete answer within {limit:g}s"
            failure = TransportError(f"{method} {_safe(url)} failed: {detail}")
            failure.__cause__ = exc
            if safety is RetrySafety.IDEMPOTENT or isinstance(exc, _NOT_SENT):
                raise Retryable(failure) from exc
            raise failure from exc
        except BaseException:
            self.request_slots.release()
            raise
        if response.is_success:
            if stream:
                response.stream = _DeadlineStream(response.stream, expires, limit)
                return response, self.request_slots.release
            self.request_slots.release()
            return response, _nothing
        self.request_slots.release()
        error = error_from_response(response.status_code, response.content, method=method, url=_safe(url))
        if response.status_code in RETRYABLE_STATUSES and (
            safety is RetrySafety.IDEMPOTENT or response.status_code == 429
        ):
            raise Retryable(error, parse_retry_after(response.headers.get("Retry-After")))
        raise error

    async def _exchange(self, request: httpx.Request, *, stream: bool) -> httpx.Response:
        response = await self.http.send(request, stream=True)
        try:
            self._note_limits(response)
            if not (response.is_success and stream):
                # Reading the body is part of the attempt: a connection dropped mid-body is a
                # transport failure like any other.
                await response.aread()
                await response.aclose()
                _release_body(response)
        except BaseException:
            await asyncio.shield(response.aclose())
            raise
        return response


class _DeadlineStream(httpx.AsyncByteStream):
    """A response body that fails with ``httpx.ReadTimeout`` once its download deadline passes.

    httpx bounds each read; a body trickling one byte per read timeout would never end without this.
    """

    def __init__(self, inner: httpx.SyncByteStream | httpx.AsyncByteStream, expires: float, limit: float):
        if not isinstance(inner, httpx.AsyncByteStream):
            raise TypeError("a streamed response of an async client has an async body")
        self._inner = inner
        self._expires = expires
        self._limit = limit

    async def __aiter__(self) -> AsyncIterator[bytes]:
        chunks = self._inner.__aiter__()
        while True:
            remaining = self._expires - time.monotonic()
            try:
                if remaining <= 0:
                    raise asyncio.TimeoutError
                chunk = await within(chunks.__anext__(), remaining)
            except StopAsyncIteration:
                return
            except asyncio.TimeoutError:
                raise httpx.ReadTimeout(f"the download took longer than {self._limit:g}s") from None
            yield chunk

    async def aclose(self) -> None:
        await self._inner.aclose()


def _nothing() -> None:
    """The slot release of a response whose slot is already free."""


def _release_body(response: httpx.Response) -> None:
    """Break httpx's response <-> stream reference cycle once the body is read and closed.

    The cycle keeps the response, and through it the request and its body (an upload of up to
    100 MB), alive until the cyclic garbage collector runs, which a loop creating few objects may
    not do for many chunks: memory would grow with the data. Without the cycle, reference counting
    frees the upload as soon as the caller drops the response.
    """
    response.stream = httpx.ByteStream(b"")


def _safe(url: str) -> str:
    """The URL without its query string (a locator is harmless, but keep messages short)."""
    return url.split("?", 1)[0]
