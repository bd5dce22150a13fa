"""Normalising the login host every token flow posts to, and the JWT audience derived from it."""

from __future__ import annotations

import re
import urllib.parse

from ..errors import InputError
from ..hosts import is_loopback

__all__ = ["LOGIN_URL", "TEST_URL", "default_jwt_audience", "normalize_login_url", "normalize_url"]

LOGIN_URL = "https://login.salesforce.com"
"""Production and developer orgs."""

TEST_URL = "https://test.salesforce.com"
"""Sandboxes."""

_KEYWORDS = {"login": LOGIN_URL, "test": TEST_URL}

# A DNS name, an IPv4 address or a bracketed IPv6 literal, with an optional port.
_HOST_RE = re.compile(
    r"^(\[[0-9a-f:.]+\]|[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*)(:\d{1,5})?$"
)


def normalize_url(value: str, *, what: str = "login_url", keywords: bool = True) -> str:
    """Normalise a Salesforce URL to ``https://host[:port][/path]`` without a trailing slash.

    Parameters
    ----------
    value : str
        ``login``, ``test`` (when ``keywords``), a full URL or a bare host such as
        ``mydomain.my.salesforce.com``.
    what : str
        Name of the parameter, used in error messages.
    keywords : bool
        Whether ``login`` and ``test`` stand for Salesforce's login hosts.

    Returns
    -------
    str
        The URL with a lower-case scheme and host and no trailing slash.

    Raises
    ------
    InputError
        The value is empty, not an http(s) URL, carries credentials, a query or a fragment, or uses plain
        ``http`` for a host other than a loopback one.
    """
    if not isinstance(value, str) or not value.strip():
        raise InputError(
            f"{what} is empty; give 'login', 'test', a My Domain host or an https URL", field=what
        )
    text = value.strip()
    if keywords and text.lower() in _KEYWORDS:
        return _KEYWORDS[text.lower()]
    if "://" not in text:
        text = "https://" + text
    parts = urllib.parse.urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise InputError(f"{what} {value!r} is not an http(s) URL", field=what)
    if "@" in parts.netloc:
        # Credentials in a URL would end up in logs and error messages: refuse without echoing them.
        raise InputError(f"{what} must not contain a user name or password", field=what)
    netloc = parts.netloc.lower()
    if not netloc or not _HOST_RE.match(netloc):
        raise InputError(f"{what} {value!r} has no valid host name", field=what)
    if parts.query or parts.fragment:
        raise InputError(f"{what} {value!r} must not have a query string or fragment", field=what)
    try:
        host = parts.hostname or ""
        _ = parts.port  # raises ValueError on an out-of-range port
    except ValueError:
        raise InputError(f"{what} {value!r} has an invalid port", field=what) from None
    if scheme == "http" and not is_loopback(host):
        raise InputError(
            f"{what} {value!r} uses plain http; credentials are only sent over https "
            "(http is accepted for loopback hosts only, such as the local emulator)",
            field=what,
        )
    path = parts.path.rstrip("/")
    return f"{scheme}://{netloc}{path}"


def normalize_login_url(value: str) -> str:
    """Normalise the login URL every token flow posts to.

    Parameters
    ----------
    value : str
        ``login`` (``https://login.salesforce.com``), ``test`` (``https://test.salesforce.com``),
        a full URL (``https://mydomain.my.salesforce.com/``) or a bare My Domain host
        (``mydomain.my.salesforce.com``).

    Returns
    -------
    str
        ``https://...`` without a trailing slash. ``http://`` is kept only for loopback hosts
        (``localhost``, ``127.0.0.1``, ``[::1]``), which the local emulator uses.

    Raises
    ------
    InputError
        The value is not a usable login URL; the message names the problem.

    Examples
    --------
    >>> normalize_login_url("test")
    'https://test.salesforce.com'
    >>> normalize_login_url("MyDomain.my.salesforce.com/")
    'https://mydomain.my.salesforce.com'
    """
    return normalize_url(value, what="login_url")


def default_jwt_audience(login_url: str) -> str:
    """The JWT ``aud`` claim Salesforce expects for a (normalised) login URL.

    ``https://test.salesforce.com`` for sandboxes (the ``test`` host and ``*.sandbox.my.salesforce.com``
    My Domain hosts), ``https://login.salesforce.com`` for everything else. A community (Experience
    Cloud) audience cannot be guessed from the host and must be given explicitly.
    """
    host = urllib.parse.urlsplit(login_url).hostname or ""
    if host == "test.salesforce.com" or host.endswith(".sandbox.my.salesforce.com"):
        return TEST_URL
    return LOGIN_URL
