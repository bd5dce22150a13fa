"""Which hosts may receive the access token: checked on every URL a server hands us before it is used.

A token response's ``instance_url``, SOAP ``serverUrl`` and an absolute ``nextRecordsUrl`` come from the
network; a compromised proxy or a bug must not make the client send its bearer token to another host or
over plain http. Allowed: https to a Salesforce domain, the host the user configured (login URL or
instance URL), or a host the user lists in ``allowed_hosts``; plain http only to loopback addresses
(the local emulator).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import urllib.parse
from collections.abc import Iterable

from airflow_provider_salesforce_bulk.client.errors import InputError, UntrustedUrlError

__all__ = ["SALESFORCE_DOMAINS", "HostPolicy", "is_loopback"]

SALESFORCE_DOMAINS: tuple[str, ...] = (
    "salesforce.com",
    "force.com",
    "cloudforce.com",
    "database.com",
    "site.com",
    "salesforce-sites.com",
    "salesforce-experience.com",
    "salesforce-setup.com",
    # Government Cloud Plus Defense.
    "salesforce.mil",
    "force.mil",
    "crmforce.mil",
    # Salesforce on Alibaba Cloud (China).
    "sfcrmproducts.cn",
    "sfcrmapps.cn",
)
"""Domains (and their subdomains) Salesforce serves orgs from; any other host must be allowed explicitly."""

_ENTRY = re.compile(r"^(\*\.|\.)?[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$")


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address, brackets allowed) is this machine."""
    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _under(host: str, domain: str) -> bool:
    return host == domain or host.endswith("." + domain)


@dataclasses.dataclass(frozen=True)
class HostPolicy:
    """The hosts a session may send its token to.

    Parameters
    ----------
    home_host : str | None
        Host of the URL the user configured (login URL, or instance URL of a fixed token).
    allowed_hosts : tuple[str, ...]
        Extra hosts: ``host.example.com`` (that host) or ``*.example.com`` / ``.example.com`` (its
        subdomains and itself). Lower-cased, validated by :meth:`build`.
    """

    home_host: str | None = None
    allowed_hosts: tuple[str, ...] = ()

    @classmethod
    def build(cls, home_url: str | None, allowed_hosts: Iterable[str] | str = ()) -> HostPolicy:
        """A policy from the configured URL and a list (or a comma/space separated string) of hosts.

        Raises
        ------
        InputError
            An ``allowed_hosts`` entry is not a host name (field ``allowed_hosts``).
        """
        if isinstance(allowed_hosts, str):
            allowed_hosts = allowed_hosts.replace(",", " ").split()
        entries: list[str] = []
        for raw in allowed_hosts:
            entry = str(raw).strip().lower()
            if not entry:
                continue
            if not _ENTRY.match(entry):
                raise InputError(
                    f"allowed_hosts entry {raw!r} is not a host name such as 'api.example.com' or "
                    "'*.example.com' (no scheme, port or path)",
                    field="allowed_hosts",
                )
            entries.append(entry)
        home = urllib.parse.urlsplit(home_url).hostname if home_url else None
        return cls(home_host=home.lower() if home else None, allowed_hosts=tuple(dict.fromkeys(entries)))

    def allows(self, host: str) -> bool:
        """Whether https to ``host`` may carry the token."""
        host = host.lower().rstrip(".")
        if host == self.home_host or is_loopback(host):
            return True
        if any(_under(host, domain) for domain in SALESFORCE_DOMAINS):
            return True
        for entry in self.allowed_hosts:
            if entry.startswith(("*.", ".")):
                if _under(host, entry.lstrip("*.")):
                    return True
            elif host == entry:
                return True
        return False

    def check(self, url: str, *, what: str) -> str:
        """Return ``url`` if the token may be sent to it.

        Raises
        ------
        UntrustedUrlError
            The URL is not http(s), carries credentials, uses plain http to a non-loopback host, or its
            host is not allowed. The message names the host, never a token or a query string.
        """
        try:
            parts = urllib.parse.urlsplit(url)
            host = (parts.hostname or "").lower()
        except ValueError:
            raise UntrustedUrlError(
                f"{what} is not a valid URL; the access token was not sent", host=""
            ) from None
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https") or not host or "@" in parts.netloc:
            raise UntrustedUrlError(
                f"{what} is not an http(s) URL with a host ({scheme or 'no scheme'}://{host}); "
                "the access token was not sent",
                host=host,
            )
        if scheme == "http" and not is_loopback(host):
            raise UntrustedUrlError(
                f"{what} uses plain http to {host!r}; the access token is only sent over https "
                "(plain http only to loopback hosts such as the local emulator)",
                host=host,
            )
        if not self.allows(host):
            raise UntrustedUrlError(
                f"{what} points to {host!r}, which is not a Salesforce host, the configured login host "
                "or one of allowed_hosts; the access token was not sent. If this host is yours, add it "
                "to allowed_hosts",
                host=host,
            )
        return url
