"""One real Airflow stack: api-server, scheduler, dag-processor and triggerer on LocalExecutor + SQLite.

Proves that the task defers, that the trigger runs in the triggerer process (its log lines come out
of the triggerer), and that the task resumes on a worker and completes with its summary in XCom.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from airflow_provider_salesforce_bulk.emulator.server import run_emulator

DAG_ID = "real_stack_load"
N = 60


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def _processes(
    env: dict[str, str], logs: Path, *commands: list[str]
) -> Iterator[list[subprocess.Popen[bytes]]]:
    airflow = str(Path(sys.executable).with_name("airflow"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for command in commands:
            out = open(logs / f"{command[0]}.log", "wb")  # noqa: SIM115 - closed with the process
            procs.append(
                subprocess.Popen(  # noqa: S603
                    [airflow, *command], env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
                )
            )
        yield procs
    finally:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for proc in procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)


def _query(db: Path, sql: str, *args: object) -> list[tuple[object, ...]]:
    with contextlib.closing(sqlite3.connect(db, timeout=30)) as conn:
        return conn.execute(sql, args).fetchall()


@pytest.mark.slow
def test_task_defers_and_the_triggerer_finishes_it(tmp_path: Path) -> None:
    home = tmp_path / "home"
    dags = home / "dags"
    dags.mkdir(parents=True)
    db = home / "airflow.db"
    port = _free_port()
    with run_emulator(records_per_second=15.0) as sf:
        env = {
            **os.environ,
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": "2",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{db}",
            "AIRFLOW__API__PORT": str(port),
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "2",
            "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "2",
            "AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC": "1",
            "AIRFLOW_CONN_SF_REAL": sf.airflow_connection(),
        }
        (dags / f"{DAG_ID}.py").write_text(
            textwrap.dedent(f"""
            import datetime
            from airflow.sdk import DAG
            from airflow_provider_salesforce_bulk.operators.salesforce_bulk import SalesforceBulkOperator

            with DAG({DAG_ID!r}, schedule=None, start_date=datetime.datetime(2024, 1, 1),
                     is_paused_upon_creation=False) as dag:
                SalesforceBulkOperator(
                    task_id="load", operation="insert", object_name="Contact", conn_id="sf_real",
                    records=[{{"LastName": f"Real {{i}}"}} for i in range({N})], max_records_per_job=20,
                    deferrable=True, poll_interval=0.5,
                )
        """)
        )
        airflow = str(Path(sys.executable).with_name("airflow"))
        subprocess.run([airflow, "db", "migrate"], env=env, check=True, capture_output=True)  # noqa: S603
        logs = tmp_path / "logs"
        logs.mkdir()
        with _processes(env, logs, ["api-server"], ["scheduler"], ["dag-processor"], ["triggerer"]) as procs:
            deadline = time.monotonic() + 150
            while not _query(db, "SELECT 1 FROM dag WHERE dag_id = ?", DAG_ID):
                assert time.monotonic() < deadline, "the DAG was never parsed"
                assert all(p.poll() is None for p in procs), "an Airflow process died"
                time.sleep(1)
            subprocess.run([airflow, "dags", "trigger", DAG_ID], env=env, check=True, capture_output=True)  # noqa: S603
            states: list[str] = []
            while True:
                rows = _query(
                    db, "SELECT state FROM task_instance WHERE dag_id = ? AND task_id = 'load'", DAG_ID
                )
                state = str(rows[0][0]) if rows else "none"
                if not states or states[-1] != state:
                    states.append(state)
                if state in ("success", "failed", "upstream_failed"):
                    break
                assert time.monotonic() < deadline, f"task stuck; states seen: {states}"
                time.sleep(0.3)
        trigger_logs = list((home / "logs").rglob("*.log.trigger.*.log"))
        stored = len(sf.records("Contact"))
    assert states[-1] == "success", states
    assert "deferred" in states, states
    # The trigger ran in the triggerer process: its log file is named after the triggerer job that
    # ran it (attempt=1.log.trigger.<job id>.log) and shows it polling the jobs to completion.
    assert len(trigger_logs) == 1, trigger_logs
    triggerer_job_id = int(trigger_logs[0].name.rsplit(".", 2)[-2])
    job_type = _query(db, "SELECT job_type FROM job WHERE id = ?", triggerer_job_id)
    assert job_type == [("TriggererJob",)]
    text = trigger_logs[0].read_text(errors="replace")
    assert text.count("JobComplete") >= 3
    assert sf.credentials.client_secret not in text
    rows = _query(
        db, "SELECT value FROM xcom WHERE dag_id = ? AND task_id = 'load' AND key = 'return_value'", DAG_ID
    )
    assert rows, "no summary in XCom"
    value = rows[0][0]
    summary = json.loads(value) if isinstance(value, (str, bytes)) else value
    if isinstance(summary, str):
        summary = json.loads(summary)
    assert summary["totals"]["succeeded"] == N
    assert summary["totals"]["jobs"] == 3
    assert stored == N
