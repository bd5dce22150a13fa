"""JWT bearer flow: key loading (text, file, passphrase, bad keys), the assertion's signature and claims."""

from __future__ import annotations

import time
import urllib.parse
from pathlib import Path

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from airflow_provider_salesforce_bulk.client.auth import JwtBearerAuth, Token
from airflow_provider_salesforce_bulk.client.errors import AuthenticationError, InputError

TOKEN_URL = "https://login.salesforce.com/services/oauth2/token"
SUCCESS = {
    "access_token": "00D!jwt.access",
    "instance_url": "https://acme.my.salesforce.com",
    "token_type": "Bearer",
}
PASSPHRASE = "correct horse battery staple"


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def pem(rsa_key: rsa.RSAPrivateKey) -> str:
    return rsa_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


@pytest.fixture(scope="module")
def encrypted_pem(rsa_key: rsa.RSAPrivateKey) -> str:
    return rsa_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(PASSPHRASE.encode()),
    ).decode()


def _key_body(pem_text: str) -> str:
    """The base64 lines of a PEM, which must never appear in a message."""
    return "".join(line for line in pem_text.splitlines() if not line.startswith("-----"))[:64]


async def login(provider: JwtBearerAuth) -> tuple[Token, dict[str, str], httpx.Request]:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=SUCCESS)

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        token = await provider.fetch_token(http)
    form = {k: v[0] for k, v in urllib.parse.parse_qs(seen[0].content.decode()).items()}
    return token, form, seen[0]


def verified_claims(assertion: str, key: rsa.RSAPrivateKey, audience: str) -> dict[str, object]:
    claims: dict[str, object] = jwt.decode(
        assertion,
        key.public_key(),
        algorithms=["RS256"],
        audience=audience,
        options={"require": ["iss", "sub", "aud", "exp"]},
    )
    return claims


async def test_jwt_request_and_signed_claims(rsa_key: rsa.RSAPrivateKey, pem: str) -> None:
    provider = JwtBearerAuth("3MVG9.consumer", "integration@acme.com", private_key=pem)
    before = time.time()
    token, form, request = await login(provider)
    assert str(request.url) == TOKEN_URL
    assert request.method == "POST"
    assert form["grant_type"] == "urn:ietf:params:oauth:grant-type:jwt-bearer"
    assert set(form) == {"grant_type", "assertion"}
    assert jwt.get_unverified_header(form["assertion"])["alg"] == "RS256"
    claims = verified_claims(form["assertion"], rsa_key, "https://login.salesforce.com")
    assert claims["iss"] == "3MVG9.consumer"
    assert claims["sub"] == "integration@acme.com"
    assert claims["aud"] == "https://login.salesforce.com"
    exp = claims["exp"]
    assert isinstance(exp, int)
    assert before < exp <= before + 180
    assert token.access_token == "00D!jwt.access"
    assert token.instance_url == "https://acme.my.salesforce.com"


async def test_assertion_signed_by_another_key_does_not_verify(pem: str) -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    provider = JwtBearerAuth("cid", "user@acme.com", private_key=pem)
    with pytest.raises(jwt.InvalidSignatureError):
        verified_claims(provider.assertion(), other, "https://login.salesforce.com")


@pytest.mark.parametrize(
    ("login_url", "audience", "expected_url", "expected_aud"),
    [
        ("test", None, "https://test.salesforce.com", "https://test.salesforce.com"),
        ("login", None, "https://login.salesforce.com", "https://login.salesforce.com"),
        ("acme.my.salesforce.com", None, "https://acme.my.salesforce.com", "https://login.salesforce.com"),
        (
            "https://acme--uat.sandbox.my.salesforce.com",
            None,
            "https://acme--uat.sandbox.my.salesforce.com",
            "https://test.salesforce.com",
        ),
        ("acme.my.salesforce.com", "test", "https://acme.my.salesforce.com", "https://test.salesforce.com"),
        (
            "https://acme.my.site.com/partners",
            "https://acme.my.site.com/partners/",
            "https://acme.my.site.com/partners",
            "https://acme.my.site.com/partners",
        ),
    ],
)
async def test_audience(
    rsa_key: rsa.RSAPrivateKey,
    pem: str,
    login_url: str,
    audience: str | None,
    expected_url: str,
    expected_aud: str,
) -> None:
    provider = JwtBearerAuth("cid", "user@acme.com", private_key=pem, login_url=login_url, audience=audience)
    _, form, request = await login(provider)
    assert str(request.url) == f"{expected_url}/services/oauth2/token"
    assert verified_claims(form["assertion"], rsa_key, expected_aud)["aud"] == expected_aud


def test_each_assertion_is_fresh(pem: str) -> None:
    provider = JwtBearerAuth("cid", "user@acme.com", private_key=pem)
    early = jwt.decode(provider.assertion(now=1_000_000), options={"verify_signature": False})
    late = jwt.decode(provider.assertion(now=1_000_100), options={"verify_signature": False})
    assert late["exp"] - early["exp"] == 100
    assert early["exp"] - 1_000_000 <= 180


async def test_key_from_file(tmp_path: Path, rsa_key: rsa.RSAPrivateKey, pem: str) -> None:
    key_file = tmp_path / "server.key"
    key_file.write_text(pem)
    provider = JwtBearerAuth("cid", "user@acme.com", private_key_file=key_file)
    _, form, _ = await login(provider)
    verified_claims(form["assertion"], rsa_key, "https://login.salesforce.com")
    assert str(key_file) in repr(provider)


async def test_key_from_file_is_read_at_construction(tmp_path: Path, pem: str) -> None:
    key_file = tmp_path / "server.key"
    key_file.write_text(pem)
    provider = JwtBearerAuth("cid", "user@acme.com", private_key_file=str(key_file))
    key_file.unlink()  # the login no longer needs the file: nothing blocks on the disk in the loop
    token, _, _ = await login(provider)
    assert token.access_token == "00D!jwt.access"


async def test_encrypted_key_with_passphrase(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey, encrypted_pem: str
) -> None:
    provider = JwtBearerAuth(
        "cid", "user@acme.com", private_key=encrypted_pem, private_key_passphrase=PASSPHRASE
    )
    _, form, _ = await login(provider)
    verified_claims(form["assertion"], rsa_key, "https://login.salesforce.com")
    key_file = tmp_path / "enc.pem"
    key_file.write_text(encrypted_pem)
    from_file = JwtBearerAuth(
        "cid", "user@acme.com", private_key_file=key_file, private_key_passphrase=PASSPHRASE
    )
    assert from_file.cache_key == provider.cache_key  # same key, same credentials
    assert PASSPHRASE in from_file.secrets()


async def test_pkcs1_key_and_escaped_newlines(rsa_key: rsa.RSAPrivateKey) -> None:
    pkcs1 = rsa_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    ).decode()
    one_line = pkcs1.strip().replace("\n", "\\n")
    provider = JwtBearerAuth("cid", "user@acme.com", private_key=one_line)
    _, form, _ = await login(provider)
    verified_claims(form["assertion"], rsa_key, "https://login.salesforce.com")


def _assert_clean(exc: BaseException, *texts: str) -> None:
    for text in (str(exc), repr(exc)):
        for secret in texts:
            assert secret not in text
    # The library's error is not chained, so a traceback shows nothing of the key either.
    assert exc.__cause__ is None
    assert exc.__suppress_context__ or exc.__context__ is None


def test_garbage_key_gives_clear_error() -> None:
    garbage = "-----BEGIN PRIVATE KEY-----\nTOPSECRETKEYMATERIALabcdef0123456789\n-----END PRIVATE KEY-----\n"
    with pytest.raises(InputError, match="could not be loaded") as info:
        JwtBearerAuth("cid", "user@acme.com", private_key=garbage)
    _assert_clean(info.value, "TOPSECRETKEYMATERIAL")
    assert info.value.field == "private_key"


def test_path_given_as_key_text_is_refused() -> None:
    with pytest.raises(InputError, match="not a PEM-encoded private key"):
        JwtBearerAuth("cid", "user@acme.com", private_key="/etc/keys/server.key")


def test_wrong_passphrase(encrypted_pem: str) -> None:
    with pytest.raises(InputError, match="passphrase is wrong") as info:
        JwtBearerAuth(
            "cid", "user@acme.com", private_key=encrypted_pem, private_key_passphrase="wrong-pass-xyz"
        )
    _assert_clean(info.value, "wrong-pass-xyz", _key_body(encrypted_pem))


def test_missing_passphrase(encrypted_pem: str) -> None:
    with pytest.raises(InputError, match="encrypted; give private_key_passphrase") as info:
        JwtBearerAuth("cid", "user@acme.com", private_key=encrypted_pem)
    _assert_clean(info.value, _key_body(encrypted_pem))


def test_passphrase_for_plain_key(pem: str) -> None:
    with pytest.raises(InputError, match="not encrypted") as info:
        JwtBearerAuth("cid", "user@acme.com", private_key=pem, private_key_passphrase="pass-abc")
    _assert_clean(info.value, "pass-abc", _key_body(pem))


def test_non_rsa_key_is_refused() -> None:
    ec_pem = (
        ec.generate_private_key(ec.SECP256R1())
        .private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        .decode()
    )
    with pytest.raises(InputError, match="RSA key") as info:
        JwtBearerAuth("cid", "user@acme.com", private_key=ec_pem)
    _assert_clean(info.value, _key_body(ec_pem))


def test_missing_key_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"
    with pytest.raises(InputError, match="cannot be read") as info:
        JwtBearerAuth("cid", "user@acme.com", private_key_file=missing)
    assert str(missing) in str(info.value)
    assert info.value.field == "private_key_file"


def test_key_file_with_garbage_names_the_file(tmp_path: Path) -> None:
    key_file = tmp_path / "bad.pem"
    key_file.write_text("-----BEGIN RSA PRIVATE KEY-----\nSECRETSTUFF\n-----END RSA PRIVATE KEY-----\n")
    with pytest.raises(InputError) as info:
        JwtBearerAuth("cid", "user@acme.com", private_key_file=key_file)
    assert str(key_file) in str(info.value)
    _assert_clean(info.value, "SECRETSTUFF")


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"private_key": "x", "private_key_file": "/tmp/x.pem"},
        {"private_key": ""},
    ],
)
def test_exactly_one_key_source(kwargs: dict[str, str]) -> None:
    with pytest.raises(InputError):
        JwtBearerAuth("cid", "user@acme.com", **kwargs)


async def test_invalid_grant_from_salesforce(pem: str) -> None:
    body = {"error": "invalid_grant", "error_description": "user hasn't approved this consumer"}

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(400, json=body)

    provider = JwtBearerAuth("cid", "user@acme.com", private_key=pem)
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        with pytest.raises(AuthenticationError) as info:
            await provider.fetch_token(http)
    assert info.value.error_code == "invalid_grant"
    assert info.value.error_description == "user hasn't approved this consumer"
    assert info.value.status_code == 400
    assert _key_body(pem) not in str(info.value)


async def test_echoed_assertion_is_blanked_from_error(pem: str) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(400, content=b"proxy refused: " + request.content)

    provider = JwtBearerAuth("cid", "user@acme.com", private_key=pem)
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        with pytest.raises(AuthenticationError) as info:
            await provider.fetch_token(http)
    assert "proxy refused" in str(info.value)
    assert "eyJ" not in str(info.value)  # no part of a JWT (base64url of '{"')
