"""What the OAuth 2.0 flows share: one form POST to ``{login_url}/services/oauth2/token``."""

from __future__ import annotations

import abc
import logging
from typing import TYPE_CHECKING

import httpx

from . import _http
from .base import Token, TokenProvider
from .login_url import normalize_login_url

if TYPE_CHECKING:
    from ..retry import RetryPolicy
    from ..timeouts import Timeouts

__all__ = ["OAuthTokenProvider"]

log = logging.getLogger(__name__)

# Form fields that are not secret; every other value sent (password + token, assertion, ...) is blanked
# out of any error body excerpt, in case a proxy echoes the request.
_PUBLIC_FIELDS = frozenset({"grant_type", "client_id", "username"})


class OAuthTokenProvider(TokenProvider):
    """Base of the flows that post a form to Salesforce's OAuth 2.0 token endpoint.

    Subclasses give the form (and optionally headers); this class sends it with a couple of quick
    retries and turns the answer into a :class:`Token`.
    """

    flow: str = "oauth"
    """Short name of the flow, part of the cache key and of messages."""

    def __init__(self, login_url: str) -> None:
        self.login_url = normalize_login_url(login_url)

    @property
    def token_url(self) -> str:
        """The token endpoint of :attr:`login_url`."""
        return f"{self.login_url}/services/oauth2/token"

    @abc.abstractmethod
    def _form(self) -> dict[str, str]:
        """Form fields of one token request (built per request: a JWT assertion expires)."""

    def _headers(self) -> dict[str, str]:
        return {"Accept": "application/json"}

    def _kept_refresh_token(self) -> str | None:
        """Refresh token to keep when the answer carries none."""
        return None

    @property
    def home_url(self) -> str:
        """The login URL."""
        return self.login_url

    async def fetch_token(
        self,
        http: httpx.AsyncClient,
        *,
        retry: RetryPolicy | None = None,
        timeouts: Timeouts | None = None,
    ) -> Token:
        """Request a token from the OAuth 2.0 token endpoint, retried by ``retry``.

        Raises
        ------
        AuthenticationError
            Salesforce refused the request; carries its ``error_code``, ``error_description`` and the status.
        ServerError, RequestLimitExceededError
            The endpoint answered 5xx or 429 after the retries.
        TransportError
            The token endpoint could not be reached, after the retries.
        """
        log.debug("requesting a token with the %s flow from %s", self.flow, self.token_url)
        form = self._form()
        response = await _http.send_login_request(
            http,
            self.token_url,
            flow=self.flow,
            data=form,
            headers=self._headers(),
            retry=retry,
            timeouts=timeouts,
        )
        sent = [value for key, value in form.items() if key not in _PUBLIC_FIELDS]
        return self._on_token(
            _http.parse_token_response(
                response,
                flow=self.flow,
                secrets=[*self.secrets(), *sent],
                refresh_token=self._kept_refresh_token(),
            )
        )

    def _on_token(self, token: Token) -> Token:
        """Hook run on every new token (the refresh token flow adopts a rotated refresh token)."""
        return token

    def _describe(self) -> str:
        """Non-secret constructor arguments, for ``repr()``."""
        return f"login_url={self.login_url!r}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._describe()})"
