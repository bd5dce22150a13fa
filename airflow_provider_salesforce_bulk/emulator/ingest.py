"""Bulk API 2.0 ingest endpoints: create, upload, close/abort, info, list, delete and results.

Only the HTTP side of an ingest job lives here: request checks and Salesforce's answers. Store
calls leave the event loop for a worker thread; records are processed by :mod:`.job_worker` once a
job is closed, and result files are built by :mod:`.ingest_results`.
"""

from __future__ import annotations

import email.parser
import email.policy
import zlib
from email.message import EmailMessage
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from .ids import JOB_PREFIX, make_id, normalize_id
from .ingest_results import FAILED, SUCCESSFUL, UNPROCESSED, iter_result_csv
from .job_requests import (
    abort_refused,
    csv_format,
    delete_answer,
    emulator_of,
    job_info_answer,
    job_list_answer,
    parse_json,
    read_body,
    read_json,
    version_of,
)
from .responses import (
    CSV_TYPE,
    bad_encoding,
    error_response,
    json_response,
    not_found,
    upload_too_large,
)
from .runtime import USER_ID, Emulator
from .timestamps import now_text

OPERATIONS = ("insert", "update", "upsert", "delete", "hardDelete")
_UPLOAD_PIECE = 1 << 20
_DELETABLE = ("UploadComplete", "JobComplete", "Aborted", "Failed")
_ABORTABLE = ("Open", "UploadComplete", "InProgress")
_RESULT_KINDS = {
    "successfulresults": SUCCESSFUL,
    "failedresults": FAILED,
    "unprocessedrecords": UNPROCESSED,
}
_LOCATOR_PREFIX = "01gR0000000opRT"


# -- bodies ---------------------------------------------------------------------------------------


def job_body(job: dict[str, Any], kind: str) -> dict[str, Any]:
    """Render a job row as Salesforce does for ``kind``: create, info, patch or list."""
    body: dict[str, Any] = {
        "id": job["id"],
        "operation": job["operation"],
        "object": job["object"],
        "createdById": job["created_by_id"],
        "createdDate": job["created_date"],
        "systemModstamp": job["system_modstamp"],
        "state": job["state"],
    }
    if job["external_id_field"]:
        body["externalIdFieldName"] = job["external_id_field"]
    if job["assignment_rule_id"]:
        body["assignmentRuleId"] = job["assignment_rule_id"]
    body["concurrencyMode"] = "Parallel"
    body["contentType"] = "CSV"
    body["apiVersion"] = job["api_version"]
    if kind == "patch":
        return body
    if kind in ("info", "list"):
        body["jobType"] = "V2Ingest"
    if job["state"] == "Open":
        body["contentUrl"] = f"services/data/v{job['api_version']:.1f}/jobs/ingest/{job['id']}/batches"
    body["lineEnding"] = job["line_ending"]
    body["columnDelimiter"] = job["column_delimiter"]
    if kind != "info":
        return body
    body["numberRecordsProcessed"] = job["processed"]
    body["numberRecordsFailed"] = job["failed"]
    body["retries"] = job["retries"]
    # totalProcessingTime stays 0 until the job ends; the active time grows as batches are processed.
    finished = job["state"] in ("JobComplete", "Failed", "Aborted")
    body["totalProcessingTime"] = job["total_processing_time"] if finished else 0
    body["apiActiveProcessingTime"] = job["api_active_processing_time"]
    body["apexProcessingTime"] = 0
    if job["error_message"]:
        body["errorMessage"] = job["error_message"]
    return body


# -- endpoints ------------------------------------------------------------------------------------


def _job_from_spec(emulator: Emulator, spec: Any, version: str) -> dict[str, Any] | Response:
    """The job row a create request's JSON asks for, or Salesforce's error answer."""
    if not isinstance(spec, dict):
        return error_response(400, "JSON_PARSER_ERROR", "Cannot deserialize the job from a non-object value")
    obj_name = spec.get("object")
    obj = emulator.schema.get(obj_name) if isinstance(obj_name, str) else None
    if obj is None:
        return error_response(400, "INVALIDJOB", f"InvalidJob : Unable to find object: {obj_name}")
    operation = spec.get("operation")
    if operation in (None, ""):
        return error_response(400, "API_ERROR", "Invalid value: '' supplied for property: 'operation'")
    if operation not in OPERATIONS:
        return error_response(400, "INVALIDJOB", f"InvalidJob : Invalid operation: {operation}")
    if operation == "hardDelete" and not emulator.settings.hard_delete_enabled:
        return error_response(
            400,
            "FEATURENOTENABLED",
            "FeatureNotEnabled : The user does not have the permission Bulk API Hard Delete",
        )
    external = spec.get("externalIdFieldName")
    if operation == "upsert":
        if not external:
            return error_response(
                400,
                "INVALIDJOB",
                f"InvalidJob : External ID was blank for {obj.name}. "
                "An External ID must be specified for upsert.",
            )
        field = obj.field(str(external))
        if str(external).lower() == "id":
            external = "Id"
        elif field is None or not (field.external_id or field.unique):
            return error_response(
                400,
                "INVALIDJOB",
                f"InvalidJob : Field name provided, {external} does not match an External ID for {obj.name}",
            )
    else:
        external = None
    csv = csv_format(spec)
    if isinstance(csv, Response):
        return csv
    delimiter, line_ending = csv
    rule = spec.get("assignmentRuleId")
    if rule is not None and (
        obj.name not in ("Case", "Lead") or not isinstance(rule, str) or normalize_id(rule) is None
    ):
        return error_response(400, "INVALIDJOB", "InvalidJob : Invalid assignment rule id for this object")
    if emulator.limits.bulk_batches.used() >= emulator.settings.daily_bulk_batches_max:
        return error_response(403, "REQUEST_LIMIT_EXCEEDED", "ExceededQuota : Bulk API batch limit exceeded.")
    now = now_text()
    return {
        "object": obj.name,
        "operation": operation,
        "external_id_field": external,
        "assignment_rule_id": rule,
        "line_ending": line_ending,
        "column_delimiter": delimiter,
        "api_version": float(version),
        "state": "Open",
        "created_by_id": USER_ID,
        "created_date": now,
        "system_modstamp": now,
    }


def _multipart_parts(content_type: str, raw: bytes) -> dict[str, bytes] | Response:
    """The ``job`` and ``content`` parts of a multipart create, read with the stdlib MIME parser."""
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1", "replace")
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + raw)
    parts: dict[str, bytes] = {}
    if isinstance(message, EmailMessage) and message.is_multipart():
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            payload = part.get_payload(decode=True)
            if isinstance(name, str) and isinstance(payload, bytes):
                parts[name] = payload
    if "job" not in parts or "content" not in parts:
        return error_response(
            400,
            "INVALIDJOB",
            "InvalidJob : A multipart job request needs a 'job' part (the job's JSON) and a 'content' part "
            "(the CSV)",
        )
    return parts


async def create_job(request: Request) -> Response:
    """``POST /jobs/ingest``: an Open job, or an UploadComplete one from a multipart body (JSON and CSV)."""
    emulator = emulator_of(request)
    raw = await read_body(request)
    if isinstance(raw, Response):
        return raw
    content_type = request.headers.get("content-type", "")
    csv_data: bytes | None = None
    if content_type.lower().startswith("multipart/form-data"):
        parts = _multipart_parts(content_type, raw)
        if isinstance(parts, Response):
            return parts
        raw, csv_data = parts["job"], parts["content"]
        limit = emulator.settings.upload_limit_bytes
        if len(csv_data) > limit:
            return upload_too_large(limit)
    spec, problem = parse_json(raw)
    if problem is not None:
        return problem
    job = _job_from_spec(emulator, spec, version_of(request))
    if isinstance(job, Response):
        return job
    number = await run_in_threadpool(emulator.store.next_id, JOB_PREFIX)
    job["id"] = make_id(JOB_PREFIX, number)
    await run_in_threadpool(emulator.store.insert_job, job)
    if csv_data is not None:
        # A multipart job is closed as soon as it is created: its data came with it.
        await run_in_threadpool(_store_upload, emulator, job["id"], csv_data)
        await run_in_threadpool(
            emulator.store.transition_job,
            job["id"],
            ("Open",),
            {"state": "UploadComplete", "system_modstamp": now_text()},
        )
        emulator.processor.submit(job["id"])
    stored = await run_in_threadpool(emulator.store.get_job, job["id"])
    assert stored is not None
    if csv_data is not None and stored["state"] not in ("Open", "UploadComplete"):
        # The worker may already have taken the job; the answer still says what this request did.
        stored = {**stored, "state": "UploadComplete"}
    return json_response(job_body(stored, "create"))


def _store_upload(emulator: Emulator, job_id: str, data: bytes) -> None:
    store = emulator.store
    store.claim_upload(job_id)
    for n, start in enumerate(range(0, len(data), _UPLOAD_PIECE)):
        store.append_chunk(job_id, n, data[start : start + _UPLOAD_PIECE])
    store.finish_upload(job_id, len(data))


async def upload(request: Request) -> Response:
    """``PUT /jobs/ingest/{id}/batches``: the job's one CSV upload, streamed into the database."""
    emulator = emulator_of(request)
    store = emulator.store
    job_id = request.path_params["job_id"]
    claim = await run_in_threadpool(store.claim_upload, job_id)
    if claim == "missing":
        return not_found()
    if claim == "duplicate":
        return error_response(
            400,
            "INVALIDJOB",
            f"Found multipe contents for job: <{job_id[:15]}>, "
            "please 'Close' / 'Abort' / 'Delete' the current Job then "
            "create a new Job and make sure you only do 'PUT' once on a given Job.",
        )
    if claim == "state":
        return error_response(
            400, "INVALIDJOBSTATE", "Job is not in Open state; data can no longer be uploaded"
        )
    limit = emulator.settings.upload_limit_bytes
    encoding = request.headers.get("content-encoding", "").strip().lower()
    inflater = (
        zlib.decompressobj(47 if encoding == "gzip" else 15) if encoding in ("gzip", "deflate") else None
    )
    size = 0
    piece = bytearray()
    n = 0
    too_large = False
    try:
        async for data in request.stream():
            if too_large:
                continue  # drain the rest so the client reads our answer instead of a reset
            if inflater is not None:
                data = inflater.decompress(data, limit + 1 - size)
                if inflater.unconsumed_tail:
                    too_large = True
            size += len(data)
            if size > limit:
                too_large = True
                continue
            piece.extend(data)
            if len(piece) >= _UPLOAD_PIECE:
                await run_in_threadpool(store.append_chunk, job_id, n, bytes(piece))
                n, piece = n + 1, bytearray()
        if inflater is not None and not too_large:
            rest = inflater.flush()
            size += len(rest)
            piece.extend(rest)
            if not inflater.eof:
                raise zlib.error("truncated stream")
    except zlib.error:
        await run_in_threadpool(store.release_upload, job_id)
        return bad_encoding(encoding)
    except BaseException:
        await run_in_threadpool(store.release_upload, job_id)
        raise
    if too_large or size > limit:
        await run_in_threadpool(store.release_upload, job_id)
        return upload_too_large(limit)
    if piece:
        await run_in_threadpool(store.append_chunk, job_id, n, bytes(piece))
    await run_in_threadpool(store.finish_upload, job_id, size)
    return Response(status_code=201)


async def patch_job(request: Request) -> Response:
    """``PATCH /jobs/ingest/{id}``: close (UploadComplete) or abort (Aborted)."""
    emulator = emulator_of(request)
    job_id = request.path_params["job_id"]
    spec, problem = await read_json(request)
    if problem is not None:
        return problem
    target = spec.get("state") if isinstance(spec, dict) else None
    current = await run_in_threadpool(emulator.store.get_job, job_id)
    if current is None:
        return not_found()
    if target == "UploadComplete":
        allowed: tuple[str, ...] = ("Open",)
    elif target == "Aborted":
        allowed = _ABORTABLE
    else:
        return error_response(400, "INVALIDJOBSTATE", f"Invalid state transition requested: {target}")
    job, applied = await run_in_threadpool(
        emulator.store.transition_job, job_id, allowed, {"state": target, "system_modstamp": now_text()}
    )
    if job is None:
        return not_found()
    if not applied:
        state = job["state"]
        if target == "Aborted":
            return abort_refused(state)
        message = f"Closing a job in state {state} is not allowed; only an Open job can be closed"
        return error_response(400, "INVALIDJOBSTATE", message)
    if target == "UploadComplete":
        emulator.processor.submit(job_id)
    return json_response(job_body(job, "patch"))


async def get_job(request: Request) -> Response:
    """``GET /jobs/ingest/{id}``."""
    return await job_info_answer(request, emulator_of(request).store.get_job, job_body)


async def list_jobs(request: Request) -> Response:
    """``GET /jobs/ingest``: one page of jobs; ``nextRecordsUrl`` leads to the next."""
    return await job_list_answer(
        request,
        list_jobs=emulator_of(request).store.list_jobs,
        locator_prefix=_LOCATOR_PREFIX,
        job_type="V2Ingest",
        render=job_body,
        next_url=f"/services/data/v{version_of(request)}/jobs/ingest?queryLocator={_LOCATOR_PREFIX}-",
    )


async def delete_job(request: Request) -> Response:
    """``DELETE /jobs/ingest/{id}``: 204 for a finished or closed job."""
    return await delete_answer(request, emulator_of(request).store.delete_job_if, _DELETABLE)


async def job_results(request: Request) -> Response:
    """``GET /jobs/ingest/{id}/successfulResults | failedResults | unprocessedrecords``."""
    kind = _RESULT_KINDS.get(str(request.path_params["kind"]).lower())
    if kind is None:
        return not_found()
    emulator = emulator_of(request)
    job = await run_in_threadpool(emulator.store.get_job, request.path_params["job_id"])
    if job is None:
        return not_found()
    if job["state"] == "Open":
        return error_response(400, "INVALIDJOBSTATE", "The job is still Open: it has no results yet")
    # A sync iterator: Starlette runs each step in a worker thread, off the event loop.
    return StreamingResponse(iter_result_csv(emulator.store, job, kind), media_type=CSV_TYPE)
