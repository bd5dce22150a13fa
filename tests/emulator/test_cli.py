"""The console script: refuses non-loopback hosts and announces how to connect."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import httpx

from airflow_provider_salesforce_bulk.emulator.cli import main


def test_refuses_to_listen_beyond_loopback() -> None:
    assert main(["--host", "0.0.0.0"]) == 2  # noqa: S104


def test_prints_base_url_and_credentials_then_serves() -> None:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "airflow_provider_salesforce_bulk.emulator.cli",
            "--port",
            "0",
            "--db",
            ":memory:",
            "--log-level",
            "warning",
        ],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        assert first.startswith("Salesforce Bulk API 2.0 emulator at http://127.0.0.1:")
        base_url = first.rsplit(" ", 1)[1].strip()
        lines = []
        while not lines or "export AIRFLOW_CONN" not in lines[-1]:  # the description's last line
            lines.append(process.stdout.readline())
            assert lines[-1], "the description ended without the Airflow connection"
            assert len(lines) < 30
        assert any("client_id:" in line for line in lines)
        # The printed Airflow connection points at this emulator and can be exported as it is.
        (export,) = [line for line in lines if "export AIRFLOW_CONN_SALESFORCE_BULK_DEFAULT=" in line]
        conn = json.loads(export.split("=", 1)[1].strip().strip("'"))
        assert conn["conn_type"] == "salesforce_bulk"
        assert conn["host"] == base_url
        assert conn["extra"]["auth_type"] == "client_credentials"
        deadline = time.monotonic() + 10
        while True:
            try:
                assert httpx.get(f"{base_url}/__emulator__/health").json() == {"status": "ok"}
                break
            except httpx.ConnectError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
    finally:
        process.terminate()
        process.wait(timeout=10)
