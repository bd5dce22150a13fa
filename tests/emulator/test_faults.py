"""Deliberate faults: error answers, dropped connections, lost close answers, latency, lock failures,
failing jobs, seeds, and holding the processing."""

from __future__ import annotations

import socket
import time
from urllib.parse import urlsplit

import httpx
import pytest

from airflow_provider_salesforce_bulk.emulator.server import RunningEmulator, run_emulator
from airflow_provider_salesforce_bulk.emulator.settings import EmulatorSettings

from .helpers import API, run_job, wait_done


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


def _open_job_with_data(api: httpx.Client, rows: int = 3) -> str:
    job_id: str = api.post("/jobs/ingest", json={"object": "Account", "operation": "insert"}).json()["id"]
    body = "Name\n" + "".join(f"Lost Close {n}\n" for n in range(rows))
    put = api.put(
        f"/jobs/ingest/{job_id}/batches", content=body.encode(), headers={"Content-Type": "text/csv"}
    )
    assert put.status_code == 201
    return job_id


def test_lost_close_is_applied_and_its_answer_never_starts(
    emulator: RunningEmulator, api: httpx.Client
) -> None:
    emulator.update_settings(lost_close_rate=1.0)
    job_id = _open_job_with_data(api)
    # Not one byte of the answer: the connection closes before the status line.
    url = urlsplit(emulator.base_url)
    assert url.hostname is not None
    assert url.port is not None
    body = b'{"state": "UploadComplete"}'
    request = (
        f"PATCH {API}/jobs/ingest/{job_id} HTTP/1.1\r\nHost: {url.netloc}\r\n"
        f"Authorization: {api.headers['Authorization']}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    with socket.create_connection((url.hostname, url.port), timeout=30) as sock:
        sock.sendall(request)
        assert sock.recv(65536) == b""
    # ...and yet the close took effect: the job is processed, exactly once.
    info = wait_done(api, job_id)
    assert info["state"] == "JobComplete"
    assert info["numberRecordsProcessed"] == 3
    assert len(emulator.records("Account")) == 3
    # A client sees a connection closed without a response; a second close is refused, not re-applied.
    second = _open_job_with_data(api, rows=2)
    with pytest.raises(httpx.RemoteProtocolError):
        api.patch(f"/jobs/ingest/{second}", json={"state": "UploadComplete"})
    again = api.patch(f"/jobs/ingest/{second}", json={"state": "UploadComplete"})
    assert again.status_code == 400
    assert again.json()[0]["errorCode"] == "INVALIDJOBSTATE"
    assert wait_done(api, second)["numberRecordsProcessed"] == 2
    assert len(emulator.records("Account")) == 5


def test_lost_close_touches_nothing_but_successful_closes(
    emulator: RunningEmulator, api: httpx.Client
) -> None:
    emulator.update_settings(lost_close_rate=1.0)
    job_id = api.post("/jobs/ingest", json={"object": "Account", "operation": "insert"}).json()["id"]
    aborted = api.patch(f"/jobs/ingest/{job_id}", json={"state": "Aborted"})
    assert aborted.status_code == 200
    assert aborted.json()["state"] == "Aborted"
    assert api.patch(f"/jobs/ingest/{job_id}", json={"state": "UploadComplete"}).status_code == 400
    assert api.get(f"/jobs/ingest/{job_id}").status_code == 200


def test_lost_closes_follow_the_seed(emulator: RunningEmulator, api: httpx.Client) -> None:
    def outcomes() -> list[bool]:
        emulator.update_settings(lost_close_rate=0.5, seed=99)
        lost = []
        for _ in range(12):
            job_id = _open_job_with_data(api, rows=1)
            try:
                api.patch(f"/jobs/ingest/{job_id}", json={"state": "UploadComplete"})
                lost.append(False)
            except httpx.RemoteProtocolError:
                lost.append(True)
        return lost

    first, second = outcomes(), outcomes()
    assert first == second
    assert set(first) == {True, False}


def test_hold_processing_keeps_closed_jobs_waiting(emulator: RunningEmulator, api: httpx.Client) -> None:
    emulator.update_settings(hold_processing=True)
    job_id = _open_job_with_data(api, rows=4)
    assert api.patch(f"/jobs/ingest/{job_id}", json={"state": "UploadComplete"}).status_code == 200
    time.sleep(1.0)  # ample time for an instant-speed emulator to have finished, were it not held
    info = api.get(f"/jobs/ingest/{job_id}").json()
    assert info["state"] == "UploadComplete"
    assert info["numberRecordsProcessed"] == 0
    assert emulator.records("Account") == []
    # Released through the admin endpoint, as another process would.
    released = httpx.post(f"{emulator.base_url}/__emulator__/settings", json={"hold_processing": False})
    assert released.json()["hold_processing"] is False
    assert wait_done(api, job_id)["numberRecordsProcessed"] == 4


def test_hold_processing_pauses_a_job_in_progress(emulator: RunningEmulator, api: httpx.Client) -> None:
    emulator.update_settings(records_per_second=100)
    job_id = _open_job_with_data(api, rows=300)
    api.patch(f"/jobs/ingest/{job_id}", json={"state": "UploadComplete"})
    deadline = time.monotonic() + 30
    while api.get(f"/jobs/ingest/{job_id}").json()["numberRecordsProcessed"] == 0:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    emulator.update_settings(hold_processing=True)
    time.sleep(0.3)  # a slice under way may still commit
    held = api.get(f"/jobs/ingest/{job_id}").json()
    time.sleep(1.0)
    still = api.get(f"/jobs/ingest/{job_id}").json()
    assert still["state"] == "InProgress"
    assert still["numberRecordsProcessed"] == held["numberRecordsProcessed"] < 300
    emulator.update_settings(hold_processing=False, records_per_second=None)
    assert wait_done(api, job_id, timeout=30)["numberRecordsProcessed"] == 300


def test_an_emulator_can_start_held() -> None:
    with run_emulator(hold_processing=True) as held:
        assert held.settings.hold_processing is True
        token = held.new_access_token()
        with httpx.Client(base_url=held.base_url + API, headers={"Authorization": f"Bearer {token}"}) as api:
            job_id = _open_job_with_data(api, rows=1)
            api.patch(f"/jobs/ingest/{job_id}", json={"state": "UploadComplete"})
            time.sleep(0.5)
            assert api.get(f"/jobs/ingest/{job_id}").json()["state"] == "UploadComplete"
            held.update_settings(hold_processing=False)
            assert wait_done(api, job_id)["state"] == "JobComplete"


@pytest.mark.parametrize(
    "changes",
    [
        {"latency_seconds": float("nan")},
        {"latency_seconds": float("inf")},
        {"latency_seconds": -1.0},
        {"records_per_second": -5.0},
        {"request_limit_bytes": 0},
        {"upload_limit_bytes": -1},
        {"lost_close_rate": 1.5},
        {"hold_processing": 1},
    ],
)
def test_bad_setting_values_are_refused(emulator: RunningEmulator, changes: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="setting '"):
        emulator.update_settings(**changes)
    with pytest.raises(ValueError, match="setting '"):
        EmulatorSettings(**changes)  # type: ignore[arg-type]


def test_cli_sets_the_new_knobs() -> None:
    from airflow_provider_salesforce_bulk.emulator.cli import build_parser

    args = vars(
        build_parser().parse_args(
            ["--lost-close-rate", "0.25", "--hold-processing", "--request-limit", "4096"]
        )
    )
    assert (args["lost_close_rate"], args["hold_processing"], args["request_limit_bytes"]) == (
        0.25,
        True,
        4096,
    )
    assert vars(build_parser().parse_args([]))["hold_processing"] is False
