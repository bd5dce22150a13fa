"""Fixtures: one instant-speed emulator per module, reset between tests, and an authenticated httpx client."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from airflow_provider_salesforce_bulk.emulator.server import RunningEmulator, run_emulator

API = "/services/data/v62.0"


@pytest.fixture(scope="module")
def emulator_server() -> Iterator[RunningEmulator]:
    with run_emulator(db=":memory:", seed=7) as emu:
        yield emu


@pytest.fixture
def emulator(emulator_server: RunningEmulator) -> Iterator[RunningEmulator]:
    emulator_server.reset()
    defaults = {
        "error_503_rate": 0.0,
        "error_500_rate": 0.0,
        "drop_rate": 0.0,
        "latency_seconds": 0.0,
        "lock_failure_rate": 0.0,
        "job_failure_rate": 0.0,
        "lost_close_rate": 0.0,
        "hold_processing": False,
        "request_limit_bytes": 1024 * 1024,
        "records_per_second": None,
        "session_expiry_every_seconds": None,
        "session_timeout_seconds": 7200.0,
        "hard_delete_enabled": True,
        "job_page_size": 1000,
        "upload_limit_bytes": 100 * 1024 * 1024,
        "daily_api_requests_max": 100_000,
        "daily_bulk_batches_max": 15_000,
        "min_api_version": 41.0,
        "max_api_version": 68.0,
        "seed": 7,
    }
    emulator_server.update_settings(**defaults)
    return emulator_server


@pytest.fixture
def api(emulator: RunningEmulator) -> Iterator[httpx.Client]:
    token = emulator.new_access_token()
    with httpx.Client(
        base_url=emulator.base_url + API, headers={"Authorization": f"Bearer {token}"}, timeout=30
    ) as client:
        yield client


def create_job(api: httpx.Client, **spec: Any) -> dict[str, Any]:
    response = api.post("/jobs/ingest", json=spec)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def wait_done(api: httpx.Client, job_id: str, timeout: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        info: dict[str, Any] = api.get(f"/jobs/ingest/{job_id}").json()
        if info["state"] in ("JobComplete", "Failed", "Aborted"):
            return info
        assert time.monotonic() < deadline, f"job still {info['state']}"
        time.sleep(0.01)


def run_job(api: httpx.Client, csv_text: str | bytes, **spec: Any) -> tuple[dict[str, Any], dict[str, str]]:
    """Create, upload, close and wait; returns the final job info and the three result files."""
    job = create_job(api, **spec)
    data = csv_text.encode() if isinstance(csv_text, str) else csv_text
    put = api.put(f"/jobs/ingest/{job['id']}/batches", content=data, headers={"Content-Type": "text/csv"})
    assert put.status_code == 201, put.text
    closed = api.patch(f"/jobs/ingest/{job['id']}", json={"state": "UploadComplete"})
    assert closed.status_code == 200, closed.text
    info = wait_done(api, job["id"])
    results = {
        kind: api.get(f"/jobs/ingest/{job['id']}/{kind}").text
        for kind in ("successfulResults", "failedResults", "unprocessedrecords")
    }
    return info, results
