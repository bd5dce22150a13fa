"""SOAP login(): the escaped envelope sent, the parsed session, faults, version pinning and the warning."""

from __future__ import annotations

import warnings
import xml.etree.ElementTree as ET

import httpx
import pytest

from airflow_provider_salesforce_bulk.client.auth import SoapLoginAuth, Token
from airflow_provider_salesforce_bulk.client.errors import (
    AuthenticationError,
    InputError,
    ServerError,
    ServerUnavailableError,
    TransportError,
)
from airflow_provider_salesforce_bulk.client.retry import RetryPolicy

SESSION_ID = "00Dxx0000001gPL!AR8AQ.soapsession"

LOGIN_RESPONSE = f"""<?xml version="1.0" encoding="UTF-8"?>
<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"
    xmlns="urn:partner.soap.sforce.com" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
<soapenv:Body><loginResponse><result>
<metadataServerUrl>https://acme.my.salesforce.com/services/Soap/m/64.0/00Dxx0000001gPL</metadataServerUrl>
<passwordExpired>false</passwordExpired><sandbox>false</sandbox>
<serverUrl>https://acme.my.salesforce.com/services/Soap/u/64.0/00Dxx0000001gPL</serverUrl>
<sessionId>{SESSION_ID}</sessionId><userId>005xx000001SwiUAAS</userId>
<userInfo><userName>user@acme.com</userName></userInfo>
</result></loginResponse></soapenv:Body></soapenv:Envelope>"""

INVALID_LOGIN = """<?xml version="1.0" encoding="UTF-8"?>
<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"
    xmlns:sf="urn:fault.partner.soap.sforce.com" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
<soapenv:Body><soapenv:Fault><faultcode>sf:INVALID_LOGIN</faultcode>
<faultstring>INVALID_LOGIN: Invalid username, password, security token; or user locked out.</faultstring>
<detail><sf:LoginFault xsi:type="sf:LoginFault"><sf:exceptionCode>INVALID_LOGIN</sf:exceptionCode>
<sf:exceptionMessage>Invalid username, password, security token; or user locked out.</sf:exceptionMessage>
</sf:LoginFault></detail></soapenv:Fault></soapenv:Body></soapenv:Envelope>"""

NS = {"env": "http://schemas.xmlsoap.org/soap/envelope/", "urn": "urn:partner.soap.sforce.com"}


FAST = RetryPolicy(max_attempts=3, initial_delay=0.0, max_delay=0.0, max_total=10.0)


def make(**kwargs: str) -> SoapLoginAuth:
    args = {"username": "user@acme.com", "password": "pw", **kwargs}
    with pytest.warns(DeprecationWarning, match="login"):
        return SoapLoginAuth(**args)


async def login(
    provider: SoapLoginAuth, *answers: httpx.Response | Exception, seen: list[httpx.Request] | None = None
) -> tuple[Token, list[httpx.Request]]:
    seen = [] if seen is None else seen
    script = list(answers)

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        answer = script.pop(0) if len(script) > 1 else script[0]
        if isinstance(answer, Exception):
            raise answer
        return answer

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        return await provider.fetch_token(http, retry=FAST), seen


def xml_ok(body: str = LOGIN_RESPONSE, status: int = 200) -> httpx.Response:
    return httpx.Response(status, content=body.encode(), headers={"Content-Type": "text/xml; charset=utf-8"})


async def test_request_is_escaped_soap_envelope() -> None:
    password = "p<a&s\"s'>"
    provider = make(username="o'brien&co@acme.com", password=password, security_token="T<K>&")
    token, seen = await login(provider, xml_ok())
    request = seen[0]
    assert request.method == "POST"
    assert str(request.url) == "https://login.salesforce.com/services/Soap/u/64.0"
    assert request.headers["Content-Type"] == "text/xml; charset=UTF-8"
    assert request.headers["SOAPAction"] == "login"
    raw = request.content.decode()
    assert "p&lt;a&amp;s&quot;s&apos;&gt;T&lt;K&gt;&amp;" in raw
    assert password not in raw
    root = ET.fromstring(request.content)  # noqa: S314  (our own request body)
    login_el = root.find("env:Body/urn:login", NS)
    assert login_el is not None
    assert login_el.findtext("urn:username", namespaces=NS) == "o'brien&co@acme.com"
    assert login_el.findtext("urn:password", namespaces=NS) == password + "T<K>&"
    assert token.access_token == SESSION_ID
    assert token.instance_url == "https://acme.my.salesforce.com"


async def test_sandbox_login_url_and_older_version() -> None:
    _, seen = await login(make(login_url="test", api_version="58.0"), xml_ok())
    assert str(seen[0].url) == "https://test.salesforce.com/services/Soap/u/58.0"


async def test_invalid_login_fault() -> None:
    provider = make(password="Sup3r$ecret", security_token="TKN999")
    seen: list[httpx.Request] = []
    with pytest.raises(AuthenticationError) as info:
        await login(provider, xml_ok(INVALID_LOGIN, status=500), seen=seen)
    assert info.value.error_code == "sf:INVALID_LOGIN"
    assert info.value.error_description is not None
    assert info.value.error_description.startswith("INVALID_LOGIN: Invalid username, password")
    assert info.value.status_code == 500
    assert "sf:INVALID_LOGIN" in str(info.value)
    for secret in ("Sup3r$ecret", "TKN999"):
        assert secret not in str(info.value)
    # A fault comes as HTTP 500 and must not be retried: repeated failed logins lock the user out.
    assert len(seen) == 1


async def test_unavailable_is_retried() -> None:
    token, seen = await login(
        make(), httpx.Response(503, content=b"down"), httpx.ConnectError("reset"), xml_ok()
    )
    assert token.access_token == SESSION_ID
    assert len(seen) == 3


async def test_transport_error() -> None:
    with pytest.raises(TransportError):
        await login(make(), httpx.ConnectTimeout("timed out"))


@pytest.mark.parametrize(
    ("status", "body", "match"),
    [
        (404, "<html>Not Found</html>", "Not Found"),
        (200, "not xml at all", "no SOAP envelope"),
        (
            200,
            '<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa">]><x>&a;</x>',
            "no SOAP envelope",
        ),
        (200, LOGIN_RESPONSE.replace(f"<sessionId>{SESSION_ID}</sessionId>", ""), "without sessionId"),
    ],
)
async def test_unusable_answers(status: int, body: str, match: str) -> None:
    with pytest.raises(AuthenticationError, match=match) as info:
        await login(make(), xml_ok(body, status=status))
    assert info.value.status_code == status


@pytest.mark.parametrize(
    ("status", "body", "cls"),
    [
        (500, "<soapenv:Envelope xmlns:soapenv='http://schemas.xmlsoap.org/soap/envelope/'/>", ServerError),
        (500, "<html>Internal Server Error</html>", ServerError),
        (503, "<html>down for maintenance</html>", ServerUnavailableError),
    ],
)
async def test_server_failures_without_a_fault_are_server_errors(
    status: int, body: str, cls: type[ServerError]
) -> None:
    with pytest.raises(cls, match=f"HTTP {status}") as info:
        await login(make(password="Sup3r$ecret"), xml_ok(body, status=status))
    assert not isinstance(info.value, AuthenticationError)
    assert info.value.status_code == status
    assert "Sup3r$ecret" not in str(info.value)


async def test_expired_password() -> None:
    body = LOGIN_RESPONSE.replace("<passwordExpired>false", "<passwordExpired>true")
    with pytest.raises(AuthenticationError, match="expired") as info:
        await login(make(), xml_ok(body))
    assert info.value.error_code == "PASSWORD_EXPIRED"
    assert SESSION_ID not in str(info.value)


@pytest.mark.parametrize("version", ["65.0", "66.0", "v67.0", "68"])
def test_version_above_64_is_refused(version: str) -> None:
    with pytest.raises(InputError, match=r"unavailable from API 65\.0") as info:
        SoapLoginAuth("user@acme.com", "pw", api_version=version)
    assert info.value.field == "api_version"


@pytest.mark.parametrize("version", ["", "latest", "64.0.1"])
def test_malformed_version_is_refused(version: str) -> None:
    with pytest.raises(InputError, match="api_version"):
        SoapLoginAuth("user@acme.com", "pw", api_version=version)


def test_construction_warns_deprecation() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        provider = SoapLoginAuth("user@acme.com", "pw")
    assert [w.category for w in caught] == [DeprecationWarning]
    message = str(caught[0].message)
    assert "65.0" in message
    assert "Summer '27" in message
    assert caught[0].filename == __file__  # points at the caller, not at the library
    assert provider.api_version == "64.0"


def test_cache_key_and_secrets() -> None:
    one = make(password="a&b", security_token="tok")
    two = make(password="a&b", security_token="tok2")
    assert one.cache_key != two.cache_key
    assert one.cache_key == make(password="a&b", security_token="tok").cache_key
    assert set(one.secrets()) >= {"a&b", "tok", "a&btok", "a&amp;btok"}
    assert "a&b" not in repr(one)
    assert "user@acme.com" in repr(one)
