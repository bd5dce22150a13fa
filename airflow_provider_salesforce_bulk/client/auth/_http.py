"""Sending a login request through the client's retry engine, and turning OAuth token answers into a Token.

Logins are retried by the same engine and policy as every API call (a session passes its own): on
transport errors, an exchange deadline and temporary server answers, never on a refusal (repeated
failed logins can lock a user out). A login endpoint answering 5xx is a server failure
(:class:`ServerError`), never :class:`AuthenticationError`, which means the credentials were refused.
"""

from __future__ import annotations

import asyncio
import logging
import urllib.parse
from collections.abc import Collection, Iterable, Mapping
from typing import Any

import httpx
import orjson

from ..errors import (
    AuthenticationError,
    RequestLimitExceededError,
    SalesforceApiError,
    ServerError,
    ServerUnavailableError,
    TransportError,
)
from ..retry import Retryable, RetryPolicy, call_with_retries, parse_retry_after
from ..timeouts import DEFAULT_TIMEOUTS, Timeouts, no_answer, within
from .base import Token

__all__ = [
    "DEFAULT_LOGIN_RETRY",
    "OAUTH_RETRY_STATUSES",
    "excerpt",
    "parse_token_response",
    "raise_if_unavailable",
    "send_login_request",
    "unavailable_error",
]

log = logging.getLogger(__name__)

DEFAULT_LOGIN_RETRY = RetryPolicy(max_attempts=3, initial_delay=0.5, max_delay=5.0, max_total=60.0)
"""For a provider used without a session (a session passes its own policy)."""

OAUTH_RETRY_STATUSES: frozenset[int] = frozenset({429, 500, 502, 503, 504})
"""Statuses worth repeating a token request for: the OAuth endpoint refuses credentials with 400/401."""

_EXCERPT_CHARS = 200


def excerpt(body: bytes, secrets: Iterable[str] = ()) -> str:
    """A short printable excerpt of a body, with any secret the request carried blanked out."""
    # Redact before cutting: a secret straddling the cut would otherwise survive as a fragment.
    text = body[:65536].decode("utf-8", "replace")
    for secret in secrets:
        if secret:
            # A proxy's error page may echo the form it got, so both the raw and the encoded forms go.
            for form in {secret, urllib.parse.quote_plus(secret), urllib.parse.quote(secret, safe="")}:
                text = text.replace(form, "***")
    text = " ".join(text.split())
    return text[:_EXCERPT_CHARS] or "empty body"


def raise_if_unavailable(
    response: httpx.Response, *, flow: str, url: str, secrets: Iterable[str] = ()
) -> None:
    """Raise :func:`unavailable_error`'s error when the login answer means "not now"."""
    unavailable = unavailable_error(response, flow=flow, url=url, secrets=secrets)
    if unavailable is not None:
        raise unavailable


def unavailable_error(
    response: httpx.Response, *, flow: str, url: str, secrets: Iterable[str] = ()
) -> SalesforceApiError | None:
    """The error for a login answer meaning "not now" (429 or 5xx), or ``None`` for any other status.

    Retryable by the caller's own retries, unlike :class:`AuthenticationError`.
    """
    status = response.status_code
    cls: type[SalesforceApiError]
    if status == 429:
        cls = RequestLimitExceededError
    elif status in (502, 503, 504):
        cls = ServerUnavailableError
    elif status >= 500:
        cls = ServerError
    else:
        return None
    return cls(
        f"{flow} login at {url} answered HTTP {status} (a server failure, not a refusal of the "
        f"credentials): {excerpt(response.content, secrets)}",
        status_code=status,
        method="POST",
        url=url,
    )


class _RetryableAnswer(Exception):
    def __init__(self, response: httpx.Response) -> None:
        super().__init__(f"HTTP {response.status_code}")
        self.response = response


async def send_login_request(
    http: httpx.AsyncClient,
    url: str,
    *,
    flow: str,
    data: Mapping[str, str] | None = None,
    content: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    retry_statuses: Collection[int] = OAUTH_RETRY_STATUSES,
    retry: RetryPolicy | None = None,
    timeouts: Timeouts | None = None,
) -> httpx.Response:
    """POST a login request, retried by ``retry`` on transport errors, the deadline and ``retry_statuses``.

    Parameters
    ----------
    http : httpx.AsyncClient
        Client to send with; its per-operation timeouts apply.
    url : str
        Token or SOAP endpoint (holds no credentials, so it may be logged).
    flow : str
        Name of the flow, for messages.
    data, content, headers
        Form fields or raw body, and headers, as for :meth:`httpx.AsyncClient.post`.
    retry_statuses : Collection[int]
        Statuses answered by a retry while the policy allows.
    retry : RetryPolicy, optional
        Default :data:`DEFAULT_LOGIN_RETRY`.
    timeouts : Timeouts, optional
        ``exchange`` bounds each attempt as a whole (default :data:`DEFAULT_TIMEOUTS`).

    Returns
    -------
    httpx.Response
        The last answer, whatever its status.

    Raises
    ------
    TransportError
        No complete answer came, after the retries.
    """
    limit = (timeouts or DEFAULT_TIMEOUTS).exchange

    async def attempt() -> httpx.Response:
        try:
            response = await within(http.post(url, data=data, content=content, headers=headers), limit)
        except (httpx.TransportError, asyncio.TimeoutError) as exc:
            failure = TransportError(f"{flow} login request to {url} got no answer: {no_answer(exc, limit)}")
            failure.__cause__ = exc
            log.warning("%s login request to %s failed (%s)", flow, url, type(exc).__name__)
            raise Retryable(failure) from exc
        except httpx.HTTPError as exc:
            # Decoding errors, too many redirects, ...: an answer came but is unusable; repeating won't help.
            raise TransportError(
                f"{flow} login request to {url} failed: {type(exc).__name__}: {exc}"
            ) from exc
        if response.status_code in retry_statuses:
            log.warning("%s login request to %s answered HTTP %s", flow, url, response.status_code)
            raise Retryable(
                _RetryableAnswer(response), parse_retry_after(response.headers.get("Retry-After"))
            )
        return response

    try:
        return await call_with_retries(retry or DEFAULT_LOGIN_RETRY, attempt, what=f"{flow} login")
    except _RetryableAnswer as last:
        return last.response


def _optional_str(data: Mapping[str, Any], key: str) -> str | None:
    value = data.get(key)
    return None if value is None else str(value)


def parse_token_response(
    response: httpx.Response,
    *,
    flow: str,
    secrets: Iterable[str] = (),
    refresh_token: str | None = None,
) -> Token:
    """Turn an OAuth 2.0 token endpoint answer into a :class:`Token`.

    Parameters
    ----------
    response : httpx.Response
        The token endpoint's answer.
    flow : str
        Name of the flow, for messages.
    secrets : Iterable[str]
        Secrets the request carried, blanked out of any body excerpt put in a message.
    refresh_token : str | None
        Refresh token to keep when the answer has none (the refresh token flow).

    Raises
    ------
    AuthenticationError
        The answer is a refusal (carrying Salesforce's ``error`` as ``error_code``, its
        ``error_description`` and the status), is not JSON, or lacks ``access_token`` or ``instance_url``.
    ServerError, RequestLimitExceededError
        The answer is a 5xx or a 429: the server failed, the credentials were not judged.
    """
    try:
        url = str(response.request.url)
    except RuntimeError:  # a response built without a request (tests, custom transports)
        url = "the token endpoint"
    status = response.status_code
    try:
        data: Any = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        data = None
    raise_if_unavailable(response, flow=flow, url=url, secrets=secrets)
    if not response.is_success:
        if isinstance(data, dict) and (data.get("error") or data.get("error_description")):
            error = _optional_str(data, "error")
            description = _optional_str(data, "error_description")
            raise AuthenticationError(
                f"{flow} login refused by {url} (HTTP {status}): {error}: {description}",
                error_code=error,
                error_description=description,
                status_code=status,
            )
        raise AuthenticationError(
            f"{flow} login failed at {url} (HTTP {status}): {excerpt(response.content, secrets)}",
            status_code=status,
        )
    if not isinstance(data, dict):
        # Never excerpt a successful body: if it is half-JSON it may still hold a token.
        raise AuthenticationError(
            f"{flow} login at {url} answered HTTP {status} with a non-JSON body", status_code=status
        )
    missing = [
        key for key in ("access_token", "instance_url") if not isinstance(data.get(key), str) or not data[key]
    ]
    if missing:
        raise AuthenticationError(
            f"{flow} login at {url} answered HTTP {status} without {' and '.join(missing)}",
            status_code=status,
        )
    return Token(
        access_token=data["access_token"],
        instance_url=data["instance_url"].rstrip("/"),
        token_type=_optional_str(data, "token_type") or "Bearer",
        issued_at=_optional_str(data, "issued_at"),
        id_url=_optional_str(data, "id"),
        refresh_token=_optional_str(data, "refresh_token") or refresh_token,
        scope=_optional_str(data, "scope"),
    )
