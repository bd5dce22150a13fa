"""A try that Airflow has ended (a worker frozen past the heartbeat timeout, then woken up) never
touches what its successor owns: its kill aborts nothing, its writes never damage a published file.

The task's state comes from the stand-in supervisor (``comms``); the jobs are the emulator's, over
its socket. The plan store is ``task_state_store`` (Airflow 3.3) or a Variable per task instance
(before 3.3, kept by the stand-in supervisor as the API server would).
"""

from __future__ import annotations

import asyncio
import threading
import types
import uuid
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_salesforce_bulk.client import (
    BulkIngestClient,
    BulkQueryClient,
    ClientCredentialsAuth,
    SalesforceSession,
    TokenCache,
)
from airflow_provider_salesforce_bulk.emulator.server import RunningEmulator
from tests.airflow.helpers import TI, DictStore, SupervisorComms, conn_uri_json

CSV = b"LastName,External_Id__c\n" + b"".join(b"Zombie%d,Z%d\n" % (i, i) for i in range(40))
OLDER = types.SimpleNamespace(**{**vars(TI), "try_number": 1, "id": "01a2297e-0000-7000-8000-0000000000a1"})
NEWER = types.SimpleNamespace(**{**vars(TI), "try_number": 2, "id": "01a2297e-0000-7000-8000-0000000000a2"})

# A newer try that never started has not named itself in the store yet; one that ran has.
NOT_STARTED = ["up_for_retry", "scheduled", "queued", None]
STARTED = ["running", "deferred", "success", "failed", "up_for_retry"]


@pytest.fixture
def conn(emulator: RunningEmulator, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("AIRFLOW_CONN_SF_ZOMBIE", conn_uri_json(emulator))
    return "sf_zombie"


def _session(emulator: RunningEmulator) -> SalesforceSession:
    c = emulator.credentials
    auth = ClientCredentialsAuth(c.client_id, c.client_secret, emulator.base_url)
    return SalesforceSession(auth, token_cache=TokenCache())


async def _slow_ingest_job(emulator: RunningEmulator) -> str:
    emulator.update_settings(records_per_second=1.0)
    async with _session(emulator) as session:
        client = BulkIngestClient(session)
        job = await client.create_job("insert", "Contact")
        await client.upload_job_data(job.id, CSV)
        return job.id


async def _slow_query_job(emulator: RunningEmulator) -> str:
    async with _session(emulator) as session:
        client = BulkIngestClient(session)
        async for result in client.perform_operation(
            "insert", "Account", [{"Name": f"A{i}"} for i in range(20)], polling_interval=0.05
        ):
            assert result.job_info.state == "JobComplete"
        emulator.update_settings(records_per_second=1.0)
        return (await BulkQueryClient(session).create_job("SELECT Id, Name FROM Account")).id


def _state(emulator: RunningEmulator, job_id: str, kind: str) -> str | None:
    async def read() -> str | None:
        async with _session(emulator) as session:
            client = BulkIngestClient(session) if kind == "ingest" else BulkQueryClient(session)
            return (await client.get_job(job_id)).state

    return asyncio.run(read())


def _store(kind: str) -> Any:
    from airflow_provider_salesforce_bulk.operators.plan_store import VariablePlanStore

    return DictStore() if kind == "task_state_store" else VariablePlanStore(TI.dag_id, TI.run_id, TI.task_id)


def _kill(kind: str, conn: str, job_id: str, ti: Any, store: Any) -> None:
    """What a SIGTERM does to the try ``ti`` whose operator polls ``job_id``: ``on_kill``, then its
    thread's decision (joined)."""
    from airflow_provider_salesforce_bulk.hooks.salesforce_bulk import SalesforceBulkHook
    from airflow_provider_salesforce_bulk.operators.salesforce_bulk import SalesforceBulkOperator
    from airflow_provider_salesforce_bulk.operators.salesforce_bulk_query import SalesforceBulkQueryOperator
    from airflow_provider_salesforce_bulk.operators.submit import JobPlan

    op: Any
    if kind == "ingest":
        op = SalesforceBulkOperator(
            task_id="load", operation="insert", object_name="Contact", conn_id=conn, records=[{"A": 1}]
        )
        op._active_job_ids = [job_id]
        op._plan = JobPlan(store)
    else:
        op = SalesforceBulkQueryOperator(task_id="extract", soql="SELECT Id FROM Account", conn_id=conn)
        op._active_job_id = job_id
        op._store = store
    op._settings = SalesforceBulkHook(conn).get_settings()
    op._ti = ti
    op.on_kill()
    op._kill_thread.join(30)
    assert not op._kill_thread.is_alive()
    assert op._stop.is_set(), "the killed try stops at its next boundary"


def _job(emulator: RunningEmulator, kind: str) -> str:
    return asyncio.run(_slow_ingest_job(emulator) if kind == "ingest" else _slow_query_job(emulator))


@pytest.mark.parametrize("store_kind", ["task_state_store", "variable"])
@pytest.mark.parametrize("kind", ["ingest", "query"])
@pytest.mark.parametrize(
    ("state", "newer_started"),
    [(s, False) for s in NOT_STARTED] + [(s, True) for s in STARTED],
)
def test_a_kill_of_an_older_try_aborts_nothing(
    emulator: RunningEmulator,
    conn: str,
    comms: SupervisorComms,
    kind: str,
    store_kind: str,
    state: str | None,
    newer_started: bool,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Try 1 froze past the heartbeat timeout; Airflow failed it and its retry is up for retry,
    # scheduled, queued, running, deferred, or already ended on its own; then try 1 wakes up.
    job_id = _job(emulator, kind)
    store = _store(store_kind)
    from airflow_provider_salesforce_bulk.triggers.task_state import record_try

    record_try(store, OLDER)
    if newer_started:
        record_try(store, NEWER)
    comms.state = state
    _kill(kind, conn, job_id, OLDER, store)
    assert _state(emulator, job_id, kind) in ("UploadComplete", "InProgress")
    assert "aborting nothing" in caplog.text


@pytest.mark.parametrize("store_kind", ["task_state_store", "variable"])
@pytest.mark.parametrize("kind", ["ingest", "query"])
def test_a_users_mark_failed_of_the_current_try_still_aborts(
    emulator: RunningEmulator, conn: str, comms: SupervisorComms, kind: str, store_kind: str
) -> None:
    from airflow_provider_salesforce_bulk.triggers.task_state import record_try

    job_id = _job(emulator, kind)
    store = _store(store_kind)
    record_try(store, OLDER)
    record_try(store, NEWER)  # the try that runs now, and is marked failed by a user
    comms.state = "failed"
    _kill(kind, conn, job_id, NEWER, store)
    assert _state(emulator, job_id, kind) == "Aborted"


def test_a_store_that_names_no_try_aborts_nothing(
    emulator: RunningEmulator, conn: str, comms: SupervisorComms
) -> None:
    # Airflow 3.3 answers nothing to the task-instance id of a try a newer one replaced.
    job_id = _job(emulator, "ingest")
    comms.state = "success"
    _kill("ingest", conn, job_id, OLDER, DictStore())
    assert _state(emulator, job_id, "ingest") in ("UploadComplete", "InProgress")


@pytest.mark.parametrize("store_kind", ["task_state_store", "variable"])
def test_an_older_try_stops_at_its_first_write_once_a_newer_try_started(
    comms: SupervisorComms, store_kind: str
) -> None:
    # Try 1 froze past the heartbeat timeout; try 2 started and recorded its plan; try 1 wakes up and
    # goes on where it was, before the SIGTERM reaches it: its next write (a plan save, a round's
    # state, a delete) must not replace what try 2 recorded.
    from airflow_provider_salesforce_bulk.operators.plan_store import plan_store_for
    from airflow_provider_salesforce_bulk.operators.submit import JobPlan
    from airflow_provider_salesforce_bulk.operators.try_stop import TryStopped
    from airflow_provider_salesforce_bulk.triggers.task_state import record_try

    raw = _store(store_kind)
    native = raw if store_kind == "task_state_store" else None
    older = plan_store_for({"task_state_store": native, "ti": OLDER})
    newer = plan_store_for({"task_state_store": native, "ti": NEWER})
    assert older is not None
    assert newer is not None
    record_try(older, OLDER)
    older.set("plan", {"try": 1})
    older.delete("plan")
    record_try(newer, NEWER)
    newer.set("plan", {"try": 2})
    for write in (lambda: older.set("plan", {"try": 1}), lambda: older.delete("plan")):
        with pytest.raises(TryStopped, match="try 1, but the task is at try 2"):
            write()
    with pytest.raises(TryStopped):
        JobPlan(older).save_now()
    assert raw.get("plan") == {"try": 2}
    newer.set("plan", {"try": 2, "again": True})  # the current try writes on
    assert raw.get("plan") == {"try": 2, "again": True}


def test_a_store_that_names_no_try_lets_writes_through() -> None:
    # A plan recorded by a release that named no try: its tries write as before.
    from airflow_provider_salesforce_bulk.operators.plan_store import plan_store_for

    raw = DictStore()
    store = plan_store_for({"task_state_store": raw, "ti": OLDER})
    assert store is not None
    store.set("plan", {"chunks": {}})
    assert raw.get("plan") == {"chunks": {}}


# -- result files: written under a partial name, published whole -----------------------------------


class _SetAfter(threading.Event):
    """A stop flag that a SIGTERM sets after ``checks`` looks: mid-copy, at a known point."""

    def __init__(self, checks: int) -> None:
        super().__init__()
        self.checks = checks

    def is_set(self) -> bool:
        self.checks -= 1
        if self.checks < 0:
            self.set()
        return super().is_set()


@pytest.fixture(params=["local", "object_storage"])
def results_dir(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A results folder on local disk, or in fsspec's in-memory store attached as Airflow attaches s3 or
    gcs: no rename there (a move is a copy, then a delete), and a written object appears on close."""
    from airflow.providers.common.compat.sdk import ObjectStoragePath

    if request.param == "local":
        return ObjectStoragePath(f"file://{tmp_path / 'results'}")
    from airflow.sdk.io import attach
    from fsspec.implementations.memory import MemoryFileSystem

    monkeypatch.setattr("airflow.sdk.io.store._STORE_CACHE", {})
    attach("memory", fs=MemoryFileSystem())
    return ObjectStoragePath(f"memory://zombie-{uuid.uuid4().hex[:8]}/results")


async def _ended_job(emulator: RunningEmulator, records: int, prefix: str = "") -> str:
    body = b"LastName,External_Id__c\n" + b"".join(
        b"R%d,%s%s%d\n" % (i, prefix.encode(), b"X" * 100, i) for i in range(records)
    )
    async with _session(emulator) as session:
        client = BulkIngestClient(session)
        job = await client.create_job("insert", "Contact")
        await client.upload_job_data(job.id, body)
        await client.wait_for_job(job.id, timeout=60)
        return job.id


def _copy(emulator: RunningEmulator, job_id: str, directory: Any, stop: threading.Event | None) -> Any:
    from airflow_provider_salesforce_bulk.operators.result_files import copy_job_results

    async def go() -> Any:
        async with _session(emulator) as session:
            return await copy_job_results(BulkIngestClient(session), job_id, directory, stop=stop)

    return asyncio.run(go())


def _files(directory: Any) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in directory.rglob("*") if p.is_file()}


def test_an_interrupted_copy_leaves_the_published_files_intact(
    emulator: RunningEmulator, results_dir: Any
) -> None:
    from airflow_provider_salesforce_bulk.operators.try_stop import TryStopped

    job_id = asyncio.run(_ended_job(emulator, 3000))
    rows = _copy(emulator, job_id, results_dir, None).rows
    assert rows == {"successful": 3000, "failed": 0, "unprocessed": 0}
    published = _files(results_dir)
    assert sorted(published) == ["failedResults.csv", "successfulResults.csv", "unprocessedrecords.csv"]
    assert published["successfulResults.csv"].count(b"\n") == 3001
    # Another try copies the same job again and is stopped part way through the first file.
    # (After its first piece is written: the next piece, or the publishing, finds the flag set.)
    with pytest.raises(TryStopped, match=r"stopped before (writing more of a result file|publishing)"):
        _copy(emulator, job_id, results_dir, _SetAfter(2))
    assert _files(results_dir) == published, "every published file whole, no partial file left"


def test_an_interrupted_first_copy_publishes_nothing(emulator: RunningEmulator, results_dir: Any) -> None:
    from airflow_provider_salesforce_bulk.operators.try_stop import TryStopped

    job_id = asyncio.run(_ended_job(emulator, 3000))
    with pytest.raises(TryStopped):
        _copy(emulator, job_id, results_dir, _SetAfter(2))
    assert _files(results_dir) == {}, "a partial file never stays, never under the file's name"


def test_a_copy_stopped_between_files_writes_nothing_more(
    emulator: RunningEmulator, results_dir: Any
) -> None:
    from airflow_provider_salesforce_bulk.operators.try_stop import TryStopped

    job_id = asyncio.run(_ended_job(emulator, 10))
    stop = threading.Event()
    stop.set()
    with pytest.raises(TryStopped, match="before copying"):
        _copy(emulator, job_id, results_dir, stop)
    assert _files(results_dir) == {}


def test_publish_keeps_a_file_another_try_published(tmp_path: Path) -> None:
    from airflow.providers.common.compat.sdk import ObjectStoragePath

    from airflow_provider_salesforce_bulk.operators.result_files import partial_name, publish

    target = ObjectStoragePath(f"file://{tmp_path}/successfulResults.csv")
    target.write_bytes(b"sf__Id,sf__Created\n001,true\n")
    partial = partial_name(target, "try1-abcd")
    assert partial.name.startswith(".")
    assert partial.name.endswith(".partial")
    partial.write_bytes(b"sf__Id,sf__Created\n001,true\n")
    assert publish(partial, target) is False
    assert not partial.exists()
    assert target.read_bytes() == b"sf__Id,sf__Created\n001,true\n"


# -- SIGTERM to a real process copying result files -------------------------------------------------

ZOMBIE_SCRIPT = r'''
import asyncio, json, os, signal, sys, time
import httpx
conn, results, event_path, log_path = sys.argv[1:5]
os.environ["AIRFLOW_CONN_SF_ZOMBIE_CHILD"] = conn
from airflow_provider_salesforce_bulk.hooks.pool import shared_pools
from airflow_provider_salesforce_bulk.operators.salesforce_bulk import SalesforceBulkOperator
from airflow_provider_salesforce_bulk.operators.try_stop import TryStopped
from tests.airflow.helpers import DictStore

class Slow(httpx.AsyncBaseTransport):
    """Result files arrive in 8 KiB pieces, 50 ms apart: a copy takes long enough to be cut."""
    def __init__(self, inner):
        self.inner = inner
    async def handle_async_request(self, request):
        response = await self.inner.handle_async_request(request)
        path = request.url.path
        if not path.endswith(("Results", "unprocessedrecords")):
            return response
        with open(log_path, "a") as log:
            log.write(f"{time.time()} {path}\n")
        body = await response.aread()
        async def pieces():
            for start in range(0, len(body), 8192):
                await asyncio.sleep(0.05)
                yield body[start:start + 8192]
        headers = [(k, v) for k, v in response.headers.items()
                   if k.lower() not in ("content-length", "content-encoding", "transfer-encoding")]
        return httpx.Response(response.status_code, headers=headers, content=pieces())

shared_pools.transport = lambda: Slow(httpx.AsyncHTTPTransport())
op = SalesforceBulkOperator(task_id="load", operation="insert", object_name="Contact",
                            conn_id="sf_zombie_child", records=[{"LastName": "x"}], results_path=results)
signal.signal(signal.SIGTERM, lambda signum, frame: op.on_kill())  # what Airflow's task runner does

class TI:
    dag_id, run_id, task_id, map_index, try_number = "sf_dag", "manual__1", "load", -1, 1
    def xcom_push(self, key, value):
        pass

try:
    op.execute_complete({"ti": TI(), "task_state_store": DictStore()}, json.load(open(event_path)))
except TryStopped as exc:
    print("STOPPED", exc, flush=True)
    sys.exit(3)
print("FINISHED", flush=True)
'''


async def _ended_jobs_event(emulator: RunningEmulator, count: int, records: int) -> dict[str, Any]:
    from airflow_provider_salesforce_bulk.triggers.events import job_summary, jobs_event

    ids = [await _ended_job(emulator, records, prefix=f"J{n}-") for n in range(count)]
    async with _session(emulator) as session:
        client = BulkIngestClient(session)
        jobs = {job_id: job_summary(await client.get_job(job_id)) for job_id in ids}
    return dict(jobs_event("success", jobs, instance_url=emulator.base_url))


@pytest.mark.parametrize("successor_published", [True, False])
def test_a_sigterm_mid_copy_stops_within_one_file_and_leaves_every_published_file_whole(
    emulator: RunningEmulator, tmp_path: Path, successor_published: bool
) -> None:
    import json
    import os
    import signal
    import subprocess
    import sys
    import time

    from airflow.providers.common.compat.sdk import ObjectStoragePath

    event = asyncio.run(_ended_jobs_event(emulator, 3, 2000))
    results = ObjectStoragePath(f"file://{tmp_path / 'results'}")
    reference = ObjectStoragePath(f"file://{tmp_path / 'reference'}")
    for job_id in event["jobs"]:
        _copy(emulator, job_id, reference, None)
        if successor_published:
            _copy(emulator, job_id, results, None)  # the retry that took over, and succeeded
    before = {str(p): p.read_bytes() for p in results.rglob("*") if p.is_file()}
    event_path, log_path = tmp_path / "event.json", tmp_path / "gets.log"
    event_path.write_text(json.dumps(event))
    log_path.touch()
    child = subprocess.Popen(  # noqa: S603 - our own interpreter and script
        [
            sys.executable,
            "-c",
            ZOMBIE_SCRIPT,
            conn_uri_json(emulator),
            str(results),
            str(event_path),
            str(log_path),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])},
    )
    try:
        deadline = time.monotonic() + 120
        while len(log_path.read_text().splitlines()) < 2 and child.poll() is None:
            assert time.monotonic() < deadline, "the woken try never reached its second result file"
            time.sleep(0.02)
        signalled = time.time()
        child.send_signal(signal.SIGTERM)
        out, err = child.communicate(timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
    gets = [float(line.split()[0]) for line in log_path.read_text().splitlines()]
    assert child.returncode == 3, f"exit {child.returncode}\n{out}\n{err[-4000:]}"
    assert "STOPPED" in out
    assert [t for t in gets if t > signalled] == [], "no result file started after the SIGTERM"
    assert len(gets) < 9
    files = {str(p): p.read_bytes() for p in results.rglob("*") if p.is_file()}
    assert not [name for name in files if name.endswith(".partial")], "no partial file left"
    if successor_published:
        assert files == before, "every file the successor published is whole and unchanged"
        return
    # The files the stopped try published before the signal are complete; the one it was copying
    # never appears under its name.
    assert len(files) == len(gets) - 1
    for name, data in files.items():
        relative = name.split("/results/", 1)[1]
        assert data == (reference / relative).read_bytes()


# -- worker-local defaults with a remote executor --------------------------------------------------


@pytest.mark.parametrize(
    ("configured", "remote"),
    [
        ("LocalExecutor", []),
        ("SequentialExecutor", []),
        ("airflow.executors.local_executor.LocalExecutor", []),
        ("CeleryExecutor", ["CeleryExecutor"]),
        ("LocalExecutor,KubernetesExecutor", ["KubernetesExecutor"]),
        ("LocalExecutor, fast:my_company.executors.EdgeExecutor", ["EdgeExecutor"]),
    ],
)
def test_remote_executors_are_told_from_the_configured_ones(configured: str, remote: list[str]) -> None:
    from airflow_provider_salesforce_bulk.operators.worker_local import remote_executors

    assert remote_executors(configured) == remote


@pytest.mark.parametrize("executor", ["CeleryExecutor", "LocalExecutor"])
def test_the_default_results_path_is_named_in_a_warning_with_a_remote_executor(
    monkeypatch: pytest.MonkeyPatch, executor: str
) -> None:
    from airflow_provider_salesforce_bulk.operators.salesforce_bulk import SalesforceBulkOperator

    monkeypatch.setenv("AIRFLOW__CORE__EXECUTOR", executor)
    op = SalesforceBulkOperator(
        task_id="load", operation="insert", object_name="Contact", conn_id="c", records=[{"A": 1}]
    )
    warnings: list[str] = []
    monkeypatch.setattr(op.log, "warning", lambda msg, *args: warnings.append(msg % args))
    op._results_dir({"ti": TI})
    op._results_dir({"ti": TI})
    if executor == "LocalExecutor":
        assert warnings == []
    else:
        (warning,) = warnings  # once per task, not per file
        assert "results_path is not set" in warning
        assert "CeleryExecutor" in warning
        assert "salesforce_bulk_results" in warning
