"""OAuth 2.0 client credentials flow: a connected app logging in as its configured run-as user."""

from __future__ import annotations

import base64
import urllib.parse

from ..errors import InputError
from ._oauth import OAuthTokenProvider
from .base import fingerprint, require_credentials
from .login_url import LOGIN_URL, TEST_URL

__all__ = ["ClientCredentialsAuth"]


class ClientCredentialsAuth(OAuthTokenProvider):
    """OAuth 2.0 client credentials flow (``grant_type=client_credentials``).

    Salesforce serves this flow only on the org's My Domain host, so ``login_url`` has no default and
    ``login.salesforce.com`` / ``test.salesforce.com`` are refused up front.

    Parameters
    ----------
    client_id : str
        Consumer key of the connected app (not a secret).
    client_secret : str
        Consumer secret of the connected app.
    login_url : str
        The org's My Domain URL or host (``https://mydomain.my.salesforce.com``); see
        :func:`normalize_login_url`.
    use_basic_auth : bool
        Send the client id and secret in an HTTP Basic ``Authorization`` header instead of the form body.

    Raises
    ------
    InputError
        A credential is empty, or ``login_url`` is not a My Domain URL.
    """

    flow = "client_credentials"

    def __init__(
        self, client_id: str, client_secret: str, login_url: str, *, use_basic_auth: bool = False
    ) -> None:
        super().__init__(login_url)
        require_credentials(client_id=client_id, client_secret=client_secret)
        if self.login_url in (LOGIN_URL, TEST_URL):
            raise InputError(
                f"login_url {self.login_url!r}: the client credentials flow only works on the org's "
                "My Domain host (https://<mydomain>.my.salesforce.com)",
                field="login_url",
            )
        self.client_id = client_id
        self._client_secret = client_secret
        self.use_basic_auth = use_basic_auth

    @property
    def cache_key(self) -> str:
        """Fingerprint of the flow, login URL, client id and secret."""
        return fingerprint(self.flow, self.login_url, self.client_id, self._client_secret)

    def secrets(self) -> tuple[str, ...]:
        """The client secret."""
        return (self._client_secret,)

    def _form(self) -> dict[str, str]:
        form = {"grant_type": "client_credentials"}
        if not self.use_basic_auth:
            form["client_id"] = self.client_id
            form["client_secret"] = self._client_secret
        return form

    def _headers(self) -> dict[str, str]:
        headers = super()._headers()
        if self.use_basic_auth:
            # RFC 6749 section 2.3.1: both parts are form-encoded before being joined and base64-encoded.
            pair = f"{urllib.parse.quote_plus(self.client_id)}:{urllib.parse.quote_plus(self._client_secret)}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode("utf-8")).decode("ascii")
        return headers

    def _describe(self) -> str:
        return (
            f"client_id={self.client_id!r}, login_url={self.login_url!r}, "
            f"use_basic_auth={self.use_basic_auth!r}"
        )
