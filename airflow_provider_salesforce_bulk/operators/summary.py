"""The task's summary (its XCom return value), counted from typed job outcomes, and the failure policy.

One round of jobs is counted by :func:`count_round`: each job's :class:`JobOutcome` (its final state,
the records it was given, what its result files hold) becomes its line of the summary, and the
round's failures are added up by error code. :func:`final_summary` joins the rounds into the summary.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from airflow_provider_salesforce_bulk.client import JobInfo, RecordCounts
from airflow_provider_salesforce_bulk.client.models import TERMINAL_STATES
from airflow_provider_salesforce_bulk.client.resubmit import ResubmitLedger
from airflow_provider_salesforce_bulk.operators.result_files import NO_RESULTS, JobResults
from airflow_provider_salesforce_bulk.triggers.events import HistoryEntry, JobSummary

__all__ = [
    "FINAL",
    "JobOutcome",
    "RoundCount",
    "count_round",
    "failure_message",
    "final_entries",
    "input_records",
    "job_entry",
    "job_outcomes",
    "jobs_to_copy",
    "summarize",
    "unfinished_summary",
]

RESENT = "resent"
"""A job's ``outcome`` when its unprocessed records went to a new job (as the plan names it)."""
REPLACED = "replaced"
"""A job's ``outcome`` when it was never closed: all its records went to a new job."""


FINAL = "final"
"""A job's ``outcome`` when it is the last job of its records (its unprocessed records stayed there)."""


@dataclass(frozen=True)
class JobOutcome:
    """One job of a round as the summary counts it.

    ``records`` is how many input records the job was given (``None``: not known, counted from its
    result files). ``outcome`` is ``final``, ``resent`` (its unprocessed records went to job
    ``next_job``) or ``replaced`` (never closed, nothing processed: all its records went to ``next_job``).
    """

    job: JobSummary
    records: int | None
    results: JobResults = NO_RESULTS
    outcome: str = FINAL
    next_job: str | None = None

    @property
    def id(self) -> str:
        return self.job["id"]

    @property
    def counts(self) -> RecordCounts:
        """Where the job's records went, Salesforce's counters kept within the records it was given."""
        processed = 0 if self.outcome == REPLACED else self.job["numberRecordsProcessed"]
        records = self.records
        if records is None:
            records = processed + self.results.rows.get("unprocessed", 0)
        return RecordCounts.of(records, processed, self.job["numberRecordsFailed"])

    def ended(self) -> JobInfo:
        """The job as the resubmission ledger counts it."""
        counts = self.counts
        return JobInfo(
            id=self.id, number_records_processed=counts.processed, number_records_failed=counts.failed
        )

    def entry(self, round_number: int | None = None) -> dict[str, Any]:
        """The job's line of the summary (with its ``round`` when given)."""
        counts, rows = self.counts, dict(self.results.rows)
        entry: dict[str, Any] = {
            "state": self.job["state"],
            "records": counts.records,
            "processed": counts.processed,
            "succeeded": counts.succeeded,
            "failed": counts.failed,
            "unprocessed": counts.unprocessed,
            "error_message": self.job["errorMessage"],
            "result_files": dict(self.results.uris),
            "outcome": self.outcome,
        }
        if self.next_job:
            entry["next_job"] = self.next_job
        if rows:
            entry["result_rows"] = rows
            entry["accounted"] = sum(rows.values()) == counts.records
        if round_number is not None:
            entry["round"] = round_number
        return entry


def job_entry(
    job: JobSummary,
    records: int | None,
    uris: dict[str, str],
    rows: dict[str, int],
    outcome: str = FINAL,
    next_job: str | None = None,
) -> dict[str, Any]:
    """One job's line of the summary (see :class:`JobOutcome`)."""
    return JobOutcome(job, records, JobResults(uris=uris, rows=rows), outcome, next_job).entry()


def jobs_to_copy(jobs: Mapping[str, JobSummary], history: Iterable[HistoryEntry]) -> dict[str, JobSummary]:
    """Every job that may hold processed records: the current ones that ended, and earlier tries'
    jobs whose unprocessed records were resent. Replaced jobs never processed anything."""
    out = {job_id: job for job_id, job in jobs.items() if job["state"] in TERMINAL_STATES}
    for old in history:
        if old["outcome"] == RESENT:
            out[old["id"]] = old["info"]
    return out


def job_outcomes(
    jobs: Mapping[str, JobSummary],
    history: Iterable[HistoryEntry],
    record_counts: Mapping[str, int],
    copied: Mapping[str, JobResults],
) -> list[JobOutcome]:
    """Each job of the round, earlier tries' settled jobs first, with what its result files hold."""
    out = [
        JobOutcome(old["info"], old["count"], copied.get(old["id"], NO_RESULTS), old["outcome"], old["next"])
        for old in history
    ]
    out.extend(
        JobOutcome(job, record_counts.get(job_id), copied.get(job_id, NO_RESULTS))
        for job_id, job in jobs.items()
    )
    return out


def input_records(outcomes: Iterable[JobOutcome]) -> int | None:
    """The input: the records of each chunk's first job (no other job's successor); every later job
    of a chunk holds records counted there already. ``None`` when a job's count is not known."""
    listed = list(outcomes)
    successors = {outcome.next_job for outcome in listed if outcome.next_job}
    if any(outcome.records is None for outcome in listed):
        return None
    return sum(int(outcome.records or 0) for outcome in listed if outcome.id not in successors)


@dataclass(frozen=True)
class RoundCount:
    """One round of jobs, counted: every job's line, its failures by code, what may be resubmitted."""

    entries: dict[str, dict[str, Any]]
    by_code: collections.Counter[str]
    samples: dict[str, str]
    input_records: int | None
    resubmittable: dict[str, dict[str, int]]
    """Jobs whose results hold failures with one of the resubmittable codes: how many, by code."""


def count_round(
    outcomes: list[JobOutcome],
    round_number: int,
    copied: Iterable[str],
    ledger: ResubmitLedger,
    codes: tuple[str, ...],
) -> RoundCount:
    """Count round ``round_number``: each copied job goes into ``ledger``; ``codes`` are resubmittable."""
    entries = {outcome.id: outcome.entry(round_number) for outcome in outcomes}
    by_code: collections.Counter[str] = collections.Counter()
    samples: dict[str, str] = {}
    resubmittable: dict[str, dict[str, int]] = {}
    by_id = {outcome.id: outcome for outcome in outcomes}
    for job_id in copied:
        outcome = by_id[job_id]
        ledger.add_job(outcome.ended(), round_number, outcome.counts.records)
        by_code.update(outcome.results.by_code)
        for code, sample in outcome.results.samples.items():
            samples.setdefault(code, sample)
        transient = {code: n for code in codes if (n := outcome.results.by_code.get(code, 0))}
        if transient:
            resubmittable[job_id] = transient
    return RoundCount(entries, by_code, samples, input_records(outcomes), resubmittable)


def final_entries(entries: Mapping[str, dict[str, Any]], ledger: ResubmitLedger) -> dict[str, dict[str, Any]]:
    """Every round's lines, each job's resubmitted records counted where they ended, in a later round."""
    out: dict[str, dict[str, Any]] = {}
    for job_id, entry in entries.items():
        resent = ledger.resubmitted.get(job_id, 0)
        out[job_id] = (
            {**entry, "failed": max(0, entry["failed"] - resent), "resubmitted": resent} if resent else entry
        )
    return out


def summarize(
    operation: str,
    object_name: str,
    jobs: dict[str, dict[str, Any]],
    by_code: collections.Counter[str],
    results_path: str | None,
    instance_url: str | None,
    input_records: int | None = None,
    *,
    resubmitted: int = 0,
    rounds: int = 1,
    failed_results: Mapping[str, Any] | None = None,
    stopped: str | None = None,
) -> dict[str, Any]:
    """The task's summary: every job of every try, and totals counting each input record once.

    A record sent again (an aborted job's unprocessed records, a replaced job's chunk) counts at its
    final outcome only: succeeded and failed add up over every job, unprocessed only over final jobs.
    ``resubmitted`` records (and the ``rounds`` it took) are named when there are any;
    ``failed_results`` is the final failed-results file and its rows (see ``final_failures``).
    A try ``stopped`` before its jobs were waited for names why, and the input records it did not
    send (``not_sent``) instead of counting them unaccounted.
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
    if resubmitted:
        totals["resubmitted"] = resubmitted
    sent = sum(int(job["records"]) for job in jobs.values())
    if stopped is not None and input_records is not None:
        totals["not_sent"] = max(0, input_records - sent)
    summary: dict[str, Any] = {
        "operation": operation,
        "object": object_name,
        "instance_url": instance_url,
        "jobs": jobs,
        "totals": totals,
        "failed_by_error_code": dict(by_code.most_common()),
        "results_path": results_path,
    }
    if input_records is not None and accounted != input_records and stopped is None:
        summary["unaccounted"] = input_records - accounted
    if stopped is not None:
        summary["stopped"] = stopped
    if resubmitted:
        summary["rounds"] = rounds
    summary.update(failed_results or {})
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
    reattaches to them, reads their outcome. The records not sent are named (``not_sent``), not
    counted as unaccounted."""
    entries = {
        job_id: job_entry(jobs.get(job_id) or _unknown_job(job_id, object_name, operation), count, {}, {})
        for job_id, count in record_counts.items()
    }
    return summarize(
        operation,
        object_name,
        entries,
        collections.Counter(),
        None,
        instance_url,
        input_records,
        stopped=stopped,
    )


def _unknown_job(job_id: str, object_name: str, operation: str) -> JobSummary:
    """A job created but never read: no state, no counters."""
    return {
        "id": job_id,
        "state": None,
        "object": object_name,
        "operation": operation,
        "numberRecordsProcessed": 0,
        "numberRecordsFailed": 0,
        "errorMessage": None,
        "columnDelimiter": None,
    }
