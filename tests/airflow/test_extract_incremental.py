"""Incremental, atomic, verified extracts end to end against the emulator: DAG runs with changes in
between (updates, inserts, deletes with include_deleted) extract each change exactly once; a failed
run moves no mark; a run that fails mid-page (or is killed) over an earlier extract leaves it whole,
on local disk and on object storage; a tampered page is read again, then fails the task; an empty
extract is a success; a bad output path fails before any job; a daily limit is a retryable error."""

from __future__ import annotations

import csv
import datetime
import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from airflow_provider_salesforce_bulk.emulator.server import RunningEmulator
from tests.airflow.helpers import DictStore, conn_uri_json, load_dag_file, wrap_pool_transport
from tests.airflow.test_query_operator import _run

SOQL = "SELECT Id, Name, IsDeleted, SystemModstamp FROM Account"
# Changes land in the run after the next whole second has passed (a run reads up to the second before
# it starts), so the tests wait this long after a change.
SETTLE = 2.2


@pytest.fixture
def sf(emulator: RunningEmulator, monkeypatch: pytest.MonkeyPatch, airflow_db: object) -> RunningEmulator:
    monkeypatch.setenv("AIRFLOW_CONN_SF_QUERY", conn_uri_json(emulator))
    return emulator


def _accounts(start: int, n: int) -> list[dict[str, Any]]:
    return [{"External_Id__c": f"ACC-{i:04d}", "Name": f"Account {i}"} for i in range(start, start + n)]


def _dag(name: str, args: str) -> Any:
    return load_dag_file(
        name,
        f"""
        import datetime
        from airflow.sdk import DAG
        from airflow_provider_salesforce_bulk.operators import salesforce_bulk_query
        SalesforceBulkQueryOperator = salesforce_bulk_query.SalesforceBulkQueryOperator
        with DAG({name!r}, schedule="@daily", start_date=datetime.datetime(2024, 1, 1), catchup=False) as dag:
            SalesforceBulkQueryOperator(
                task_id="extract", conn_id="sf_query", poll_interval=0.2, {args}
            )
        """,
    )


def _published(folder: Path) -> tuple[dict[str, Any], list[dict[str, str]]]:
    """The manifest and rows of a published folder, checked as a reader should check them."""
    assert (folder / "_SUCCESS").exists(), sorted(p.name for p in folder.iterdir())
    manifest = json.loads((folder / "_manifest.json").read_text())
    rows: list[dict[str, str]] = []
    for entry in manifest["files"]:
        path = folder / entry["name"]
        assert path.stat().st_size == entry["bytes"]
        with path.open(newline="", encoding="utf-8") as f:
            part = list(csv.DictReader(f))
        assert len(part) == entry["records"]
        rows += part
    assert manifest["records"] == len(rows)
    parts = sorted(p.name for p in folder.iterdir() if p.name.startswith("part-"))
    assert parts == sorted(e["name"] for e in manifest["files"])
    return manifest, rows


def _by_id(rows: list[dict[str, str]]) -> dict[str, dict[str, str]]:
    ids = [r["Id"] for r in rows]
    assert len(ids) == len(set(ids)), "an Id was written twice"
    return {r["Id"]: r for r in rows}


def test_runs_with_changes_in_between_extract_each_change_exactly_once(
    sf: RunningEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow_provider_salesforce_bulk.operators import extract_output

    _run(sf, "insert", _accounts(0, 20))
    time.sleep(SETTLE)
    dag = _dag(
        "inc_runs",
        f"soql={SOQL!r}, incremental_field='SystemModstamp', include_deleted=True, "
        f"output_path={str(tmp_path)!r} + '/{{{{ run_id }}}}', deferrable=True",
    )

    def run(state: str = "success") -> Path:
        dr = dag.test()
        assert dr.state == state
        return tmp_path / dr.run_id

    # Run 1: everything (no mark yet).
    first, rows = _published(run())
    assert len(_by_id(rows)) == 20
    assert first["watermark"]["before"] is None
    ids = [r["Id"] for r in sf.records("Account")]

    # Between runs 1 and 2: 5 updated, 3 inserted, 2 deleted.
    _run(sf, "update", [{"Id": i, "Name": f"Renamed {n}"} for n, i in enumerate(ids[:5])])
    _run(sf, "insert", _accounts(100, 3))
    _run(sf, "delete", [{"Id": i} for i in ids[5:7]])
    time.sleep(SETTLE)
    second, rows = _published(run())
    got = _by_id(rows)
    new_ids = {r["Id"] for r in sf.records("Account") if r["External_Id__c"] >= "ACC-0100"}
    assert set(got) == set(ids[:7]) | new_ids
    assert len(got) == 10
    assert [got[i]["Name"] for i in ids[:5]] == [f"Renamed {n}" for n in range(5)]
    assert [got[i]["IsDeleted"] for i in ids[5:7]] == ["true", "true"]
    assert {got[i]["IsDeleted"] for i in set(got) - set(ids[5:7])} == {"false"}
    assert second["watermark"]["before"] == first["watermark"]["after"]
    assert "Id NOT IN (" in second["soql"]  # the overlap's Ids of run 1 are kept out

    # A run that fails at publish, after 2 more updates: nothing marked complete, the mark unmoved.
    _run(sf, "update", [{"Id": i, "Name": "Late"} for i in ids[10:12]])
    time.sleep(SETTLE)

    def broken(self: Any, *args: Any, **kwargs: Any) -> Any:
        raise OSError("disk full (injected)")

    with monkeypatch.context() as patched:
        patched.setattr(extract_output.Staging, "publish", broken)
        failed = run("failed")
    assert not (failed / "_SUCCESS").exists()
    assert not any(p.name.startswith("part-") for p in failed.glob("**/*"))  # staging removed too

    # Run 3: the 2 updates the failed run did not publish, nothing else.
    third, rows = _published(run())
    assert sorted(_by_id(rows)) == sorted(ids[10:12])
    assert third["watermark"]["before"] == second["watermark"]["after"]

    # Run 4: nothing changed: an empty extract is a success, with a header-only part.
    time.sleep(SETTLE)
    fourth_folder = run()
    fourth, rows = _published(fourth_folder)
    assert rows == []
    assert fourth["records"] == 0
    assert [f["records"] for f in fourth["files"]] == [0]
    header = (fourth_folder / fourth["files"][0]["name"]).read_text()
    assert header.strip() == '"Id","Name","IsDeleted","SystemModstamp"'
    assert fourth["watermark"]["before"] == third["watermark"]["after"]


def test_first_run_starts_from_initial_watermark_and_refuses_what_it_cannot_rewrite(
    sf: RunningEmulator, tmp_path: Path
) -> None:
    _run(sf, "insert", _accounts(0, 4))
    time.sleep(SETTLE)
    since = datetime.datetime.now(datetime.timezone.utc)
    time.sleep(1.1)
    _run(sf, "insert", _accounts(50, 3))
    time.sleep(SETTLE)
    dag = _dag(
        "inc_initial",
        f"soql={SOQL!r}, incremental_field='SystemModstamp', initial_watermark={since.isoformat()!r}, "
        f"output_path={str(tmp_path)!r}, output_format='parquet'",
    )
    assert dag.test().state == "success"
    manifest = json.loads((tmp_path / "_manifest.json").read_text())
    assert manifest["records"] == 3
    assert manifest["output_format"] == "parquet"

    limited = "SELECT Id, SystemModstamp FROM Account LIMIT 10"
    refused = _dag(
        "inc_refused",
        f"soql={limited!r}, incremental_field='SystemModstamp', output_path={str(tmp_path / 'x')!r}",
    )
    assert refused.test().state == "failed"
    assert sf.emulator.query_jobs.list_jobs(0, 1000)[1:] == []  # only the first DAG's job


def _operator(**kwargs: Any) -> Any:
    from airflow_provider_salesforce_bulk.operators.salesforce_bulk_query import SalesforceBulkQueryOperator

    return SalesforceBulkQueryOperator(
        task_id="extract",
        soql="SELECT Id, Name FROM Account",
        conn_id="sf_query",
        deferrable=False,
        poll_interval=0.1,
        records_per_file=5,
        **kwargs,
    )


class _TI:
    dag_id, run_id, task_id, map_index, try_number = "d", "r", "extract", -1, 1

    def xcom_push(self, key: str, value: Any) -> None:
        pass


def _execute(op: Any) -> Any:
    return op.execute({"ti": _TI(), "task_state_store": DictStore()})


def _fail_mid_page(monkeypatch: pytest.MonkeyPatch) -> None:
    """Raise inside the second page that starts streaming, after the first has been written."""
    from airflow_provider_salesforce_bulk.client.page_check import PageCheck

    feed = PageCheck.feed
    seen: list[int] = []

    def failing(self: PageCheck, chunk: bytes) -> None:
        if id(self) not in seen:
            seen.append(id(self))
        if len(seen) >= 2 and id(self) == seen[1]:
            raise RuntimeError("killed mid-page (injected)")
        feed(self, chunk)

    monkeypatch.setattr(PageCheck, "feed", failing)


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_a_rerun_failing_mid_page_leaves_the_earlier_extract_whole_on_local_disk(
    sf: RunningEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str
) -> None:
    pytest.importorskip("pyarrow")
    _run(sf, "insert", _accounts(0, 12))
    summary = _execute(_operator(output_path=tmp_path, output_format=fmt))
    assert [f["records"] for f in summary["files"]] == [5, 5, 2]
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert sorted(before) == ["_SUCCESS", "_manifest.json"] + [f"part-0000{n}.{fmt}" for n in range(3)]

    ids = [r["Id"] for r in sf.records("Account")]
    _run(sf, "delete", [{"Id": i} for i in ids[:4]])
    _run(sf, "insert", _accounts(100, 9))
    with monkeypatch.context() as patched:
        _fail_mid_page(patched)
        with pytest.raises(Exception, match="killed mid-page"):
            _execute(_operator(output_path=tmp_path, output_format=fmt))
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.name != "_staging"}
    assert after == before
    assert not list((tmp_path / "_staging").glob("*/part-*")) if (tmp_path / "_staging").exists() else True

    summary = _execute(_operator(output_path=tmp_path, output_format=fmt))
    assert [f["records"] for f in summary["files"]] == [5, 5, 5, 2]
    manifest = json.loads((tmp_path / "_manifest.json").read_text())
    assert manifest["records"] == 17
    assert sorted(p.name for p in tmp_path.iterdir()) == ["_SUCCESS", "_manifest.json"] + [
        f"part-0000{n}.{fmt}" for n in range(4)
    ]


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_a_rerun_failing_mid_page_leaves_the_earlier_extract_whole_on_object_storage(
    sf: RunningEmulator, monkeypatch: pytest.MonkeyPatch, fmt: str
) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    from airflow.sdk.io import attach
    from fsspec.implementations.memory import MemoryFileSystem

    fs = MemoryFileSystem()
    fs.store.clear()
    monkeypatch.setattr("airflow.sdk.io.store._STORE_CACHE", {})
    attach("memory", fs=fs)
    root = f"/lake/{fmt}"

    def listing() -> dict[str, bytes]:
        return {p.rsplit("/", 1)[1]: fs.cat_file(p) for p in fs.find(root) if "/_staging/" not in p}

    _run(sf, "insert", _accounts(0, 12))
    _execute(_operator(output_path=f"memory://{root}", output_format=fmt))
    before = listing()
    assert sorted(before) == ["_SUCCESS", "_manifest.json"] + [f"part-0000{n}.{fmt}" for n in range(3)]

    ids = [r["Id"] for r in sf.records("Account")]
    _run(sf, "delete", [{"Id": i} for i in ids[:4]])
    _run(sf, "insert", _accounts(100, 9))
    with monkeypatch.context() as patched:
        _fail_mid_page(patched)
        with pytest.raises(Exception, match="killed mid-page"):
            _execute(_operator(output_path=f"memory://{root}", output_format=fmt))
    assert listing() == before

    _execute(_operator(output_path=f"memory://{root}", output_format=fmt))
    after = listing()
    manifest = json.loads(after["_manifest.json"])
    assert sorted(after) == ["_SUCCESS", "_manifest.json"] + [f"part-0000{n}.{fmt}" for n in range(4)]
    names: list[str] = []
    for entry in manifest["files"]:
        data = after[entry["name"]]
        assert len(data) == entry["bytes"]
        if fmt == "csv":
            names += [r["Name"] for r in csv.DictReader(io.StringIO(data.decode()))]
        else:
            names += [r["Name"] for r in pq.read_table(io.BytesIO(data)).to_pylist()]
    assert sorted(names) == sorted(r["Name"] for r in sf.records("Account"))
    assert len(names) == 17
    assert not [p for p in fs.find(root) if "/_staging/" in p]


def test_a_killed_extract_process_leaves_the_earlier_extract_whole(
    sf: RunningEmulator, tmp_path: Path
) -> None:
    """A real process, SIGKILLed while it writes pages over an earlier complete extract."""
    _run(sf, "insert", _accounts(0, 12))
    _execute(_operator(output_path=tmp_path))
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    _run(sf, "insert", _accounts(100, 30))
    started = tmp_path.parent / f"{tmp_path.name}.started"
    script = textwrap.dedent(
        f"""
        import time
        from airflow_provider_salesforce_bulk.client.page_check import PageCheck
        from tests.airflow.test_extract_incremental import _execute, _operator
        feed = PageCheck.feed
        def slow(self, chunk):
            feed(self, chunk)
            open({str(started)!r}, "w").close()
            time.sleep(30)  # killed here, mid-download
        PageCheck.feed = slow
        _execute(_operator(output_path={str(tmp_path)!r}))
        """
    )
    root = Path(__file__).resolve().parents[2]
    child = subprocess.Popen([sys.executable, "-c", script], cwd=root, env=dict(os.environ))  # noqa: S603
    try:
        deadline = time.monotonic() + 120
        while not started.exists():
            assert child.poll() is None, "the extract process ended before writing a page"
            assert time.monotonic() < deadline, "the extract process never started writing"
            time.sleep(0.1)
        child.send_signal(signal.SIGKILL)
        child.wait(30)
    finally:
        if child.poll() is None:
            child.kill()
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.name != "_staging"}
    assert after == before  # the earlier extract, complete and untouched
    assert list((tmp_path / "_staging").glob("*/part-*"))  # the killed run's pages, never published

    summary = _execute(_operator(output_path=tmp_path))  # the next publish clears what it left
    assert sum(f["records"] for f in summary["files"]) == 42
    assert not (tmp_path / "_staging").exists()


class _Tampering(httpx.AsyncBaseTransport):
    """Result page 1 answered cut short (its last record dropped) while ``budget[0]`` lasts (shared by
    every pool's transport: each run of the event loop has its own)."""

    def __init__(self, inner: httpx.AsyncBaseTransport, budget: list[int]) -> None:
        self.inner, self.budget = inner, budget

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        if not request.url.path.endswith("/results") or "locator" not in request.url.params:
            return response
        if self.budget[0] <= 0:
            return response
        body = await httpx.Response(200, headers=response.headers, stream=response.stream).aread()
        self.budget[0] -= 1
        cut = body[: body.rstrip(b"\n").rfind(b"\n") + 1]
        headers = [
            (k, v)
            for k, v in response.headers.items()
            if k.lower() not in ("content-encoding", "content-length")
        ]
        return httpx.Response(response.status_code, headers=headers, content=cut)


def test_a_tampered_page_is_read_again_then_fails_the_task(
    sf: RunningEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow.providers.common.compat.sdk import AirflowException

    _run(sf, "insert", _accounts(0, 12))
    once = [1]
    wrap_pool_transport(monkeypatch, lambda real: _Tampering(real, once))
    summary = _execute(_operator(output_path=tmp_path / "once"))
    assert sum(f["records"] for f in summary["files"]) == 12  # read again, whole
    assert once == [0]

    wrap_pool_transport(monkeypatch, lambda real: _Tampering(real, [10**6]))
    with pytest.raises(
        AirflowException, match=r"failed their checks twice: page [12] of query job \w+ holds [14] records"
    ):
        _execute(_operator(output_path=tmp_path / "always"))
    assert not (tmp_path / "always" / "_SUCCESS").exists()
    assert not list((tmp_path / "always").glob("**/part-*"))


def test_a_bad_output_path_fails_before_any_query_job(sf: RunningEmulator, tmp_path: Path) -> None:
    from airflow.providers.common.compat.sdk import AirflowFailException

    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    for path, message in [
        (a_file, "cannot be written"),
        (a_file / "below", "cannot be written"),
        # A scheme whose filesystem no venv of this project installs (s3fs is in the stack's).
        ("abfs://container/extracts", r"install adlfs \(apache-airflow-providers-microsoft-azure\)"),
    ]:
        with pytest.raises(AirflowFailException, match=message):
            _execute(_operator(output_path=path))
    assert sf.emulator.query_jobs.list_jobs(0, 1000) == []


def test_the_daily_query_job_limit_is_a_retryable_error_naming_the_limit(
    sf: RunningEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow.providers.common.compat.sdk import AirflowException, AirflowFailException

    answer = (
        b'[{"errorCode":"LIMIT_EXCEEDED",'
        b'"message":"Max bulk v2 query jobs (10000) per 24 hrs has been reached"}]'
    )

    class Exhausted(httpx.AsyncBaseTransport):
        def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
            self.inner = inner

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            if request.method == "POST" and request.url.path.rstrip("/").endswith("/jobs/query"):
                return httpx.Response(400, content=answer, headers={"Content-Type": "application/json"})
            return await self.inner.handle_async_request(request)

    wrap_pool_transport(monkeypatch, Exhausted)
    with pytest.raises(AirflowException) as caught:
        _execute(_operator(output_path=tmp_path))
    assert not isinstance(caught.value, AirflowFailException)  # Airflow may retry it
    assert "Max bulk v2 query jobs (10000) per 24 hrs has been reached" in str(caught.value)
    assert "DailyBulkV2QueryJobs" in str(caught.value)
    assert not (tmp_path / "_SUCCESS").exists()


def test_a_run_into_a_folder_holding_a_published_window_reads_that_window_again(
    sf: RunningEmulator, tmp_path: Path
) -> None:
    """A cleared run, or a second run sharing a ``{{ ds }}`` folder: publishing a new window there
    would drop the first window's records from the lake, so the run reads the same window again and
    the mark stays; the next run in a folder of its own gets the changes."""
    _run(sf, "insert", _accounts(0, 5))
    time.sleep(SETTLE)
    args = f"soql={SOQL!r}, incremental_field='SystemModstamp', deferrable=False"
    fixed = tmp_path / "fixed"
    dag = _dag("inc_same_folder", f"{args}, output_path={str(fixed)!r}")
    assert dag.test().state == "success"
    first, rows = _published(fixed)
    first_ids = sorted(_by_id(rows))
    assert len(first_ids) == 5

    _run(sf, "insert", _accounts(100, 2))
    time.sleep(SETTLE)
    assert dag.test().state == "success"
    again, rows = _published(fixed)
    assert sorted(_by_id(rows)) == first_ids
    assert (again["watermark"]["before"], again["watermark"]["after"]) == (None, first["watermark"]["after"])
    assert again["soql"] == first["soql"]

    per_run = _dag("inc_same_folder", f"{args}, output_path={str(tmp_path)!r} + '/{{{{ run_id }}}}'")
    dr = per_run.test()
    assert dr.state == "success"
    third, rows = _published(tmp_path / dr.run_id)
    new_ids = sorted(r["Id"] for r in sf.records("Account") if r["External_Id__c"] >= "ACC-0100")
    assert sorted(_by_id(rows)) == new_ids
    assert third["watermark"]["before"] == first["watermark"]["after"]


class _EmptyBodies(httpx.AsyncBaseTransport):
    """Result pages answered with an empty body (no header), as an org may answer an empty result."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        if not request.url.path.endswith("/results"):
            return response
        await httpx.Response(200, headers=response.headers, stream=response.stream).aread()
        headers = [
            (k, v)
            for k, v in response.headers.items()
            if k.lower() not in ("content-encoding", "content-length")
        ]
        return httpx.Response(response.status_code, headers=headers, content=b"")


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_an_empty_result_without_a_header_still_publishes_the_columns(
    sf: RunningEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str
) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    wrap_pool_transport(monkeypatch, _EmptyBodies)
    summary = _execute(_operator(output_path=tmp_path, output_format=fmt))
    assert summary["records"] == 0
    assert [f["records"] for f in summary["files"]] == [0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["_SUCCESS", "_manifest.json", f"part-00000.{fmt}"]
    part = tmp_path / f"part-00000.{fmt}"
    if fmt == "csv":
        assert part.read_text() == '"Id","Name"\n'
    else:
        table = pq.read_table(part)
        assert (table.num_rows, table.schema.names) == (0, ["Id", "Name"])
        assert [str(t) for t in table.schema.types] == ["string", "string"]


def test_a_stop_request_writes_and_publishes_nothing_more(sf: RunningEmulator, tmp_path: Path) -> None:
    from airflow.providers.common.compat.sdk import AirflowException

    _run(sf, "insert", _accounts(0, 12))
    _execute(_operator(output_path=tmp_path))
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    _run(sf, "insert", _accounts(100, 3))
    op = _operator(output_path=tmp_path)
    op._stop_event().set()  # what on_kill does: stop at the next page boundary
    with pytest.raises(AirflowException, match="Stopped at page"):
        _execute(op)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.name != "_staging"} == before
