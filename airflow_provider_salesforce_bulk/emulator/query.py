"""Bulk API 2.0 query endpoints: create, info, list, abort, delete, results and parallel result pages.

The HTTP side of a query job: the SOQL is compiled at creation so a bad query is refused there, as
real orgs do; the query runs on :mod:`.query_jobs`' worker, and result pages are read back from it
by their locators.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from . import describe
from .ids import JOB_PREFIX, make_id
from .job_requests import (
    abort_refused,
    csv_format,
    delete_answer,
    emulator_of,
    job_info_answer,
    job_list_answer,
    read_json,
    version_of,
)
from .responses import CSV_TYPE, error_response, json_response, not_found
from .runtime import USER_ID, Emulator
from .soql import SoqlError
from .soql_compile import compile_query, object_name
from .timestamps import now_text

Handler = Callable[[Request], Awaitable[Response]]

OPERATIONS = ("query", "queryAll")
#: Records per result page when the client gives no ``maxRecords``, and per parallel result page.
DEFAULT_PAGE_RECORDS = 50_000
#: ``resultUrl`` entries per ``resultPages`` answer, as Salesforce returns.
RESULT_URLS_PER_ANSWER = 5
#: The first API version with ``GET /jobs/query/{id}/resultPages``.
RESULT_PAGES_SINCE = 58.0
_DELETABLE = ("JobComplete", "Aborted", "Failed")
_ABORTABLE = ("UploadComplete", "InProgress")
_LIST_LOCATOR_PREFIX = "01gR0000000opRU"


def job_body(job: dict[str, Any], kind: str) -> dict[str, Any]:
    """A query job as Salesforce renders it for ``kind``: create, info, abort or list."""
    body: dict[str, Any] = {
        "id": job["id"],
        "operation": job["operation"],
        "object": job["object"],
        "createdById": job["created_by_id"],
        "createdDate": job["created_date"],
        "systemModstamp": job["system_modstamp"],
        "state": job["state"],
        "concurrencyMode": "Parallel",
        "contentType": "CSV",
        "apiVersion": job["api_version"],
    }
    if kind == "abort":
        return body  # as Salesforce's guide shows it: no jobType, lineEnding or columnDelimiter
    if kind in ("info", "list"):
        body["jobType"] = "V2Query"
    body["lineEnding"] = job["line_ending"]
    body["columnDelimiter"] = job["column_delimiter"]
    if kind != "info":
        return body
    body["numberRecordsProcessed"] = job["processed"]
    body["retries"] = job["retries"]
    body["totalProcessingTime"] = job["total_processing_time"]
    body["isPkChunkingSupported"] = True
    if job["error_message"]:
        body["errorMessage"] = job["error_message"]
    return body


def encode_locator(offset: int) -> str:
    """A result locator: the record offset base64-encoded without padding (``MTAwMDA`` is 10000)."""
    return base64.b64encode(str(offset).encode()).decode().rstrip("=")


def decode_locator(locator: str) -> int | None:
    """The record offset of a locator, or None when it is not one this org handed out."""
    try:
        text = base64.b64decode(locator + "=" * (-len(locator) % 4), validate=True).decode("ascii")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    return int(text) if text.isdigit() and encode_locator(int(text)) == locator else None


# -- endpoints ------------------------------------------------------------------------------------


async def create_job(request: Request) -> Response:
    """``POST /jobs/query``: checks the SOQL at once (400 with Salesforce's error) and queues the job."""
    emulator = emulator_of(request)
    spec, problem = await read_json(request)
    if problem is not None:
        return problem
    if not isinstance(spec, dict):
        return error_response(400, "JSON_PARSER_ERROR", "Cannot deserialize the job from a non-object value")
    operation = spec.get("operation")
    if operation not in OPERATIONS:
        shown = "" if operation is None else operation
        return error_response(
            400, "API_ERROR", f"Invalid value: '{shown}' supplied for property: 'operation'"
        )
    soql = spec.get("query")
    if not isinstance(soql, str) or not soql.strip():
        return error_response(400, "API_ERROR", "Invalid value: '' supplied for property: 'query'")
    csv = csv_format(spec)
    if isinstance(csv, Response):
        return csv
    delimiter, line_ending = csv
    refused = _daily_limit_reached(emulator)
    if refused is not None:
        return refused
    try:
        compile_query(emulator.schema, soql, include_deleted=operation == "queryAll")
    except SoqlError as exc:
        return error_response(400, exc.code, exc.message)
    now = now_text()
    number = await run_in_threadpool(emulator.store.next_id, JOB_PREFIX)
    job = {
        "id": make_id(JOB_PREFIX, number),
        "operation": operation,
        "object": object_name(emulator.schema, soql),
        "query": soql,
        "line_ending": line_ending,
        "column_delimiter": delimiter,
        "api_version": float(version_of(request)),
        "state": "UploadComplete",
        "created_by_id": USER_ID,
        "created_date": now,
        "system_modstamp": now,
    }
    jobs = emulator.query_jobs
    await run_in_threadpool(jobs.insert_job, job)
    emulator.limits.query_jobs.add(1)
    stored = await run_in_threadpool(jobs.get_job, job["id"])
    assert stored is not None
    jobs.submit(job["id"])
    return json_response(job_body(stored, "create"))


def _daily_limit_reached(emulator: Emulator) -> Response | None:
    """Salesforce's 400 once the day's ``DailyBulkV2QueryJobs`` are used up, else None.

    A refused attempt is counted, so the count in the message goes past the maximum, as in the real
    answer "... has been reached (10021)"; a created job is counted by :func:`create_job`.
    """
    limit = emulator.settings.daily_bulk_query_jobs_max
    counter = emulator.limits.query_jobs
    if counter.used() < limit:
        return None
    counter.add(1)
    used = counter.used()
    return error_response(
        400, "LIMIT_EXCEEDED", f"Max bulk v2 query jobs ({limit}) per 24 hrs has been reached ({used})"
    )


async def get_job(request: Request) -> Response:
    """``GET /jobs/query/{id}``."""
    return await job_info_answer(request, emulator_of(request).query_jobs.get_job, job_body)


async def list_jobs(request: Request) -> Response:
    """``GET /jobs/query``: one page of query jobs; ``nextRecordsUrl`` leads to the next."""
    return await job_list_answer(
        request,
        list_jobs=emulator_of(request).query_jobs.list_jobs,
        locator_prefix=_LIST_LOCATOR_PREFIX,
        job_type="V2Query",
        render=job_body,
        next_url=f"/services/data/v{version_of(request)}/jobs/query?queryLocator={_LIST_LOCATOR_PREFIX}-",
    )


async def patch_job(request: Request) -> Response:
    """``PATCH /jobs/query/{id}`` with ``{"state": "Aborted"}``."""
    emulator = emulator_of(request)
    spec, problem = await read_json(request)
    if problem is not None:
        return problem
    target = spec.get("state") if isinstance(spec, dict) else None
    job_id = request.path_params["job_id"]
    current = await run_in_threadpool(emulator.query_jobs.get_job, job_id)
    if current is None:
        return not_found()
    if target != "Aborted":
        return error_response(400, "INVALIDJOBSTATE", f"Invalid state transition requested: {target}")
    job, applied = await run_in_threadpool(
        emulator.query_jobs.transition,
        job_id,
        _ABORTABLE,
        {"state": "Aborted", "system_modstamp": now_text()},
    )
    if job is None:
        return not_found()
    if not applied:
        return abort_refused(job["state"])
    return json_response(job_body(job, "abort"))


async def delete_job(request: Request) -> Response:
    """``DELETE /jobs/query/{id}``: 204 once the job is finished."""
    return await delete_answer(request, emulator_of(request).query_jobs.delete_if, _DELETABLE)


async def _finished_job(request: Request) -> dict[str, Any] | Response:
    job = await run_in_threadpool(emulator_of(request).query_jobs.get_job, request.path_params["job_id"])
    if job is None:
        return not_found()
    if float(version_of(request)) != job["api_version"]:
        return error_response(
            409,
            "API_ERROR",
            f"Use the same API version to get query results that you used to create the query: "
            f"v{job['api_version']:.1f}",
        )
    if job["state"] != "JobComplete":
        return error_response(
            400,
            "INVALIDJOBSTATE",
            f"Results are available only for a job in state JobComplete, not {job['state']}",
        )
    return job


def _start(request: Request, job: dict[str, Any]) -> int | Response:
    """The record offset the request's ``locator`` names: 0 without one, a 400 for one not handed out.

    The string ``null`` too is refused: a client echoing the last page's header must not loop.
    """
    locator = request.query_params.get("locator") or ""
    if not locator:
        return 0
    offset = decode_locator(locator)
    if offset is None or offset > job["processed"]:
        return error_response(400, "INVALIDLOCATOR", f"Invalid locator: {locator}")
    return offset


def _page_size(request: Request) -> int | Response:
    text = request.query_params.get("maxRecords")
    if text is None or text == "":
        return DEFAULT_PAGE_RECORDS
    if not text.isdigit() or int(text) < 1:
        return error_response(400, "INVALIDPARAMETER", f"Invalid value for maxRecords: {text}")
    return int(text)


async def results(request: Request) -> Response:
    """``GET /jobs/query/{id}/results``: one page of CSV from ``locator``, at most ``maxRecords`` records.

    ``Sforce-Locator`` names the next page, or is the string ``null`` on the last one;
    ``Sforce-NumberOfRecords`` counts this page's records. Every page starts with the header.
    """
    found = await _finished_job(request)
    if isinstance(found, Response):
        return found
    job = found
    size = _page_size(request)
    if isinstance(size, Response):
        return size
    start = _start(request, job)
    if isinstance(start, Response):
        return start
    total = int(job["processed"])
    count = min(size, total - start)
    following = start + count
    headers = {
        "Sforce-Locator": encode_locator(following) if following < total else "null",
        "Sforce-NumberOfRecords": str(count),
    }
    pages = emulator_of(request).query_jobs.iter_page(job, start, count)
    return StreamingResponse(pages, media_type=CSV_TYPE, headers=headers)


async def result_pages(request: Request) -> Response:
    """``GET /jobs/query/{id}/resultPages`` (API 58.0+): up to five result URLs to fetch in parallel."""
    if float(version_of(request)) < RESULT_PAGES_SINCE:
        return not_found()
    found = await _finished_job(request)
    if isinstance(found, Response):
        return found
    job = found
    start = _start(request, job)
    if isinstance(start, Response):
        return start
    total = int(job["processed"])
    base = f"/services/data/v{version_of(request)}/jobs/query/{job['id']}"
    pages: list[dict[str, str]] = []
    offset = start
    while len(pages) < RESULT_URLS_PER_ANSWER and (offset < total or (offset == 0 and not pages)):
        pages.append({"resultUrl": f"{base}/results?locator={encode_locator(offset)}"})
        offset += DEFAULT_PAGE_RECORDS
    done = offset >= total
    return json_response(
        {
            "resultPages": pages,
            "nextRecordsUrl": None if done else f"{base}/resultPages?locator={encode_locator(offset)}",
            "done": done,
        }
    )


def routes(data: str, guard: Callable[[Handler], Handler]) -> list[Route]:
    """The query and describe routes under ``data`` (``/services/data/v{version}``), each also with a
    trailing slash as Salesforce serves them."""
    jobs = data + "/jobs/query"
    table: list[tuple[str, Handler, str]] = [
        (jobs, create_job, "POST"),
        (jobs, list_jobs, "GET"),
        (jobs + "/{job_id}", get_job, "GET"),
        (jobs + "/{job_id}", patch_job, "PATCH"),
        (jobs + "/{job_id}", delete_job, "DELETE"),
        (jobs + "/{job_id}/results", results, "GET"),
        (jobs + "/{job_id}/resultPages", result_pages, "GET"),
        (data + "/sobjects", describe.list_sobjects, "GET"),
        (data + "/sobjects/{object}/describe", describe.describe_sobject, "GET"),
    ]
    out = []
    for path, handler, method in table:
        guarded = guard(handler)
        out.append(Route(path, guarded, methods=[method]))
        out.append(Route(path + "/", guarded, methods=[method]))
    return out
