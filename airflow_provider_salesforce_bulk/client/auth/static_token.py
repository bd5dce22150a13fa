"""A fixed access token and instance URL obtained elsewhere (an Airflow connection, another tool)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import httpx

from .base import Token, TokenProvider, fingerprint, require_credentials
from .login_url import normalize_url

if TYPE_CHECKING:
    from ..retry import RetryPolicy
    from ..timeouts import Timeouts

__all__ = ["StaticTokenAuth"]


class StaticTokenAuth(TokenProvider):
    """A fixed access token and the instance URL it is valid for.

    :meth:`fetch_token` returns the token without any request. There is no way to obtain another one,
    so :attr:`can_refresh` is ``False``: once Salesforce rejects the token (401 ``INVALID_SESSION_ID``),
    :meth:`TokenCache.refresh` raises :class:`AuthenticationError` ("the fixed access token was rejected
    and cannot be refreshed") instead of handing the same token back.

    Parameters
    ----------
    access_token : str
        The access (session) token.
    instance_url : str
        The org's instance URL (``https://mydomain.my.salesforce.com``), the base URL of every request.

    Raises
    ------
    InputError
        ``access_token`` is empty or ``instance_url`` is not an https URL (http only for loopback hosts).
    """

    flow = "static_token"

    def __init__(self, access_token: str, instance_url: str) -> None:
        require_credentials(access_token=access_token)
        self.instance_url = normalize_url(instance_url, what="instance_url", keywords=False)
        self._token = Token(access_token=access_token, instance_url=self.instance_url)

    @property
    def cache_key(self) -> str:
        """Fingerprint of the instance URL and the token."""
        return fingerprint(self.flow, self.instance_url, self._token.access_token)

    @property
    def can_refresh(self) -> bool:
        """Always ``False``: the token is fixed."""
        return False

    async def fetch_token(
        self,
        http: httpx.AsyncClient,
        *,
        retry: RetryPolicy | None = None,
        timeouts: Timeouts | None = None,
    ) -> Token:
        """The fixed token (no request is made)."""
        return self._token

    @property
    def home_url(self) -> str:
        """The configured instance URL."""
        return self.instance_url

    def secrets(self) -> tuple[str, ...]:
        """The access token."""
        return (self._token.access_token,)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(instance_url={self.instance_url!r})"
