"""OAuth 2.0 JWT bearer flow: a connected app's certificate signs a short-lived assertion per login."""

from __future__ import annotations

import hashlib
import os
import time

import jwt
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

from ..errors import InputError
from ._oauth import OAuthTokenProvider
from .base import fingerprint, require_credentials
from .login_url import LOGIN_URL, default_jwt_audience, normalize_url

__all__ = ["ASSERTION_LIFETIME_SECONDS", "JWT_BEARER_GRANT_TYPE", "JwtBearerAuth", "load_rsa_private_key"]

JWT_BEARER_GRANT_TYPE = "urn:ietf:params:oauth:grant-type:jwt-bearer"

ASSERTION_LIFETIME_SECONDS = 170
"""Salesforce accepts at most 3 minutes; the margin covers a local clock slightly ahead of Salesforce's."""


def load_rsa_private_key(pem: bytes, passphrase: str | bytes | None, *, source: str) -> RSAPrivateKey:
    """Load a PEM-encoded RSA private key, failing with a message that never contains the key.

    Parameters
    ----------
    pem : bytes
        The PEM text (PKCS#1 ``RSA PRIVATE KEY`` or PKCS#8 ``PRIVATE KEY``, optionally encrypted).
    passphrase : str | bytes | None
        Passphrase of an encrypted key.
    source : str
        Where the key came from (``private_key`` or the file path), for messages.

    Raises
    ------
    InputError
        The key cannot be loaded: not PEM, wrong or missing passphrase, or not an RSA key.
    """
    password = passphrase.encode("utf-8") if isinstance(passphrase, str) else passphrase
    try:
        key = serialization.load_pem_private_key(pem, password=password or None)
    except TypeError:
        # cryptography raises TypeError for a passphrase mismatch in kind (given vs. needed).
        if password:
            message = f"the private key from {source} is not encrypted, but a passphrase was given"
        else:
            message = f"the private key from {source} is encrypted; give private_key_passphrase"
        raise InputError(message, field="private_key_passphrase") from None
    except (ValueError, UnsupportedAlgorithm):
        # `from None`: the library's message and context are dropped so nothing of the key can be echoed.
        hint = " or the passphrase is wrong" if password else ""
        raise InputError(
            f"the private key from {source} could not be loaded: it is not a PEM-encoded private key{hint}",
            field="private_key",
        ) from None
    if not isinstance(key, RSAPrivateKey):
        raise InputError(
            f"the private key from {source} is a {type(key).__name__}; RS256 needs an RSA key",
            field="private_key",
        )
    return key


def _pem_bytes(private_key: str | bytes) -> bytes:
    data = private_key.encode("utf-8") if isinstance(private_key, str) else private_key
    data = data.strip()
    if b"\n" not in data and b"\\n" in data:
        # Keys pasted into a single-line field (Airflow connection extras, env vars) often carry literal "\n".
        data = data.replace(b"\\n", b"\n")
    return data


class JwtBearerAuth(OAuthTokenProvider):
    """OAuth 2.0 JWT bearer flow (``grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer``).

    Each login sends a fresh RS256 assertion with ``iss`` = ``client_id``, ``sub`` = ``username``,
    ``aud`` = the audience and ``exp`` = now + 170 s (Salesforce allows at most 3 minutes).

    The key is read and parsed once, here in the constructor (blocking file I/O at construction time,
    so the event loop never waits on the disk during a login; construct the provider outside the loop,
    or with ``asyncio.to_thread``, if even that matters). Signing then uses the loaded key object.

    Parameters
    ----------
    client_id : str
        Consumer key of the connected app (not a secret), the ``iss`` claim.
    username : str
        Salesforce user name, the ``sub`` claim.
    private_key : str | bytes | None
        The PEM-encoded RSA private key. Literal ``\\n`` sequences in single-line text are taken as newlines.
    private_key_file : str | os.PathLike[str] | None
        Path of a PEM file holding the key; exactly one of ``private_key`` and ``private_key_file``.
    private_key_passphrase : str | None
        Passphrase of an encrypted key.
    login_url : str
        ``login``, ``test``, a My Domain host or URL; see :func:`normalize_login_url`.
    audience : str | None
        ``login``, ``test`` or a URL (a community's). Default: ``https://test.salesforce.com`` for sandbox
        login URLs (``test.salesforce.com``, ``*.sandbox.my.salesforce.com``), ``https://login.salesforce.com``
        otherwise.

    Raises
    ------
    InputError
        A credential is missing, the key file cannot be read, or the key cannot be loaded. Messages name
        the file, never the key.
    """

    flow = "jwt_bearer"

    def __init__(
        self,
        client_id: str,
        username: str,
        private_key: str | bytes | None = None,
        private_key_file: str | os.PathLike[str] | None = None,
        private_key_passphrase: str | None = None,
        login_url: str = LOGIN_URL,
        audience: str | None = None,
    ) -> None:
        super().__init__(login_url)
        require_credentials(client_id=client_id, username=username)
        if (private_key is None) == (private_key_file is None):
            raise InputError("give exactly one of private_key and private_key_file", field="private_key")
        if private_key is not None:
            require_credentials(private_key=private_key)
            pem = _pem_bytes(private_key)
            source = "private_key"
        else:
            assert private_key_file is not None
            source = os.fspath(private_key_file)
            try:
                with open(source, "rb") as handle:
                    pem = _pem_bytes(handle.read())
            except OSError as exc:
                raise InputError(
                    f"private_key_file {source!r} cannot be read: {exc.strerror or type(exc).__name__}",
                    field="private_key_file",
                ) from None
        self._key = load_rsa_private_key(pem, private_key_passphrase, source=source)
        self._pem_text = pem.decode("utf-8", "replace")
        self._passphrase = private_key_passphrase or None
        self.client_id = client_id
        self.username = username
        self.private_key_file = None if private_key_file is None else source
        self.audience = (
            default_jwt_audience(self.login_url)
            if audience is None
            else normalize_url(audience, what="audience")
        )
        # Keyed on the key's public half: the same key in another encoding or file is the same credential.
        public_der = self._key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self._cache_key = fingerprint(
            self.flow,
            self.login_url,
            client_id,
            username,
            self.audience,
            hashlib.sha256(public_der).hexdigest(),
        )

    @property
    def cache_key(self) -> str:
        """Fingerprint of the flow, login URL, client id, username, audience and key."""
        return self._cache_key

    def secrets(self) -> tuple[str, ...]:
        """The private key's PEM text and its passphrase."""
        return tuple(v for v in (self._pem_text, self._passphrase) if v)

    def assertion(self, now: float | None = None) -> str:
        """A freshly signed JWT assertion (RS256).

        Parameters
        ----------
        now : float | None
            Current time as a UNIX timestamp; ``time.time()`` when not given.
        """
        issued = int(time.time() if now is None else now)
        claims = {
            "iss": self.client_id,
            "sub": self.username,
            "aud": self.audience,
            "exp": issued + ASSERTION_LIFETIME_SECONDS,
        }
        return jwt.encode(claims, self._key, algorithm="RS256")

    def _form(self) -> dict[str, str]:
        return {"grant_type": JWT_BEARER_GRANT_TYPE, "assertion": self.assertion()}

    def _describe(self) -> str:
        key = f", private_key_file={self.private_key_file!r}" if self.private_key_file else ""
        return (
            f"client_id={self.client_id!r}, username={self.username!r}, login_url={self.login_url!r}, "
            f"audience={self.audience!r}{key}"
        )
