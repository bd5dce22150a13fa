"""Fixtures: one instant-speed emulator per module, reset between tests, and an authenticated httpx client."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from airflow_provider_salesforce_bulk.emulator.server import RunningEmulator, run_emulator

from .helpers import API


@pytest.fixture(scope="module")
def emulator_server() -> Iterator[RunningEmulator]:
    with run_emulator(db=":memory:", seed=7) as emu:
        yield emu


@pytest.fixture
def emulator(emulator_server: RunningEmulator) -> RunningEmulator:
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
        "daily_bulk_query_jobs_max": 10_000,
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
