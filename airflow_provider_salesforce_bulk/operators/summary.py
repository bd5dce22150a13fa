"""The task's summary (its XCom return value) and the failure policy applied to it."""

from __future__ import annotations

import collections
from typing import Any

__all__ = ["failure_message", "job_entry", "summarize"]


def job_entry(
    job: dict[str, Any], records: int | None, uris: dict[str, str], rows: dict[str, int]
) -> dict[str, Any]:
    """One job's line of the summary; ``records`` is how many input records the job was given."""
    processed_raw = int(job.get("numberRecordsProcessed") or 0)
    if records is None:
        records = processed_raw + rows.get("unprocessed", 0)
    processed = min(processed_raw, records)
    failed = min(int(job.get("numberRecordsFailed") or 0), processed)
    entry: dict[str, Any] = {
        "state": job.get("state"),
        "records": records,
        "processed": processed,
        "succeeded": processed - failed,
        "failed": failed,
        "unprocessed": records - processed,
        "error_message": job.get("errorMessage"),
        "result_files": uris,
    }
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
) -> dict[str, Any]:
    totals = {
        key: sum(int(job[key]) for job in jobs.values())
        for key in ("records", "processed", "succeeded", "failed", "unprocessed")
    }
    totals["jobs"] = len(jobs)
    return {
        "operation": operation,
        "object": object_name,
        "instance_url": instance_url,
        "jobs": jobs,
        "totals": totals,
        "failed_by_error_code": dict(by_code.most_common()),
        "results_path": results_path,
    }


def failure_message(
    summary: dict[str, Any],
    samples: dict[str, str],
    max_failed_records: int | None,
    max_failed_ratio: float | None,
) -> str | None:
    """Why the task must fail, or ``None``: a Failed/Aborted job, unaccounted records, a threshold."""
    what = f"Salesforce bulk {summary['operation']} of {summary['object']}"
    problems: list[str] = []
    for job_id, job in summary["jobs"].items():
        if job["state"] != "JobComplete":
            reason = job.get("error_message") or "no error message"
            problems.append(f"job {job_id} ended {job['state']}: {reason}")
        if job.get("accounted") is False:
            problems.append(
                f"job {job_id}: result files hold {sum(job['result_rows'].values())} rows for "
                f"{job['records']} records sent"
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
