"""The client against the local Salesforce emulator over a real socket: every login flow, every
operation, results matching what was stored, and survival of the emulator's faults with every
record loaded exactly once."""

from __future__ import annotations

import datetime
import io
import warnings
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from airflow_provider_salesforce_bulk.client import (
    AuthenticationError,
    BulkIngestClient,
    BulkOperationError,
    BulkOperationTimeoutError,
    ClientCredentialsAuth,
    JobResult,
    JwtBearerAuth,
    PasswordAuth,
    PollPolicy,
    RefreshTokenAuth,
    RetryPolicy,
    SalesforceSession,
    ServerUnavailableError,
    SoapLoginAuth,
    StaticTokenAuth,
    TokenProvider,
)
from airflow_provider_salesforce_bulk.emulator.server import RunningEmulator
from tests.client import helpers
from tests.client.fake_bulk import LOSE_ANSWER, FaultyTransport, is_abort, is_close, job_id_of

FAST_RETRY = RetryPolicy(max_attempts=8, initial_delay=0.01, max_delay=0.05, max_total=30)


@pytest.fixture(autouse=True)
def clean(emulator: RunningEmulator) -> Iterator[None]:
    emulator.reset()
    yield
    emulator.update_settings(
        error_503_rate=0.0,
        error_500_rate=0.0,
        drop_rate=0.0,
        session_expiry_every_seconds=None,
        lock_failure_rate=0.0,
        job_failure_rate=0.0,
    )


def session_for(emulator: RunningEmulator, auth: TokenProvider | None = None, **kwargs) -> SalesforceSession:
    return helpers.emulator_session(emulator, auth, retry_policy=FAST_RETRY, **kwargs)


def all_flows(emulator: RunningEmulator) -> dict[str, TokenProvider]:
    c = emulator.credentials
    url = emulator.base_url
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        soap = SoapLoginAuth(c.username, c.password, c.security_token, login_url=url)
    return {
        "client_credentials": ClientCredentialsAuth(c.client_id, c.client_secret, url),
        "jwt_bearer": JwtBearerAuth(
            c.client_id,
            c.username,
            private_key=c.private_key_pem,
            login_url=url,
            audience="https://login.salesforce.com",
        ),
        "password": PasswordAuth(
            c.client_id, c.client_secret, c.username, c.password, c.security_token, login_url=url
        ),
        "refresh_token": RefreshTokenAuth(c.client_id, c.refresh_token, c.client_secret, login_url=url),
        "soap": soap,
        "static": StaticTokenAuth(emulator.new_access_token(), url),
    }


@pytest.mark.parametrize(
    "flow", ["client_credentials", "jwt_bearer", "password", "refresh_token", "soap", "static"]
)
async def test_every_login_flow_reaches_the_bulk_api(emulator, flow):
    async with session_for(emulator, all_flows(emulator)[flow]) as session:
        client = BulkIngestClient(session)
        job = await client.create_job("insert", "Account")
        assert job.state == "Open"
        assert (await client.abort_job(job.id)).state == "Aborted"
        assert session.api_usage is not None


async def test_wrong_secret_is_an_authentication_error_with_salesforces_words(emulator):
    c = emulator.credentials
    async with session_for(
        emulator, ClientCredentialsAuth(c.client_id, "not-the-secret", emulator.base_url)
    ) as s:
        with pytest.raises(AuthenticationError) as info:
            await BulkIngestClient(s).create_job("insert", "Account")
    assert info.value.error in ("invalid_client", "invalid_grant", "invalid_client_id")
    assert "not-the-secret" not in str(info.value)


async def collect(gen):
    return [r async for r in gen]


async def drain(gen, into: list) -> None:
    async for item in gen:
        into.append(item)


def contacts(n: int, bad: set[int]) -> Iterator[dict[str, object]]:
    for i in range(n):
        yield {
            "External_Id__c": f"C-{i:05d}",
            "LastName": None if i in bad else f'O"Brien, {i}\nline two é😀',
            "Birthdate": datetime.date(1990, 1, 1) + datetime.timedelta(days=i),
            "HasOptedOutOfEmail": i % 2 == 0,
        }


FIELDS = ["External_Id__c", "LastName", "Birthdate", "HasOptedOutOfEmail"]


async def test_upsert_insert_update_delete_and_results_match_the_org(emulator):
    bad = {3, 17, 40}
    async with session_for(emulator) as session:
        client = BulkIngestClient(session)
        results = [
            r
            async for r in client.perform_operation(
                "upsert",
                "Contact",
                contacts(120, bad),
                fieldnames=FIELDS,
                external_id_field="External_Id__c",
                max_records=50,
                polling_interval=0.05,
            )
        ]
        assert sorted((r.first_record_index, r.record_count) for r in results) == [
            (0, 50),
            (50, 50),
            (100, 20),
        ]
        assert sum(r.number_records_failed for r in results) == len(bad)
        assert sum(r.number_records_succeeded for r in results) == 120 - len(bad)

        stored = {rec["External_Id__c"]: rec for rec in emulator.records("Contact")}
        assert len(stored) == 120 - len(bad)
        assert stored["C-00001"]["LastName"] == 'O"Brien, 1\nline two é😀'

        created: dict[str, str] = {}
        failed_ext: set[str] = set()
        for result in results:
            async for row in result.iter_successful_results():
                assert row["sf__Created"] == "true"
                created[row["External_Id__c"]] = row["sf__Id"]
            async for row in result.iter_failed_results():
                assert row["sf__Error"].startswith("REQUIRED_FIELD_MISSING")
                failed_ext.add(row["External_Id__c"])
        assert failed_ext == {f"C-{i:05d}" for i in bad}
        assert created == {ext: rec["Id"] for ext, rec in stored.items()}
        assert created["C-00001"].startswith("003")
        assert len(created["C-00001"]) == 18

        # The same upsert again updates instead of creating.
        again = [
            r
            async for r in client.perform_operation(
                "upsert",
                "Contact",
                [{"External_Id__c": "C-00001", "LastName": "Renamed"}],
                external_id_field="External_Id__c",
                polling_interval=0.05,
            )
        ]
        rows = [row async for row in again[0].iter_successful_results()]
        assert rows[0]["sf__Created"] == "false"

        # Update by Id, then delete by Id.
        updated = [
            r
            async for r in client.perform_operation(
                "update", "Contact", [{"Id": created["C-00002"], "Title": "CTO"}], polling_interval=0.05
            )
        ]
        assert updated[0].is_success
        ids = [{"Id": created[f"C-{i:05d}"]} for i in (5, 6)] + [{"Id": "003000000000000AAA"}]
        deleted = [r async for r in client.perform_operation("delete", "Contact", ids, polling_interval=0.05)]
        assert deleted[0].number_records_succeeded == 2
        assert deleted[0].number_records_failed == 1

    after = {rec["External_Id__c"]: rec for rec in emulator.records("Contact")}
    assert after["C-00001"]["LastName"] == "Renamed"
    assert after["C-00002"]["Title"] == "CTO"
    assert "C-00005" not in after
    assert "C-00006" not in after


async def test_csv_file_with_semicolons_and_crlf(emulator, tmp_path):
    path = tmp_path / "accounts.csv"
    path.write_bytes(b'Name;External_Id__c\r\n"A; Inc.";A-1\r\n"multi\r\nline";A-2\r\n;A-3\r\n')
    async with session_for(emulator) as session:
        client = BulkIngestClient(session)
        results = [
            r
            async for r in client.perform_csv_operation(
                "insert",
                "Account",
                str(path),
                column_delimiter="SEMICOLON",
                line_ending="CRLF",
                polling_interval=0.05,
            )
        ]
    (result,) = results
    assert (result.number_records_succeeded, result.number_records_failed) == (2, 1)
    names = sorted(rec["Name"] for rec in emulator.records("Account"))
    assert names == ["A; Inc.", "multi\r\nline"]


async def test_whole_job_failure_is_reported_with_salesforces_message(emulator):
    async with session_for(emulator) as session:
        client = BulkIngestClient(session)
        (result,) = [
            r
            async for r in client.perform_operation(
                "insert", "Account", [{"Name": "x", "NoSuchField__c": "y"}], polling_interval=0.05
            )
        ]
    assert result.job_info.state == "Failed"
    assert result.job_info.error_message == "InvalidBatch : Field name not found : NoSuchField__c"
    assert result.number_records_unprocessed == 1


async def test_list_jobs_pages_and_delete(emulator):
    emulator.update_settings(job_page_size=2)
    async with session_for(emulator) as session:
        client = BulkIngestClient(session)
        made = [(await client.create_job("insert", "Account")).id for _ in range(5)]
        listed = [job.id async for job in client.list_jobs()]
        assert sorted(set(listed) & set(made)) == sorted(made)
        await client.abort_job(made[0])
        await client.delete_job(made[0])
        assert made[0] not in [job.id async for job in client.list_jobs()]
    emulator.update_settings(job_page_size=1000)


async def test_gzip_upload_and_copy_results(emulator):
    async with session_for(emulator) as session:
        client = BulkIngestClient(session)
        (result,) = [
            r
            async for r in client.perform_operation(
                "insert",
                "Account",
                [{"Name": f"Gz {i}"} for i in range(10)],
                compress=True,
                polling_interval=0.05,
            )
        ]
        buffer = io.BytesIO()
        await client.copy_results(result.job_id, "successfulResults", buffer)
    lines = buffer.getvalue().decode().splitlines()
    assert lines[0].startswith('"sf__Id","sf__Created"')
    assert len(lines) == 11


@pytest.mark.parametrize(
    "faults",
    [
        {"error_503_rate": 0.25, "seed": 1},
        {"error_500_rate": 0.2, "seed": 2},
        {"drop_rate": 0.2, "seed": 3},
        {"session_expiry_every_seconds": 0.3},
        {"error_503_rate": 0.1, "drop_rate": 0.1, "session_expiry_every_seconds": 0.5, "seed": 4},
    ],
    ids=["503", "500", "dropped", "expiry", "all"],
)
async def test_faults_never_lose_or_duplicate_a_record(emulator, faults):
    n = 600
    emulator.update_settings(**faults)
    async with session_for(emulator) as session:
        client = BulkIngestClient(session)
        results = [
            r
            async for r in client.perform_operation(
                "insert",
                "Account",
                ({"Name": f"Acct {i}", "External_Id__c": f"F-{i}"} for i in range(n)),
                fieldnames=["Name", "External_Id__c"],
                max_records=100,
                polling_interval=0.05,
                max_upload_attempts=6,
            )
        ]
    emulator.update_settings(
        error_503_rate=0.0, error_500_rate=0.0, drop_rate=0.0, session_expiry_every_seconds=None
    )
    covered = sorted(
        i for r in results for i in range(r.first_record_index, r.first_record_index + r.record_count)
    )
    assert covered == list(range(n))
    assert all(r.job_info.state == "JobComplete" for r in results)
    stored = [rec["External_Id__c"] for rec in emulator.records("Account")]
    assert sorted(stored) == sorted(f"F-{i}" for i in range(n))  # each exactly once


async def test_lock_failures_are_reported_per_record(emulator):
    emulator.update_settings(lock_failure_rate=0.3, seed=5)
    async with session_for(emulator) as session:
        client = BulkIngestClient(session)
        (result,) = [
            r
            async for r in client.perform_operation(
                "insert", "Account", [{"Name": f"L {i}"} for i in range(100)], polling_interval=0.05
            )
        ]
        errors = [row["sf__Error"] async for row in result.iter_failed_results()]
    assert result.number_records_failed == len(errors) > 0
    assert all(e.startswith("UNABLE_TO_LOCK_ROW") for e in errors)
    assert len(emulator.records("Account")) == 100 - len(errors)


async def test_wait_for_job_sees_counters_move(emulator):
    emulator.update_settings(records_per_second=20_000)
    async with session_for(emulator) as session:
        client = BulkIngestClient(session)
        job = await client.create_job("insert", "Account")
        body = "Name\n" + "".join(f"Slow {i}\n" for i in range(30_000))
        await client.upload_job_data(job.id, body.encode())
        seen: list[int] = []
        final = await client.wait_for_job(
            job.id,
            poll=PollPolicy(initial=0.1, maximum=0.2),
            on_progress=lambda j: seen.append(j.number_records_processed),
        )
    emulator.update_settings(records_per_second=None)
    assert final.number_records_processed == 30_000
    assert any(0 < count < 30_000 for count in seen)


async def test_an_upload_is_freed_by_reference_counting_not_left_to_the_cyclic_collector(emulator):
    # httpx's response and its stream refer to each other; if that cycle survived, every uploaded
    # chunk would stay in memory until the cyclic collector ran, and memory would grow with the data.
    import gc

    import httpx

    async with session_for(emulator) as session:
        client = BulkIngestClient(session)
        job = await client.create_job("insert", "Account")
        gc.collect()
        gc.disable()
        try:
            await client.upload_job_data(job.id, b"Name\n" + b"x\n" * 1000)
            # type(), not isinstance(): isinstance asks each object for __class__, and a lazy module proxy
            # some Airflow test left in gc's list imports on that (cloudpickle, not installed).
            alive = [o for o in gc.get_objects() if type(o) is httpx.Request and o.method == "PUT"]
        finally:
            gc.enable()
    assert alive == []


def accounts(n: int) -> Iterator[dict[str, object]]:
    return ({"Name": f"Acct {i}", "External_Id__c": f"X-{i:06d}"} for i in range(n))


def insert_accounts(session: SalesforceSession, n: int, **options: Any) -> AsyncIterator[JobResult]:
    """``perform_operation`` inserting :func:`accounts` (``Name``, ``External_Id__c``)."""
    return BulkIngestClient(session).perform_operation(
        "insert", "Account", accounts(n), fieldnames=["Name", "External_Id__c"], **options
    )


def stored_external_ids(emulator: RunningEmulator) -> list[str]:
    return sorted(rec["External_Id__c"] for rec in emulator.records("Account"))


async def test_a_lost_close_answer_whose_retries_get_503_loads_every_record_once(emulator):
    """Issue 7, item 1: the close reached Salesforce, its answer was lost and its retries got 503s.

    The job must not be aborted (Salesforce is processing it) and nothing may be sent twice.
    """
    n = 20_000
    target: list[str] = []
    closes: list[str] = []

    def lose_second_close(request: httpx.Request) -> httpx.Response | str | None:
        if not is_close(request):
            return None
        job_id = job_id_of(request) or ""
        closes.append(job_id)
        if len(set(closes)) == 2 and not target:
            target.append(job_id)
            return LOSE_ANSWER
        if target and job_id == target[0]:
            return httpx.Response(503, json=[{"errorCode": "SERVER_UNAVAILABLE", "message": "later"}])
        return None

    transport = FaultyTransport(lose_second_close)
    async with session_for(emulator, transport=transport) as session:
        results = [r async for r in insert_accounts(session, n, max_records=5_000, polling_interval=0.05)]
    assert target
    assert closes.count(target[0]) == FAST_RETRY.max_attempts
    assert not any(is_abort(r) for r in transport.requests)
    assert len(results) == 4
    assert all(r.job_info.state == "JobComplete" for r in results)
    assert sum(r.number_records_succeeded for r in results) == n
    assert sum(1 for r in transport.requests if r.method == "PUT") == 4
    assert stored_external_ids(emulator) == [f"X-{i:06d}" for i in range(n)]


async def test_one_jobs_polls_failing_leaves_it_running_and_accounts_for_all_ten_jobs(emulator):
    """Issue 7, item 2: 50,000 records in 10 jobs, one job's polls out of retries."""
    n = 50_000
    puts: list[str] = []

    def fail_polls_of_the_last_job(request: httpx.Request) -> httpx.Response | None:
        job_id = job_id_of(request)
        if request.method == "PUT" and job_id:
            puts.append(job_id)
        if request.method == "GET" and len(puts) == 10 and job_id == puts[9]:
            return httpx.Response(503, json=[{"errorCode": "SERVER_UNAVAILABLE", "message": "later"}])
        return None

    transport = FaultyTransport(fail_polls_of_the_last_job)
    yielded: list[JobResult] = []
    async with session_for(emulator, transport=transport) as session:
        gen = insert_accounts(session, n, max_records=5_000, polling_interval=0.05)
        with pytest.raises(BulkOperationError) as info:
            await drain(gen, yielded)
    failing = puts[9]
    error = info.value
    assert isinstance(error.__cause__, ServerUnavailableError)
    assert not any(is_abort(r) for r in transport.requests)
    assert len(yielded) == 9
    assert failing not in {r.job_id for r in yielded}
    assert len(error.jobs) == 10
    assert error.first_unsent_record_index == n
    assert error.unfinished_job_ids == (failing,)
    assert sorted(r.job_id for r in error.jobs if r.status == "completed" and r.yielded) == sorted(
        r.job_id for r in yielded
    )
    covered = sorted(
        i for r in error.jobs for i in range(r.first_record_index, r.first_record_index + r.record_count)
    )
    assert covered == list(range(n))

    # The job left running finishes on its own; the org holds every record exactly once.
    async with session_for(emulator) as session:
        final = await BulkIngestClient(session).wait_for_job(
            failing, poll=PollPolicy(initial=0.05), timeout=120
        )
    assert final.state == "JobComplete"
    assert sum(r.number_records_succeeded for r in yielded) + final.number_records_processed == n
    assert stored_external_ids(emulator) == [f"X-{i:06d}" for i in range(n)]


async def test_timeout_leaves_closed_jobs_running_and_they_load_exactly_once(emulator):
    n = 3_000
    emulator.update_settings(records_per_second=500)
    try:
        async with session_for(emulator) as session:
            client = BulkIngestClient(session)
            with pytest.raises(BulkOperationTimeoutError) as info:
                await collect(
                    insert_accounts(session, n, max_records=1_000, polling_interval=0.05, timeout=1.5)
                )
            reports = info.value.jobs
            assert any(r.status == "unfinished" for r in reports)
            finals = {
                r.job_id: await client.wait_for_job(r.job_id, poll=PollPolicy(initial=0.1), timeout=120)
                for r in reports
                if r.job_id is not None
            }
    finally:
        emulator.update_settings(records_per_second=None)
    loaded = 0
    for report in reports:
        final = finals.get(report.job_id) if report.job_id else None
        if report.status == "not_loaded":
            assert final is None or (final.state == "Aborted" and final.number_records_processed == 0)
        else:
            assert final is not None
            assert final.state == "JobComplete"
            loaded += report.record_count
    stored = stored_external_ids(emulator)
    assert len(stored) == len(set(stored)) == loaded
    assert (
        loaded
        + (n - info.value.first_unsent_record_index)
        + sum(r.record_count for r in reports if r.status == "not_loaded")
        == n
    )
