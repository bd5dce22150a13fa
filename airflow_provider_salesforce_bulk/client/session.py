"""The HTTP layer: one connection pool, authentication, retries and error mapping for every request.

A request goes through three layers, as httpx splits ``send``: the retry layer
(:func:`~airflow_provider_salesforce_bulk.client.retry.call_with_retries`, the engine logins use too)
repeats the session layer, which adds the token and logs in again once when Salesforce says the session
expired, around one attempt: a request slot, the exchange under its deadline, and the answer mapped to
a response or an error.
"""

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
from typing import Any, cast

import httpx

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
from airflow_provider_salesforce_bulk.client.http_client import (
    DEFAULT_MAX_CONNECTIONS,
    USER_AGENT,
    build_http_client,
)
from airflow_provider_salesforce_bulk.client.retry import (
    RETRYABLE_STATUSES,
    Retryable,
    RetryPolicy,
    RetrySafety,
    call_with_retries,
    parse_retry_after,
)
from airflow_provider_salesforce_bulk.client.timeouts import DEFAULT_TIMEOUTS, Timeouts, no_answer, within

__all__ = [
    "DEFAULT_API_VERSION",
    "DEFAULT_TIMEOUTS",
    "ApiUsage",
    "BodyFactory",
    "SalesforceSession",
    "SecretCallback",
]

log = logging.getLogger(__name__)

DEFAULT_API_VERSION = "64.0"
"""Supported by every org in 2026 and the last version SOAP login works with."""

BodyFactory = Callable[[], AsyncIterator[bytes]]
"""Makes a request body's pieces afresh for each attempt (a file opened again, read in pieces)."""

SecretCallback = Callable[[str], "Awaitable[None] | None"]
"""Called with every secret the session receives (access and refresh tokens), e.g. a log masker."""

_API_VERSION = re.compile(r"^\d{2,3}\.\d$")
_LIMIT_INFO = re.compile(r"api-usage=(\d+)/(\d+)")
# Failures in which the request provably never reached the server.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


@dataclasses.dataclass(frozen=True, kw_only=True)
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
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
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
        self.http = http or build_http_client(
            self.timeouts, max_connections=max_connections, transport=transport
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
        content: bytes | BodyFactory | None = None,
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
        content : bytes or callable, optional
            The body; a callable returns a fresh async iterator of its pieces for each attempt
            (streamed, never held whole: give its ``Content-Length`` in ``headers``).
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
        call = _Call(method, path, content=content, json=json, params=params, headers=headers, safety=safety)
        return await self._send(call)

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
        longer than ``timeouts.download``. The response holds one of :attr:`request_slots` until the
        block ends.
        """
        response = await self._send(_Call(method, path, params=params, headers=headers, stream=True))
        body = cast(_StreamedBody, response.stream)  # as _send_once sets it for every streamed call
        try:
            yield response
        finally:
            try:
                await response.aclose()
            finally:
                # httpx skips closing the body of a response it holds as closed already (one built
                # from bytes, as a mock transport does); closing it here frees the slot in every case.
                await body.aclose()
                _release_body(response)

    # The layers of a request, outermost first, as httpx splits ``send``: retries, then the session
    # (token and its one refresh), then a single attempt.

    async def _send(self, call: _Call) -> httpx.Response:
        """The retry layer: the session layer again while :attr:`retry_policy` allows."""
        refresh = _Once()
        return await call_with_retries(
            self.retry_policy, lambda: self._send_with_token(call, refresh), what=str(call)
        )

    async def _send_with_token(self, call: _Call, refresh: _Once) -> httpx.Response:
        """The session layer: an attempt with the current token and, when Salesforce answers that the
        session expired, one more with a new one.

        The new login is not an attempt of the retry policy, and a call makes one at most, whatever
        its retries; :class:`TokenCache` turns concurrent refreshes into a single login.
        """
        token = await self.token()
        try:
            return await self._send_once(call, token)
        except SessionExpiredError:
            if not refresh.take():
                raise
        return await self._send_once(call, await self._refresh(token))

    async def _send_once(self, call: _Call, token: Token) -> httpx.Response:
        """One attempt: a 2xx response, or a raised error (:class:`Retryable` when it may be repeated).

        Bounded as a whole by ``timeouts.exchange`` (a streamed body: by ``timeouts.download`` from
        here until its last byte). A read response gave its request slot back; a streamed one keeps
        it until its body is closed.
        """
        url = self._url(token, call.path)
        request = self._build_request(call, url, token)
        limit = self.timeouts.download if call.stream else self.timeouts.exchange
        async with _RequestSlot(self.request_slots) as slot:
            expires = time.monotonic() + limit
            try:
                response = await within(self._exchange(request, stream=call.stream), limit)
            except (httpx.HTTPError, asyncio.TimeoutError) as exc:
                raise _no_answer(call, url, exc, limit) from exc
            if not response.is_success:
                raise _error_answer(call, url, response)
            if call.stream:
                response.stream = _StreamedBody(response.stream, expires, limit, slot.hand_over())
            return response

    def _build_request(self, call: _Call, url: str, token: Token) -> httpx.Request:
        return self.http.build_request(
            call.method,
            url,
            # A streamed body is made anew for each attempt: an iterator sent once cannot be resent.
            content=call.content() if callable(call.content) else call.content,
            json=call.json,
            params=call.params,
            headers={
                "Authorization": token.authorization,
                "Accept-Encoding": "gzip",
                "User-Agent": USER_AGENT,
                **(call.headers or {}),
            },
        )

    async def _exchange(self, request: httpx.Request, *, stream: bool) -> httpx.Response:
        """Send ``request`` and read the body of any answer but a successful stream's."""
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


@dataclasses.dataclass(frozen=True)
class _Call:
    """A request as the caller made it: every attempt sends it unchanged."""

    method: str
    path: str
    content: bytes | BodyFactory | None = None
    json: Any = None
    params: Mapping[str, Any] | None = None
    headers: Mapping[str, str] | None = None
    safety: RetrySafety = RetrySafety.IDEMPOTENT
    stream: bool = False

    def __str__(self) -> str:
        return f"{self.method} {_safe(self.path)}"


class _Once:
    """A permission that can be taken once (a call's one refresh, across all its retries)."""

    def __init__(self) -> None:
        self._taken = False

    def take(self) -> bool:
        """True the first time, False ever after."""
        taken, self._taken = self._taken, True
        return not taken


class _RequestSlot:
    """One of a session's request slots, held for one attempt.

    Leaving the ``async with`` block frees it, unless :meth:`hand_over` gave it to a streamed body,
    which frees it when closed. Either way :meth:`release` is the one way back, and frees it once.
    """

    def __init__(self, slots: asyncio.Semaphore) -> None:
        self._slots = slots
        self._held = False
        self._handed_over = False

    async def __aenter__(self) -> _RequestSlot:
        await self._slots.acquire()
        self._held = True
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if not self._handed_over:
            self.release()

    def hand_over(self) -> Callable[[], None]:
        """Keep the slot past the block; the returned function frees it."""
        self._handed_over = True
        return self.release

    def release(self) -> None:
        if self._held:
            self._held = False
            self._slots.release()


def _no_answer(call: _Call, url: str, exc: BaseException, limit: float) -> Exception:
    """The error for an attempt that got no complete answer: retryable unless the request may have
    reached Salesforce and must not be repeated."""
    failure = TransportError(f"{call.method} {_safe(url)} failed: {no_answer(exc, limit)}")
    if call.safety is RetrySafety.IDEMPOTENT or isinstance(exc, _NOT_SENT):
        failure.__cause__ = exc
        return Retryable(failure)
    return failure


def _error_answer(call: _Call, url: str, response: httpx.Response) -> Exception:
    """The error for an error answer: retryable when temporary and safe to repeat (a 429 always is:
    Salesforce refused the request before reading it)."""
    error = error_from_response(response.status_code, response.content, method=call.method, url=_safe(url))
    status = response.status_code
    if status in RETRYABLE_STATUSES and (call.safety is RetrySafety.IDEMPOTENT or status == 429):
        return Retryable(error, parse_retry_after(response.headers.get("Retry-After")))
    return error


class _StreamedBody(httpx.AsyncByteStream):
    """A streamed response body bounded by its download deadline, holding a request slot until closed.

    httpx bounds each read; a body trickling one byte per read timeout would never end without the
    deadline, which fails it with ``httpx.ReadTimeout``.
    """

    def __init__(
        self,
        inner: httpx.SyncByteStream | httpx.AsyncByteStream,
        expires: float,
        limit: float,
        release: Callable[[], None],
    ) -> None:
        if not isinstance(inner, httpx.AsyncByteStream):
            raise TypeError("a streamed response of an async client has an async body")
        self._inner = inner
        self._expires = expires
        self._limit = limit
        self._release = release
        self._closed = False

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
        """Close the body once and give the request slot back (later calls do nothing)."""
        if self._closed:
            return
        self._closed = True
        try:
            await self._inner.aclose()
        finally:
            self._release()


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
