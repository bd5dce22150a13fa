"""The emulator as a server: body limits (gzip bombs), Host/Origin checks, upload media type, locators."""

from __future__ import annotations

import gzip
import socket
import tracemalloc
import zlib
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from airflow_provider_salesforce_bulk.emulator.hosts import host_allowed, origin_allowed
from airflow_provider_salesforce_bulk.emulator.server import RunningEmulator

from .helpers import API, create_job, wait_done

MIB = 1024 * 1024


def _raw(emulator: RunningEmulator, request: bytes) -> bytes:
    """Send raw bytes on a fresh connection and return everything read until the server closes."""
    url = urlsplit(emulator.base_url)
    assert url.hostname is not None
    assert url.port is not None
    with socket.create_connection((url.hostname, url.port), timeout=30) as sock:
        sock.sendall(request)
        answer = bytearray()
        while chunk := sock.recv(65536):
            answer.extend(chunk)
    return bytes(answer)


def _bomb(size: int, wbits: int = 31) -> bytes:
    """A compressed body that inflates to ``size`` spaces, made without holding ``size`` bytes."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, wbits)
    block = b" " * MIB
    parts = [compressor.compress(block) for _ in range(size // MIB)]
    parts.append(compressor.flush())
    return b"".join(parts)


def _peak_while(call: object) -> tuple[object, int]:
    assert callable(call)
    tracemalloc.start()
    try:
        result = call()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, peak


# -- JSON and other request bodies ---------------------------------------------------------------


def test_json_body_over_the_limit_is_refused_and_nothing_happens(
    emulator: RunningEmulator, api: httpx.Client
) -> None:
    emulator.update_settings(request_limit_bytes=2000)
    spec = {"object": "Account", "operation": "insert", "padding": "x" * 3000}
    refused = api.post("/jobs/ingest", json=spec)
    assert refused.status_code == 413
    assert refused.headers["content-type"].startswith("application/json")
    assert refused.json()[0]["errorCode"] == "REQUEST_TOO_LARGE"
    assert "2000" in refused.json()[0]["message"]
    assert api.get("/jobs/ingest").json()["records"] == []
    # Just under the limit is served (the padding key is unknown to the job and ignored).
    spec["padding"] = "x" * 1900
    assert api.post("/jobs/ingest", json=spec).status_code == 200


def test_chunked_json_body_without_length_is_bounded_too(
    emulator: RunningEmulator, api: httpx.Client
) -> None:
    emulator.update_settings(request_limit_bytes=2000)

    def pieces() -> Iterator[bytes]:
        yield b'{"object": "Account", "operation": "insert", "padding": "'
        for _ in range(50):
            yield b"x" * 100
        yield b'"}'

    refused = api.post("/jobs/ingest", content=pieces(), headers={"Content-Type": "application/json"})
    assert refused.status_code == 413
    assert api.get("/jobs/ingest").json()["records"] == []


def test_gzip_bomb_json_is_refused_without_inflating_it(emulator: RunningEmulator, api: httpx.Client) -> None:
    bomb = _bomb(64 * MIB)
    assert len(bomb) < 200_000
    headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
    refused, peak = _peak_while(lambda: api.post("/jobs/ingest", content=bomb, headers=headers))
    assert isinstance(refused, httpx.Response)
    assert refused.status_code == 413
    assert refused.json()[0]["errorCode"] == "REQUEST_TOO_LARGE"
    # Inflating it all would hold 64 MiB at once; the limit is 1 MiB.
    assert peak < 16 * MIB, peak


def test_compressed_json_bodies_still_work(api: httpx.Client) -> None:
    spec = b'{"object": "Account", "operation": "insert"}'
    for encoding, body in (("gzip", gzip.compress(spec)), ("deflate", zlib.compress(spec))):
        created = api.post(
            "/jobs/ingest",
            content=body,
            headers={"Content-Type": "application/json", "Content-Encoding": encoding},
        )
        assert created.status_code == 200, created.text
        assert created.json()["state"] == "Open"


@pytest.mark.parametrize(
    "body",
    [
        b"not gzip at all",
        gzip.compress(b'{"object": "Account", "operation": "insert"}')[:-12],  # truncated
        gzip.compress(b'{"object": "Account", "operation": "insert"}') + b"trailing",
    ],
    ids=["garbage", "truncated", "trailing-bytes"],
)
def test_malformed_compressed_json_is_a_400(api: httpx.Client, body: bytes) -> None:
    refused = api.post(
        "/jobs/ingest", content=body, headers={"Content-Type": "application/json", "Content-Encoding": "gzip"}
    )
    assert refused.status_code == 400
    assert refused.json()[0]["errorCode"] == "CLIENTINPUTERROR"
    assert api.get("/jobs/ingest").json()["records"] == []


def test_login_and_admin_bodies_are_bounded(emulator: RunningEmulator) -> None:
    emulator.update_settings(request_limit_bytes=65536)
    token = httpx.post(
        f"{emulator.base_url}/services/oauth2/token",
        data={"grant_type": "password", "username": "x" * 100_000},
    )
    assert token.status_code == 413
    admin = httpx.post(f"{emulator.base_url}/__emulator__/settings", content=b"{" + b" " * 100_000 + b"}")
    assert admin.status_code == 413
    bomb = _bomb(8 * MIB)
    assert len(bomb) < 65536  # small on the wire: only the inflated size is over the limit
    refused = httpx.post(
        f"{emulator.base_url}/__emulator__/settings", content=bomb, headers={"Content-Encoding": "gzip"}
    )
    assert refused.status_code == 413
    assert emulator.settings.request_limit_bytes == 65536


# -- uploads --------------------------------------------------------------------------------------


def test_gzip_bomb_upload_is_refused_without_inflating_it_and_the_job_stays_usable(
    emulator: RunningEmulator, api: httpx.Client
) -> None:
    emulator.update_settings(upload_limit_bytes=MIB)
    job = create_job(api, object="Account", operation="insert")
    url = f"/jobs/ingest/{job['id']}/batches"
    bomb = _bomb(64 * MIB)
    headers = {"Content-Type": "text/csv", "Content-Encoding": "gzip"}
    refused, peak = _peak_while(lambda: api.put(url, content=bomb, headers=headers))
    assert isinstance(refused, httpx.Response)
    assert refused.status_code == 400
    assert refused.json()[0]["errorCode"] == "CLIENTINPUTERROR"
    assert peak < 16 * MIB, peak
    ok = api.put(url, content=gzip.compress(b"Name\nAfter The Bomb\n"), headers=headers)
    assert ok.status_code == 201, ok.text
    api.patch(f"/jobs/ingest/{job['id']}", json={"state": "UploadComplete"})
    assert wait_done(api, job["id"])["numberRecordsProcessed"] == 1
    assert [r["Name"] for r in emulator.records("Account")] == ["After The Bomb"]


def test_upload_wire_bytes_are_bounded_even_when_they_inflate_to_nothing(
    emulator: RunningEmulator, api: httpx.Client
) -> None:
    # Empty deflate blocks inflate to nothing: only a bound on the bytes received stops such a body.
    emulator.update_settings(upload_limit_bytes=1000)
    compressor = zlib.compressobj(6, zlib.DEFLATED, 15)
    head = compressor.compress(b"Name\nA\n") + compressor.flush(zlib.Z_SYNC_FLUSH)
    empty_stored_block = b"\x00\x00\x00\xff\xff"
    body = head + empty_stored_block * 400 + compressor.flush()
    assert zlib.decompress(body) == b"Name\nA\n"
    job = create_job(api, object="Account", operation="insert")
    url = f"/jobs/ingest/{job['id']}/batches"

    def pieces() -> Iterator[bytes]:  # no Content-Length: the middleware must count
        for start in range(0, len(body), 100):
            yield body[start : start + 100]

    refused = api.put(
        url, content=pieces(), headers={"Content-Type": "text/csv", "Content-Encoding": "deflate"}
    )
    assert refused.status_code == 400
    assert refused.json()[0]["errorCode"] == "CLIENTINPUTERROR"
    # The refused upload was released: the one PUT the job allows is still free.
    ok = api.put(url, content=b"Name\nA\n", headers={"Content-Type": "text/csv"})
    assert ok.status_code == 201


def test_upload_with_a_declared_length_over_the_limit(emulator: RunningEmulator, api: httpx.Client) -> None:
    emulator.update_settings(upload_limit_bytes=1000)
    job = create_job(api, object="Account", operation="insert")
    refused = api.put(
        f"/jobs/ingest/{job['id']}/batches",
        content=b"Name\n" + b"y" * 5000,
        headers={"Content-Type": "text/csv"},
    )
    assert refused.status_code == 400
    assert "1000" in refused.json()[0]["message"]


@pytest.mark.parametrize(
    "content_type", [None, "application/json", "text/plain", "text/csvx", "multipart/form-data"]
)
def test_upload_must_be_text_csv(api: httpx.Client, content_type: str | None) -> None:
    job = create_job(api, object="Account", operation="insert")
    url = f"/jobs/ingest/{job['id']}/batches"
    headers = {} if content_type is None else {"Content-Type": content_type}
    refused = api.put(url, content=b"Name\nA\n", headers=headers)
    assert refused.status_code == 415
    assert refused.json() == [
        {
            "errorCode": "UNSUPPORTED_MEDIA_TYPE",
            "message": f"MediaType of '{content_type or ''}' is not supported by this resource",
        }
    ]
    # Nothing was taken: the job is still Open and accepts its one upload.
    assert api.get(f"/jobs/ingest/{job['id']}").json()["state"] == "Open"
    assert (
        api.put(url, content=b"Name\nA\n", headers={"Content-Type": "TEXT/CSV; charset=UTF-8"}).status_code
        == 201
    )


def test_media_type_is_checked_after_the_session(emulator: RunningEmulator) -> None:
    anonymous = httpx.put(f"{emulator.base_url}{API}/jobs/ingest/750R0000000001AAA/batches", content=b"x")
    assert anonymous.status_code == 401


# -- queryLocator ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "locator",
    [
        "",
        "abc",
        "01gR0000000opRT",
        "01gR0000000opRT-",
        "01gR0000000opRT-x",
        "01gR0000000opRT--1",
        "01gR0000000opRTX-5",
        "01gR0000000opRT-5x",
        "01gR0000000opRT-\u0663",  # an Arabic-Indic digit: str.isdigit() says yes
        "01gR0000000opRT-99999999999999999999999999",  # would overflow SQLite's integer
    ],
)
@pytest.mark.parametrize(
    ("path", "prefix"), [("/jobs/ingest", "01gR0000000opRT"), ("/jobs/query", "01gR0000000opRU")]
)
def test_malformed_query_locator_is_a_400(api: httpx.Client, locator: str, path: str, prefix: str) -> None:
    # Each job list checks its locators alike, with its own prefix.
    refused = api.get(path, params={"queryLocator": locator.replace("01gR0000000opRT", prefix)})
    assert refused.status_code == 400
    assert refused.json()[0]["errorCode"] == "INVALIDQUERYLOCATOR"


def test_the_locators_the_emulator_hands_out_work(emulator: RunningEmulator, api: httpx.Client) -> None:
    emulator.update_settings(job_page_size=2)
    for _ in range(3):
        create_job(api, object="Account", operation="insert")
    first = api.get("/jobs/ingest").json()
    assert first["done"] is False
    second = httpx.get(
        emulator.base_url + first["nextRecordsUrl"], headers={"Authorization": api.headers["Authorization"]}
    ).json()
    assert second["done"] is True
    assert len(first["records"]) + len(second["records"]) == 3


# -- Host and Origin ------------------------------------------------------------------------------


def _port(emulator: RunningEmulator) -> int:
    port = urlsplit(emulator.base_url).port
    assert port is not None
    return port


@pytest.mark.parametrize(
    "host",
    [
        "evil.example",
        "evil.example:{port}",
        "127.0.0.1.nip.io:{port}",
        "localhost.evil.example",
        "10.0.0.1",
        "0.0.0.0:{port}",
        "[::ffff:10.0.0.1]",
        "",
        "localhost:abc",
        "127.0.0.1:{port}:1",
    ],
)
def test_foreign_hosts_get_nothing(emulator: RunningEmulator, host: str) -> None:
    host = host.format(port=_port(emulator))
    for path in ("/__emulator__/credentials", "/__emulator__/settings", f"{API}/jobs/ingest"):
        refused = httpx.get(f"{emulator.base_url}{path}", headers={"Host": host})
        assert refused.status_code == 421, (host, path)
        assert refused.json()[0]["errorCode"] == "MISDIRECTED_REQUEST"
        text = refused.text
        assert emulator.credentials.client_secret not in text
        assert "PRIVATE KEY" not in text
        if host:
            assert host not in text
    # A state-changing admin request from a foreign host does nothing.
    changed = httpx.post(
        f"{emulator.base_url}/__emulator__/settings", json={"latency_seconds": 5}, headers={"Host": host}
    )
    assert changed.status_code == 421
    assert emulator.settings.latency_seconds == 0.0


@pytest.mark.parametrize(
    "host",
    [
        "localhost",
        "LOCALHOST:1",
        "localhost.",
        "127.0.0.1",
        "127.0.0.1:{port}",
        "127.9.9.9:80",
        "[::1]",
        "[::1]:{port}",
    ],
)
def test_loopback_hosts_are_served_whatever_the_port(emulator: RunningEmulator, host: str) -> None:
    host = host.format(port=_port(emulator))
    served = httpx.get(f"{emulator.base_url}/__emulator__/credentials", headers={"Host": host})
    assert served.status_code == 200, host
    assert served.json()["client_secret"] == emulator.credentials.client_secret


def test_a_request_without_host_is_refused(emulator: RunningEmulator) -> None:
    answer = _raw(emulator, b"GET /__emulator__/credentials HTTP/1.0\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 421 ")
    assert emulator.credentials.client_secret.encode() not in answer


def test_two_host_headers_are_refused(emulator: RunningEmulator) -> None:
    for hosts in (b"Host: 127.0.0.1\r\nHost: evil.example\r\n", b"Host: evil.example\r\nHost: 127.0.0.1\r\n"):
        answer = _raw(emulator, b"GET /__emulator__/credentials HTTP/1.0\r\n" + hosts + b"\r\n")
        assert answer.startswith(b"HTTP/1.1 4"), answer[:40]
        assert emulator.credentials.client_secret.encode() not in answer


@pytest.mark.parametrize(
    ("origin", "status"),
    [
        ("http://evil.example", 421),
        ("https://127.0.0.1.evil.example", 421),
        ("null", 421),
        ("http://localhost:3000", 200),
        ("http://127.0.0.1:8080", 200),
        ("http://[::1]:9", 200),
    ],
)
def test_browser_origin_must_be_loopback(emulator: RunningEmulator, origin: str, status: int) -> None:
    answer = httpx.get(f"{emulator.base_url}/__emulator__/credentials", headers={"Origin": origin})
    assert answer.status_code == status


def test_configured_host_is_accepted() -> None:
    assert host_allowed("sf.test:443", "sf.test")
    assert host_allowed("[::1]", "::1")
    assert not host_allowed("other.test", "sf.test")
    assert origin_allowed("https://sf.test", "sf.test")


_labels = st.from_regex(r"[a-z][a-z0-9-]{0,20}", fullmatch=True)


@settings(max_examples=200, deadline=None)
@given(
    labels=st.lists(_labels, min_size=1, max_size=4),
    port=st.one_of(st.none(), st.integers(min_value=0, max_value=65535)),
)
def test_any_other_name_is_refused(labels: list[str], port: int | None) -> None:
    name = ".".join(labels)
    host = name if port is None else f"{name}:{port}"
    assert host_allowed(host, "127.0.0.1") == (name == "localhost")


def test_refusals_read_alike_whichever_layer_gives_them(emulator: RunningEmulator, api: httpx.Client) -> None:
    """Over-limit job data and undecodable bodies: the same words from the middleware and the handlers."""
    emulator.update_settings(upload_limit_bytes=1000)
    over = "ClientInputError : Exceeded max size limit of 1000 bytes for job data"
    big = b"Name\n" + b"x" * 2000 + b"\n"
    job = create_job(api, object="Account", operation="insert")
    url = f"/jobs/ingest/{job['id']}/batches"

    def streamed() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        yield big

    answers = {
        "declared": api.put(url, content=big, headers={"Content-Type": "text/csv"}),
        "streamed": api.put(url, content=streamed(), headers={"Content-Type": "text/csv"}),
        "inflated": api.put(
            url, content=gzip.compress(big), headers={"Content-Type": "text/csv", "Content-Encoding": "gzip"}
        ),
        "multipart": api.post(
            "/jobs/ingest",
            files={
                "job": (None, '{"object": "Account", "operation": "insert"}', "application/json"),
                "content": ("content", big, "text/csv"),
            },
        ),
    }
    for name, answer in answers.items():
        assert (name, answer.status_code, answer.json()) == (
            name,
            400,
            [{"errorCode": "CLIENTINPUTERROR", "message": over}],
        )
    not_gzip = [{"errorCode": "CLIENTINPUTERROR", "message": "The request body is not valid gzip data"}]
    upload = api.put(
        url, content=b"not gzip at all", headers={"Content-Type": "text/csv", "Content-Encoding": "gzip"}
    )
    create = api.post(
        "/jobs/ingest",
        content=b"not gzip at all",
        headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
    )
    assert (upload.status_code, upload.json()) == (400, not_gzip)
    assert (create.status_code, create.json()) == (400, not_gzip)
