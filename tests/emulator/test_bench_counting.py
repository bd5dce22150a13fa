"""The fault bench can see a record sent twice (issue 15 §6).

Its inputs carry no field the org keeps unique, so a chunk inserted twice is stored twice, and its
counting (``benchmarks/_fault_count.py``) reports every extra copy. A bench counting by the unique
``External_Id__c`` could not: the org refuses the second copy with DUPLICATE_VALUE.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from airflow_provider_salesforce_bulk.emulator.schema import load_schema
from airflow_provider_salesforce_bulk.emulator.server import RunningEmulator
from benchmarks import _kill_then_change, bench_faults
from benchmarks._fault_count import (
    DUPLICATED_OR_MISSING,
    EXACTLY_ONCE,
    FAILED_AFTER_NEW_JOBS,
    FAILED_LOUDLY,
    FAILED_UNNAMED,
    count_load,
    stored_keys,
    verdict,
)

from .helpers import run_job

N = 30


def _csv(with_external_id: bool) -> str:
    header = "LastName,FirstName" + (",External_Id__c" if with_external_id else "")
    rows = [f"F-{i},Fault" + (f",F-{i}" if with_external_id else "") for i in range(N)]
    return "\n".join([header, *rows]) + "\n"


def test_a_chunk_inserted_twice_is_counted_twice(emulator: RunningEmulator, api: httpx.Client) -> None:
    for _ in range(2):
        info, _results = run_job(api, _csv(False), object="Contact", operation="insert")
        assert (info["state"], info["numberRecordsFailed"]) == ("JobComplete", 0)
    keys = {f"F-{i}" for i in range(N)}
    count = count_load(stored_keys(emulator.records("Contact"), bench_faults.KEY_FIELD), [keys])
    assert (count.stored, count.duplicated, count.missing, count.extra) == (2 * N, N, 0, 0)
    failing = verdict(count, succeeded=True, summary_vs_org=0, new_jobs_after_kill=2, failure=None)
    assert failing == DUPLICATED_OR_MISSING


def test_a_unique_external_id_hides_the_second_copy(emulator: RunningEmulator, api: httpx.Client) -> None:
    """Why the bench no longer counts by External_Id__c: the second insert fails instead of storing."""
    run_job(api, _csv(True), object="Contact", operation="insert")
    info, results = run_job(api, _csv(True), object="Contact", operation="insert")
    assert info["numberRecordsFailed"] == N
    assert "DUPLICATE_VALUE" in results["failedResults"]
    count = count_load(stored_keys(emulator.records("Contact"), "External_Id__c"), [set()])
    assert count.duplicated == 0


def test_the_benchs_inputs_have_no_field_the_org_keeps_unique(tmp_path: Path) -> None:
    contact = load_schema().get("Contact")
    assert contact is not None
    path = tmp_path / "records.ndjson"
    bench_faults.write_input(path, 5)
    fields = {name for line in path.read_text().splitlines() for name in json.loads(line)}
    _kill_then_change.build("records_regenerated", tmp_path / "changed")
    changed = json.loads((tmp_path / "changed" / "records.json").read_text())
    fields |= {name for record in changed for name in record}
    assert bench_faults.KEY_FIELD in fields
    for name in fields:
        field = contact.field(name)
        assert field is not None
        assert not field.unique, name


def test_a_changed_input_is_counted_against_the_version_the_summary_names() -> None:
    first = {"a", "b", "c"}
    now = first | {"top"}
    stored = ["a", "b", "c", "c"]  # a row on top: one record sent again, the new one skipped
    by_now = count_load(stored, [first, now], claimed_records=4)
    assert (by_now.version, by_now.duplicated, by_now.missing) == (1, 1, 1)
    by_first = count_load(["a", "b", "c"], [first, now], claimed_records=3)
    assert (by_first.version, by_first.duplicated, by_first.missing, by_first.extra) == (0, 0, 0, 0)
    assert count_load(["a", "zz"], [first], reported_not_stored=1).extra == 1


def test_the_verdict_tells_the_three_outcomes_apart() -> None:
    once = count_load(["a", "b"], [{"a", "b"}])
    partial = count_load(["a"], [{"a", "b"}])
    assert (
        verdict(once, succeeded=True, summary_vs_org=0, new_jobs_after_kill=1, failure=None) == EXACTLY_ONCE
    )
    loud = "InputError: chunk 2000 (job 750...) changed since the first try"
    assert verdict(partial, succeeded=False, summary_vs_org=None, new_jobs_after_kill=0, failure=loud) == (
        FAILED_LOUDLY
    )
    assert verdict(partial, succeeded=False, summary_vs_org=0, new_jobs_after_kill=1, failure=loud) == (
        FAILED_AFTER_NEW_JOBS
    )
    assert verdict(partial, succeeded=False, summary_vs_org=None, new_jobs_after_kill=0, failure="boom") == (
        FAILED_UNNAMED
    )
    assert verdict(partial, succeeded=True, summary_vs_org=0, new_jobs_after_kill=1, failure=None) == (
        DUPLICATED_OR_MISSING
    )
