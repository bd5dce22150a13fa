"""Resubmitting transient failures: rounds against the emulator's lock failures over a real socket,
each record stored once and counted once; single failed-results answers through MockTransport."""

from __future__ import annotations

import asyncio
import csv
import io
import itertools
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from airflow_provider_salesforce_bulk.client import (
    BulkIngestClient,
    ChunkFormat,
    ChunkLimits,
    InputError,
    JobInfo,
    JobSpec,
    PollPolicy,
    ResubmitPolicy,
    RetryPolicy,
    SalesforceSession,
    UnexpectedResponseError,
    perform_operation,
)
from airflow_provider_salesforce_bulk.client.operation import submit_job
from airflow_provider_salesforce_bulk.client.resubmit import (
    ResubmitChunk,
    ResubmitLedger,
    iter_resubmit_chunks,
    resubmit_round,
)
from airflow_provider_salesforce_bulk.client.sf_error import parse_sf_error
from airflow_provider_salesforce_bulk.emulator.server import RunningEmulator
from tests.client import helpers

FAST = RetryPolicy(max_attempts=3, initial_delay=0.01, max_delay=0.02, max_total=30)
POLL = PollPolicy(initial=0.02, maximum=0.1)
INSTANCE = "https://example.my.salesforce.com"
JOB = "750000000000001AAA"


@pytest.fixture
def org(emulator: RunningEmulator) -> Iterator[RunningEmulator]:
    emulator.reset()
    yield emulator
    emulator.update_settings(lock_failure_rate=0.0)


def emulator_session(emulator: RunningEmulator) -> SalesforceSession:
    return helpers.emulator_session(emulator, retry_policy=FAST)


def rows_of(chunk: ResubmitChunk, delimiter: str = ",") -> list[list[str]]:
    return list(csv.reader(io.StringIO(chunk.data.decode(), newline=""), delimiter=delimiter, strict=True))


async def load_in_rounds(
    client: BulkIngestClient,
    first_round: list[tuple[JobInfo, int]],
    policy: ResubmitPolicy,
    ledger: ResubmitLedger,
    **chunk_options: Any,
) -> int:
    """Resubmit round after round as an operator would; returns the number of rounds run."""
    for job, count in first_round:
        ledger.add_job(job, 1, count)
    ended = [job.id for job, _ in first_round]
    round_number = 1
    created: list[str] = []

    async def remember(job: JobInfo, chunk: ResubmitChunk) -> None:
        assert chunk.record_count > 0
        created.append(job.id)

    while policy.may_follow(round_number):
        await asyncio.sleep(policy.delay_before(round_number + 1))
        made = await resubmit_round(
            client,
            ended,
            policy,
            ledger,
            JobSpec(operation="insert", object="Account"),
            on_job_created=remember,
            **chunk_options,
        )
        if not made:
            break
        round_number += 1
        assert [m.job_info.id for m in made] == created[-len(made) :]
        ended = []
        for retry in made:
            job = await client.wait_for_job(retry.job_info.id, poll=POLL, timeout=60)
            ledger.add_job(job, round_number, retry.record_count)
            ended.append(job.id)
    return round_number


async def test_lock_failures_are_resubmitted_until_every_record_is_stored_once(org):
    org.update_settings(lock_failure_rate=0.3, seed=11)
    n = 3_000
    records = [{"Name": f"Lock {i}", "External_Id__c": f"L-{i}"} for i in range(n)]
    policy = ResubmitPolicy(max_rounds=10, backoff=0.01, backoff_factor=1.5)
    ledger = ResubmitLedger()
    async with emulator_session(org) as session:
        client = BulkIngestClient(session)
        first = [
            (r.job_info, r.record_count)
            async for r in perform_operation(
                client, "insert", "Account", records, max_records=1_000, polling_interval=0.02
            )
        ]
        assert sum(job.number_records_failed for job, _ in first) > 500
        rounds = await load_in_rounds(client, first, policy, ledger, limits=ChunkLimits(max_records=400))
    print(f"rounds {rounds}, totals {ledger.totals()}")
    stored = [rec["External_Id__c"] for rec in org.records("Account")]
    assert len(stored) == len(set(stored))  # an insert sent twice would show as a duplicate
    totals = ledger.totals()
    assert 3 <= rounds <= 10
    assert totals["successful"] == len(stored)
    assert totals["successful"] + totals["failed"] + totals["unprocessed"] == n
    assert totals["resubmitted"] == sum(j.failed for j in ledger.jobs.values()) - totals["failed"]
    if rounds < 10:
        assert totals["failed"] == 0
        assert sorted(stored) == sorted(f"L-{i}" for i in range(n))
    assert max(j.round for j in ledger.jobs.values()) == rounds
    # Carried across a deferral as JSON, it counts the same.
    assert ResubmitLedger.from_dict(json.loads(json.dumps(ledger.to_dict()))).totals() == totals


async def test_rounds_are_bounded_and_what_still_fails_is_counted_failed_once(org):
    org.update_settings(lock_failure_rate=0.5, seed=2)
    n = 400
    records = [{"Name": f"B {i}", "External_Id__c": f"B-{i}"} for i in range(n)]
    policy = ResubmitPolicy(max_rounds=2, backoff=0.0)
    ledger = ResubmitLedger()
    async with emulator_session(org) as session:
        client = BulkIngestClient(session)
        first = [
            (r.job_info, r.record_count)
            async for r in perform_operation(client, "insert", "Account", records, polling_interval=0.02)
        ]
        assert await load_in_rounds(client, first, policy, ledger) == 2
        last = [job_id for job_id, job in ledger.jobs.items() if job.round == 2]
        still_failing = [
            row["External_Id__c"] for job_id in last async for row in client.iter_failed_results(job_id)
        ]
        first_failures = [row async for row in client.iter_failed_results(first[0][0].id)]
    stored = [rec["External_Id__c"] for rec in org.records("Account")]
    totals = ledger.totals()
    assert totals["failed"] == len(still_failing) > 0
    assert totals["successful"] == len(stored) == len(set(stored))
    assert sorted(stored + still_failing) == sorted(r["External_Id__c"] for r in records)
    # Round 1's lock failures were sent again: a result writer leaves them out of round 1's file.
    assert first_failures
    assert not any(ledger.is_final_failure(first[0][0].id, r["sf__Error"], policy) for r in first_failures)
    assert all(ledger.is_final_failure(job_id, "UNABLE_TO_LOCK_ROW:busy:--", policy) for job_id in last)


async def test_only_the_policys_codes_are_taken_and_values_come_back_unchanged(org):
    org.update_settings(lock_failure_rate=0.5, seed=3)
    tricky = ["a|b", 'say "hi"', "two\nlines", "crlf\r\nin", "naïve ☃", "  spaced  ", ""]
    records = [
        {
            "Name": f"T {i}" if i % 5 else "",
            "External_Id__c": f"T-{i}",
            "Description": tricky[i % len(tricky)],
        }
        for i in range(300)
    ]
    expected = {r["External_Id__c"]: r["Description"] for r in records if r["Name"]}
    async with emulator_session(org) as session:
        client = BulkIngestClient(session)
        (first,) = [
            r
            async for r in perform_operation(
                client,
                "insert",
                "Account",
                records,
                polling_interval=0.02,
                column_delimiter="PIPE",
                line_ending="CRLF",
            )
        ]
        failures = [row["sf__Error"] async for row in first.iter_failed_results()]
        codes = {parse_sf_error(e).status_code for e in failures}
        assert codes == {"REQUIRED_FIELD_MISSING", "UNABLE_TO_LOCK_ROW"}
        locked = sum(parse_sf_error(e).status_code == "UNABLE_TO_LOCK_ROW" for e in failures)
        chunks = [
            c
            async for c in iter_resubmit_chunks(
                client,
                [first.job_id],
                limits=ChunkLimits(max_records=50),
                chunk_format=ChunkFormat(column_delimiter="PIPE", line_ending="CRLF"),
            )
        ]
        assert sum(c.record_count for c in chunks) == locked
        assert [c.first_record_index for c in chunks] == [50 * i for i in range(len(chunks))]
        assert all(c.origins == ((first.job_id, c.record_count),) for c in chunks)
        org.update_settings(lock_failure_rate=0.0)
        for chunk in chunks:
            assert rows_of(chunk, "|")[0] == ["Name", "External_Id__c", "Description"]
            assert chunk.data.endswith(b"\r\n")
            spec = JobSpec(operation="insert", object="Account", column_delimiter="PIPE", line_ending="CRLF")
            job, _ = await submit_job(client, spec, chunk.data)
            done = await client.wait_for_job(job.id, poll=POLL, timeout=60)
            # A record without a name may have hit the lock first: now it fails for good.
            nameless = sum(1 for row in rows_of(chunk, "|")[1:] if not row[0])
            assert done.number_records_failed == nameless
    stored = {rec["External_Id__c"]: rec["Description"] or "" for rec in org.records("Account")}
    assert stored == expected  # every record with a name, once, its value byte for byte


async def test_a_job_that_has_not_ended_is_refused(org):
    async with emulator_session(org) as session:
        client = BulkIngestClient(session)
        job = await client.create_job("insert", "Account")
        with pytest.raises(InputError, match="Open"):
            [c async for c in iter_resubmit_chunks(client, [job.id])]
        await client.abort_job(job.id)


# -- single answers ----------------------------------------------------------------------------------


def mock_client(failed_csv: bytes, state: str = "JobComplete", failed: int = 1) -> BulkIngestClient:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/failedResults"):
            return httpx.Response(200, content=failed_csv, headers={"Content-Type": "text/csv"})
        return httpx.Response(
            200,
            json={
                "id": JOB,
                "state": state,
                "columnDelimiter": "COMMA",
                "lineEnding": "LF",
                "numberRecordsProcessed": 5,
                "numberRecordsFailed": failed,
            },
        )

    session = helpers.mock_session(
        "00D!static",
        INSTANCE,
        transport=httpx.MockTransport(handler),
        retry_policy=FAST,
    )
    return BulkIngestClient(session)


def retry_chunks(client: BulkIngestClient, **limits: int) -> list[ResubmitChunk]:
    async def run() -> list[ResubmitChunk]:
        async with client.session:
            return [c async for c in iter_resubmit_chunks(client, [JOB], limits=ChunkLimits(**limits))]

    return asyncio.run(run())


def failed_file(rows: list[tuple[str, list[str]]], header: list[str]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, quoting=csv.QUOTE_ALL, lineterminator="\n")
    writer.writerow(["sf__Id", "sf__Error", *header])
    for error, values in rows:
        writer.writerow(["", error, *values])
    return out.getvalue().encode()


def test_chunks_respect_both_limits_exactly():
    rows = [
        (f"UNABLE_TO_LOCK_ROW:unable to obtain exclusive access:-- {i}", [f"N{i}", "x" * (i % 7)])
        for i in range(40)
    ]
    client = mock_client(failed_file(rows, ["Name", "Description"]), failed=40)
    header = b"Name,Description\n"
    size = len(header) + 3 * len(b"N10,xxx\n")
    chunks = retry_chunks(client, max_size_bytes=size, max_records=5)
    assert all(len(c.data) <= size and c.record_count <= 5 for c in chunks)
    for chunk, following in itertools.pairwise(chunks):
        # Full: the next chunk's first record would not have fitted.
        next_record = following.data[len(header) :].split(b"\n", 1)[0] + b"\n"
        assert chunk.record_count == 5 or len(chunk.data) + len(next_record) > size
    names = [row[0] for c in chunks for row in rows_of(c)[1:]]
    assert names == [f"N{i}" for i in range(40)]
    assert [c.first_record_index for c in chunks] == [
        sum(c.record_count for c in chunks[:k]) for k in range(len(chunks))
    ]


def test_a_record_too_large_for_a_chunk_is_an_unexpected_response_not_a_loss():
    rows = [("UNABLE_TO_LOCK_ROW:x:--", ["N", "y" * 100])]
    with pytest.raises(UnexpectedResponseError, match="max_size_bytes"):
        retry_chunks(mock_client(failed_file(rows, ["Name", "Description"])), max_size_bytes=60)


def test_failed_results_without_sf_error_are_refused():
    data = b'"sf__Id","Name"\n"","N"\n'
    with pytest.raises(UnexpectedResponseError, match="sf__Error"):
        retry_chunks(mock_client(data))


def test_a_job_named_twice_gives_its_records_once():
    rows = [("UNABLE_TO_LOCK_ROW:x:--", [f"N{i}", ""]) for i in range(3)]
    client = mock_client(failed_file(rows, ["Name", "Description"]), failed=3)

    async def run() -> list[ResubmitChunk]:
        async with client.session:
            return [c async for c in iter_resubmit_chunks(client, [JOB, JOB])]

    (chunk,) = asyncio.run(run())
    assert chunk.record_count == 3
    assert chunk.origins == ((JOB, 3),)


def test_a_job_without_failures_is_not_downloaded():
    assert retry_chunks(mock_client(b"not even csv \x00", failed=0)) == []


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.text(max_size=12), st.text(max_size=12)), max_size=30))
def test_values_round_trip_through_the_new_chunks(rows):
    data = [
        ("UNABLE_TO_LOCK_ROW:busy:--" if lock else "DUPLICATE_VALUE:dup:Name --", [a, b])
        for lock, a, b in rows
    ]
    data = [(e, [v.replace("\x00", "") for v in values]) for e, values in data]
    chunks = retry_chunks(
        mock_client(failed_file(data, ["Name", "Description"]), failed=len(rows)), max_records=4
    )
    got = [row for c in chunks for row in rows_of(c)[1:]]
    assert got == [values for e, values in data if e.startswith("UNABLE")]


# -- the policy --------------------------------------------------------------------------------------


def test_policy_backoff_and_rounds():
    policy = ResubmitPolicy(
        codes=["UNABLE_TO_LOCK_ROW", "UNABLE_TO_LOCK_ROW"], max_rounds=4, backoff=10, max_backoff=25
    )
    assert policy.codes == ("UNABLE_TO_LOCK_ROW",)
    assert [policy.delay_before(r) for r in (1, 2, 3, 4)] == [0.0, 10.0, 20.0, 25.0]
    assert [policy.may_follow(r) for r in (1, 3, 4)] == [True, True, False]
    assert policy.matches("UNABLE_TO_LOCK_ROW:unable to obtain exclusive access to this record:--")
    assert not policy.matches("DUPLICATE_VALUE:duplicate value found:External_Id__c --")
    assert not ResubmitPolicy(codes=()).may_follow(1)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"codes": "UNABLE_TO_LOCK_ROW"},
        {"codes": ["unable to lock"]},
        {"codes": [None]},
        {"max_rounds": 0},
        {"max_rounds": 11},
        {"max_rounds": True},
        {"backoff": float("nan")},
        {"backoff": float("inf")},
        {"backoff": -1},
        {"backoff_factor": 0.5},
        {"max_backoff": 1e9},
    ],
)
def test_bad_policies_are_input_errors(kwargs):
    with pytest.raises(InputError):
        ResubmitPolicy(**kwargs)


def test_ledger_counts_a_resubmitted_record_once_and_refuses_a_bad_dump():
    ledger = ResubmitLedger()
    ledger.add_job(JobInfo(id="A", number_records_processed=10, number_records_failed=4), 1, 12)
    ledger.add_resubmitted(ResubmitChunk(b"Name\nx\ny\nz\n", 0, 3, origins=(("A", 3),)))
    ledger.add_job(JobInfo(id="B", number_records_processed=3, number_records_failed=1), 2, 3)
    assert ledger.totals() == {"successful": 8, "failed": 2, "unprocessed": 2, "resubmitted": 3}
    assert ledger.round_of("B") == 2
    policy = ResubmitPolicy()
    assert not ledger.is_final_failure("A", "UNABLE_TO_LOCK_ROW:busy:--", policy)
    assert ledger.is_final_failure("A", "DUPLICATE_VALUE:dup:Name --", policy)
    assert ledger.is_final_failure("B", "UNABLE_TO_LOCK_ROW:busy:--", policy)
    for bad in (
        {},
        {"jobs": {"A": [1, 2]}, "resubmitted": {}},
        {"jobs": {"A": [1, 2, 3, -1]}, "resubmitted": {}},
        {"jobs": {}, "resubmitted": {"A": "3"}},
        {"jobs": [], "resubmitted": {}},
    ):
        with pytest.raises(InputError, match="ledger"):
            ResubmitLedger.from_dict(bad)


async def test_resubmit_round_hooks_skip_a_chunk_sent_before_and_see_each_step_in_order(org):
    # What the Airflow operator relies on to record a round in its plan: a chunk an earlier try sent is
    # skipped (neither sent nor counted here), and each job is announced created, closing (before the
    # ledger counts its records), then closed.
    org.update_settings(lock_failure_rate=0.5, seed=5)
    records = [{"Name": f"Hook {i}", "External_Id__c": f"H-{i}"} for i in range(120)]
    async with emulator_session(org) as session:
        client = BulkIngestClient(session)
        first = [
            r.job_info
            async for r in perform_operation(client, "insert", "Account", records, polling_interval=0.02)
        ]
        ledger = ResubmitLedger()
        steps: list[tuple[str, str, int]] = []
        skipped: list[ResubmitChunk] = []

        async def sent_before(chunk: ResubmitChunk) -> bool:
            if chunk.first_record_index == 0:
                skipped.append(chunk)
                return True
            return False

        def hook(step: str) -> Any:
            async def record(job: JobInfo, chunk: ResubmitChunk) -> None:
                steps.append((step, job.id, sum(ledger.resubmitted.values())))

            return record

        made = await resubmit_round(
            client,
            [job.id for job in first],
            ResubmitPolicy(),
            ledger,
            JobSpec(operation="insert", object="Account"),
            limits=ChunkLimits(max_records=10),
            sent_before=sent_before,
            on_job_created=hook("created"),
            on_job_closing=hook("closing"),
            on_job_closed=hook("closed"),
        )
    failed = sum(job.number_records_failed for job in first)
    assert failed > 20  # several chunks of 10
    (first_chunk,) = skipped
    assert first_chunk.record_count == 10
    assert sum(m.record_count for m in made) == failed - 10  # the skipped chunk was not sent
    assert sum(ledger.resubmitted.values()) == failed - 10  # nor counted here
    counted = 0
    for i, job in enumerate(made):
        assert steps[3 * i : 3 * i + 3] == [
            ("created", job.job_info.id, counted),
            ("closing", job.job_info.id, counted),  # told before the ledger counts the chunk
            ("closed", job.job_info.id, counted + job.record_count),
        ]
        counted += job.record_count
