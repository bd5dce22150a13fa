"""What every way of logging in shares: the token, the provider interface and the shared token cache."""

from __future__ import annotations

import abc
import asyncio
import dataclasses
import hashlib
from typing import TYPE_CHECKING

import httpx

from ..errors import AuthenticationError, InputError
from ..per_loop import PerLoop

if TYPE_CHECKING:
    from ..retry import RetryPolicy
    from ..timeouts import Timeouts

__all__ = ["Token", "TokenCache", "TokenProvider", "default_token_cache"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Token:
    """An access token and the instance it is valid for.

    Secrets are left out of ``repr()`` so a token never reaches a log by accident.
    """

    access_token: str = dataclasses.field(repr=False)
    instance_url: str
    token_type: str = "Bearer"  # noqa: S105  (a token type, not a secret)
    issued_at: str | None = None
    id_url: str | None = None
    refresh_token: str | None = dataclasses.field(default=None, repr=False)
    scope: str | None = None

    @property
    def authorization(self) -> str:
        """Value of the ``Authorization`` header."""
        return f"Bearer {self.access_token}"


class TokenProvider(abc.ABC):
    """One way of obtaining an access token (one OAuth flow, SOAP login or a fixed token)."""

    @property
    @abc.abstractmethod
    def cache_key(self) -> str:
        """Identifies the credentials, so that every user of the same ones shares one token.

        Must be derived so that it reveals no secret (use :func:`fingerprint`).
        """

    @abc.abstractmethod
    async def fetch_token(
        self,
        http: httpx.AsyncClient,
        *,
        retry: RetryPolicy | None = None,
        timeouts: Timeouts | None = None,
    ) -> Token:
        """Log in and return a fresh token.

        Parameters
        ----------
        http : httpx.AsyncClient
            Client to send with.
        retry : RetryPolicy, optional
            How the login request is retried (a session passes its own policy); a short default
            when not given.
        timeouts : Timeouts, optional
            Its ``exchange`` bounds each login request as a whole.

        Raises
        ------
        AuthenticationError
            Salesforce refused the credentials; carries its ``error_code`` and ``error_description``.
        ServerError
            The login endpoint answered 5xx (``ServerUnavailableError`` for 502-504), after retries.
        RequestLimitExceededError
            The login endpoint answered 429, after retries.
        TransportError
            The login endpoint could not be reached (or did not answer in time), after retries.
        """

    @property
    def home_url(self) -> str | None:
        """The URL the user configured (login URL, or a fixed token's instance URL): its host may
        always receive the token."""
        return None

    @property
    def can_refresh(self) -> bool:
        """Whether :meth:`fetch_token` can produce a token other than one Salesforce rejected.

        ``False`` for a provider holding a fixed token: :meth:`TokenCache.refresh` then raises
        :class:`AuthenticationError` rather than handing the rejected token back.
        """
        return True

    def secrets(self) -> tuple[str, ...]:
        """Secret values this provider holds, for a secret masker to register."""
        return ()


def require_credentials(**values: object) -> None:
    """Refuse an empty credential before any request: an :class:`InputError` naming the first empty one
    (in the order given)."""
    for name, value in values.items():
        if not value:
            raise InputError(f"{name} is empty", field=name)


def fingerprint(*parts: str | None) -> str:
    """A stable, non-reversible key over credential parts (secrets included, never revealed)."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(b"\x00" if part is None else b"\x01" + part.encode("utf-8"))
        digest.update(b"\xff")
    return digest.hexdigest()[:32]


class _Entry:
    """Token of one set of credentials in one event loop, with its single-flight lock."""

    def __init__(self) -> None:
        self.token: Token | None = None
        self.lock = asyncio.Lock()


class TokenCache:
    """Tokens shared by every client using the same credentials in the same event loop.

    When many requests see an expired session at once they all call :meth:`refresh` with the token
    they used; the first one logs in again and the others get its new token, so exactly one login
    happens.
    """

    def __init__(self) -> None:
        # asyncio.Lock belongs to one loop; several loops (threads, test runs) each get their own entries.
        self._entries: PerLoop[_Entry] = PerLoop()

    def _entry(self, key: str) -> _Entry:
        return self._entries.get(key, _Entry)

    async def get(
        self,
        provider: TokenProvider,
        http: httpx.AsyncClient,
        *,
        retry: RetryPolicy | None = None,
        timeouts: Timeouts | None = None,
    ) -> Token:
        """The cached token, logging in first if there is none (``retry``/``timeouts`` as for
        :meth:`TokenProvider.fetch_token`)."""
        entry = self._entry(provider.cache_key)
        if entry.token is not None:
            return entry.token
        async with entry.lock:
            if entry.token is None:
                entry.token = await provider.fetch_token(http, retry=retry, timeouts=timeouts)
            return entry.token

    async def refresh(
        self,
        provider: TokenProvider,
        http: httpx.AsyncClient,
        stale: Token | None,
        *,
        retry: RetryPolicy | None = None,
        timeouts: Timeouts | None = None,
    ) -> Token:
        """A token newer than ``stale``: logs in again unless another caller already did.

        Raises
        ------
        AuthenticationError
            The login failed, or ``stale`` was rejected and the provider cannot refresh
            (:attr:`TokenProvider.can_refresh` is ``False``).
        """
        if stale is not None and not provider.can_refresh:
            raise AuthenticationError(
                f"{type(provider).__name__}: the fixed access token was rejected and cannot be refreshed"
            )
        entry = self._entry(provider.cache_key)
        async with entry.lock:
            if entry.token is None or entry.token is stale:
                entry.token = None
                entry.token = await provider.fetch_token(http, retry=retry, timeouts=timeouts)
            return entry.token

    def clear(self) -> None:
        """Forget every token (tests, or after credentials were rotated)."""
        self._entries.clear()


default_token_cache = TokenCache()
"""The process-wide cache used unless a client is given its own."""
