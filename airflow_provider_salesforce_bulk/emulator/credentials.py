"""The emulated org's login secrets: connected app, user, and an RSA key pair for the JWT bearer flow."""

from __future__ import annotations

import dataclasses
import functools
import json

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes


@functools.lru_cache(maxsize=1)
def _test_key_pair() -> tuple[str, str]:
    # Generating an RSA key costs tens of milliseconds; one per process is plenty for an emulator.
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    public_pem = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return private_pem, public_pem


@dataclasses.dataclass(frozen=True)
class Credentials:
    """What a client needs to log in to the emulator.

    Attributes
    ----------
    client_id, client_secret
        The connected app (consumer key and secret).
    username, password, security_token
        The API user; password logins send ``password + security_token``.
    refresh_token
        A refresh token the org accepts for ``grant_type=refresh_token``.
    private_key_pem, public_key_pem
        The JWT bearer flow's key pair: sign assertions with the private key; the emulator
        verifies with the public key (or a certificate given as ``public_key_pem``).
    """

    client_id: str = "3MVG9EmulatorConsumerKey.local"
    client_secret: str = "EMULATOR0CONSUMER0SECRET"  # noqa: S105 - a fixed test secret of a local fake org
    username: str = "integration@emulator.example.com"
    password: str = "emulator-password"  # noqa: S105
    security_token: str = "EMULATORSECURITYTOKEN"  # noqa: S105
    refresh_token: str = "5Aep861EmulatorRefreshToken"  # noqa: S105
    private_key_pem: str = dataclasses.field(default_factory=lambda: _test_key_pair()[0], repr=False)
    public_key_pem: str = dataclasses.field(default_factory=lambda: _test_key_pair()[1], repr=False)

    def airflow_connection(self, base_url: str, **extra: object) -> str:
        """An ``AIRFLOW_CONN_...`` value that logs in to the emulator at ``base_url``.

        JSON for the provider's ``salesforce_bulk`` connection type with the client credentials
        flow; ``extra`` adds or overrides connection extras.
        """
        return json.dumps(
            {
                "conn_type": "salesforce_bulk",
                "host": base_url,
                "extra": {
                    "auth_type": "client_credentials",
                    "client_id": self.client_id,
                    "client_secret": self.client_secret,
                    **extra,
                },
            }
        )

    def public_key(self) -> PublicKeyTypes:
        """Load the JWT verification key from ``public_key_pem`` (a public key or an X.509 certificate)."""
        data = self.public_key_pem.encode()
        if b"BEGIN CERTIFICATE" in data:
            return x509.load_pem_x509_certificate(data).public_key()
        return serialization.load_pem_public_key(data)
