"""The servers under a production stack, each a real process: Redis, moto's S3 server, the emulator.

PostgreSQL comes from ``tests/airflow/postgres_cluster.py``. Every server listens on a free loopback
port and writes its log into the run's folder, so a failing test can print it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

#: How long a server may take to answer its first request on a busy machine.
START_SECONDS = 120.0


class StackUnavailable(Exception):
    """A server the stack needs cannot run here; the message says what to install."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(what: str, ready: Any, proc: subprocess.Popen[bytes] | None, log: Path | None) -> None:
    """Poll ``ready()`` until it is true; fail naming ``what`` and the log's tail otherwise."""
    deadline = time.monotonic() + START_SECONDS
    while True:
        with contextlib.suppress(Exception):
            if ready():
                return
        if proc is not None and proc.poll() is not None:
            raise StackUnavailable(f"{what} exited {proc.returncode}: {tail(log)}")
        if time.monotonic() > deadline:
            raise StackUnavailable(f"{what} not ready within {START_SECONDS:.0f} s: {tail(log)}")
        time.sleep(0.5)


def tail(path: Path | None, chars: int = 4000) -> str:
    if path is None or not path.exists():
        return "(no log)"
    return path.read_text(errors="replace")[-chars:]


def start(command: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start ``command`` in a session of its own (so its whole tree can be signalled), output to ``log``."""
    with open(log, "ab") as out:
        return subprocess.Popen(  # noqa: S603 - commands built by the tests
            command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def stop(proc: subprocess.Popen[bytes], grace: float = 15.0) -> None:
    """SIGTERM the process's session, SIGKILL whatever is left after ``grace`` seconds."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(grace)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(10)


class Redis:
    """Debian's ``redis-server`` on a free port, its append-only file in ``folder`` (kept on restart)."""

    def __init__(self, folder: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise StackUnavailable(
                "redis-server is missing: install Debian's redis-server (`apt-get install redis-server`; "
                ".ci/run does it when apt is usable)"
            )
        self.binary = binary
        self.folder = folder
        self.port = free_port()
        self.log = folder / "redis.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        command = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.folder),
            # A restart keeps the queued messages, as a deployment's Redis does.
            "--appendonly", "yes",
            "--save", "",
            "--daemonize", "no",
        ]  # fmt: skip
        self.proc = start(command, self.log)
        wait_for("redis-server", self.ping, self.proc, self.log)

    def ping(self) -> bool:
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")

    def restart(self) -> float:
        """Stop the server (SIGTERM: it writes its file) and start it again; returns the outage in s."""
        assert self.proc is not None
        began = time.monotonic()
        stop(self.proc, grace=30)
        self.start()
        return time.monotonic() - began

    def close(self) -> None:
        if self.proc is not None:
            stop(self.proc)


class MotoS3:
    """moto's server mode: a real S3-compatible HTTP server, one bucket created."""

    def __init__(self, folder: Path, bucket: str) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.bucket = bucket
        self.log = folder / "moto.log"
        env = {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
        command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)]
        self.proc = start(command, self.log, env)
        wait_for("moto", lambda: httpx.get(self.endpoint, timeout=5).status_code < 500, self.proc, self.log)
        self.client().create_bucket(Bucket=bucket)

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        )

    def airflow_connection(self) -> str:
        """The ``aws_default`` connection as a user would set it: keys and the endpoint in extra."""
        import json

        return json.dumps(
            {
                "conn_type": "aws",
                "login": "testing",
                "password": "testing",
                "extra": {"endpoint_url": self.endpoint, "region_name": "us-east-1"},
            }
        )

    def put(self, key: str, body: bytes) -> None:
        self.client().put_object(Bucket=self.bucket, Key=key, Body=body)

    def objects(self, prefix: str) -> dict[str, bytes]:
        """Every object under ``prefix``, key to bytes."""
        client = self.client()
        found: dict[str, bytes] = {}
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                body = client.get_object(Bucket=self.bucket, Key=item["Key"])["Body"].read()
                found[item["Key"]] = body
        return found

    def close(self) -> None:
        stop(self.proc)


class Emulator:
    """This project's local Salesforce in a process of its own (the ``salesforce-bulk-emulator`` CLI)."""

    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log = folder / "emulator.log"
        cli = str(Path(sys.executable).with_name("salesforce-bulk-emulator"))
        command = [cli, "--port", str(self.port), "--db", str(folder / "org.sqlite3")]
        command += ["--log-level", "warning"]
        self.proc = start(command, self.log)
        wait_for("emulator", lambda: self.admin("GET", "health")["status"] == "ok", self.proc, self.log)
        self.credentials = self.admin("GET", "credentials")
        self._token: str | None = None

    def admin(self, method: str, path: str, body: Any = None) -> Any:
        answer = httpx.request(method, f"{self.base_url}/__emulator__/{path}", json=body, timeout=120)
        answer.raise_for_status()
        return answer.json() if answer.content else None

    def airflow_connection(self) -> str:
        from airflow_provider_salesforce_bulk.emulator.credentials import Credentials

        fields = {k: v for k, v in self.credentials.items() if k != "base_url"}
        return Credentials(**fields).airflow_connection(self.base_url)

    def records(self, object_name: str) -> list[dict[str, Any]]:
        return list(self.admin("GET", f"records/{object_name}"))

    def hold(self, held: bool) -> None:
        self.admin("POST", "settings", {"hold_processing": held})

    def jobs(self, kind: str) -> list[dict[str, Any]]:
        """Every ``ingest`` or ``query`` job the org knows, through the Bulk API's own listing."""
        token = self._access_token()
        url: str | None = f"{self.base_url}/services/data/v64.0/jobs/{kind}"
        found: list[dict[str, Any]] = []
        while url:
            answer = httpx.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=120)
            answer.raise_for_status()
            page = answer.json()
            found.extend(page["records"])
            following = page.get("nextRecordsUrl")
            url = f"{self.base_url}{following}" if following and not page.get("done", True) else None
        return found

    def job(self, kind: str, job_id: str) -> dict[str, Any]:
        answer = httpx.get(
            f"{self.base_url}/services/data/v64.0/jobs/{kind}/{job_id}",
            headers={"Authorization": f"Bearer {self._access_token()}"},
            timeout=120,
        )
        answer.raise_for_status()
        return dict(answer.json())

    def _access_token(self) -> str:
        if self._token is None:
            answer = httpx.post(
                f"{self.base_url}/services/oauth2/token",
                data={
                    "grant_type": "client_credentials",
                    "client_id": self.credentials["client_id"],
                    "client_secret": self.credentials["client_secret"],
                },
                timeout=120,
            )
            answer.raise_for_status()
            self._token = str(answer.json()["access_token"])
        return self._token

    def close(self) -> None:
        stop(self.proc)


@contextlib.contextmanager
def closing_all(*things: Any) -> Iterator[None]:
    try:
        yield
    finally:
        for thing in reversed(things):
            with contextlib.suppress(Exception):
                thing.close()
