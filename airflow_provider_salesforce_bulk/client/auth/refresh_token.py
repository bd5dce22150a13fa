"""OAuth 2.0 refresh token flow: a long-lived refresh token exchanged for access tokens."""

from __future__ import annotations

from ._oauth import OAuthTokenProvider
from .base import Token, fingerprint, require_credentials
from .login_url import LOGIN_URL

__all__ = ["RefreshTokenAuth"]


class RefreshTokenAuth(OAuthTokenProvider):
    """OAuth 2.0 refresh token flow (``grant_type=refresh_token``).

    Salesforce usually answers without a refresh token, and the configured one is kept on the
    returned :class:`Token`. When the connected app rotates refresh tokens, the answer carries a new
    one: it is adopted for the following requests of this provider (and reported by :meth:`secrets`),
    since the old one stops working.

    Parameters
    ----------
    client_id : str
        Consumer key of the connected app (not a secret).
    refresh_token : str
        The refresh token.
    client_secret : str | None
        Consumer secret, for connected apps that require it on refresh.
    login_url : str
        ``login``, ``test``, a My Domain host or URL; see :func:`normalize_login_url`.

    Raises
    ------
    InputError
        ``client_id`` or ``refresh_token`` is empty, or ``login_url`` is not usable.
    """

    flow = "refresh_token"

    def __init__(
        self,
        client_id: str,
        refresh_token: str,
        client_secret: str | None = None,
        login_url: str = LOGIN_URL,
    ) -> None:
        super().__init__(login_url)
        require_credentials(client_id=client_id, refresh_token=refresh_token)
        self.client_id = client_id
        self._refresh_token = refresh_token
        self._client_secret = client_secret or None
        # The key stays that of the configured credentials, so that a rotation does not split the cache.
        self._cache_key = fingerprint(
            self.flow, self.login_url, client_id, refresh_token, self._client_secret
        )
        self._seen_refresh_tokens = [refresh_token]

    @property
    def cache_key(self) -> str:
        """Fingerprint of the flow, login URL, client id, configured refresh token and client secret."""
        return self._cache_key

    def secrets(self) -> tuple[str, ...]:
        """Every refresh token this provider has held, and the client secret."""
        values = [*self._seen_refresh_tokens, self._client_secret]
        return tuple(dict.fromkeys(v for v in values if v))

    def _form(self) -> dict[str, str]:
        form = {
            "grant_type": "refresh_token",
            "client_id": self.client_id,
            "refresh_token": self._refresh_token,
        }
        if self._client_secret:
            form["client_secret"] = self._client_secret
        return form

    def _kept_refresh_token(self) -> str | None:
        return self._refresh_token

    def _on_token(self, token: Token) -> Token:
        if token.refresh_token and token.refresh_token != self._refresh_token:
            self._refresh_token = token.refresh_token
            self._seen_refresh_tokens.append(token.refresh_token)
        return token

    def _describe(self) -> str:
        return f"client_id={self.client_id!r}, login_url={self.login_url!r}"
