"""Sending a login request with a few quick retries, and turning OAuth token answers into a Token.

The HTTP session's retry policy is not used here on purpose: a login is its own small, idempotent
request, made before the session has a token, and it must never be retried on a refusal (repeated
failed logins can lock a user out), only on transport errors and temporary server answers.
"""

from __future__ import annotations

import asyncio
import logging
import random
import urllib.parse
from collections.abc import Collection, Iterable, Mapping
from typing import Any

import httpx
import orjson

from ..errors import AuthenticationError, TransportError
from .base import Token

__all__ = ["OAUTH_RETRY_STATUSES", "RETRY_DELAYS", "excerpt", "parse_token_response", "send_login_request"]

log = logging.getLogger(__name__)

RETRY_DELAYS: tuple[float, ...] = (0.5, 1.5)
"""Pause before each retry; its length is the number of retries (tests set it to zeros)."""

_MAX_RETRY_AFTER = 5.0
"""A longer ``Retry-After`` is not worth blocking a login for; the caller's own retries take over."""

OAUTH_RETRY_STATUSES: frozenset[int] = frozenset({429, 500, 502, 503, 504})
"""Statuses worth repeating a token request for: the OAuth endpoint refuses credentials with 400/401."""

_EXCERPT_CHARS = 200

# Pauses go through this name so tests can skip them without patching asyncio.sleep for the whole loop.
_sleep = asyncio.sleep


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


def _retry_delay(response: httpx.Response | None, base: float) -> float:
    if response is not None:
        retry_after = response.headers.get("Retry-After", "")
        try:
            seconds = float(retry_after)
        except ValueError:
            pass
        else:
            if 0 <= seconds <= _MAX_RETRY_AFTER:
                return seconds
    return base + random.uniform(0, base / 4) if base > 0 else 0.0


async def send_login_request(
    http: httpx.AsyncClient,
    url: str,
    *,
    flow: str,
    data: Mapping[str, str] | None = None,
    content: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    retry_statuses: Collection[int] = OAUTH_RETRY_STATUSES,
) -> httpx.Response:
    """POST a login request, retrying a couple of times on transport errors and ``retry_statuses``.

    Parameters
    ----------
    http : httpx.AsyncClient
        Client to send with; its timeouts apply.
    url : str
        Token or SOAP endpoint (holds no credentials, so it may be logged).
    flow : str
        Name of the flow, for messages.
    data, content, headers
        Form fields or raw body, and headers, as for :meth:`httpx.AsyncClient.post`.
    retry_statuses : Collection[int]
        Statuses answered by a retry while retries remain.

    Returns
    -------
    httpx.Response
        The last answer, whatever its status.

    Raises
    ------
    TransportError
        No answer came, after the retries.
    """
    attempts = len(RETRY_DELAYS) + 1
    for attempt in range(attempts):
        try:
            response = await http.post(url, data=data, content=content, headers=headers)
        except httpx.TransportError as exc:
            if attempt + 1 >= attempts:
                raise TransportError(
                    f"{flow} login request to {url} got no answer after {attempts} attempts: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
            log.warning(
                "%s login request to %s failed (%s), retrying", flow, url, type(exc).__name__, exc_info=False
            )
            await _sleep(_retry_delay(None, RETRY_DELAYS[attempt]))
            continue
        except httpx.HTTPError as exc:
            # Decoding errors, too many redirects, ...: an answer came but is unusable; repeating won't help.
            raise TransportError(
                f"{flow} login request to {url} failed: {type(exc).__name__}: {exc}"
            ) from exc
        if response.status_code in retry_statuses and attempt + 1 < attempts:
            log.warning("%s login request to %s answered HTTP %s, retrying", flow, url, response.status_code)
            await _sleep(_retry_delay(response, RETRY_DELAYS[attempt]))
            continue
        return response
    raise AssertionError("unreachable")  # pragma: no cover


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
        The answer is an error (carrying Salesforce's ``error``, ``error_description`` and the status),
        is not JSON, or lacks ``access_token`` or ``instance_url``.
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
    if not response.is_success:
        if isinstance(data, dict) and (data.get("error") or data.get("error_description")):
            error = _optional_str(data, "error")
            description = _optional_str(data, "error_description")
            raise AuthenticationError(
                f"{flow} login refused by {url} (HTTP {status}): {error}: {description}",
                error=error,
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
