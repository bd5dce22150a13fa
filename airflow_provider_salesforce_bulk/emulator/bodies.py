"""Request bodies: size limits (gzip bombs included) and the CSV media type of uploads.

Every request body except an upload is read here, bounded on the wire and after decompression, and
handed on decompressed; an upload streams through to its handler, which bounds the decompressed
CSV itself, while the bytes on the wire are bounded here.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Awaitable, Callable

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .responses import bad_encoding, error_response, upload_too_large
from .settings import EmulatorSettings

Handler = Callable[[Request], Awaitable[Response]]

_UPLOAD_PATH = re.compile(r"/services/data/v[^/]+/jobs/ingest/[^/]+/batches/?")
_WBITS = {"gzip": 47, "deflate": 15}  # 47: gzip or zlib header; 15: zlib (HTTP's "deflate")
_PIECE = 64 * 1024


class BodyTooLarge(Exception):
    """The body went over its limit."""


def too_large(limit: int) -> Response:
    """413 with Salesforce's error array."""
    return error_response(
        413, "REQUEST_TOO_LARGE", f"The request body exceeds the limit of {limit} bytes for this resource"
    )


def _declared_length(scope: Scope) -> int | None:
    for key, value in scope["headers"]:
        if key == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _encoding(scope: Scope) -> str:
    for key, value in scope["headers"]:
        if key == b"content-encoding":
            return bytes(value).decode("latin-1").strip().lower()
    return ""


class _Inflater:
    """Decompresses piece by piece, never producing more than ``limit`` bytes in all."""

    def __init__(self, encoding: str, limit: int) -> None:
        self._inflater = zlib.decompressobj(_WBITS[encoding])
        self._limit = limit
        self.size = 0

    def feed(self, data: bytes) -> bytes:
        if self._inflater.eof:
            if data:
                raise zlib.error("data after the end of the compressed stream")
            return b""
        out = self._inflater.decompress(data, self._limit + 1 - self.size)
        self.size += len(out)
        if self.size > self._limit or self._inflater.unconsumed_tail:
            raise BodyTooLarge
        if self._inflater.unused_data:
            raise zlib.error("data after the end of the compressed stream")
        return out

    def finish(self) -> bytes:
        if not self._inflater.eof:
            raise zlib.error("truncated compressed stream")
        return b""


class BodyLimitMiddleware:
    """Bounds every request body by the live settings.

    An upload (``PUT .../batches``) streams to its handler with its wire bytes counted; any other
    body is read here, at most ``request_limit_bytes`` on the wire and after inflating
    ``Content-Encoding: gzip|deflate``, and passed on decompressed without that header.
    """

    def __init__(self, app: ASGIApp, settings: EmulatorSettings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["method"] == "PUT" and _UPLOAD_PATH.fullmatch(scope["path"]):
            await self._stream(scope, receive, send)
        else:
            await self._buffer(scope, receive, send)

    async def _stream(self, scope: Scope, receive: Receive, send: Send) -> None:
        limit = self.settings.upload_limit_bytes
        declared = _declared_length(scope)
        if declared is not None and declared > limit:
            await upload_too_large(limit)(scope, receive, send)
            return
        seen = 0
        over = False

        async def counted() -> Message:
            nonlocal seen, over
            if over:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    # The handler sees the client go away, drops what it stored, and we answer.
                    over = True
                    return {"type": "http.disconnect"}
            return message

        started = False

        async def watched(message: Message) -> None:
            nonlocal started
            if over and not started:
                return  # the handler's answer to the "disconnect" is replaced by ours
            started = True
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except ClientDisconnect:
            if not over:
                raise
        if over and not started:
            await upload_too_large(limit)(scope, receive, send)

    async def _buffer(self, scope: Scope, receive: Receive, send: Send) -> None:
        limit = self.settings.request_limit_bytes
        declared = _declared_length(scope)
        if declared is not None and declared > limit:
            await too_large(limit)(scope, receive, send)
            return
        encoding = _encoding(scope)
        inflater = _Inflater(encoding, limit) if encoding in _WBITS else None
        body = bytearray()
        seen = 0
        try:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                data = message.get("body", b"")
                seen += len(data)
                if seen > limit:
                    raise BodyTooLarge
                for start in range(0, len(data), _PIECE):
                    piece = data[start : start + _PIECE]
                    body.extend(inflater.feed(piece) if inflater is not None else piece)
                if not message.get("more_body", False):
                    break
            if inflater is not None:
                body.extend(inflater.finish())
        except BodyTooLarge:
            await too_large(limit)(scope, receive, send)
            return
        except zlib.error:
            await bad_encoding(encoding)(scope, receive, send)
            return
        if inflater is not None:
            headers = [
                (k, v) for k, v in scope["headers"] if k not in (b"content-encoding", b"content-length")
            ]
            headers.append((b"content-length", str(len(body)).encode()))
            scope = {**scope, "headers": headers}
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        await self.app(scope, replay, send)


def require_csv(handler: Handler) -> Handler:
    """Refuse an upload whose ``Content-Type`` is not ``text/csv``, as Salesforce's REST layer does."""

    async def checked(request: Request) -> Response:
        given = request.headers.get("content-type", "")
        if given.split(";", 1)[0].strip().lower() != "text/csv":
            return error_response(
                415, "UNSUPPORTED_MEDIA_TYPE", f"MediaType of '{given}' is not supported by this resource"
            )
        return await handler(request)

    return checked
