"""OAuth 2.0 username-password flow (being retired by Salesforce; prefer JWT bearer or client credentials)."""

from __future__ import annotations

from ._oauth import OAuthTokenProvider
from .base import fingerprint, require_credentials
from .login_url import LOGIN_URL

__all__ = ["PasswordAuth"]


class PasswordAuth(OAuthTokenProvider):
    """OAuth 2.0 username-password flow (``grant_type=password``).

    Salesforce is retiring this flow and never returns a refresh token for it; when the session expires
    the provider simply logs in again.

    Parameters
    ----------
    client_id : str
        Consumer key of the connected app (not a secret).
    client_secret : str
        Consumer secret of the connected app.
    username : str
        Salesforce user name.
    password : str
        The user's password.
    security_token : str
        The user's security token, appended to the password as Salesforce expects; empty when the
        login comes from a trusted IP range.
    login_url : str
        ``login``, ``test``, a My Domain host or URL; see :func:`normalize_login_url`.

    Raises
    ------
    InputError
        A required credential is empty, or ``login_url`` is not usable.
    """

    flow = "password"

    def __init__(
        self,
        client_id: str,
        client_secret: str,
        username: str,
        password: str,
        security_token: str = "",
        login_url: str = LOGIN_URL,
    ) -> None:
        super().__init__(login_url)
        require_credentials(
            client_id=client_id, client_secret=client_secret, username=username, password=password
        )
        self.client_id = client_id
        self.username = username
        self._client_secret = client_secret
        self._password = password
        self._security_token = security_token or ""

    @property
    def cache_key(self) -> str:
        """Fingerprint of the flow, login URL and every credential part."""
        return fingerprint(
            self.flow,
            self.login_url,
            self.client_id,
            self._client_secret,
            self.username,
            self._password,
            self._security_token,
        )

    def secrets(self) -> tuple[str, ...]:
        """Client secret, password, security token and the password as sent (password + token)."""
        values = (
            self._client_secret,
            self._password,
            self._security_token,
            self._password + self._security_token,
        )
        return tuple(dict.fromkeys(v for v in values if v))

    def _form(self) -> dict[str, str]:
        return {
            "grant_type": "password",
            "client_id": self.client_id,
            "client_secret": self._client_secret,
            "username": self.username,
            "password": self._password + self._security_token,
        }

    def _describe(self) -> str:
        return f"client_id={self.client_id!r}, username={self.username!r}, login_url={self.login_url!r}"
