"""Logins over a real socket: the four OAuth grants, SOAP login and session expiry."""

from __future__ import annotations

import base64
import time

import httpx
import jwt
import pytest

from airflow_provider_salesforce_bulk.emulator.server import RunningEmulator

from .helpers import API


def _token(emulator: RunningEmulator, **form: str) -> httpx.Response:
    return httpx.post(f"{emulator.base_url}/services/oauth2/token", data=form)


def _assert_token_body(emulator: RunningEmulator, response: httpx.Response) -> str:
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["instance_url"] == emulator.base_url
    assert body["token_type"] == "Bearer"
    assert "expires_in" not in body
    assert body["issued_at"].isdigit()
    assert abs(int(body["issued_at"]) / 1000 - time.time()) < 60
    assert body["id"].startswith(f"{emulator.base_url}/id/00D")
    assert body["signature"]
    token: str = body["access_token"]
    assert (
        httpx.get(
            f"{emulator.base_url}{API}/limits", headers={"Authorization": f"Bearer {token}"}
        ).status_code
        == 200
    )
    return token


def test_password_grant(emulator: RunningEmulator) -> None:
    c = emulator.credentials
    ok = _token(
        emulator,
        grant_type="password",
        client_id=c.client_id,
        client_secret=c.client_secret,
        username=c.username,
        password=c.password + c.security_token,
    )
    _assert_token_body(emulator, ok)
    assert "refresh_token" not in ok.json()
    bad = _token(
        emulator,
        grant_type="password",
        client_id=c.client_id,
        client_secret=c.client_secret,
        username=c.username,
        password=c.password,
    )
    assert bad.status_code == 400
    assert bad.json() == {"error": "invalid_grant", "error_description": "authentication failure"}


def test_client_credentials_in_body_or_basic(emulator: RunningEmulator) -> None:
    c = emulator.credentials
    _assert_token_body(
        emulator,
        _token(
            emulator, grant_type="client_credentials", client_id=c.client_id, client_secret=c.client_secret
        ),
    )
    basic = base64.b64encode(f"{c.client_id}:{c.client_secret}".encode()).decode()
    response = httpx.post(
        f"{emulator.base_url}/services/oauth2/token",
        data={"grant_type": "client_credentials"},
        headers={"Authorization": f"Basic {basic}"},
    )
    _assert_token_body(emulator, response)
    wrong = _token(emulator, grant_type="client_credentials", client_id="nope", client_secret="x")
    assert wrong.status_code == 400
    assert wrong.json() == {"error": "invalid_client_id", "error_description": "client identifier invalid"}


def test_refresh_token_grant(emulator: RunningEmulator) -> None:
    c = emulator.credentials
    _assert_token_body(
        emulator,
        _token(emulator, grant_type="refresh_token", client_id=c.client_id, refresh_token=c.refresh_token),
    )
    bad = _token(emulator, grant_type="refresh_token", client_id=c.client_id, refresh_token="stale")
    assert bad.status_code == 400
    assert bad.json()["error"] == "invalid_grant"


@pytest.mark.parametrize("grant", ["password", "client_credentials", "refresh_token"])
def test_every_client_grant_checks_the_client_alike(emulator: RunningEmulator, grant: str) -> None:
    c = emulator.credentials
    form = {"grant_type": grant, "username": c.username, "password": c.password + c.security_token}
    form["refresh_token"] = c.refresh_token
    bad_id = _token(emulator, **form, client_id="nope", client_secret=c.client_secret)
    assert (bad_id.status_code, bad_id.json()) == (
        400,
        {"error": "invalid_client_id", "error_description": "client identifier invalid"},
    )
    bad_secret = _token(emulator, **form, client_id=c.client_id, client_secret="wrong")
    assert (bad_secret.status_code, bad_secret.json()) == (
        400,
        {"error": "invalid_client", "error_description": "invalid client credentials"},
    )
    no_secret = _token(emulator, **form, client_id=c.client_id)
    if grant == "refresh_token":  # a refresh may come from a public client, without a secret
        _assert_token_body(emulator, no_secret)
    else:
        assert (no_secret.status_code, no_secret.json()["error"]) == (400, "invalid_client")


def _assertion(emulator: RunningEmulator, **claims: object) -> str:
    c = emulator.credentials
    payload = {
        "iss": c.client_id,
        "sub": c.username,
        "aud": "https://login.salesforce.com",
        "exp": int(time.time()) + 120,
        **claims,
    }
    return jwt.encode(payload, c.private_key_pem, algorithm="RS256")


def test_jwt_bearer_grant(emulator: RunningEmulator) -> None:
    grant = "urn:ietf:params:oauth:grant-type:jwt-bearer"
    _assert_token_body(emulator, _token(emulator, grant_type=grant, assertion=_assertion(emulator)))
    cases = {
        "expired": _assertion(emulator, exp=int(time.time()) - 600),
        "audience": _assertion(emulator, aud="https://evil.example.com"),
        "issuer": _assertion(emulator, iss="someone-else"),
        "subject": _assertion(emulator, sub="nobody@example.com"),
        "signature": _assertion(emulator)[:-8] + "AAAAAAAA",
    }
    for name, assertion in cases.items():
        response = _token(emulator, grant_type=grant, assertion=assertion)
        assert response.status_code == 400, name
        assert response.json()["error"] in ("invalid_grant", "invalid_client_id"), name


def test_unknown_grant(emulator: RunningEmulator) -> None:
    response = _token(emulator, grant_type="authorization_code")
    assert response.status_code == 400
    assert response.json()["error"] == "unsupported_grant_type"


def _soap(emulator: RunningEmulator, version: str, password: str) -> httpx.Response:
    c = emulator.credentials
    envelope = (
        '<?xml version="1.0" encoding="utf-8"?><env:Envelope xmlns:env="http://schemas.xmlsoap.org/soap/envelope/">'
        f'<env:Body><n1:login xmlns:n1="urn:partner.soap.sforce.com"><n1:username>{c.username}</n1:username>'
        f"<n1:password>{password}</n1:password></n1:login></env:Body></env:Envelope>"
    )
    return httpx.post(
        f"{emulator.base_url}/services/Soap/u/{version}",
        content=envelope,
        headers={"Content-Type": "text/xml; charset=UTF-8", "SOAPAction": "login"},
    )


def test_soap_login(emulator: RunningEmulator) -> None:
    c = emulator.credentials
    ok = _soap(emulator, "64.0", c.password + c.security_token)
    assert ok.status_code == 200
    assert f"<serverUrl>{emulator.base_url}/services/Soap/u/64.0/" in ok.text
    session = ok.text.split("<sessionId>")[1].split("</sessionId>")[0]
    assert httpx.get(
        f"{emulator.base_url}{API}/limits", headers={"Authorization": f"Bearer {session}"}
    ).is_success
    refused = _soap(emulator, "65.0", c.password + c.security_token)
    assert refused.status_code == 500
    assert "UNSUPPORTED_API_VERSION" in refused.text
    wrong = _soap(emulator, "64.0", "guess")
    assert wrong.status_code == 500
    assert "<sf:exceptionCode>INVALID_LOGIN</sf:exceptionCode>" in wrong.text


def test_missing_or_unknown_token_is_401(emulator: RunningEmulator) -> None:
    expected = [{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}]
    for headers in ({}, {"Authorization": "Bearer not-a-token"}):
        response = httpx.get(f"{emulator.base_url}{API}/jobs/ingest", headers=headers)
        assert response.status_code == 401
        assert response.json() == expected


@pytest.mark.parametrize("setting", ["session_timeout_seconds", "session_expiry_every_seconds"])
def test_sessions_expire(emulator: RunningEmulator, setting: str) -> None:
    token = emulator.new_access_token()
    headers = {"Authorization": f"Bearer {token}"}
    assert httpx.get(f"{emulator.base_url}{API}/jobs/ingest", headers=headers).status_code == 200
    emulator.update_settings(**{setting: 0.2})
    time.sleep(0.3)
    expired = httpx.get(f"{emulator.base_url}{API}/jobs/ingest", headers=headers)
    assert expired.status_code == 401
    assert expired.json()[0]["errorCode"] == "INVALID_SESSION_ID"
    emulator.update_settings(**{setting: None if setting == "session_expiry_every_seconds" else 7200.0})
    fresh = emulator.new_access_token()
    assert (
        httpx.get(
            f"{emulator.base_url}{API}/jobs/ingest", headers={"Authorization": f"Bearer {fresh}"}
        ).status_code
        == 200
    )
