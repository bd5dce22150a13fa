"""Requests the emulator tests share: create a job, wait for it to end, run a whole ingest job."""

from __future__ import annotations

import time
from typing import Any

import httpx

API = "/services/data/v62.0"

_ENDED = ("JobComplete", "Failed", "Aborted")


def _create(api: httpx.Client, path: str, spec: dict[str, Any]) -> dict[str, Any]:
    response = api.post(path, json=spec)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def _wait(api: httpx.Client, path: str, timeout: float, what: str) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        info: dict[str, Any] = api.get(path).json()
        if info["state"] in _ENDED:
            return info
        assert time.monotonic() < deadline, f"{what} still {info['state']}"
        time.sleep(0.01)


def create_job(api: httpx.Client, **spec: Any) -> dict[str, Any]:
    """Create an ingest job from ``spec`` (the JSON fields)."""
    return _create(api, "/jobs/ingest", spec)


def wait_done(api: httpx.Client, job_id: str, timeout: float = 10.0) -> dict[str, Any]:
    """The ingest job's info once it has ended."""
    return _wait(api, f"/jobs/ingest/{job_id}", timeout, "job")


def create_query(api: httpx.Client, soql: str, **spec: Any) -> dict[str, Any]:
    """Create a query job for ``soql`` (``operation`` query unless ``spec`` says otherwise)."""
    return _create(api, "/jobs/query", {"operation": "query", "query": soql, **spec})


def wait_query(api: httpx.Client, job_id: str, timeout: float = 20.0) -> dict[str, Any]:
    """The query job's info once it has ended."""
    return _wait(api, f"/jobs/query/{job_id}", timeout, "query job")


def start_job(api: httpx.Client, csv_text: str | bytes, **spec: Any) -> dict[str, Any]:
    """Create an ingest job, upload ``csv_text`` and close it; returns the job as created."""
    job = create_job(api, **spec)
    data = csv_text.encode() if isinstance(csv_text, str) else csv_text
    put = api.put(f"/jobs/ingest/{job['id']}/batches", content=data, headers={"Content-Type": "text/csv"})
    assert put.status_code == 201, put.text
    closed = api.patch(f"/jobs/ingest/{job['id']}", json={"state": "UploadComplete"})
    assert closed.status_code == 200, closed.text
    return job


def run_job(api: httpx.Client, csv_text: str | bytes, **spec: Any) -> tuple[dict[str, Any], dict[str, str]]:
    """Create, upload, close and wait; returns the final job info and the three result files."""
    job = start_job(api, csv_text, **spec)
    info = wait_done(api, job["id"])
    results = {
        kind: api.get(f"/jobs/ingest/{job['id']}/{kind}").text
        for kind in ("successfulResults", "failedResults", "unprocessedrecords")
    }
    return info, results
