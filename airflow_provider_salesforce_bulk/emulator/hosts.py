"""The Host-header check: answer only requests addressed to this machine's loopback.

The emulator listens on loopback only, but a web page can still reach it through DNS rebinding (its
own name re-pointed at 127.0.0.1) and read ``/__emulator__/credentials``. Such a request carries the
page's host name, so anything but a loopback name or address (or the configured host) is refused,
whatever the port; so is a browser request whose ``Origin`` is not such a host.
"""

from __future__ import annotations

import ipaddress
import re

from starlette.types import ASGIApp, Receive, Scope, Send

from .responses import error_response

_HOST = re.compile(r"(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<name>[^:\[\]]+))(?::(?P<port>[0-9]{0,5}))?")
_ORIGIN = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://(?P<host>[^/?#@]+)/?")


def _loopback_or(host: str, configured: str) -> bool:
    host = host.lower()
    if host.endswith(".") and not host.endswith(".."):
        host = host[:-1]
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return bool(configured) and host == configured.lower()
    if address.is_loopback:
        return True
    try:
        return address == ipaddress.ip_address(configured.strip("[]"))
    except ValueError:
        return False


def host_allowed(value: str, configured: str) -> bool:
    """True if a ``Host`` header value names loopback or ``configured``, with any port or none."""
    match = _HOST.fullmatch(value.strip())
    if match is None:
        return False
    return _loopback_or(match.group("v6") or match.group("name"), configured)


def origin_allowed(value: str, configured: str) -> bool:
    """True if an ``Origin`` header value is a loopback (or ``configured``) origin."""
    match = _ORIGIN.fullmatch(value.strip())
    return match is not None and host_allowed(match.group("host"), configured)


class HostCheckMiddleware:
    """Refuses, with 421 and a fixed body, any request not addressed to a loopback host."""

    def __init__(self, app: ASGIApp, configured_host: str) -> None:
        self.app = app
        self.configured_host = configured_host

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        hosts = [bytes(v).decode("latin-1") for k, v in scope["headers"] if k == b"host"]
        origins = [bytes(v).decode("latin-1") for k, v in scope["headers"] if k == b"origin"]
        # Exactly one Host, and at most one Origin: with two, another hop might read the other one.
        allowed = len(hosts) == 1 and len(origins) <= 1 and host_allowed(hosts[0], self.configured_host)
        if allowed and origins:
            allowed = origin_allowed(origins[0], self.configured_host)
        if allowed:
            await self.app(scope, receive, send)
            return
        # Nothing of the request is echoed: the answer is the same for every refused host.
        await error_response(
            421, "MISDIRECTED_REQUEST", "This server answers only requests addressed to a loopback host"
        )(scope, receive, send)
