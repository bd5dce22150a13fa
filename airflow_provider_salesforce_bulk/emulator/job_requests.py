"""What the ingest and the query job endpoints read and answer alike: JSON bodies, CSV format, lists, deletes.

Both job kinds take the same JSON request bodies, the same ``contentType`` / ``columnDelimiter`` /
``lineEnding`` settings, list their jobs a page at a time and refuse to delete a running job with the
same words; keeping that here keeps the two endpoints answering as one Salesforce would.
"""

from __future__ import annotations

import json
import re
import zlib
from collections.abc import Callable
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from .responses import bad_encoding, error_response, json_response, not_found
from .runtime import Emulator
from .upload_csv import DELIMITERS, LINE_ENDINGS


def emulator_of(request: Request) -> Emulator:
    """The emulator serving ``request``."""
    emulator: Emulator = request.app.state.emulator
    return emulator


def version_of(request: Request) -> str:
    """The API version in the request's path, as written (``62.0``)."""
    return str(request.path_params["version"])


def parse_json(raw: bytes) -> tuple[Any, Response | None]:
    """Parse a JSON request body, answering like Salesforce's Jackson parser when it is malformed."""
    try:
        return json.loads(raw.decode("utf-8")), None
    except UnicodeDecodeError:
        return None, error_response(400, "JSON_PARSER_ERROR", "Invalid UTF-8 in the request body")
    except json.JSONDecodeError as exc:
        char = exc.doc[exc.pos] if exc.pos < len(exc.doc) else None
        found = f"Unexpected character ('{char}' (code {ord(char)}))" if char else "Unexpected end-of-input"
        return None, error_response(
            400, "JSON_PARSER_ERROR", f"{found}: {exc.msg} at [line:{exc.lineno}, column:{exc.colno}]"
        )


async def read_body(request: Request) -> bytes | Response:
    """The request body, decompressed when sent with ``Content-Encoding: gzip`` or ``deflate``."""
    raw = await request.body()
    encoding = request.headers.get("content-encoding", "").strip().lower()
    if encoding in ("gzip", "deflate"):
        try:
            return zlib.decompress(raw, 47 if encoding == "gzip" else 15)
        except zlib.error:
            return bad_encoding(encoding)
    return raw


async def read_json(request: Request) -> tuple[Any, Response | None]:
    """The request's JSON body, or Salesforce's error answer when it cannot be read or parsed."""
    raw = await read_body(request)
    if isinstance(raw, Response):
        return None, raw
    return parse_json(raw)


def csv_format(spec: dict[str, Any]) -> tuple[str, str] | Response:
    """A create request's ``(columnDelimiter, lineEnding)``, defaults filled in, or the 400 refusing it."""
    content_type = spec.get("contentType", "CSV")
    if content_type != "CSV":
        return error_response(400, "INVALIDJOB", f"InvalidJob : Unsupported content type: {content_type}")
    delimiter = spec.get("columnDelimiter", "COMMA")
    if delimiter not in DELIMITERS:
        return error_response(400, "INVALIDJOB", f"InvalidJob : Invalid column delimiter: {delimiter}")
    line_ending = spec.get("lineEnding", "LF")
    if line_ending not in LINE_ENDINGS:
        return error_response(400, "INVALIDJOB", f"InvalidJob : Invalid line ending: {line_ending}")
    return str(delimiter), str(line_ending)


async def job_info_answer(
    request: Request,
    get_job: Callable[[str], dict[str, Any] | None],
    render: Callable[[dict[str, Any], str], dict[str, Any]],
) -> Response:
    """``GET /jobs/.../{job_id}``: the job as ``render`` shows it for ``info``, or 404."""
    job = await run_in_threadpool(get_job, request.path_params["job_id"])
    if job is None:
        return not_found()
    return json_response(render(job, "info"))


async def job_list_answer(
    request: Request,
    *,
    list_jobs: Callable[[int, int], list[dict[str, Any]]],
    locator_prefix: str,
    job_type: str,
    render: Callable[[dict[str, Any], str], dict[str, Any]],
    next_url: str,
) -> Response:
    """``GET /jobs/...``: one page of jobs from the ``queryLocator`` offset (``<locator_prefix>-<offset>``,
    as ``next_url`` hands them out; any other locator is a 400).

    A ``jobType`` or ``concurrencyMode`` filter that no job of this kind matches empties the page;
    ``next_url`` is the next page's address up to the record offset it ends with.
    """
    page_size = max(1, emulator_of(request).settings.job_page_size)
    locator = request.query_params.get("queryLocator")
    offset = _list_offset(locator, locator_prefix)
    if offset is None:
        return error_response(400, "INVALIDQUERYLOCATOR", f"Invalid query locator: {locator}")
    rows = await run_in_threadpool(list_jobs, offset, page_size + 1)
    done = len(rows) <= page_size
    records = [render(r, "list") for r in rows[:page_size]]
    wanted_type = request.query_params.get("jobType")
    mode = request.query_params.get("concurrencyMode")
    if (wanted_type and wanted_type != job_type) or (mode and mode != "Parallel"):
        records = []
    return json_response(
        {
            "done": done,
            "records": records,
            "nextRecordsUrl": None if done else f"{next_url}{offset + page_size}",
        }
    )


def _list_offset(locator: str | None, prefix: str) -> int | None:
    """The record offset in a job list locator; None for one this org did not hand out. ASCII digits
    only, at most 9 of them: ``str.isdigit()`` also takes other scripts' digits, and a huge number
    would overflow SQLite's integer."""
    if locator is None:
        return 0
    found = re.fullmatch(re.escape(prefix) + r"-([0-9]{1,9})", locator)
    return None if found is None else int(found.group(1))


async def delete_answer(
    request: Request, delete_if: Callable[[str, tuple[str, ...]], str], deletable: tuple[str, ...]
) -> Response:
    """``DELETE /jobs/.../{job_id}``: ``delete_if`` deletes the job when its state is in ``deletable`` and
    says ``ok``, ``missing`` or the job's state; 204, 404 or 400 accordingly."""
    outcome = await run_in_threadpool(delete_if, request.path_params["job_id"], deletable)
    if outcome == "missing":
        return not_found()
    if outcome != "ok":
        return error_response(
            400, "API_ERROR", "Error encountered when deleting the job because the job is not terminated"
        )
    return Response(status_code=204)


def abort_refused(state: str) -> Response:
    """The 400 for aborting a job that has already ended."""
    word = {"JobComplete": "Completed"}.get(state, state)
    return error_response(400, "INVALIDJOBSTATE", f"Aborting already {word} Job not allowed")
