"""What the ingest and the query clients share about jobs: ids, JSON answers, job descriptions, list filters.

Both job kinds put a checked job id in their paths, read the same job description JSON and filter
their job lists with the same parameters; one definition keeps the two clients reading Salesforce alike.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import httpx
import orjson

from airflow_provider_salesforce_bulk.client.errors import InputError, UnexpectedResponseError
from airflow_provider_salesforce_bulk.client.models import JobInfo

if TYPE_CHECKING:
    from airflow_provider_salesforce_bulk.client.session import SalesforceSession

__all__ = ["JSON_HEADERS", "check_job_id", "iter_job_list", "job_info", "json_object", "list_params"]

#: Headers of every JSON request about jobs.
JSON_HEADERS = {"Content-Type": "application/json", "Accept": "application/json"}

_JOB_ID = re.compile(r"750[A-Za-z0-9]{12}(?:[A-Za-z0-9]{3})?")


def check_job_id(job_id: object) -> str:
    """The job id, checked (a str of the right shape) before it becomes part of a URL path or a file name."""
    if not isinstance(job_id, str) or not _JOB_ID.fullmatch(job_id):
        raise InputError(
            f"not a Bulk API job id: {job_id!r} (expected '750' and 12 or 15 letters or digits)",
            field="job_id",
        )
    return job_id


def json_object(response: httpx.Response) -> dict[str, Any]:
    """The response's JSON object; anything else is an ``UnexpectedResponseError``."""
    try:
        data = orjson.loads(response.content)
    except orjson.JSONDecodeError as exc:
        raise UnexpectedResponseError(
            f"{response.request.method} {response.request.url.path} answered {response.status_code} "
            f"with a body that is not JSON: {response.content[:200]!r}"
        ) from exc
    if not isinstance(data, dict):
        raise UnexpectedResponseError(
            f"{response.request.method} {response.request.url.path} answered a JSON "
            f"{type(data).__name__}, not an object"
        )
    return data


def job_info(response: httpx.Response, record: Any = None) -> JobInfo:
    """The job ``response`` describes, or ``record`` of it (one entry of a job list)."""
    data = json_object(response) if record is None else record
    try:
        return JobInfo.from_json(data)
    except (ValueError, TypeError) as exc:
        raise UnexpectedResponseError(
            f"{response.request.method} {response.request.url.path}: not a job description: {exc}"
        ) from exc


def list_params(
    is_pk_chunking_enabled: bool | None, job_type: str | None, concurrency_mode: str | None
) -> dict[str, str]:
    """The query parameters of ``GET /jobs/...`` for the filters given."""
    params: dict[str, str] = {}
    if is_pk_chunking_enabled is not None:
        params["isPkChunkingEnabled"] = "true" if is_pk_chunking_enabled else "false"
    if job_type is not None:
        params["jobType"] = job_type
    if concurrency_mode is not None:
        params["concurrencyMode"] = concurrency_mode
    return params


async def iter_job_list(
    session: SalesforceSession,
    path: str,
    params: dict[str, str],
    next_path: Callable[[dict[str, Any]], str | None],
) -> AsyncIterator[JobInfo]:
    """Every job of a ``GET /jobs/...`` listing from ``path``, page by page; ``next_path`` reads a page's
    next address (None after the last) and refuses what that job kind does not accept."""
    following: str | None = path
    while following is not None:
        response = await session.request("GET", following, params=params or None, headers=JSON_HEADERS)
        page = json_object(response)
        for record in page.get("records") or ():
            yield job_info(response, record)
        following = next_path(page)
        params = {}
