"""SOAP ``login()``: username + password + security token, without a connected app (deprecated)."""

from __future__ import annotations

import logging
import re
import urllib.parse
import warnings
import xml.etree.ElementTree as ET
from typing import TYPE_CHECKING
from xml.sax.saxutils import escape

import httpx

from ..errors import AuthenticationError, InputError
from . import _http
from .base import Token, TokenProvider, fingerprint, require_credentials
from .login_url import LOGIN_URL, normalize_login_url

if TYPE_CHECKING:
    from ..retry import RetryPolicy
    from ..timeouts import Timeouts

__all__ = ["MAX_SOAP_API_VERSION", "SoapLoginAuth"]

log = logging.getLogger(__name__)

MAX_SOAP_API_VERSION = 64.0
"""``login()`` is unavailable from API 65.0 (and retires entirely in Summer '27)."""

# A SOAP fault comes back as HTTP 500: retrying it would repeat a refused login (and can lock the user
# out), so only the statuses that mean "not reached Salesforce's login logic" are retried.
_SOAP_RETRY_STATUSES = frozenset({429, 502, 503, 504})

_XML_ESCAPES = {'"': "&quot;", "'": "&apos;"}

_ENVELOPE = (
    '<?xml version="1.0" encoding="utf-8"?>'
    '<env:Envelope xmlns:xsd="http://www.w3.org/2001/XMLSchema" '
    'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
    'xmlns:env="http://schemas.xmlsoap.org/soap/envelope/" '
    'xmlns:urn="urn:partner.soap.sforce.com">'
    "<env:Body><urn:login><urn:username>{username}</urn:username>"
    "<urn:password>{password}</urn:password></urn:login></env:Body></env:Envelope>"
)

_VERSION_RE = re.compile(r"^\d{1,3}(\.\d)?$")


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _find_text(root: ET.Element, name: str) -> str | None:
    for element in root.iter():
        if _local(element.tag) == name:
            return (element.text or "").strip()
    return None


class SoapLoginAuth(TokenProvider):
    """SOAP ``login()`` with username, password and security token (no connected app needed).

    Deprecated by Salesforce: ``login()`` is unavailable from API 65.0 and retires in Summer '27, so the
    version is pinned to 64.0 or lower and constructing this provider emits a :class:`DeprecationWarning`.
    Prefer :class:`JwtBearerAuth` or :class:`ClientCredentialsAuth`.

    Parameters
    ----------
    username : str
        Salesforce user name.
    password : str
        The user's password.
    security_token : str
        The user's security token, appended to the password; empty from a trusted IP range.
    login_url : str
        ``login``, ``test``, a My Domain host or URL; see :func:`normalize_login_url`.
    api_version : str
        SOAP API version of the login endpoint, at most ``"64.0"``.

    Raises
    ------
    InputError
        A credential is empty, ``login_url`` is not usable, or ``api_version`` is malformed or above 64.0.
    """

    flow = "soap_login"

    def __init__(
        self,
        username: str,
        password: str,
        security_token: str = "",
        login_url: str = LOGIN_URL,
        api_version: str = "64.0",
    ) -> None:
        self.login_url = normalize_login_url(login_url)
        require_credentials(username=username, password=password)
        version = str(api_version).strip().removeprefix("v")
        if not _VERSION_RE.match(version):
            raise InputError(
                f"api_version {api_version!r} is not a version such as '64.0'", field="api_version"
            )
        if float(version) > MAX_SOAP_API_VERSION:
            raise InputError(
                f"api_version {api_version!r}: SOAP login() is unavailable from API 65.0; use 64.0 or lower, "
                "or an OAuth flow",
                field="api_version",
            )
        warnings.warn(
            "SoapLoginAuth uses SOAP login(), which is unavailable from API 65.0 and retires in Summer '27; "
            "switch to JwtBearerAuth or ClientCredentialsAuth",
            DeprecationWarning,
            stacklevel=2,
        )
        self.api_version = f"{float(version):.1f}"
        self.username = username
        self._password = password
        self._security_token = security_token or ""

    @property
    def soap_url(self) -> str:
        """The SOAP endpoint login() is posted to."""
        return f"{self.login_url}/services/Soap/u/{self.api_version}"

    @property
    def cache_key(self) -> str:
        """Fingerprint of the flow, login URL, username, password and security token."""
        return fingerprint(self.flow, self.login_url, self.username, self._password, self._security_token)

    def secrets(self) -> tuple[str, ...]:
        """Password, security token and the password as sent (password + token), raw and XML-escaped."""
        sent = self._password + self._security_token
        values = (self._password, self._security_token, sent, escape(sent, _XML_ESCAPES))
        return tuple(dict.fromkeys(v for v in values if v))

    def _body(self) -> bytes:
        return _ENVELOPE.format(
            username=escape(self.username, _XML_ESCAPES),
            password=escape(self._password + self._security_token, _XML_ESCAPES),
        ).encode("utf-8")

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
        """Log in with SOAP ``login()`` and return the session id as the access token.

        Raises
        ------
        AuthenticationError
            A SOAP fault (``error_code`` = faultcode such as ``sf:INVALID_LOGIN``, ``error_description`` =
            faultstring), an expired password, or an answer that is not a login result.
        ServerError, RequestLimitExceededError
            The endpoint answered 429 or 5xx without a SOAP fault, after the retries.
        TransportError
            The login endpoint could not be reached, after the retries.
        """
        log.debug("logging in with SOAP login() at %s", self.soap_url)
        response = await _http.send_login_request(
            http,
            self.soap_url,
            flow=self.flow,
            content=self._body(),
            headers={"Content-Type": "text/xml; charset=UTF-8", "SOAPAction": "login"},
            retry_statuses=_SOAP_RETRY_STATUSES,
            retry=retry,
            timeouts=timeouts,
        )
        return self._parse(response)

    def _parse(self, response: httpx.Response) -> Token:
        status = response.status_code
        body = response.content
        root: ET.Element | None = None
        # SOAP 1.1 forbids a DTD, so refusing one is free and leaves expat nothing to expand or fetch
        # (ElementTree never loads external entities; without a DTD there are no internal ones either).
        if b"<!DOCTYPE" not in body.upper() and b"<!ENTITY" not in body.upper():
            try:
                root = ET.fromstring(body)  # noqa: S314
            except ET.ParseError:
                root = None
        if root is not None and _local(root.tag) != "Envelope":
            root = None  # well-formed but not SOAP, such as an XHTML error page
        if root is None:
            _http.raise_if_unavailable(response, flow=self.flow, url=self.soap_url, secrets=self.secrets())
            detail = f": {_http.excerpt(body, self.secrets())}" if not response.is_success else ""
            raise AuthenticationError(
                f"SOAP login at {self.soap_url} answered HTTP {status} with no SOAP envelope{detail}",
                status_code=status,
            )
        fault_code = _find_text(root, "faultcode")
        if fault_code is not None:
            fault_string = _find_text(root, "faultstring")
            raise AuthenticationError(
                f"SOAP login refused by {self.soap_url} (HTTP {status}): {fault_code}: {fault_string}",
                error_code=fault_code,
                error_description=fault_string,
                status_code=status,
            )
        if not response.is_success:
            _http.raise_if_unavailable(response, flow=self.flow, url=self.soap_url, secrets=self.secrets())
            detail = _http.excerpt(body, self.secrets())
            raise AuthenticationError(
                f"SOAP login at {self.soap_url} failed (HTTP {status}): {detail}",
                status_code=status,
            )
        session_id = _find_text(root, "sessionId")
        server_url = _find_text(root, "serverUrl")
        if not session_id or not server_url:
            raise AuthenticationError(
                f"SOAP login at {self.soap_url} answered HTTP {status} without sessionId and serverUrl",
                status_code=status,
            )
        if _find_text(root, "passwordExpired") == "true":
            # The session would only be allowed to set a new password: every API call would fail.
            raise AuthenticationError(
                f"SOAP login at {self.soap_url}: the password of the user has expired and must be changed",
                error_code="PASSWORD_EXPIRED",
                status_code=status,
            )
        parts = urllib.parse.urlsplit(server_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise AuthenticationError(
                f"SOAP login at {self.soap_url} answered a serverUrl that is not a URL", status_code=status
            )
        return Token(access_token=session_id, instance_url=f"{parts.scheme}://{parts.netloc}")

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(username={self.username!r}, login_url={self.login_url!r}, "
            f"api_version={self.api_version!r})"
        )
