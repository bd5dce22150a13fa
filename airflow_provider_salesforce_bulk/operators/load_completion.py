"""The end of a load's wait: the result files copied, the summary over every round, the failure policy.

The operator's ``execute_complete`` calls these in order (copy, count in :mod:`.summary`, summarize,
push, apply the policy); each takes the values it works on, nothing of the operator.
"""

from __future__ import annotations

import collections
import math
import secrets
import threading
from typing import Any, NoReturn

from airflow.providers.common.compat.sdk import AirflowException, AirflowFailException

from airflow_provider_salesforce_bulk.client import InputError, RequestLimitExceededError, ResubmitPolicy
from airflow_provider_salesforce_bulk.client.resubmit import ResubmitLedger
from airflow_provider_salesforce_bulk.hooks.salesforce_bulk import SalesforceBulkHook, run_sync
from airflow_provider_salesforce_bulk.operators.final_failures import (
    readable_failed_files,
    write_final_failures,
)
from airflow_provider_salesforce_bulk.operators.refusals import fail_on_refused_credentials, limit_named
from airflow_provider_salesforce_bulk.operators.result_files import JobResults, copy_job_results
from airflow_provider_salesforce_bulk.operators.round_state import RoundState, Waited
from airflow_provider_salesforce_bulk.operators.summary import (
    RoundCount,
    failure_message,
    final_entries,
    summarize,
    unfinished_summary,
)
from airflow_provider_salesforce_bulk.triggers.events import JobsEvent, JobSummary

__all__ = [
    "apply_failure_policy",
    "check_thresholds",
    "copy_results",
    "final_summary",
    "push_summary",
    "refused",
]


def push_summary(ti: Any, summary: dict[str, Any]) -> None:
    """The summary as the XCom return value (pushed before the task can fail, so it reports what happened)."""
    if ti is not None:
        ti.xcom_push(key="return_value", value=summary)


def refused(ti: Any, operation: str, object_name: str, checked: JobsEvent, waited: Waited) -> NoReturn:
    """No result file can be read without credentials: the jobs as last seen, then no retry."""
    message = f"{checked['message']}; not retried, since retrying a wrong password locks the user"
    settled = {old["id"] for old in waited.history}
    summary = unfinished_summary(
        operation,
        object_name,
        checked["jobs"],
        {job_id: n for job_id, n in waited.record_counts.items() if job_id not in settled},
        None,
        waited.instance_url,
        message,
    )
    push_summary(ti, summary)
    raise AirflowFailException(
        f"{message}: fix the connection, then clear the task (it reattaches to the jobs)"
    )


def copy_results(
    hook: SalesforceBulkHook,
    to_copy: dict[str, JobSummary],
    directory: Any,
    try_number: int | None,
    stop: threading.Event,
) -> dict[str, JobResults]:
    """The result files of every job in ``to_copy``, copied under ``directory``."""
    if not to_copy:
        return {}
    settings = hook.get_settings()
    token = f"try{try_number or 0}-{secrets.token_hex(4)}"  # this try's partial files

    async def copy() -> dict[str, JobResults]:
        out: dict[str, JobResults] = {}
        async with hook.client(settings) as client:
            for job_id, job in to_copy.items():
                out[job_id] = await copy_job_results(
                    client, job_id, directory, job["columnDelimiter"], stop=stop, token=token
                )
        return out

    try:
        with fail_on_refused_credentials():
            return run_sync(copy)
    except RequestLimitExceededError as exc:
        raise AirflowException(
            f"Reading the results of the jobs met REQUEST_LIMIT_EXCEEDED: the org's "
            f"{limit_named(exc)} allowance is spent ({exc}); the jobs ended, a retry once it "
            "refilled reattaches to them and reads their results"
        ) from None


def final_summary(
    operation: str,
    object_name: str,
    state: RoundState,
    counted: RoundCount,
    policy: ResubmitPolicy,
    instance_url: str | None,
    *,
    results_dir: Any,
    delimiter: str,
    try_number: int | None,
    stop: threading.Event,
    log: Any,
) -> tuple[dict[str, Any], dict[str, str]]:
    """The task's summary over every round, and a failure message per error code."""
    entries = final_entries({**state.entries, **counted.entries}, state.ledger)
    by_code, samples = state.merged(counted)
    by_code = collections.Counter({code: n for code, n in by_code.items() if n > 0})
    samples = {code: text for code, text in samples.items() if code in by_code}
    copied_any = any(entry["result_files"] for entry in counted.entries.values())
    results_path = str(results_dir) if copied_any or state.entries else None
    summary = summarize(
        operation,
        object_name,
        entries,
        by_code,
        results_path,
        instance_url,
        state.input_of(counted),
        resubmitted=sum(state.ledger.resubmitted.values()),
        rounds=state.round,
        failed_results=None
        if results_path is None
        else _final_failures(results_dir, entries, state.ledger, policy, delimiter, try_number, stop, log),
    )
    log.info(
        "Summary: %s records, %s succeeded, %s failed, %s unprocessed in %s job(s); failed by code %s; "
        "results in %s",
        *(summary["totals"][key] for key in ("records", "succeeded", "failed", "unprocessed", "jobs")),
        summary["failed_by_error_code"],
        summary["results_path"],
    )
    return summary, samples


def _final_failures(
    results_dir: Any,
    entries: dict[str, dict[str, Any]],
    ledger: ResubmitLedger,
    policy: ResubmitPolicy,
    delimiter: str,
    try_number: int | None,
    stop: threading.Event,
    log: Any,
) -> dict[str, Any]:
    """The summary's ``failed_results`` (the task's final failed-results file) and its row count."""
    files = readable_failed_files(entries, log.warning)
    if files is None:
        return {"failed_results": None}
    token = f"try{try_number or 0}-{secrets.token_hex(4)}"
    uri, rows = run_sync(
        lambda: write_final_failures(results_dir, files, ledger, policy, delimiter, token=token, stop=stop)
    )
    log.info("Records whose final outcome is failed: %d, in %s", rows, uri)
    return {"failed_results": uri, "failed_results_rows": rows}


def apply_failure_policy(
    checked: JobsEvent,
    summary: dict[str, Any],
    samples: dict[str, str],
    max_failed_records: int | None,
    max_failed_ratio: float | None,
) -> None:
    """Fail the task when the wait failed, ran out of time, or the summary breaks the policy."""
    if checked["status"] == "error":
        raise AirflowException(
            f"Waiting for the Salesforce jobs failed: {checked['message']}; "
            "a retry reattaches to the same jobs"
        )
    problem = failure_message(summary, samples, max_failed_records, max_failed_ratio)
    if checked["status"] == "timeout":
        problem = f"{checked['message']}; " + (problem or "")
    if problem:
        raise AirflowException(problem)


def check_thresholds(max_failed_records: Any, max_failed_ratio: Any) -> None:
    """The failure policy's thresholds (untyped DAG input): an ``InputError`` naming a bad one."""
    records = max_failed_records
    if records is not None and (isinstance(records, bool) or not isinstance(records, int) or records < 0):
        raise InputError("max_failed_records must be an int >= 0", field="max_failed_records")
    if max_failed_ratio is not None:
        try:
            number = float(max_failed_ratio)
        except (TypeError, ValueError):
            number = math.nan
        if isinstance(max_failed_ratio, bool) or not 0 <= number <= 1:
            raise InputError(
                f"max_failed_ratio must be a number between 0 and 1, not {max_failed_ratio!r}",
                field="max_failed_ratio",
            )
