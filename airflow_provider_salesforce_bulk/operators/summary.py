"""The task's summary (its XCom return value) and the failure policy applied to it."""

from __future__ import annotations

import collections
from typing import Any

from airflow_provider_salesforce_bulk.client import RecordCounts
from airflow_provider_salesforce_bulk.triggers.events import JobSummary

__all__ = ["failure_message", "job_entry", "summarize"]


FINAL = "final"
"""A job's ``outcome`` when it is the last job of its records (its unprocessed records stayed there)."""


def job_entry(
    job: JobSummary,
    records: int | None,
    uris: dict[str, str],
    rows: dict[str, int],
    outcome: str = FINAL,
    next_job: str | None = None,
) -> dict[str, Any]:
    """One job's line of the summary; ``records`` is how many input records the job was given.

    ``outcome`` is ``final``, ``resent`` (its unprocessed records went to job ``next_job``) or
    ``replaced`` (never closed, nothing processed: all its records went to ``next_job``).
    """
    processed_raw = 0 if outcome == "replaced" else job["numberRecordsProcessed"]
    if records is None:
        records = processed_raw + rows.get("unprocessed", 0)
    counts = RecordCounts.of(records, processed_raw, job["numberRecordsFailed"])
    entry: dict[str, Any] = {
        "state": job["state"],
        "records": records,
        "processed": counts.processed,
        "succeeded": counts.succeeded,
        "failed": counts.failed,
        "unprocessed": counts.unprocessed,
        "error_message": job["errorMessage"],
        "result_files": uris,
        "outcome": outcome,
    }
    if next_job:
        entry["next_job"] = next_job
    if rows:
        entry["result_rows"] = rows
        entry["accounted"] = sum(rows.values()) == records
    return entry


def summarize(
    operation: str,
    object_name: str,
    jobs: dict[str, dict[str, Any]],
    by_code: collections.Counter[str],
    results_path: str | None,
    instance_url: str | None,
    input_records: int | None = None,
) -> dict[str, Any]:
    """The task's summary: every job of every try, and totals counting each input record once.

    A record sent again (an aborted job's unprocessed records, a replaced job's chunk) counts at its
    final outcome only: succeeded and failed add up over every job, unprocessed only over final jobs.
    """
    totals = {
        key: sum(int(job[key]) for job in jobs.values()) for key in ("processed", "succeeded", "failed")
    }
    totals["unprocessed"] = sum(
        int(job["unprocessed"]) for job in jobs.values() if job.get("outcome", FINAL) == FINAL
    )
    accounted = totals["succeeded"] + totals["failed"] + totals["unprocessed"]
    totals = {"records": accounted if input_records is None else input_records, **totals}
    totals["jobs"] = len(jobs)
    summary: dict[str, Any] = {
        "operation": operation,
        "object": object_name,
        "instance_url": instance_url,
        "jobs": jobs,
        "totals": totals,
        "failed_by_error_code": dict(by_code.most_common()),
        "results_path": results_path,
    }
    if input_records is not None and accounted != input_records:
        summary["unaccounted"] = input_records - accounted
    return summary


def failure_message(
    summary: dict[str, Any],
    samples: dict[str, str],
    max_failed_records: int | None,
    max_failed_ratio: float | None,
) -> str | None:
    """Why the task must fail, or ``None``: a Failed/Aborted job, unaccounted records, a threshold."""
    what = f"Salesforce bulk {summary['operation']} of {summary['object']}"
    problems: list[str] = []
    if summary.get("unaccounted"):
        problems.append(
            f"the jobs account for {summary['totals']['records'] - summary['unaccounted']} of "
            f"{summary['totals']['records']} input records"
        )
    for job_id, job in summary["jobs"].items():
        if job["state"] != "JobComplete" and job.get("outcome", FINAL) == FINAL:
            reason = job.get("error_message") or "no error message"
            problems.append(f"job {job_id} ended {job['state']}: {reason}")
        if job.get("accounted") is False:
            problems.append(
                f"job {job_id}: result files hold {sum(job['result_rows'].values())} rows for "
                f"{job['records']} records sent"
            )
    final_rows = summary.get("failed_results_rows")
    if final_rows is not None and final_rows != summary["totals"]["failed"]:
        problems.append(
            f"the final failed-results file {summary['failed_results']} holds {final_rows} rows for "
            f"{summary['totals']['failed']} failed records"
        )
    totals = summary["totals"]
    failed, records = totals["failed"], totals["records"]
    limit = 0 if max_failed_records is None and max_failed_ratio is None else max_failed_records
    over_count = limit is not None and failed > limit
    over_ratio = max_failed_ratio is not None and records > 0 and failed / records > max_failed_ratio
    if over_count or over_ratio:
        rule = f"max_failed_records={limit}" if over_count else f"max_failed_ratio={max_failed_ratio}"
        failing_jobs = [j for j, job in summary["jobs"].items() if job["failed"]]
        codes = ", ".join(f"{code}: {n}" for code, n in summary["failed_by_error_code"].items())
        problems.append(
            f"{failed} of {records} records failed in job(s) {', '.join(failing_jobs)}, over {rule} "
            f"(by error code: {codes})"
        )
        problems.extend(f"e.g. {sample}" for sample in list(samples.values())[:5])
    if not problems:
        return None
    return f"{what} failed: " + "; ".join(problems) + f". Result files: {summary['results_path']}"


def unfinished_summary(
    operation: str,
    object_name: str,
    jobs: dict[str, JobSummary],
    record_counts: dict[str, int],
    input_records: int | None,
    instance_url: str | None,
    stopped: str,
) -> dict[str, Any]:
    """The summary of a try that stopped before its jobs could be waited for (credentials or a daily
    limit refused): every job created so far at its last known state, no result files, and
    ``stopped`` saying why. Records of jobs still running count as unprocessed until a retry, which
    reattaches to them, reads their outcome."""
    entries = {
        job_id: job_entry(
            jobs.get(job_id)
            or {
                "id": job_id,
                "state": None,
                "object": object_name,
                "operation": operation,
                "numberRecordsProcessed": 0,
                "numberRecordsFailed": 0,
                "errorMessage": None,
                "columnDelimiter": None,
            },
            count,
            {},
            {},
        )
        for job_id, count in record_counts.items()
    }
    summary = summarize(
        operation, object_name, entries, collections.Counter(), None, instance_url, input_records
    )
    sent = sum(record_counts.values())
    summary["stopped"] = stopped
    if input_records is not None:
        summary["totals"]["not_sent"] = max(0, input_records - sent)
    summary.pop("unaccounted", None)  # the records not sent: named above, not lost
    return summary
