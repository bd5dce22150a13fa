"""Deliberate faults: error answers, dropped connections, latency, lock failures, failing jobs, seeds."""

from __future__ import annotations

import time

import httpx
import pytest

from airflow_provider_salesforce_bulk.emulator.server import RunningEmulator

from .conftest import run_job


@pytest.mark.parametrize(
    ("setting", "status", "code"),
    [
        ("error_503_rate", 503, "SERVER_UNAVAILABLE"),
        ("error_500_rate", 500, "UNKNOWN_EXCEPTION"),
    ],
)
def test_error_answers(
    emulator: RunningEmulator, api: httpx.Client, setting: str, status: int, code: str
) -> None:
    emulator.update_settings(**{setting: 1.0})
    response = api.post("/jobs/ingest", json={"object": "Account", "operation": "insert"})
    assert response.status_code == status
    assert response.json()[0]["errorCode"] == code
    # Nothing happened: the request failed before it was handled.
    emulator.update_settings(**{setting: 0.0})
    assert api.get("/jobs/ingest").json()["records"] == []
    # The admin endpoints never see faults.
    emulator.update_settings(**{setting: 1.0})
    assert httpx.get(f"{emulator.base_url}/__emulator__/health").status_code == 200


def test_dropped_connection_after_the_request_took_effect(
    emulator: RunningEmulator, api: httpx.Client
) -> None:
    emulator.update_settings(drop_rate=1.0)
    with pytest.raises(httpx.RemoteProtocolError):
        api.post("/jobs/ingest", json={"object": "Account", "operation": "insert"})
    emulator.update_settings(drop_rate=0.0)
    assert len(api.get("/jobs/ingest").json()["records"]) == 1


def test_latency(emulator: RunningEmulator, api: httpx.Client) -> None:
    emulator.update_settings(latency_seconds=0.2)
    started = time.monotonic()
    api.get("/jobs/ingest")
    assert time.monotonic() - started >= 0.2


def test_seeded_faults_repeat(emulator: RunningEmulator, api: httpx.Client) -> None:
    def statuses() -> list[int]:
        emulator.update_settings(error_503_rate=0.5, seed=1234)
        return [api.get("/jobs/ingest").status_code for _ in range(30)]

    first, second = statuses(), statuses()
    assert first == second
    assert {200, 503} == set(first)


def test_lock_failures_and_failed_jobs(emulator: RunningEmulator, api: httpx.Client) -> None:
    emulator.update_settings(lock_failure_rate=1.0)
    info, results = run_job(api, "Name\nA\nB\n", object="Account", operation="insert")
    assert info["state"] == "JobComplete"
    assert info["numberRecordsFailed"] == 2
    assert info["retries"] > 0
    assert (
        '"UNABLE_TO_LOCK_ROW:unable to obtain exclusive access to this record or 1 records:--"'
        in (results["failedResults"])
    )
    emulator.update_settings(lock_failure_rate=0.0, job_failure_rate=1.0)
    info, results = run_job(api, "Name\nA\nB\n", object="Account", operation="insert")
    assert info["state"] == "Failed"
    assert info["errorMessage"]
    assert results["unprocessedrecords"].count("\n") == 3
    assert emulator.records("Account") == []


def test_settings_endpoint(emulator: RunningEmulator) -> None:
    url = f"{emulator.base_url}/__emulator__/settings"
    changed = httpx.post(url, json={"records_per_second": 1000, "latency_seconds": 0})
    assert changed.status_code == 200
    assert changed.json()["records_per_second"] == 1000.0
    assert emulator.settings.records_per_second == 1000.0
    assert httpx.post(url, json={"port": 1}).status_code == 400
    assert httpx.post(url, json={"drop_rate": 2}).status_code == 400
    assert httpx.get(f"{emulator.base_url}/__emulator__/records/Nope").status_code == 404
