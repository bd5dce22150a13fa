"""Reading /limits and deciding whether a load fits what is left: the emulator over a real socket for
the counts a load really spends, MockTransport for the shapes single answers can take."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from airflow_provider_salesforce_bulk.client import (
    DEFAULT_API_VERSION,
    BulkIngestClient,
    InputError,
    InsufficientLimitsError,
    LimitsCheckError,
    OperationTimeoutError,
    RequestLimitExceededError,
    RetryPolicy,
    SalesforceSession,
    ServerError,
    UnexpectedResponseError,
    perform_operation,
)
from airflow_provider_salesforce_bulk.client.limits import (
    LimitUsage,
    OrgLimits,
    check_limits_before_load,
    check_limits_mode,
    check_load_allowance,
    estimate_load,
    get_limits,
)
from airflow_provider_salesforce_bulk.emulator.server import RunningEmulator
from tests.client import helpers

FAST = RetryPolicy(max_attempts=3, initial_delay=0.01, max_delay=0.02, max_total=30)
INSTANCE = "https://example.my.salesforce.com"


@pytest.fixture(autouse=True)
def clean(request: pytest.FixtureRequest) -> Iterator[None]:
    if "emulator" not in request.fixturenames:
        yield
        return
    emulator: RunningEmulator = request.getfixturevalue("emulator")
    emulator.reset()
    yield
    emulator.update_settings(daily_api_requests_max=100_000, daily_bulk_batches_max=15_000)


def emulator_session(emulator: RunningEmulator) -> SalesforceSession:
    return helpers.emulator_session(emulator, retry_policy=FAST)


def mock_session(handler) -> SalesforceSession:
    return helpers.mock_session(
        "00D!static",
        INSTANCE,
        transport=httpx.MockTransport(handler),
        retry_policy=FAST,
    )


# -- against the emulator ----------------------------------------------------------------------------


async def test_limits_from_the_emulator_count_down_as_a_load_spends_them(emulator):
    emulator.update_settings(daily_api_requests_max=50_000, daily_bulk_batches_max=700)
    async with emulator_session(emulator) as session:
        client = BulkIngestClient(session)
        before = await client.get_limits()
        assert before.daily_bulk_api_batches == LimitUsage(max=700, remaining=700)
        assert before.daily_api_requests is not None
        assert before.daily_api_requests.max == 50_000
        assert before.daily_bulk_v2_query_jobs is not None
        records = [{"Name": f"Limit {i}"} for i in range(25_000)]
        results = [
            r async for r in perform_operation(client, "insert", "Account", records, polling_interval=0.05)
        ]
        after = await get_limits(session)
    estimate = estimate_load([r.record_count for r in results])
    assert estimate.batches == 3  # 25,000 records in one job: 10,000 + 10,000 + 5,000
    assert after.daily_bulk_api_batches is not None
    assert (
        before.daily_bulk_api_batches.remaining - after.daily_bulk_api_batches.remaining == estimate.batches
    )
    spent = before.daily_api_requests.remaining - after.daily_api_requests.remaining
    # The load's requests plus the second /limits call; the estimate's poll margin covers them.
    assert 0 < spent <= estimate.api_requests + 1


async def test_a_load_larger_than_the_batches_left_is_refused_with_the_numbers(emulator):
    emulator.update_settings(daily_bulk_batches_max=2)
    async with emulator_session(emulator) as session:
        limits = await get_limits(BulkIngestClient(session))
    verdict = check_load_allowance(limits, estimate_load([25_000]))
    assert not verdict.ok
    assert "3 DailyBulkApiBatches needed" in verdict.message
    assert "2 of 2 left" in verdict.message
    with pytest.raises(InsufficientLimitsError) as info:
        verdict.raise_if_short()
    assert info.value.verdict is verdict
    assert check_load_allowance(limits, estimate_load([20_000])).ok


async def test_api_requests_left_below_the_estimate_are_a_shortfall(emulator):
    emulator.update_settings(daily_api_requests_max=40)
    async with emulator_session(emulator) as session:
        limits = await get_limits(session)
    assert limits.daily_api_requests is not None
    assert limits.daily_api_requests.remaining < 40
    verdict = check_load_allowance(limits, estimate_load([100, 100], polls_per_job=20))
    assert not verdict.ok
    assert "50 DailyApiRequests needed (50 for 2 jobs)" in verdict.message
    assert f"{limits.daily_api_requests.remaining} of 40 left" in verdict.message
    assert check_load_allowance(limits, estimate_load([100], polls_per_job=5)).ok


async def test_the_operators_check_by_mode(emulator, caplog):
    emulator.update_settings(daily_bulk_batches_max=2)
    async with emulator_session(emulator) as session:
        client = BulkIngestClient(session)
        with pytest.raises(InsufficientLimitsError, match="3 DailyBulkApiBatches needed"):
            await check_limits_before_load(client, [25_000], "fail")
        with caplog.at_level("WARNING"):
            verdict = await check_limits_before_load(client, [25_000], "warn")
        assert verdict is not None
        assert not verdict.ok
        assert "loading anyway" in caplog.text
        assert (await check_limits_before_load(client, [5_000, 5_000], "fail")).ok  # type: ignore[union-attr]
        before = (await get_limits(session)).daily_api_requests
        assert await check_limits_before_load(client, [25_000], "off") is None
        after = (await get_limits(session)).daily_api_requests
    assert before is not None
    assert after is not None
    assert before.remaining - after.remaining == 1  # the second /limits call only: "off" asked nothing


# -- single answers ----------------------------------------------------------------------------------


async def test_an_older_org_reporting_daily_bulk_api_requests_is_read_as_batches():
    body = {
        "DailyApiRequests": {"Max": 15000, "Remaining": 14990},
        "DailyBulkApiRequests": {"Max": 10000, "Remaining": 9000},
        "ConcurrentAsyncGetReportInstances": {"Max": 200, "Remaining": 200},
        "Weird": {"Max": "many", "Remaining": 1},
        "AlsoWeird": [1, 2],
    }
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        return httpx.Response(200, json=body)

    async with mock_session(handler) as session:
        limits = await get_limits(session)
    assert seen == [f"/services/data/v{DEFAULT_API_VERSION}/limits"]
    assert limits.daily_bulk_api_batches == LimitUsage(max=10000, remaining=9000)
    assert limits.daily_api_requests == LimitUsage(max=15000, remaining=14990)
    assert limits.daily_bulk_v2_query_jobs is None
    assert set(limits.entries) == {
        "DailyApiRequests",
        "DailyBulkApiRequests",
        "ConcurrentAsyncGetReportInstances",
    }


async def test_a_body_that_is_no_object_is_an_unexpected_response():
    async with mock_session(lambda r: httpx.Response(200, json=[1, 2])) as session:
        with pytest.raises(UnexpectedResponseError, match="not an object"):
            await get_limits(session)
    async with mock_session(lambda r: httpx.Response(200, content=b"<html>")) as session:
        with pytest.raises(UnexpectedResponseError, match="JSON"):
            await get_limits(session)


async def test_limit_exceeded_answer_is_raised_as_such():
    body = [{"message": "TotalRequests Limit exceeded.", "errorCode": "REQUEST_LIMIT_EXCEEDED"}]
    async with mock_session(lambda r: httpx.Response(403, json=body)) as session:
        with pytest.raises(RequestLimitExceededError):
            await get_limits(session)


def test_allowances_the_org_does_not_report_are_unknown_shortfalls_and_say_so():
    verdict = check_load_allowance(OrgLimits.from_json({}), estimate_load([10]))
    assert not verdict.ok
    assert "the org did not report DailyBulkApiBatches): taken as exhausted" in verdict.message
    assert "the org did not report DailyApiRequests): taken as exhausted" in verdict.message


@pytest.mark.parametrize(
    ("remaining", "shown"),
    [(-5, "-5"), (None, "None"), ("lots", "'lots'"), (2.5, "2.5"), (True, "True")],
)
def test_a_remaining_that_is_negative_missing_or_not_an_integer_is_exhausted_never_skipped(remaining, shown):
    entry: dict[str, object] = {"Max": 15000}
    if remaining is not None:
        entry["Remaining"] = remaining
    limits = OrgLimits.from_json(
        {"DailyApiRequests": {"Max": 100_000, "Remaining": 100_000}, "DailyBulkApiBatches": entry}
    )
    assert limits.daily_bulk_api_batches is None
    verdict = check_load_allowance(limits, estimate_load([50_000]))
    assert not verdict.ok
    assert verdict.shortfalls == (
        "5 DailyBulkApiBatches needed (50,000 records in 1 jobs, one batch per started 10,000 records "
        f"of a job) but what is left is unknown (/limits gave Max 15000, Remaining {shown}): "
        "taken as exhausted",
    )


async def test_fail_refuses_a_negative_remaining_and_warn_loads_saying_so(caplog):
    body = {
        "DailyApiRequests": {"Max": 100_000, "Remaining": 99_000},
        "DailyBulkApiBatches": {"Max": 15_000, "Remaining": -3},
    }
    async with mock_session(lambda r: httpx.Response(200, json=body)) as session:
        with pytest.raises(InsufficientLimitsError, match="Remaining -3"):
            await check_limits_before_load(session, [50_000], "fail")
        with caplog.at_level("WARNING"):
            verdict = await check_limits_before_load(session, [50_000], "warn")
    assert verdict is not None
    assert not verdict.ok
    assert "loading anyway" in caplog.text


def _html(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, content=b"<html>maintenance</html>", headers={"Content-Type": "text/html"})


def _server_error(request: httpx.Request) -> httpx.Response:
    return httpx.Response(500, json=[{"errorCode": "UNKNOWN_EXCEPTION", "message": "boom"}])


async def _slow(request: httpx.Request) -> httpx.Response:
    await asyncio.sleep(5)
    return httpx.Response(200, json={})  # pragma: no cover - the check gives up first


@pytest.mark.parametrize(
    ("handler", "raised"),
    [(_html, UnexpectedResponseError), (_server_error, ServerError), (_slow, OperationTimeoutError)],
)
async def test_warn_never_stops_a_load_when_limits_cannot_be_read(handler, raised, caplog):
    async with mock_session(handler) as session:
        with caplog.at_level("WARNING"):
            assert await check_limits_before_load(session, [10], "warn", timeout=0.5) is None
        assert "cannot read the org's limits" in caplog.text
        assert "loading anyway" in caplog.text
        # "fail" cannot show the load fits: it stops (a retry may read the limits).
        with pytest.raises(raised):
            await check_limits_before_load(session, [10], "fail", timeout=0.5)


def test_margin_is_added_to_the_requests_needed():
    limits = OrgLimits.from_json(
        {
            "DailyApiRequests": {"Max": 1000, "Remaining": 30},
            "DailyBulkApiBatches": {"Max": 15000, "Remaining": 15000},
        }
    )
    estimate = estimate_load([5], polls_per_job=10)  # 3 + 10 + 2 = 15 requests
    assert check_load_allowance(limits, estimate, margin=15).ok
    verdict = check_load_allowance(limits, estimate, margin=16)
    assert not verdict.ok
    assert "31 DailyApiRequests needed (15 for 1 jobs + 16 margin) but 30 of 1,000 left" in verdict.message


@given(st.lists(st.integers(min_value=1, max_value=300_000), max_size=30))
def test_batches_are_one_per_started_ten_thousand_records_of_each_job(counts):
    estimate = estimate_load(counts, polls_per_job=7, downloads_per_job=3)
    assert estimate.jobs == len(counts)
    assert estimate.records == sum(counts)
    assert estimate.batches == sum(math.ceil(c / 10_000) for c in counts)
    assert estimate.api_requests == len(counts) * 13


@pytest.mark.parametrize("bad", [-1, 1.5, True, None, "3"])
def test_bad_counts_are_input_errors(bad):
    with pytest.raises(InputError):
        estimate_load([bad])
    with pytest.raises(InputError):
        estimate_load([1], polls_per_job=bad)
    with pytest.raises(InputError):
        check_load_allowance(OrgLimits.from_json({}), estimate_load([1]), margin=bad)


def test_limits_check_modes():
    assert [check_limits_mode(m) for m in ("fail", "warn", "off")] == ["fail", "warn", "off"]
    for bad in ("FAIL", "", None, 1):
        with pytest.raises(InputError, match="limits_check"):
            check_limits_mode(bad)


async def test_limits_the_user_may_not_read_fail_or_warn_by_mode(caplog):
    body = [{"message": "Insufficient Privileges", "errorCode": "INSUFFICIENT_ACCESS"}]
    async with mock_session(lambda r: httpx.Response(403, json=body)) as session:
        with pytest.raises(LimitsCheckError, match="View Setup and Configuration") as info:
            await check_limits_before_load(session, [10], "fail")
        assert not isinstance(info.value, InsufficientLimitsError)
        with caplog.at_level("WARNING"):
            assert await check_limits_before_load(session, [10], "warn") is None
    assert "View Setup and Configuration" in caplog.text


async def test_no_api_requests_left_is_a_shortfall_in_fail_mode():
    body = [{"message": "TotalRequests Limit exceeded.", "errorCode": "REQUEST_LIMIT_EXCEEDED"}]
    async with mock_session(lambda r: httpx.Response(403, json=body)) as session:
        with pytest.raises(InsufficientLimitsError, match="no DailyApiRequests left") as info:
            await check_limits_before_load(session, [10], "fail")
        assert info.value.verdict is None
        assert await check_limits_before_load(session, [10], "warn") is None
