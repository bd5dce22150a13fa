"""The background worker that processes closed ingest jobs in internal batches, like Salesforce does.

Runs in its own thread; the event loop only enqueues job ids. Jobs are interleaved slice by slice
and paced by ``records_per_second``. Each slice is validated, written and recorded (records,
results and counters) in one transaction, so a restart resumes a job after its last committed
slice and never applies a row twice.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import sqlite3
import threading
import time
from collections.abc import Iterator
from typing import Any

import orjson

from .faults import FaultInjector
from .ingest_plan import JobFailure, make_plan
from .limits import Limits
from .settings import EmulatorSettings
from .slice_processing import JobGone, SliceOutcome, SliceProcessor
from .store import Store
from .timestamps import now_text
from .upload_csv import UploadFormatError, check_line_ending, read_rows

logger = logging.getLogger(__name__)

#: Salesforce processes ingest data in internal batches of this many records.
BATCH_SIZE = 10_000

_HOLD_POLL_SECONDS = 0.05

#: A job's errorMessage when processing it failed unexpectedly (Salesforce's words for an internal error).
UNKNOWN_EXCEPTION = (
    "UNKNOWN_EXCEPTION : An unexpected error occurred. Please include this ErrorId if you contact support"
)


class JobProcessor:
    """The worker thread: takes closed jobs and processes them, interleaving jobs slice by slice.

    Parameters
    ----------
    store, settings, faults, limits
        The emulator's state; ``settings.records_per_second`` paces the work (None: instant).
    """

    def __init__(
        self, store: Store, settings: EmulatorSettings, faults: FaultInjector, limits: Limits
    ) -> None:
        self.store = store
        self.settings = settings
        self.faults = faults
        self.limits = limits
        self._cond = threading.Condition()
        self._ready: list[tuple[float, int, Iterator[float]]] = []
        self._counter = 0
        self._queued: set[str] = set()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="salesforce-emulator-worker", daemon=True)

    def start(self) -> None:
        """Start the worker and resume the jobs a previous run left unfinished."""
        self._thread.start()
        for job_id in self.store.jobs_in_states(("UploadComplete", "InProgress")):
            self.submit(job_id)

    def stop(self) -> None:
        """Stop after the current slice; unfinished jobs resume at the next start."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(timeout=30)

    def submit(self, job_id: str) -> None:
        """Queue a job that was just closed."""
        with self._cond:
            if job_id in self._queued:
                return
            self._queued.add(job_id)
            self._push(time.monotonic(), self._job(job_id))
            self._cond.notify_all()

    def _push(self, when: float, steps: Iterator[float]) -> None:
        self._counter += 1
        heapq.heappush(self._ready, (when, self._counter, steps))

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopping and (
                    self.settings.hold_processing or not self._ready or self._ready[0][0] > time.monotonic()
                ):
                    timeout = self._ready[0][0] - time.monotonic() if self._ready else None
                    if self.settings.hold_processing:
                        timeout = _HOLD_POLL_SECONDS  # a settings change does not notify the worker
                    self._cond.wait(timeout)
                if self._stopping:
                    return
                _, _, steps = heapq.heappop(self._ready)
            try:
                when = next(steps)
            except StopIteration:
                continue
            except Exception:
                logger.exception("emulator worker failed on a job")
                continue
            with self._cond:
                self._push(when, steps)

    def _job(self, job_id: str) -> Iterator[float]:
        try:
            yield from self._process(job_id)
        except Exception:
            # A bug or a value the store cannot hold must not leave the job InProgress until the
            # client's deadline: it ends Failed, as Salesforce ends a job its servers could not finish.
            logger.exception("emulator worker failed on job %s", job_id)
            self.store.transition_job(
                job_id,
                ("UploadComplete", "InProgress"),
                {"state": "Failed", "system_modstamp": now_text(), "error_message": UNKNOWN_EXCEPTION},
            )
        finally:
            with self._cond:
                self._queued.discard(job_id)

    def _finish(
        self, job_id: str, state: str, started: float, active: float, error: str | None = None
    ) -> None:
        changes: dict[str, Any] = {
            "state": state,
            "system_modstamp": now_text(),
            "total_processing_time": int((time.monotonic() - started) * 1000),
            "api_active_processing_time": int(active * 1000),
        }
        if error is not None:
            changes["error_message"] = error
        self.store.transition_job(job_id, ("InProgress",), changes)

    def _process(self, job_id: str) -> Iterator[float]:
        job, _ = self.store.transition_job(
            job_id, ("UploadComplete",), {"state": "InProgress", "system_modstamp": now_text()}
        )
        if job is None or job["state"] != "InProgress":
            return
        started = time.monotonic()
        active = job["api_active_processing_time"] / 1000  # resumed after a restart: go on from there
        if job["upload"] != "done":
            self._finish(
                job_id, "Failed", started, active, "InvalidBatch : No data was uploaded for this job"
            )
            return
        try:
            first = next(self.store.iter_upload(job_id), b"")
            check_line_ending(first, job["line_ending"])
            header, rows = read_rows(self.store, job_id, job["column_delimiter"])
            plan = make_plan(self.store.schema, job, header)
        except (UploadFormatError, JobFailure) as exc:
            self._finish(job_id, "Failed", started, active, str(exc))
            return
        processor = SliceProcessor(self.store, self.faults, plan, job_id)
        batches_done, rows_done = self.store.processed_batches(job_id)
        for _ in range(rows_done):  # resuming after a restart: skip what was committed
            next(rows, None)
        slice_no, processed = batches_done, rows_done
        if self.faults.job_fails():
            self._finish(
                job_id,
                "Failed",
                started,
                active,
                "Timeout : The job exceeded the number of batch retries and was not completed",
            )
            return
        while True:
            speed = self.settings.records_per_second
            size = BATCH_SIZE if not speed else max(1, min(BATCH_SIZE, int(speed / 5)))
            # A batch boundary never falls inside a slice, so batches count exactly per 10,000 records.
            size = min(size, BATCH_SIZE - processed % BATCH_SIZE)
            state = self.store.query("SELECT state FROM jobs WHERE id = ?", (job_id,))
            if not state or state[0][0] != "InProgress":
                return  # aborted or deleted: the rest stays unprocessed
            tick = time.monotonic()
            try:
                chunk = list(itertools.islice(rows, size))
            except UploadFormatError as exc:
                self._finish(job_id, "Failed", started, active, str(exc))
                return
            if not chunk:
                break
            if processed % BATCH_SIZE == 0:
                self.limits.bulk_batches.add(1)

            # A paced emulator pretends each slice takes len/speed seconds of work: count that as active.
            paced = len(chunk) / speed if speed else 0.0

            def record(
                conn: sqlite3.Connection,
                out: SliceOutcome,
                n: int = slice_no,
                first: int = processed,
                count: int = len(chunk),
                active_before: float = active,
                tick: float = tick,
                paced: float = paced,
            ) -> bool:
                if conn.execute("SELECT 1 FROM jobs WHERE id = ?", (job_id,)).fetchone() is None:
                    return False
                conn.execute(
                    "INSERT INTO result_batches (job_id, n, first_row, count, results) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (job_id, n, first, count, orjson.dumps(out.results)),
                )
                # Salesforce's apiActiveProcessingTime grows batch by batch while the job is InProgress.
                active_ms = int((active_before + max(time.monotonic() - tick, paced)) * 1000)
                conn.execute(
                    "UPDATE jobs SET processed = processed + ?, failed = failed + ?, retries = retries + ?, "
                    "api_active_processing_time = ? WHERE id = ?",
                    (count, out.failed, 1 if out.locked else 0, active_ms, job_id),
                )
                return True

            try:
                processor.process(chunk, record)
            except JobGone:
                return
            slice_no += 1
            processed += len(chunk)
            active += max(time.monotonic() - tick, paced)
            yield tick + len(chunk) / speed if speed else time.monotonic()
        self._finish(job_id, "JobComplete", started, active)
