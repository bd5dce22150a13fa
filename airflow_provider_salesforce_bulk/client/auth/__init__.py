"""Token providers: every way of logging in to Salesforce, and the token cache they share.

Each provider is a :class:`TokenProvider`; :class:`TokenCache` (by default :data:`default_token_cache`)
shares one token among all users of the same credentials and makes concurrent refreshes log in once.
No provider puts a secret in ``repr()``, a log line or an exception message; :meth:`TokenProvider.secrets`
lists them for a secret masker.
"""

from __future__ import annotations

from .base import Token, TokenCache, TokenProvider, default_token_cache, fingerprint
from .client_credentials import ClientCredentialsAuth
from .jwt_bearer import JwtBearerAuth
from .login_url import normalize_login_url
from .password import PasswordAuth
from .refresh_token import RefreshTokenAuth
from .soap_login import SoapLoginAuth
from .static_token import StaticTokenAuth

__all__ = [
    "ClientCredentialsAuth",
    "JwtBearerAuth",
    "PasswordAuth",
    "RefreshTokenAuth",
    "SoapLoginAuth",
    "StaticTokenAuth",
    "Token",
    "TokenCache",
    "TokenProvider",
    "default_token_cache",
    "fingerprint",
    "normalize_login_url",
]
