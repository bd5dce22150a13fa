"""Result page bodies inflated by the client: ISA-L when ``isal`` imports, zlib otherwise, the same
bytes either way; a corrupt body fails as httpx's own decoder would."""

from __future__ import annotations

import gzip
import sys
from collections.abc import AsyncIterator

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from airflow_provider_salesforce_bulk.client.query_inflate import body_chunks, gzip_inflater


def _no_isal(monkeypatch: pytest.MonkeyPatch) -> None:
    # A None entry makes the import raise ImportError, as when isal is not installed.
    monkeypatch.setitem(sys.modules, "isal.isal_zlib", None)


async def _read(body: bytes, piece: int, encoding: str | None) -> bytes:
    async def pieces() -> AsyncIterator[bytes]:
        for start in range(0, len(body), piece):
            yield body[start : start + piece]

    headers = {"Content-Encoding": encoding} if encoding else {}
    transport = httpx.MockTransport(lambda request: httpx.Response(200, headers=headers, content=pieces()))
    async with (
        httpx.AsyncClient(transport=transport) as client,
        client.stream("GET", "https://acme.my.salesforce.com/page") as response,
    ):
        return b"".join([chunk async for chunk in body_chunks(response)])


def test_isal_is_used_when_it_imports_and_zlib_otherwise(monkeypatch):
    inflater, _ = gzip_inflater()
    assert type(inflater).__module__.startswith("isal")
    _no_isal(monkeypatch)
    inflater, _ = gzip_inflater()
    assert type(inflater).__module__ == "zlib"


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(csv=st.binary(max_size=200_000), piece=st.integers(1, 70_000), level=st.sampled_from([1, 6, 9]))
async def test_both_inflaters_give_the_bytes_sent(monkeypatch, csv, piece, level):
    body = gzip.compress(csv, compresslevel=level)
    assert await _read(body, piece, "gzip") == csv
    with monkeypatch.context() as patched:
        _no_isal(patched)
        assert await _read(body, piece, "gzip") == csv


async def test_a_large_page_inflates_the_same_with_either(monkeypatch):
    csv = b"".join(f'"001{i:015d}","Name {i}",{i % 500},{i}.25\n'.encode() for i in range(100_000))
    body = gzip.compress(csv)
    with_isal = await _read(body, 16_384, "GZIP ")
    _no_isal(monkeypatch)
    assert await _read(body, 16_384, "gzip") == with_isal == csv


@pytest.mark.parametrize("isal", [True, False])
async def test_a_body_that_does_not_inflate_is_a_decoding_error(monkeypatch, isal):
    if not isal:
        _no_isal(monkeypatch)
    body = bytearray(gzip.compress(b"Id,Name\n" * 1000))
    body[30:40] = b"\xff" * 10
    with pytest.raises(httpx.DecodingError, match="does not inflate"):
        await _read(bytes(body), 100, "gzip")


async def test_other_codings_are_left_to_httpx():
    assert await _read(b"Id,Name\n001,A\n", 3, None) == b"Id,Name\n001,A\n"
    import zlib

    assert await _read(zlib.compress(b"Id,Name\n"), 3, "deflate") == b"Id,Name\n"
