"""The HTTP layer: one connection pool, authentication, retries and error mapping for every request."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import re
import time
from collections.abc import AsyncIterator, Mapping
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
from airflow_provider_salesforce_bulk.client.retry import (
    RETRYABLE_STATUSES,
    RetryPolicy,
    RetrySafety,
    parse_retry_after,
)

__all__ = ["DEFAULT_API_VERSION", "DEFAULT_TIMEOUT", "ApiUsage", "SalesforceSession"]

log = logging.getLogger(__name__)

DEFAULT_API_VERSION = "64.0"
"""Supported by every org in 2026 and the last version SOAP login works with."""

DEFAULT_TIMEOUT = httpx.Timeout(connect=15.0, read=120.0, write=300.0, pool=60.0)
"""Uploads of up to 100 MB need a generous write timeout; reads of results a generous read timeout."""

USER_AGENT = f"airflow-provider-salesforce-bulk/{__version__} httpx/{httpx.__version__}"

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
    timeout : httpx.Timeout
        Per-request timeouts.
    retry_policy : RetryPolicy
        Backoff and limits for retried requests.
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
    """

    def __init__(
        self,
        auth: TokenProvider,
        *,
        api_version: str = DEFAULT_API_VERSION,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
        retry_policy: RetryPolicy | None = None,
        token_cache: TokenCache | None = None,
        http: httpx.AsyncClient | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        max_connections: int = 20,
        request_slots: asyncio.Semaphore | None = None,
    ) -> None:
        api_version = str(api_version).lstrip("vV")
        if not _API_VERSION.match(api_version):
            raise InputError(f"api_version must look like '64.0', got {api_version!r}", field="api_version")
        self.auth = auth
        self.api_version = api_version
        self.retry_policy = retry_policy or RetryPolicy()
        self.token_cache = token_cache or default_token_cache
        self._owns_http = http is None
        self.http = http or httpx.AsyncClient(
            timeout=timeout,
            transport=transport,
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            follow_redirects=False,
        )
        # httpcore's pool rescans every queued request against every connection on each change, so
        # hundreds of requests queued at once cost CPU quadratically; waiting here keeps its queue short.
        self.request_slots = request_slots or asyncio.Semaphore(max_connections)
        self.api_usage: ApiUsage | None = None

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
        """The current token, logging in if needed."""
        return await self.token_cache.get(self.auth, self.http)

    async def instance_url(self) -> str:
        return (await self.token()).instance_url.rstrip("/")

    def _url(self, token: Token, path: str) -> str:
        if path.startswith(("https://", "http://")):
            return path
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

        Parameters
        ----------
        path : str
            Relative to ``/services/data/vXX.X/`` (``"jobs/ingest"``), absolute on the instance
            (``"/services/data/..."``) or a full URL.
        safety : RetrySafety
            Which failures may be retried (see :class:`RetrySafety`).

        Raises
        ------
        SalesforceApiError
            (a subclass of it) for an error answer after retries.
        TransportError
            when no answer came after retries. For ``NOT_SENT_ONLY`` requests, raised at once when
            the request may have reached Salesforce.
        """
        async with self._send(
            method,
            path,
            content=content,
            json=json,
            params=params,
            headers=headers,
            safety=safety,
            stream=False,
        ) as response:
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
        :class:`TransportError`.
        """
        async with self._send(
            method, path, params=params, headers=headers, safety=RetrySafety.IDEMPOTENT, stream=True
        ) as response:
            yield response

    @contextlib.asynccontextmanager
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
    ) -> AsyncIterator[httpx.Response]:
        policy = self.retry_policy
        started = time.monotonic()
        attempt = 0
        refreshed = False
        token = await self.token()
        while True:
            attempt += 1
            url = self._url(token, path)
            request_headers = {
                "Authorization": token.authorization,
                "Accept-Encoding": "gzip",
                "User-Agent": USER_AGENT,
                **(headers or {}),
            }
            request = self.http.build_request(
                method, url, content=content, json=json, params=params, headers=request_headers
            )
            retry_after: float | None = None
            failure: Exception
            response: httpx.Response | None = None
            body = b""
            await self.request_slots.acquire()
            try:
                response = await self.http.send(request, stream=True)
                self._note_limits(response)
                if not (response.is_success and stream):
                    # Reading the body is part of the attempt: a connection dropped mid-body is a
                    # transport failure like any other.
                    body = await response.aread()
            except httpx.HTTPError as exc:
                self.request_slots.release()
                if response is not None:
                    await response.aclose()
                failure = TransportError(f"{method} {_safe(url)} failed: {type(exc).__name__}: {exc}")
                failure.__cause__ = exc
                retryable = safety is RetrySafety.IDEMPOTENT or isinstance(exc, _NOT_SENT)
            except BaseException:
                self.request_slots.release()
                raise
            else:
                try:
                    if response.is_success:
                        try:
                            yield response
                        finally:
                            await response.aclose()
                            _release_body(response)
                        return
                    await response.aclose()
                    _release_body(response)
                finally:
                    self.request_slots.release()
                error = error_from_response(response.status_code, body, method=method, url=_safe(url))
                if isinstance(error, SessionExpiredError) and not refreshed:
                    # One refresh per request; TokenCache makes concurrent refreshes collapse into one.
                    refreshed = True
                    attempt -= 1
                    token = await self.token_cache.refresh(self.auth, self.http, token)
                    continue
                failure = error
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
                retryable = response.status_code in RETRYABLE_STATUSES and (
                    safety is RetrySafety.IDEMPOTENT or response.status_code == 429
                )
            elapsed = time.monotonic() - started
            wait = policy.delay(attempt, retry_after)
            if not retryable or attempt >= policy.max_attempts or elapsed + wait > policy.max_total:
                raise failure
            log.debug("Retrying %s %s in %.2fs after: %s", method, _safe(url), wait, failure)
            await asyncio.sleep(wait)


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
