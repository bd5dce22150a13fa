"""Deliberate misbehaviour: error answers, dropped connections, lost close answers, latency, lock
failures, failing jobs.

Each kind of fault draws from its own seeded generator so that, for a given seed, a test sees the
same sequence of request faults however many records the worker processes in between.
"""

from __future__ import annotations

import asyncio
import gzip
import logging
import random
import re
import threading
import time
from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .settings import EmulatorSettings

#: Paths under this prefix are the emulator's own controls and never see faults.
ADMIN_PREFIX = "/__emulator__"
#: Where :func:`expose_connection` puts the connection's transport, under the scope's extensions.
TRANSPORT_EXTENSION = "salesforce_emulator.transport"

# Parents remembered for lock contention before the expired ones are swept.
_MAX_HELD_PARENTS = 100_000

_JOB_PATH = re.compile(r"/services/data/v[^/]+/jobs/ingest/[^/]+/?")

_ERROR_BODIES = {
    503: [
        {"errorCode": "SERVER_UNAVAILABLE", "message": "Server is temporarily unavailable, try again later."}
    ],
    500: [
        {
            "errorCode": "UNKNOWN_EXCEPTION",
            "message": "An unexpected error occurred. Please include this ErrorId if you contact support: "
            "1928374650-12345 (-1234567890)",
        }
    ],
}


class FaultInjector:
    """Decides, from the live settings, which requests, records and jobs misbehave."""

    def __init__(self, settings: EmulatorSettings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self.reseed(settings.seed)

    def reseed(self, seed: int | None) -> None:
        """Restart every fault sequence from ``seed`` (None: unpredictable)."""
        with self._lock:
            self._requests = random.Random(seed)
            self._drops = random.Random(None if seed is None else seed + 1)
            self._records = random.Random(None if seed is None else seed + 2)
            self._jobs = random.Random(None if seed is None else seed + 3)
            self._closes = random.Random(None if seed is None else seed + 4)
            self._parents: dict[str, tuple[str, float]] = {}

    def request_error(self) -> int | None:
        """Return 503 or 500 if this request must fail before it is handled, else None."""
        s = self.settings
        if not (s.error_503_rate or s.error_500_rate):
            return None
        with self._lock:
            draw = self._requests.random()
        if draw < s.error_503_rate:
            return 503
        if draw < s.error_503_rate + s.error_500_rate:
            return 500
        return None

    def drop_connection(self) -> bool:
        """True if this request's connection must be cut before its answer is complete."""
        if not self.settings.drop_rate:
            return False
        with self._lock:
            return self._drops.random() < self.settings.drop_rate

    def close_answer_lost(self) -> bool:
        """True if the answer to this applied job close must be lost."""
        if not self.settings.lost_close_rate:
            return False
        with self._lock:
            return self._closes.random() < self.settings.lost_close_rate

    def record_locked(self) -> bool:
        """True if this record must fail with UNABLE_TO_LOCK_ROW."""
        if not self.settings.lock_failure_rate:
            return False
        with self._lock:
            return self._records.random() < self.settings.lock_failure_rate

    def parent_locked(self, job_id: str, parents: list[str]) -> bool:
        """True if one of ``parents`` was referenced by another job within the contention window;
        otherwise the parents are now this job's (see ``lock_contention_seconds``)."""
        window = self.settings.lock_contention_seconds
        if window is None or not parents:
            return False
        now = time.monotonic()
        with self._lock:
            held = self._parents
            for parent in parents:
                owner = held.get(parent)
                if owner is not None and owner[0] != job_id and now - owner[1] < window:
                    return True
            for parent in parents:
                held[parent] = (job_id, now)
            if len(held) > _MAX_HELD_PARENTS:
                # Keep the map bounded: forget the parents whose window is over.
                for parent in [p for p, (_, at) in held.items() if now - at >= window]:
                    del held[parent]
        return False

    def forget_parents(self) -> None:
        """Release every parent lock (the jobs holding them are gone)."""
        with self._lock:
            self._parents.clear()

    def job_fails(self) -> bool:
        """True if this job must end Failed."""
        if not self.settings.job_failure_rate:
            return False
        with self._lock:
            return self._jobs.random() < self.settings.job_failure_rate


class _IncompleteResponseFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        # A deliberately dropped answer is not an error of the emulator.
        return "without completing response" not in record.getMessage()


logging.getLogger("uvicorn.error").addFilter(_IncompleteResponseFilter())


def expose_connection(app: ASGIApp) -> ASGIApp:
    """Wrap the whole application so the faults can close a connection before any answer.

    ASGI has no way to drop a connection without answering (returning early makes the server answer
    500), so the transport is taken from the server's ``send`` (a bound method of uvicorn's request
    cycle) while it is still the server's own, before any middleware wraps it.
    """

    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        transport = getattr(getattr(send, "__self__", None), "transport", None)
        if scope["type"] == "http" and transport is not None:
            scope.setdefault("extensions", {})[TRANSPORT_EXTENSION] = transport
        await app(scope, receive, send)

    return wrapped


def _closed_job(start: Message, body: bytes) -> bool:
    """True if this captured answer is a successful close (the job's state is now UploadComplete)."""
    if start["status"] != 200:
        return False
    headers = {bytes(k).lower(): bytes(v) for k, v in start.get("headers", [])}
    try:
        if headers.get(b"content-encoding") == b"gzip":
            body = gzip.decompress(body)
        answer: Any = orjson.loads(body)
    except (OSError, EOFError, orjson.JSONDecodeError):
        return False
    return isinstance(answer, dict) and answer.get("state") == "UploadComplete"


class FaultMiddleware:
    """ASGI middleware applying request faults to everything but the admin endpoints."""

    def __init__(self, app: ASGIApp, faults: FaultInjector) -> None:
        self.app = app
        self.faults = faults

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(ADMIN_PREFIX):
            await self.app(scope, receive, send)
            return
        latency = self.faults.settings.latency_seconds
        if latency > 0:
            await asyncio.sleep(latency)
        status = self.faults.request_error()
        if status is not None:
            body = orjson.dumps(_ERROR_BODIES[status])
            await send(
                {
                    "type": "http.response.start",
                    "status": status,
                    "headers": [
                        (b"content-type", b"application/json;charset=UTF-8"),
                        (b"content-length", str(len(body)).encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        if self.faults.drop_connection():
            await self._answer_then_drop(scope, receive, send)
            return
        if (
            self.faults.settings.lost_close_rate
            and scope["method"] == "PATCH"
            and _JOB_PATH.fullmatch(scope["path"])
        ):
            await self._close_maybe_lost(scope, receive, send)
            return
        await self.app(scope, receive, send)

    async def _capture(self, scope: Scope, receive: Receive) -> tuple[Message | None, bytes]:
        start: Message | None = None
        body = bytearray()

        async def capture(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                start = message
            elif message["type"] == "http.response.body":
                body.extend(message.get("body", b""))

        await self.app(scope, receive, capture)
        return start, bytes(body)

    async def _close_maybe_lost(self, scope: Scope, receive: Receive, send: Send) -> None:
        # The close is applied (the job is UploadComplete and queued) and then its answer is lost:
        # the client cannot know whether Salesforce got it, the case a close's retry must survive.
        start, body = await self._capture(scope, receive)
        if start is None:
            return
        if not (_closed_job(start, body) and self.faults.close_answer_lost()):
            await send(start)
            await send({"type": "http.response.body", "body": body})
            return
        transport = scope.get("extensions", {}).get(TRANSPORT_EXTENSION)
        if transport is None:  # not served by uvicorn: cut the answer short instead
            await self._send_cut(start, body, send)
            return
        transport.close()
        # Let the server see the connection gone, so it does not try to answer in our place.
        await asyncio.sleep(0)
        await asyncio.sleep(0)

    async def _answer_then_drop(self, scope: Scope, receive: Receive, send: Send) -> None:
        # The request is fully handled (its effects happen) and only the answer is lost, which is
        # the case a client cannot tell apart from a failure: the one worth testing.
        start, body = await self._capture(scope, receive)
        if start is None:
            return
        await self._send_cut(start, body, send)

    async def _send_cut(self, start: Message, body: bytes, send: Send) -> None:
        status = start["status"]
        if status in (204, 304) or status < 200:
            status = 200  # a bodiless status cannot be cut short
        headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
        headers.append((b"content-length", str(len(body) + 1).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": bytes(body[: len(body) // 2]), "more_body": True})
        # Returning without finishing the body makes uvicorn close the connection.
