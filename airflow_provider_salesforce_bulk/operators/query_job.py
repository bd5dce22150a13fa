"""The query operator's one job: found again or created, its trigger event checked, its first summary.

A query changes nothing in Salesforce, so a retry reattaches to the earlier try's job only while it
may still give results (not Failed or Aborted) and only if it ran the same query.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from airflow.providers.common.compat.sdk import AirflowException, AirflowFailException

from airflow_provider_salesforce_bulk.client import BulkIngestClient, BulkQueryClient, JobInfo, NotFoundError
from airflow_provider_salesforce_bulk.client.models import FAILED_STATES
from airflow_provider_salesforce_bulk.triggers.abort import Log
from airflow_provider_salesforce_bulk.triggers.events import (
    JobsEvent,
    JobSummary,
    check_job_id,
    validate_event,
)

__all__ = [
    "QUERY_STATE_KEY",
    "checked_query_job",
    "earlier_job_id",
    "fail_on_wait_error",
    "fingerprint",
    "first_summary",
    "start_query_job",
]

QUERY_STATE_KEY = "salesforce_bulk_query"
"""The plan store key holding the task's query job (next to the ingest operator's own key)."""


def fingerprint(operation: str, soql: str) -> str:
    """What the plan keeps of the query: a digest, since a long SOQL would bloat a Variable for nothing."""
    return hashlib.sha256(f"{operation}\n{soql}".encode()).hexdigest()


def earlier_job_id(plan: Any, query_fingerprint: str, log: Log) -> str | None:
    """The query job of an earlier try of this task (its ``plan``), if it ran the same query."""
    if not isinstance(plan, Mapping):
        return None
    job_id = plan.get("job_id")
    try:
        check_job_id(job_id)
    except AirflowFailException:
        log.warning("Ignoring a stored query plan without a valid job id: %.100r", job_id)
        return None
    if plan.get("query") != query_fingerprint:
        log.info("The SOQL changed since query job %s was submitted: running the new query", job_id)
        return None
    return str(job_id)


async def start_query_job(
    ingest: BulkIngestClient, earlier: str | None, query: str, operation: str, log: Log
) -> tuple[JobInfo, str, bool]:
    """The earlier try's job if it may still give results, else a new query job; with the instance
    URL and whether the job is the earlier one."""
    client = BulkQueryClient(ingest.session)
    instance_url = await ingest.session.instance_url()
    if earlier is not None:
        try:
            job = await client.get_job(earlier)
        except NotFoundError:
            log.info("Query job %s of an earlier try is gone: running the query again", earlier)
        else:
            if job.state not in FAILED_STATES:
                return job, instance_url, True
            log.info(
                "Query job %s of an earlier try ended %s (%s): running the query again",
                earlier,
                job.state,
                job.error_message or "no error message",
            )
    job = await client.create_job(query, operation="queryAll" if operation == "queryAll" else "query")
    return job, instance_url, False


def first_summary(job: JobSummary, output_format: str, instance_url: str | None) -> dict[str, Any]:
    """The XCom summary of ``job`` before any file is written."""
    return {
        "job_id": job["id"],
        "operation": job["operation"],
        "object": job["object"],
        "state": job["state"],
        "records": job["numberRecordsProcessed"],
        "output_format": output_format,
        "output_path": None,
        "files": [],
        "seconds": None,
        "error_message": job["errorMessage"],
        "instance_url": instance_url,
        "manifest": None,
        "watermark": None,
    }


def fail_on_wait_error(context: Any, checked: JobsEvent, job_id: str, summary: dict[str, Any]) -> None:
    """Fail the task when waiting for the job failed: without retries when the credentials were refused."""
    if checked["credentials_refused"]:
        if context.get("ti") is not None:
            context["ti"].xcom_push(key="return_value", value=summary)
        raise AirflowFailException(
            f"Waiting for query job {job_id} failed: {checked['message']}; not retried, since "
            "retrying a wrong password locks the user: fix the connection, then clear the task"
        )
    if checked["status"] == "error":
        raise AirflowException(
            f"Waiting for query job {job_id} failed: {checked['message']}; a retry reattaches to it"
        )


def checked_query_job(event: object) -> tuple[JobsEvent, JobSummary]:
    """The checked event and its one query job, or a clear error naming what is wrong with it."""
    checked = validate_event(event)
    jobs = checked["jobs"]
    if checked["status"] == "error" and not jobs:
        if checked["credentials_refused"]:
            raise AirflowFailException(
                f"Waiting for the query job failed: {checked['message']}; not retried, since retrying a "
                "wrong password locks the user: fix the connection, then clear the task"
            )
        raise AirflowException(
            f"Waiting for the query job failed: {checked['message']}; a retry reattaches to it"
        )
    if len(jobs) != 1:
        raise AirflowException(f"malformed trigger event: expected one query job, got {len(jobs)}")
    (job,) = jobs.values()
    return checked, job
