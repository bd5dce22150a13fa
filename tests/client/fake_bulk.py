"""A small in-memory Bulk API 2.0 for httpx.MockTransport: unit tests of the client without a socket.

It speaks only what the client's unit tests need; the full, independent emulator lives in
``airflow_provider_salesforce_bulk.emulator``. Records whose ``Name`` starts with ``FAIL`` fail.
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import io
import itertools
import json
from collections.abc import Callable

import httpx

INSTANCE = "https://fake.my.salesforce.com"
DELIMS = {"COMMA": ",", "TAB": "\t", "PIPE": "|", "SEMICOLON": ";", "CARET": "^", "BACKQUOTE": "`"}


@dataclasses.dataclass
class FakeJob:
    id: str
    body: dict[str, object]
    state: str = "Open"
    data: bytes | None = None
    puts: int = 0
    polls: int = 0
    success: list[list[str]] = dataclasses.field(default_factory=list)
    failed: list[list[str]] = dataclasses.field(default_factory=list)
    header: list[str] = dataclasses.field(default_factory=list)


class FakeBulkApi:
    """State plus a request handler; hooks let tests inject failures per request."""

    def __init__(self, *, polls_until_done: int = 1, fail_job_with: str | None = None) -> None:
        self.jobs: dict[str, FakeJob] = {}
        self.requests: list[httpx.Request] = []
        self.token_requests = 0
        self.polls_until_done = polls_until_done
        self.fail_job_with = fail_job_with
        self._ids = itertools.count(1)
        # (method, path suffix) -> callable returning a Response to answer instead, or None to go on.
        self.intercept: Callable[[httpx.Request], httpx.Response | None] | None = None
        self.max_open_jobs_seen = 0

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.intercept is not None:
            answer = self.intercept(request)
            if answer is not None:
                return answer
        return self.handle_without_intercept(request)

    def handle_without_intercept(self, request: httpx.Request) -> httpx.Response:
        """Act on the request as the API would (an intercept uses it to act, then lose the answer)."""
        path = request.url.path
        if path == "/services/oauth2/token":
            self.token_requests += 1
            return httpx.Response(
                200,
                json={
                    "access_token": f"tok{self.token_requests}",
                    "instance_url": INSTANCE,
                    "token_type": "Bearer",
                },
            )
        parts = path.split("/jobs/ingest", 1)
        if len(parts) != 2:
            return _error(404, "NOT_FOUND", "The requested resource does not exist")
        rest = parts[1].strip("/").split("/") if parts[1].strip("/") else []
        if not rest:
            if request.method == "POST":
                return self._create(request)
            return self._list(request)
        job = self.jobs.get(rest[0])
        if job is None:
            return _error(404, "NOT_FOUND", "The requested resource does not exist")
        if len(rest) == 1:
            if request.method == "GET":
                return self._info(job)
            if request.method == "PATCH":
                return self._patch(job, json.loads(request.content)["state"])
            if request.method == "DELETE":
                del self.jobs[job.id]
                return httpx.Response(204)
        if rest[1] == "batches" and request.method == "PUT":
            return self._put(job, request)
        return self._results(job, rest[1])

    def _create(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        job_id = f"750{next(self._ids):015d}"
        body = {
            "id": job_id,
            "state": "Open",
            "concurrencyMode": "Parallel",
            "apiVersion": 64.0,
            "createdDate": "2024-09-09T19:25:27.000+0000",
            **body,
        }
        self.jobs[job_id] = FakeJob(id=job_id, body=body)
        open_jobs = sum(1 for j in self.jobs.values() if j.state not in ("JobComplete", "Failed", "Aborted"))
        self.max_open_jobs_seen = max(self.max_open_jobs_seen, open_jobs)
        return httpx.Response(200, json=body)

    def _list(self, request: httpx.Request) -> httpx.Response:
        ids = sorted(self.jobs)
        start = int(request.url.params.get("queryLocator", "0"))
        page = ids[start : start + 2]
        nxt = start + 2
        done = nxt >= len(ids)
        return httpx.Response(
            200,
            json={
                "done": done,
                "records": [self.jobs[i].body | {"state": self.jobs[i].state} for i in page],
                "nextRecordsUrl": None if done else f"/services/data/v64.0/jobs/ingest?queryLocator={nxt}",
            },
        )

    def _info(self, job: FakeJob) -> httpx.Response:
        if job.state in ("UploadComplete", "InProgress"):
            job.polls += 1
            if job.polls >= self.polls_until_done:
                self._process(job)
            else:
                job.state = "InProgress"
        processed = len(job.success) + len(job.failed)
        return httpx.Response(
            200,
            json=job.body
            | {
                "state": job.state,
                "numberRecordsProcessed": processed,
                "numberRecordsFailed": len(job.failed),
                "errorMessage": self.fail_job_with if job.state == "Failed" else None,
                "jobType": "V2Ingest",
                "retries": 0,
                "totalProcessingTime": 10,
                "someNewField": "kept",
            },
        )

    def _patch(self, job: FakeJob, state: str) -> httpx.Response:
        allowed = {"UploadComplete": {"Open"}, "Aborted": {"Open", "UploadComplete", "InProgress"}}
        if job.state not in allowed.get(state, set()):
            return _error(400, "INVALIDJOBSTATE", f"Cannot change {job.state} to {state}")
        job.state = state
        return httpx.Response(200, json=job.body | {"state": state})

    def _put(self, job: FakeJob, request: httpx.Request) -> httpx.Response:
        job.puts += 1
        if job.puts > 1:
            return _error(400, "INVALIDJOB", f"Found multipe contents for job: {job.id}")
        content = request.content
        if request.headers.get("Content-Encoding") == "gzip":
            content = gzip.decompress(content)
        job.data = content
        return httpx.Response(201)

    def _process(self, job: FakeJob) -> None:
        if self.fail_job_with:
            job.state = "Failed"
            return
        delim = DELIMS[str(job.body.get("columnDelimiter", "COMMA"))]
        rows = list(csv.reader(io.StringIO((job.data or b"").decode(), newline=""), delimiter=delim))
        job.header, records = rows[0], rows[1:]
        name_at = job.header.index("Name") if "Name" in job.header else None
        for n, row in enumerate(records):
            if name_at is not None and row[name_at].startswith("FAIL"):
                job.failed.append(
                    ["", "REQUIRED_FIELD_MISSING:Required fields are missing: [Name]:Name --", *row]
                )
            else:
                job.success.append([f"001{n:015d}", "true", *row])
        job.state = "JobComplete"

    def _results(self, job: FakeJob, kind: str) -> httpx.Response:
        out = io.StringIO()
        writer = csv.writer(out, quoting=csv.QUOTE_ALL, lineterminator="\n")
        if kind == "successfulResults":
            writer.writerow(["sf__Id", "sf__Created", *job.header])
            writer.writerows(job.success)
        elif kind == "failedResults":
            writer.writerow(["sf__Id", "sf__Error", *job.header])
            writer.writerows(job.failed)
        elif kind == "unprocessedrecords":
            rows = list(csv.reader(io.StringIO((job.data or b"").decode(), newline="")))
            if job.state in ("Failed", "Aborted"):
                writer.writerows(rows)
            elif rows:
                writer.writerow(rows[0])
        else:
            return _error(404, "NOT_FOUND", "The requested resource does not exist")
        return httpx.Response(200, content=out.getvalue().encode(), headers={"Content-Type": "text/csv"})


def _error(status: int, code: str, message: str) -> httpx.Response:
    return httpx.Response(status, json=[{"errorCode": code, "message": message}])


def job_id_of(request: httpx.Request) -> str | None:
    """The job id in a ``jobs/ingest/{id}[/...]`` request, or None."""
    parts = request.url.path.split("/jobs/ingest/", 1)
    return parts[1].split("/")[0] if len(parts) == 2 and parts[1] else None


def is_close(request: httpx.Request) -> bool:
    return request.method == "PATCH" and b"UploadComplete" in request.content


def is_abort(request: httpx.Request) -> bool:
    return request.method == "PATCH" and b"Aborted" in request.content


LOSE_ANSWER = "lose answer"


class FaultyTransport(httpx.AsyncBaseTransport):
    """Sends every request to a real server (the emulator over a socket) unless ``rule`` says otherwise.

    ``rule(request)`` returns None (forward), a Response (answer it instead, nothing forwarded) or
    :data:`LOSE_ANSWER` (forward it, so the server acts on it, then drop the answer as a network
    would). Every request is kept in :attr:`requests`.
    """

    def __init__(self, rule: Callable[[httpx.Request], httpx.Response | str | None]) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.rule = rule
        self.requests: list[httpx.Request] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        action = self.rule(request)
        if isinstance(action, httpx.Response):
            return action
        response = await self.inner.handle_async_request(request)
        if action == LOSE_ANSWER:
            await response.aread()
            await response.aclose()
            raise httpx.ReadError("connection reset before the answer arrived", request=request)
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()
