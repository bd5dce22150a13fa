"""A result page's body as it arrives, gzip inflated here rather than by httpx: with ``isal``
(python-isal, the ``arrow`` extra) when it is installed, zlib otherwise; the same bytes either way.

Inflating is the largest cost of reading a page after parsing it (a 500,000-record extract: about
0.1 s of CPU with zlib); ISA-L's inflate takes about half of that. Any other content coding is left
to httpx.
"""

from __future__ import annotations

import importlib
import zlib
from collections.abc import AsyncIterator
from typing import Any, Protocol

import httpx

__all__ = ["body_chunks", "gzip_inflater"]

_GZIP = zlib.MAX_WBITS | 16


class _Inflater(Protocol):
    def decompress(self, data: bytes, /) -> bytes: ...

    def flush(self) -> bytes: ...


def gzip_inflater() -> tuple[_Inflater, tuple[type[Exception], ...]]:
    """A gzip decompressor, ISA-L's when ``isal`` imports, and the errors it raises on bad input."""
    try:
        isal_zlib: Any = importlib.import_module("isal.isal_zlib")
    except ImportError:
        return zlib.decompressobj(_GZIP), (zlib.error,)
    return isal_zlib.decompressobj(wbits=_GZIP), (isal_zlib.error, zlib.error)


async def body_chunks(response: httpx.Response) -> AsyncIterator[bytes]:
    """The body of a streamed ``response``, decoded: a gzip body inflated by :func:`gzip_inflater`,
    any other by httpx. A body that does not inflate raises :class:`httpx.DecodingError`, as httpx
    does."""
    if response.headers.get("Content-Encoding", "").strip().lower() != "gzip":
        async for chunk in response.aiter_bytes():
            yield chunk
        return
    inflater, errors = gzip_inflater()
    try:
        async for raw in response.aiter_raw():
            data = inflater.decompress(raw)
            if data:
                yield data
        data = inflater.flush()
    except errors as exc:
        raise httpx.DecodingError(f"the gzip body does not inflate: {exc}", request=response.request) from exc
    if data:
        yield data
