"""The failure policy and its message, without Airflow or a network."""

from __future__ import annotations

import collections

from airflow_provider_salesforce_bulk.client import JobInfo
from airflow_provider_salesforce_bulk.operators.summary import failure_message, job_entry, summarize
from airflow_provider_salesforce_bulk.triggers.events import JobSummary, job_summary


def _job(job_id: str, state: str, processed: int, failed: int, error: str | None = None) -> JobSummary:
    info = JobInfo(
        id=job_id,
        state=state,
        number_records_processed=processed,
        number_records_failed=failed,
        error_message=error,
    )
    return job_summary(info)


def _summary(state: str = "JobComplete", failed: int = 3, records: int = 100) -> dict[str, object]:
    error = "InvalidBatch : Field name not found : Foo" if state == "Failed" else None
    job = _job("750A", state, records, failed, error)
    rows = {"successful": records - failed, "failed": failed, "unprocessed": 0}
    entries = {"750A": job_entry(job, records, {}, rows)}
    return summarize(
        "upsert", "Contact", entries, collections.Counter({"DUPLICATE_VALUE": failed}), "/r", None
    )


SAMPLES = {"DUPLICATE_VALUE": "DUPLICATE_VALUE:duplicate value found: External_Id__c:--"}


def test_default_policy_fails_on_any_failed_record_naming_job_and_errors() -> None:
    message = failure_message(_summary(), SAMPLES, None, None)
    assert message is not None
    assert "750A" in message
    assert "max_failed_records=0" in message
    assert "DUPLICATE_VALUE: 3" in message
    assert "duplicate value found" in message
    assert failure_message(_summary(failed=0), SAMPLES, None, None) is None


def test_thresholds() -> None:
    assert failure_message(_summary(failed=3), SAMPLES, 3, None) is None
    assert failure_message(_summary(failed=4), SAMPLES, 3, None) is not None
    assert failure_message(_summary(failed=5), SAMPLES, None, 0.05) is None
    assert "max_failed_ratio=0.05" in (failure_message(_summary(failed=6), SAMPLES, None, 0.05) or "")
    # Both set: exceeding either fails.
    assert failure_message(_summary(failed=6), SAMPLES, 100, 0.05) is not None


def test_failed_job_always_fails_with_salesforce_message() -> None:
    message = failure_message(_summary(state="Failed", failed=0, records=0), {}, 1000, 1.0)
    assert message is not None
    assert "job 750A ended Failed: InvalidBatch : Field name not found : Foo" in message


def test_records_missing_from_result_files_fail_the_task() -> None:
    job = _job("750B", "JobComplete", 10, 0)
    entry = job_entry(job, 10, {}, {"successful": 9, "failed": 0, "unprocessed": 0})
    summary = summarize("insert", "Contact", {"750B": entry}, collections.Counter(), "/r", None)
    assert "result files hold 9 rows for 10 records" in (failure_message(summary, {}, 1000, None) or "")


def test_records_sent_again_count_once_at_their_final_outcome() -> None:
    # Chunk of 100: job A aborted after 60 (5 failed), its 40 unprocessed resent to job B, which
    # completed with 2 failed. Chunk of 50: job C never closed (replaced), its chunk sent to job D.
    a = _job("A", "Aborted", 60, 5)
    b = _job("B", "JobComplete", 40, 2)
    c = _job("C", "Aborted", 0, 0)
    d = _job("D", "JobComplete", 50, 0)
    entries = {
        "A": job_entry(a, 100, {}, {}, "resent", "B"),
        "B": job_entry(b, 40, {}, {}),
        "C": job_entry(c, 50, {}, {}, "replaced", "D"),
        "D": job_entry(d, 50, {}, {}),
    }
    summary = summarize("insert", "Contact", entries, collections.Counter(), "/r", None, 150)
    assert summary["totals"] == {
        "records": 150,
        "processed": 150,
        "succeeded": 143,
        "failed": 7,
        "unprocessed": 0,
        "jobs": 4,
    }
    assert "unaccounted" not in summary
    assert entries["A"]["unprocessed"] == 40
    assert entries["A"]["next_job"] == "B"
    # The aborted and replaced jobs were settled: only the failed records fail the task.
    message = failure_message(summary, {}, 7, None)
    assert message is None


def test_totals_that_miss_input_records_fail_the_task() -> None:
    job = _job("A", "JobComplete", 90, 0)
    summary = summarize(
        "insert", "Contact", {"A": job_entry(job, 90, {}, {})}, collections.Counter(), "/r", None, 100
    )
    assert summary["unaccounted"] == 10
    assert "the jobs account for 90 of 100 input records" in (failure_message(summary, {}, 1000, None) or "")
