"""Turning an Airflow connection's fields into a token provider, without Airflow (testable without a DB).

Two connection types are read:

* ``salesforce_bulk`` (this provider): ``host`` is the login URL (``login``, ``test``, a My Domain host
  or URL), ``login``/``password`` the user, and the extras named in ``get_provider_info``.
* ``salesforce`` (the official provider): ``login``/``password`` and the extras ``security_token``,
  ``domain``, ``consumer_key``, ``consumer_secret``, ``private_key``, ``private_key_file_path``,
  ``instance_url``, ``version`` (and ``client_id``, ``session_id``), so users switch operators and keep
  their secrets.

Both accept ``allowed_hosts``: hosts (``api.example.com``, ``*.example.com``; comma or space separated)
that may receive the access token besides Salesforce's own domains and the login host, for an org
served through a proxy or a custom domain.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import orjson

from airflow_provider_salesforce_bulk.client import (
    DEFAULT_API_VERSION,
    ClientCredentialsAuth,
    HostPolicy,
    InputError,
    JwtBearerAuth,
    PasswordAuth,
    RefreshTokenAuth,
    SoapLoginAuth,
    StaticTokenAuth,
    TokenProvider,
)
from airflow_provider_salesforce_bulk.client.auth import fingerprint

__all__ = [
    "AUTH_TYPES",
    "ConnectionConfigError",
    "ConnectionFields",
    "ConnectionSettings",
    "parse_connection",
]

# The official provider's extra names, mapped onto ours.
_ALIASES = {
    "consumer_key": "client_id",
    "consumer_secret": "client_secret",
    "session_id": "access_token",
    "version": "api_version",
}


class ConnectionConfigError(InputError):
    """A connection field is missing, unknown or contradicts another; names the field and auth type.

    An :class:`~airflow_provider_salesforce_bulk.client.errors.InputError` (so a ``ValueError``): only
    the connection's owner can fix it, and it is never retried. Never carries a secret value: only
    field names and non-secret values appear in the message.

    Attributes
    ----------
    conn_id : str
    field : str | None
        The connection field to fix (``login``, ``client_id``, ``private_key_file_path``...).
    auth_type : str | None
        The auth type the connection was read with, when known.
    """

    def __init__(self, conn_id: str, message: str, *, field: str | None, auth_type: str | None) -> None:
        where = f"connection {conn_id!r}"
        if auth_type:
            where += f" (auth type {auth_type})"
        super().__init__(f"{where}: {message}", field=field)
        self.conn_id = conn_id
        self.auth_type = auth_type


@dataclasses.dataclass(frozen=True)
class ConnectionFields:
    """The parts of an Airflow connection this provider reads (``repr`` hides secrets)."""

    conn_id: str
    conn_type: str | None = None
    host: str | None = None
    login: str | None = None
    password: str | None = dataclasses.field(default=None, repr=False)
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict, repr=False)

    def cache_key(self) -> str:
        """A non-reversible fingerprint of every field (secrets included, never revealed)."""
        extra = orjson.dumps(dict(self.extra), option=orjson.OPT_SORT_KEYS, default=str).decode()
        return fingerprint(self.conn_id, self.conn_type, self.host, self.login, self.password, extra)


@dataclasses.dataclass(frozen=True)
class ConnectionSettings:
    """What a connection resolves to: a token provider, the API version and the auth type used."""

    conn_id: str
    auth_type: str
    auth: TokenProvider = dataclasses.field(repr=False)
    api_version: str = DEFAULT_API_VERSION
    login_url: str | None = None
    allowed_hosts: tuple[str, ...] = ()
    """Hosts besides Salesforce's and the login host that may receive the token (extra ``allowed_hosts``)."""

    def secrets(self) -> tuple[str, ...]:
        """Every secret the provider holds, for Airflow's secret masker."""
        return self.auth.secrets()


def _text(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _login_url_from_domain(domain: str) -> str:
    # simple-salesforce's domain: "login", "test", or a My Domain prefix such as "acme.my".
    if domain.lower() in ("login", "test") or "://" in domain or domain.endswith(".com"):
        return domain
    if domain.startswith(("localhost", "127.", "[")):
        return f"http://{domain}"
    return f"{domain}.salesforce.com"


def _infer_auth_type(values: Mapping[str, str | None]) -> str | None:
    if values.get("access_token"):
        return "access_token"
    if values.get("private_key") or values.get("private_key_file_path"):
        return "jwt_bearer"
    if values.get("refresh_token"):
        return "refresh_token"
    if values.get("login") and values.get("password"):
        return "password" if values.get("client_id") and values.get("client_secret") else "soap_login"
    if values.get("client_id") and values.get("client_secret"):
        return "client_credentials"
    return None


def _collect(fields: ConnectionFields) -> dict[str, str | None]:
    values: dict[str, str | None] = {}
    for key, raw in fields.extra.items():
        name = _ALIASES.get(key, key)
        # extra__salesforce_bulk__x is how Airflow 2 forms stored extras; accept it on migration.
        if name.startswith("extra__") and name.count("__") >= 2:
            name = _ALIASES.get(name.split("__", 2)[2], name.split("__", 2)[2])
        text = _text(raw)
        if text is not None or name not in values:
            values[name] = text
    values["login"] = _text(fields.login)
    values["password"] = _text(fields.password)
    values["host"] = _text(fields.host)
    return values


@dataclasses.dataclass(frozen=True)
class _Reader:
    """The values of one connection read with one auth type: a missing required field is a
    :class:`ConnectionConfigError` naming it."""

    conn_id: str
    values: Mapping[str, str | None] = dataclasses.field(repr=False)
    auth_type: str
    login_url: str
    api_version: str

    def get(self, name: str) -> str | None:
        return self.values.get(name)

    def need(self, name: str, label: str | None = None) -> str:
        value = self.values.get(name)
        if not value:
            raise ConnectionConfigError(
                self.conn_id, f"field {label or name!r} is required", field=name, auth_type=self.auth_type
            )
        return value


def _jwt_bearer(r: _Reader) -> TokenProvider:
    if r.get("private_key") and r.get("private_key_file_path"):
        raise ConnectionConfigError(
            r.conn_id,
            "set either private_key or private_key_file_path, not both",
            field="private_key_file_path",
            auth_type=r.auth_type,
        )
    if not (r.get("private_key") or r.get("private_key_file_path")):
        raise ConnectionConfigError(
            r.conn_id,
            "field 'private_key' or 'private_key_file_path' is required",
            field="private_key",
            auth_type=r.auth_type,
        )
    return JwtBearerAuth(
        r.need("client_id"),
        r.need("login", "login (username)"),
        private_key=r.get("private_key"),
        private_key_file=r.get("private_key_file_path"),
        private_key_passphrase=r.get("private_key_passphrase"),
        login_url=r.login_url,
    )


_PROVIDERS: dict[str, Callable[[_Reader], TokenProvider]] = {
    "client_credentials": lambda r: ClientCredentialsAuth(
        r.need("client_id"), r.need("client_secret"), r.login_url
    ),
    "jwt_bearer": _jwt_bearer,
    "refresh_token": lambda r: RefreshTokenAuth(
        r.need("client_id"),
        r.need("refresh_token"),
        client_secret=r.get("client_secret"),
        login_url=r.login_url,
    ),
    "password": lambda r: PasswordAuth(
        r.need("client_id"),
        r.need("client_secret"),
        r.need("login", "login (username)"),
        r.need("password"),
        security_token=r.get("security_token") or "",
        login_url=r.login_url,
    ),
    "soap_login": lambda r: SoapLoginAuth(
        r.need("login", "login (username)"),
        r.need("password"),
        security_token=r.get("security_token") or "",
        login_url=r.login_url,
        api_version=r.api_version,
    ),
    "access_token": lambda r: StaticTokenAuth(r.need("access_token"), r.need("instance_url")),
}
"""How each auth type builds its token provider from the connection's fields."""

AUTH_TYPES: tuple[str, ...] = tuple(_PROVIDERS)
"""Every auth type a connection may name (the form's dropdown lists the same, in this order)."""


def _auth_type(conn_id: str, values: Mapping[str, str | None]) -> str:
    explicit = values.get("auth_type")
    if explicit is not None:
        explicit = explicit.lower().replace("-", "_").replace(" ", "_")
        if explicit not in AUTH_TYPES:
            raise ConnectionConfigError(
                conn_id,
                f"unknown auth_type {values.get('auth_type')!r}; expected one of {', '.join(AUTH_TYPES)}",
                field="auth_type",
                auth_type=None,
            )
    auth_type = explicit or _infer_auth_type(values)
    if auth_type is None:
        raise ConnectionConfigError(
            conn_id,
            "cannot tell how to log in: set auth_type, or fill in client_id and client_secret "
            "(client credentials), client_id, login and private_key (JWT bearer), client_id and "
            "refresh_token, login and password (SOAP or OAuth password), or access_token and instance_url",
            field="auth_type",
            auth_type=None,
        )
    return auth_type


def _login_url(fields: ConnectionFields, values: Mapping[str, str | None], auth_type: str) -> tuple[str, str]:
    """The login URL and the connection field it came from (``host`` or ``domain``)."""
    host = values.get("host")
    domain = values.get("domain")
    if host and domain and fields.conn_type == "salesforce_bulk":
        raise ConnectionConfigError(
            fields.conn_id,
            "set either Host (login URL) or the domain extra, not both",
            field="domain",
            auth_type=auth_type,
        )
    if fields.conn_type == "salesforce" and not domain and values.get("instance_url"):
        # The official provider logs in on the instance's My Domain when no domain is given.
        host = host or values.get("instance_url")
    if not host and domain:
        return _login_url_from_domain(domain), "domain"
    return host or "login", "host"


def parse_connection(fields: ConnectionFields) -> ConnectionSettings:
    """Build the token provider a connection describes.

    Parameters
    ----------
    fields : ConnectionFields
        The connection's type, host, login, password and decoded extras.

    Returns
    -------
    ConnectionSettings

    Raises
    ------
    ConnectionConfigError
        A required field is missing, the auth type is unknown, or a value is malformed; the message
        names the connection field and the auth type, never a secret value.
    """
    conn_id = fields.conn_id
    values = _collect(fields)
    auth_type = _auth_type(conn_id, values)
    login_url, login_url_source = _login_url(fields, values, auth_type)
    api_version = (values.get("api_version") or DEFAULT_API_VERSION).lstrip("vV")
    reader = _Reader(conn_id, values, auth_type, login_url, api_version)
    try:
        auth = _PROVIDERS[auth_type](reader)
    except ConnectionConfigError:
        raise
    except InputError as exc:
        field = _CLIENT_FIELDS.get(exc.field or "", exc.field)
        if field == "login_url":
            field = login_url_source
        raise ConnectionConfigError(conn_id, str(exc), field=field, auth_type=auth_type) from None
    if not _api_version_ok(api_version):
        raise ConnectionConfigError(
            conn_id,
            f"api_version must look like '64.0', got {api_version!r}",
            field="api_version",
            auth_type=auth_type,
        )
    try:
        allowed_hosts = HostPolicy.build(None, values.get("allowed_hosts") or "").allowed_hosts
    except InputError as exc:
        raise ConnectionConfigError(conn_id, str(exc), field="allowed_hosts", auth_type=auth_type) from None
    return ConnectionSettings(
        conn_id=conn_id,
        allowed_hosts=allowed_hosts,
        auth_type=auth_type,
        auth=auth,
        api_version=api_version,
        login_url=None if auth_type == "access_token" else getattr(auth, "login_url", None),
    )


# Client parameter names -> connection field names, for error messages.
_CLIENT_FIELDS = {
    "username": "login",
    "private_key_file": "private_key_file_path",
    "sobject": "object_name",
}


def _api_version_ok(value: str) -> bool:
    head, _, tail = value.partition(".")
    return head.isdigit() and len(head) in (2, 3) and tail.isdigit() and len(tail) == 1
