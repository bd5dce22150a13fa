"""An in-memory Bulk API 2.0 query endpoint for httpx.MockTransport: pages by locator and by
/resultPages, bodies that can break mid-way, a describe answer, and request bookkeeping."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx

INSTANCE = "https://acme.my.salesforce.com"
JOB_ID = "750R0000000zxr8IAA"


def row(i: int) -> bytes:
    name = f'Name "{i}",\nline two' if i % 5 == 0 else f"Name {i}"
    return ('"' + f"001{i:015d}" + '","' + name.replace('"', '""') + '"\n').encode()


class _Body(httpx.AsyncByteStream):
    """A body sent in small pieces that can break after ``cut`` bytes, like a dropped connection."""

    def __init__(self, data: bytes, cut: int | None, pause: float = 0.0) -> None:
        self.data = data
        self.cut = cut
        self.pause = pause

    async def __aiter__(self) -> AsyncIterator[bytes]:
        end = len(self.data) if self.cut is None else self.cut
        for start in range(0, end, 7):
            if self.pause and start >= 14:  # after the header row: a slow body, not a slow head
                await asyncio.sleep(self.pause)
            yield self.data[start : min(start + 7, end)]
        if self.cut is not None:
            raise httpx.RemoteProtocolError("peer closed connection without sending complete message body")


class FakeQueryApi:
    """Query jobs over ``records`` rows; pages of ``page_size`` unless ``maxRecords`` says otherwise."""

    def __init__(self, records: int = 23, *, page_size: int = 5, api_version: str = "60.0") -> None:
        self.records = records
        self.page_size = page_size
        self.version = api_version
        self.state = "JobComplete"
        self.processed = records
        self.error_message: str | None = None
        self.requests: list[httpx.Request] = []
        self.drops: dict[int, list[int]] = {}  # offset -> cut points, one per attempt
        self.changed_on_refetch: set[int] = set()
        self.result_pages = True
        self.in_flight = 0
        self.max_in_flight = 0
        self.delays: dict[int, float] = {}
        self.fetches: dict[int, int] = {}
        self.slow_bodies: dict[int, float] = {}  # offset -> pause between pieces of its body
        self.describe_fields: list[dict[str, Any]] = [
            {"name": "Id", "type": "id", "nillable": False},
            {"name": "Name", "type": "string", "nillable": False},
        ]

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def header(self) -> bytes:
        return b'"Id","Name"\n'

    def page(self, offset: int, count: int) -> bytes:
        body = self.header() + b"".join(row(i) for i in range(offset, offset + count))
        if offset in self.changed_on_refetch and self.fetches.get(offset, 0) > 1:
            body = body.replace(b"Name", b"Nome", 1)
        return body

    def job(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": JOB_ID,
            "operation": "query",
            "object": "Account",
            "state": self.state,
            "apiVersion": float(self.version),
            "jobType": "V2Query",
            "columnDelimiter": "COMMA",
            "lineEnding": "LF",
            "numberRecordsProcessed": self.processed,
        }
        if self.error_message:
            body["errorMessage"] = self.error_message
        return body

    async def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        path = request.url.path
        base = f"/services/data/v{self.version}/jobs/query"
        if path == base and request.method == "POST":
            spec = json.loads(request.content)
            if "Nme" in spec["query"]:
                return error_response(
                    400,
                    "INVALID_FIELD",
                    "\nSELECT Id, Nme FROM Account\n           ^\nERROR at Row:1:Column:12\n"
                    "No such column 'Nme' on entity 'Account'.",
                )
            if "GROUP BY ROLLUP" in spec["query"]:
                return error_response(400, "API_ERROR", "Aggregate Relationships not supported in Bulk Query")
            return httpx.Response(200, json={**self.job(), "state": "UploadComplete"})
        if path == base and request.method == "GET":
            locator = request.url.params.get("queryLocator")
            if locator is None:
                return httpx.Response(
                    200,
                    json={
                        "done": False,
                        "records": [{**self.job(), "id": "750R0000000zxr1IAA"}],
                        "nextRecordsUrl": f"{base}?queryLocator=01gR0000000opRTIAY-1",
                    },
                )
            return httpx.Response(200, json={"done": True, "records": [self.job()], "nextRecordsUrl": None})
        if path == f"{base}/{JOB_ID}" and request.method == "GET":
            return httpx.Response(200, json=self.job())
        if path == f"{base}/{JOB_ID}" and request.method == "PATCH":
            if self.state in ("JobComplete", "Failed", "Aborted"):
                return error_response(400, "INVALIDJOBSTATE", "Aborting already Completed Job not allowed")
            self.state = "Aborted"
            return httpx.Response(200, json=self.job())
        if path == f"{base}/{JOB_ID}" and request.method == "DELETE":
            return httpx.Response(204)
        if path == f"{base}/{JOB_ID}/results":
            return await self._results(request)
        if path == f"/services/data/v{self.version}/sobjects/Account/describe":
            return httpx.Response(
                200,
                json={"name": "Account", "fields": self.describe_fields},
            )
        if path == f"{base}/{JOB_ID}/resultPages":
            if not self.result_pages:
                return error_response(404, "NOT_FOUND", "The requested resource does not exist")
            return self._result_pages(request)
        return error_response(404, "NOT_FOUND", "The requested resource does not exist")

    async def _results(self, request: httpx.Request) -> httpx.Response:
        if self.state != "JobComplete":
            return error_response(400, "INVALIDJOBSTATE", "not complete")
        locator = request.url.params.get("locator")
        offset = int(base64.b64decode(locator)) if locator else 0
        size = int(request.url.params.get("maxRecords", self.page_size))
        count = min(size, self.records - offset)
        following = offset + count
        self.fetches[offset] = self.fetches.get(offset, 0) + 1
        cuts = self.drops.get(offset) or []
        cut = cuts.pop(0) if cuts else None
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.delays.get(offset, 0.0))
        finally:
            self.in_flight -= 1
        return httpx.Response(
            200,
            headers={
                "Content-Type": "text/csv",
                "Sforce-NumberOfRecords": str(count),
                "Sforce-Locator": encode_locator(following) if following < self.records else "null",
            },
            stream=_Body(self.page(offset, count), cut, self.slow_bodies.get(offset, 0.0)),
        )

    def _result_pages(self, request: httpx.Request) -> httpx.Response:
        locator = request.url.params.get("locator")
        offset = int(base64.b64decode(locator)) if locator else 0
        base = f"/services/data/v{self.version}/jobs/query/{JOB_ID}"
        pages = []
        while len(pages) < 3 and offset < self.records:
            pages.append({"resultUrl": f"{base}/results?locator={encode_locator(offset)}"})
            offset += self.page_size
        done = offset >= self.records
        return httpx.Response(
            200,
            json={
                "resultPages": pages,
                "nextRecordsUrl": None if done else f"{base}/resultPages?locator={encode_locator(offset)}",
                "done": done,
            },
        )

    def expected(self) -> list[bytes]:
        """Every record row, in order."""
        return [row(i) for i in range(self.records)]


def encode_locator(offset: int) -> str:
    return base64.b64encode(str(offset).encode()).decode()


def error_response(status: int, code: str, message: str) -> httpx.Response:
    return httpx.Response(status, json=[{"errorCode": code, "message": message}])
