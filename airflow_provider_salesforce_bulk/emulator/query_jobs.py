"""Query jobs: their rows in the database, the worker running them, and result pages read back.

A job's query runs once, on the worker thread, as Salesforce runs it once: the matching records
are scanned a batch at a time, written as CSV lines into chunks of :data:`CHUNK_ROWS` rows, and
every result page is then cut from those chunks. Memory stays flat whatever the record count.
Query jobs live in their own table so the ingest worker and ``GET /jobs/ingest`` never see them.
"""

from __future__ import annotations

import array
import logging
import queue
import threading
import time
from collections.abc import Iterator
from typing import Any

from .faults import FaultInjector
from .query_csv import header_line, line_writer
from .schema import Schema
from .settings import EmulatorSettings
from .soql import SoqlError
from .soql_compile import compile_query
from .store import Store
from .timestamps import now_text
from .upload_csv import DELIMITERS, LINE_ENDINGS

logger = logging.getLogger(__name__)

#: Result rows per stored chunk (a page may start and end anywhere inside one).
CHUNK_ROWS = 2000

_DDL = (
    """CREATE TABLE IF NOT EXISTS query_jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    operation TEXT NOT NULL,
    object TEXT NOT NULL,
    query TEXT NOT NULL,
    line_ending TEXT NOT NULL,
    column_delimiter TEXT NOT NULL,
    api_version REAL NOT NULL,
    state TEXT NOT NULL,
    created_by_id TEXT NOT NULL,
    created_date TEXT NOT NULL,
    system_modstamp TEXT NOT NULL,
    processed INTEGER NOT NULL DEFAULT 0,
    retries INTEGER NOT NULL DEFAULT 0,
    total_processing_time INTEGER NOT NULL DEFAULT 0,
    header TEXT,
    error_message TEXT
)""",
    """CREATE TABLE IF NOT EXISTS query_chunks (
    job_id TEXT NOT NULL, n INTEGER NOT NULL, data BLOB NOT NULL, ends BLOB NOT NULL,
    PRIMARY KEY (job_id, n)
)""",
)

ACTIVE_STATES = ("UploadComplete", "InProgress")
#: Times a job whose scan broke is run again before it fails.
MAX_RETRIES = 3
RETRIES_EXHAUSTED = "InternalServerError : The job was retried too many times and was not completed"
#: The ``errorMessage`` of a query job failed by the ``job_failure_rate`` fault.
QUERY_TIMEOUT = (
    "InvalidBatch : Failed to process query: QUERY_TIMEOUT: Your query request was running for too long."
)


class QueryJobs:
    """Query job storage and the worker thread that runs them.

    Parameters
    ----------
    store, schema, settings
        The emulator's database, org and live settings (``records_per_second`` paces the scan).
    faults
        Decides which jobs fail (``job_failure_rate``): such a job ends Failed after its first
        chunk, its results discarded, with the error a query timeout gives.
    """

    def __init__(
        self, store: Store, schema: Schema, settings: EmulatorSettings, faults: FaultInjector | None = None
    ) -> None:
        self.faults = faults
        self.store = store
        self.schema = schema
        self.settings = settings
        with store.transaction() as conn:
            for statement in _DDL:
                conn.execute(statement)
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="salesforce-emulator-query", daemon=True)

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the worker and rerun the jobs a previous run left unfinished."""
        self._thread.start()
        rows = self.store.query(
            "SELECT id FROM query_jobs WHERE state IN ('UploadComplete', 'InProgress') ORDER BY seq"
        )
        for row in rows:
            self.submit(str(row[0]))

    def stop(self) -> None:
        """Stop the worker; an unfinished scan is rerun from the start at the next start."""
        self._stopping.set()
        self._queue.put(None)
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def reset(self) -> None:
        """Forget every query job and its results."""
        with self.store.transaction() as conn:
            conn.execute("DELETE FROM query_jobs")
            conn.execute("DELETE FROM query_chunks")

    def submit(self, job_id: str) -> None:
        """Queue a job for the worker."""
        self._queue.put(job_id)

    # -- rows ------------------------------------------------------------------------------------

    def insert_job(self, job: dict[str, Any]) -> None:
        """Insert a new job row (keys are column names)."""
        self.store.insert_row("query_jobs", job)

    def get_job(self, job_id: str) -> dict[str, Any] | None:
        """The job row, or None."""
        return self.store.get_row("query_jobs", job_id)

    def list_jobs(self, offset: int, limit: int) -> list[dict[str, Any]]:
        """One page of jobs in creation order."""
        return self.store.list_rows("query_jobs", offset, limit)

    def transition(
        self, job_id: str, allowed: tuple[str, ...], changes: dict[str, Any]
    ) -> tuple[dict[str, Any] | None, bool]:
        """Apply ``changes`` if the job's state is one of ``allowed``; returns (job after, applied)."""
        return self.store.transition_row("query_jobs", job_id, allowed, changes)

    def delete_if(self, job_id: str, allowed: tuple[str, ...]) -> str:
        """Delete a job and its results if its state is in ``allowed``: ``ok``, ``missing`` or the state."""
        return self.store.delete_row_if("query_jobs", job_id, allowed, ("query_chunks",))

    def iter_page(self, job: dict[str, Any], start: int, count: int) -> Iterator[bytes]:
        """The CSV of rows ``[start, start + count)``: the header, then the rows chunk by chunk."""
        yield str(job["header"]).encode()
        end = start + count
        n = start // CHUNK_ROWS
        while start < end:
            rows = self.store.query(
                "SELECT data, ends FROM query_chunks WHERE job_id = ? AND n = ?", (job["id"], n)
            )
            if not rows:
                return  # deleted meanwhile
            data = bytes(rows[0][0])
            ends = array.array("I")
            ends.frombytes(bytes(rows[0][1]))
            first = n * CHUNK_ROWS
            low = start - first
            high = min(end - first, len(ends))
            yield data[ends[low - 1] if low else 0 : ends[high - 1]]
            start = first + high
            n += 1

    # -- the worker ------------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stopping.is_set():
            job_id = self._queue.get()
            if job_id is None:
                return
            try:
                self._process(job_id)
            except Exception:
                # A scan can break when another thread rolls back on the shared connection: run
                # the job again from the start, as Salesforce retries, a few times at most.
                logger.exception("emulator query worker failed on job %s", job_id)
                job = self.get_job(job_id)
                if job is None or job["state"] != "InProgress":
                    continue
                if job["retries"] < MAX_RETRIES:
                    self.transition(job_id, ("InProgress",), {"retries": job["retries"] + 1})
                    self.submit(job_id)
                else:
                    self._finish(job_id, "Failed", 0, time.monotonic(), RETRIES_EXHAUSTED)

    def _process(self, job_id: str) -> None:
        started = time.monotonic()
        job, applied = self.transition(
            job_id, ACTIVE_STATES, {"state": "InProgress", "system_modstamp": now_text(), "processed": 0}
        )
        if job is None or not applied:
            return
        with self.store.transaction() as conn:
            conn.execute("DELETE FROM query_chunks WHERE job_id = ?", (job_id,))
        try:
            compiled = compile_query(
                self.schema, job["query"], include_deleted=job["operation"] == "queryAll"
            )
        except SoqlError as exc:
            self._finish(job_id, "Failed", 0, started, exc.message)
            return
        delimiter = DELIMITERS[job["column_delimiter"]]
        eol = LINE_ENDINGS[job["line_ending"]]
        self.transition(job_id, ("InProgress",), {"header": header_line(compiled.columns, delimiter, eol)})
        line = line_writer(compiled.columns, delimiter, eol)
        cursor = self.store.execute(compiled.sql, compiled.params)
        total = 0
        n = 0
        try:
            while True:
                with self.store.lock:
                    rows = cursor.fetchmany(CHUNK_ROWS)
                if not rows:
                    break
                data = bytearray()
                ends = array.array("I")
                for row in rows:
                    data += line(row).encode()
                    ends.append(len(data))
                with self.store.transaction() as conn:
                    state = conn.execute("SELECT state FROM query_jobs WHERE id = ?", (job_id,)).fetchone()
                    if state is None or state[0] != "InProgress":
                        conn.execute("DELETE FROM query_chunks WHERE job_id = ?", (job_id,))
                        return  # aborted or deleted while running
                    conn.execute(
                        "INSERT INTO query_chunks (job_id, n, data, ends) VALUES (?, ?, ?, ?)",
                        (job_id, n, bytes(data), ends.tobytes()),
                    )
                    total += len(rows)
                    conn.execute("UPDATE query_jobs SET processed = ? WHERE id = ?", (total, job_id))
                n += 1
                if n == 1 and self.faults is not None and self.faults.job_fails():
                    with self.store.transaction() as conn:
                        conn.execute("DELETE FROM query_chunks WHERE job_id = ?", (job_id,))
                    self._finish(job_id, "Failed", total, started, QUERY_TIMEOUT)
                    return
                pace = self.settings.records_per_second
                if self._stopping.wait(len(rows) / pace if pace else 0):
                    return  # stopping: the job reruns at the next start
        finally:
            with self.store.lock:
                cursor.close()
        self._finish(job_id, "JobComplete", total, started, None)

    def _finish(self, job_id: str, state: str, total: int, started: float, error: str | None) -> None:
        changes: dict[str, Any] = {
            "state": state,
            "processed": total,
            "system_modstamp": now_text(),
            "total_processing_time": int((time.monotonic() - started) * 1000),
        }
        if error is not None:
            changes["error_message"] = error
        self.transition(job_id, ("InProgress",), changes)
