"""Login: the OAuth 2.0 token endpoint (four grants) and the SOAP ``login()`` call.

Each grant checks what Salesforce checks and refuses with Salesforce's ``error`` and
``error_description``, so a client's auth code can be tested end to end against these answers;
secrets are compared in constant time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import re
import time
from urllib.parse import parse_qs

import jwt
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from .credentials import Credentials
from .responses import json_response
from .runtime import ORG_ID, USER_ID, Emulator

#: ``login()`` is unavailable from API 65.0 on.
MAX_SOAP_LOGIN_VERSION = 64.0
JWT_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
_JWT_AUDIENCES = ("https://login.salesforce.com", "https://test.salesforce.com")
_MAX_JWT_LIFETIME_SECONDS = 300


def _oauth_error(error: str, description: str) -> Response:
    return json_response({"error": error, "error_description": description}, 400)


def _bad_login() -> Response:
    return _oauth_error("invalid_grant", "authentication failure")


def _bad_client() -> Response:
    return _oauth_error("invalid_client_id", "client identifier invalid")


def _same(a: str | None, b: str) -> bool:
    return a is not None and hmac.compare_digest(a.encode(), b.encode())


def _refused_client(
    creds: Credentials, client_id: str | None, client_secret: str | None, secret_required: bool = True
) -> Response | None:
    """The answer to a client the org does not know, or to a wrong secret; None when the client is right."""
    if not _same(client_id, creds.client_id):
        return _bad_client()
    if (secret_required or client_secret is not None) and not _same(client_secret, creds.client_secret):
        return _oauth_error("invalid_client", "invalid client credentials")
    return None


async def _token_body(emulator: Emulator) -> dict[str, str]:
    token, issued = await run_in_threadpool(emulator.new_session)
    issued_at = str(int(issued * 1000))
    identity = f"{emulator.base_url}/id/{ORG_ID}/{USER_ID}"
    signature = base64.b64encode(
        hmac.new(
            emulator.credentials.client_secret.encode(), (identity + issued_at).encode(), hashlib.sha256
        ).digest()
    ).decode()
    return {
        "access_token": token,
        "instance_url": emulator.base_url,
        "id": identity,
        "token_type": "Bearer",
        "issued_at": issued_at,
        "signature": signature,
        "scope": "api",
    }


def _client_from_basic(request: Request) -> tuple[str | None, str | None]:
    header = request.headers.get("authorization", "")
    if not header.lower().startswith("basic "):
        return None, None
    try:
        decoded = base64.b64decode(header[6:]).decode()
    except (ValueError, UnicodeDecodeError):
        return None, None
    client_id, _, secret = decoded.partition(":")
    return client_id, secret


async def token(request: Request) -> Response:
    """``POST /services/oauth2/token``: password, client_credentials, refresh_token and JWT bearer grants."""
    emulator: Emulator = request.app.state.emulator
    creds = emulator.credentials
    body = (await request.body()).decode("utf-8", "replace")
    form = {k: v[0] for k, v in parse_qs(body, keep_blank_values=True).items()}
    form.update({k: v for k, v in request.query_params.items() if k not in form})
    grant = form.get("grant_type", "")
    basic_id, basic_secret = _client_from_basic(request)
    client_id = form.get("client_id") or basic_id
    client_secret = form.get("client_secret") or basic_secret

    if grant == "password":
        if (refused := _refused_client(creds, client_id, client_secret)) is not None:
            return refused
        if not (
            _same(form.get("username"), creds.username)
            and _same(form.get("password"), creds.password + creds.security_token)
        ):
            return _bad_login()
        return json_response(await _token_body(emulator))

    if grant == "client_credentials":
        if (refused := _refused_client(creds, client_id, client_secret)) is not None:
            return refused
        return json_response(await _token_body(emulator))

    if grant == "refresh_token":
        # A refresh may come from a public client, which holds no secret.
        if (refused := _refused_client(creds, client_id, client_secret, secret_required=False)) is not None:
            return refused
        if not _same(form.get("refresh_token"), creds.refresh_token):
            return _oauth_error("invalid_grant", "expired access/refresh token")
        return json_response(await _token_body(emulator))

    if grant == JWT_GRANT:
        return await _jwt_bearer(emulator, form.get("assertion", ""))

    if not grant:
        return _oauth_error("invalid_request", "grant type not supported")
    return _oauth_error("unsupported_grant_type", "grant type not supported")


async def _jwt_bearer(emulator: Emulator, assertion: str) -> Response:
    creds = emulator.credentials
    audiences = [*_JWT_AUDIENCES, emulator.base_url]
    try:
        claims = jwt.decode(
            assertion,
            creds.public_key(),  # type: ignore[arg-type]
            algorithms=["RS256"],
            audience=audiences,
            options={"require": ["exp", "iss", "sub", "aud"]},
        )
    except jwt.ExpiredSignatureError:
        return _oauth_error("invalid_grant", "expired authorization code")
    except jwt.InvalidAudienceError:
        return _oauth_error("invalid_grant", "audience is invalid")
    except jwt.InvalidTokenError:
        return _oauth_error("invalid_grant", "invalid assertion")
    if claims["iss"] != creds.client_id:
        return _bad_client()
    if claims["sub"] != creds.username:
        return _oauth_error("invalid_grant", "user hasn't approved this consumer")
    if float(claims["exp"]) > time.time() + _MAX_JWT_LIFETIME_SECONDS:
        return _oauth_error("invalid_grant", "invalid assertion")
    return json_response(await _token_body(emulator))


# -- SOAP login ----------------------------------------------------------------------------------

_SOAP_TYPE = "text/xml; charset=utf-8"


def _soap_fault(code: str, message: str) -> Response:
    body = f"""<?xml version="1.0" encoding="UTF-8"?>
<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:sf="urn:fault.partner.soap.sforce.com" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body><soapenv:Fault><faultcode>sf:{code}</faultcode><faultstring>{code}: {html.escape(message)}</faultstring><detail><sf:LoginFault xsi:type="sf:LoginFault"><sf:exceptionCode>{code}</sf:exceptionCode><sf:exceptionMessage>{html.escape(message)}</sf:exceptionMessage></sf:LoginFault></detail></soapenv:Fault></soapenv:Body></soapenv:Envelope>"""  # noqa: E501
    return Response(body.encode(), status_code=500, media_type=_SOAP_TYPE)


def _element(xml: str, name: str) -> str | None:
    # A regular expression, not an XML parser: it reads only these two plain elements and cannot
    # be made to expand entities or fetch anything.
    match = re.search(rf"<(?:\w+:)?{name}(?:\s[^>]*)?>(.*?)</(?:\w+:)?{name}>", xml, re.DOTALL)
    return html.unescape(match.group(1)) if match else None


async def soap_login(request: Request) -> Response:
    """``POST /services/Soap/u/{version}``: the partner API ``login()`` call."""
    emulator: Emulator = request.app.state.emulator
    creds = emulator.credentials
    try:
        version = float(request.path_params["version"])
    except ValueError:
        return _soap_fault("UNSUPPORTED_API_VERSION", "Invalid Api version specified on URL")
    if version > MAX_SOAP_LOGIN_VERSION:
        return _soap_fault(
            "UNSUPPORTED_API_VERSION",
            f"login() is not available in API version {version:.1f}; use OAuth or API version 64.0 or lower",
        )
    if version < emulator.settings.min_api_version:
        return _soap_fault("UNSUPPORTED_API_VERSION", "Invalid Api version specified on URL")
    xml = (await request.body()).decode("utf-8", "replace")
    username, password = _element(xml, "username"), _element(xml, "password")
    if not (_same(username, creds.username) and _same(password, creds.password + creds.security_token)):
        return _soap_fault("INVALID_LOGIN", "Invalid username, password, security token; or user locked out.")
    token, _ = await run_in_threadpool(emulator.new_session)
    base = emulator.base_url
    seconds = int(emulator.settings.session_timeout_seconds)
    body = f"""<?xml version="1.0" encoding="UTF-8"?>
<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns="urn:partner.soap.sforce.com" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body><loginResponse><result><metadataServerUrl>{base}/services/Soap/m/{version:.1f}/{ORG_ID[:15]}</metadataServerUrl><passwordExpired>false</passwordExpired><sandbox>false</sandbox><serverUrl>{base}/services/Soap/u/{version:.1f}/{ORG_ID[:15]}</serverUrl><sessionId>{token}</sessionId><userId>{USER_ID}</userId><userInfo><organizationId>{ORG_ID}</organizationId><organizationName>Salesforce Bulk Emulator</organizationName><sessionSecondsValid>{seconds}</sessionSecondsValid><userEmail>{html.escape(creds.username)}</userEmail><userId>{USER_ID}</userId><userName>{html.escape(creds.username)}</userName></userInfo></result></loginResponse></soapenv:Body></soapenv:Envelope>"""  # noqa: E501
    return Response(body.encode(), media_type=_SOAP_TYPE)


def bearer_token(request: Request) -> str | None:
    """The access token of an API request (``Authorization: Bearer`` or ``OAuth``), or None."""
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() in ("bearer", "oauth") and value.strip():
        return value.strip()
    return None
