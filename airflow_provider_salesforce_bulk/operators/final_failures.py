"""The task's final failed-results file: exactly the records whose final outcome is failed.

Each job's own ``failedResults.csv`` is kept as Salesforce gave it, so a round's file still lists the
records that failed there with a transient code (``UNABLE_TO_LOCK_ROW``) and were sent again in a
later round, where many succeeded. The final file leaves those rows out (a row's job sent its
transient failures again: :meth:`~airflow_provider_salesforce_bulk.client.ResubmitLedger.is_final_failure`)
and keeps every other failed row of every job, under the union of the jobs' headers. It is
streamed (memory holds one row), written under this try's partial name and published whole, in a
folder named after the task's jobs: ``final-<digest of the job ids>/failedResults.csv``, so tries
of one load share it and another load (another run, a reload) never meets it.
"""

from __future__ import annotations

import csv
import hashlib
import io
import threading
from collections.abc import Callable, Mapping
from typing import IO, Any

from airflow_provider_salesforce_bulk.client import ResubmitPolicy
from airflow_provider_salesforce_bulk.client.resubmit import ResubmitLedger
from airflow_provider_salesforce_bulk.operators.result_files import write_then_publish
from airflow_provider_salesforce_bulk.operators.try_stop import check_stop

__all__ = ["FINAL_FAILED_FILE", "readable_failed_files", "write_final_failures"]

FINAL_FAILED_FILE = "failedResults.csv"


def _path(uri: str) -> Any:
    from airflow.providers.common.compat.sdk import ObjectStoragePath

    return ObjectStoragePath(uri)


def _exists(uri: str) -> bool:
    try:
        return bool(_path(uri).exists())
    except OSError:
        return False


def readable_failed_files(
    entries: Mapping[str, Mapping[str, Any]], warn: Callable[..., object]
) -> dict[str, str] | None:
    """Each job's failed-results file the summary names, or ``None`` (after ``warn``) when one of them
    cannot be read here: earlier rounds ran on another worker and the results path is local to each."""
    files = {j: e["result_files"]["failed"] for j, e in entries.items() if e["result_files"].get("failed")}
    missing = [j for j, uri in files.items() if not _exists(uri)]
    if missing:
        warn(
            "No final failed-results file: the failed results of job(s) %s are not readable here "
            "(results_path is not shared by the workers); each job's own files are named in the summary",
            ", ".join(missing),
        )
        return None
    return files


def _reader(stream: IO[bytes], delimiter: str) -> Any:
    return csv.reader(io.TextIOWrapper(stream, encoding="utf-8-sig", newline=""), delimiter=delimiter)


def _header(uri: str, delimiter: str) -> list[str]:
    with _path(uri).open("rb") as stream:
        return next(_reader(stream, delimiter), [])


def final_folder(directory: Any, job_ids: list[str]) -> Any:
    """``directory / final-<digest>``: one folder per set of jobs (one load)."""
    digest = hashlib.sha256("\n".join(sorted(job_ids)).encode("ascii")).hexdigest()[:12]
    return directory / f"final-{digest}"


async def write_final_failures(
    directory: Any,
    failed_files: Mapping[str, str],
    ledger: ResubmitLedger,
    policy: ResubmitPolicy,
    delimiter: str,
    *,
    token: str,
    stop: threading.Event | None = None,
) -> tuple[str, int]:
    """Write the final failed-results file of the jobs whose ``failedResults`` files are
    ``failed_files`` (job id to URI) under ``directory``; returns its URI and its row count."""
    target = final_folder(directory, list(failed_files)) / FINAL_FAILED_FILE
    target.parent.mkdir(parents=True, exist_ok=True)
    headers = {job_id: _header(uri, delimiter) for job_id, uri in failed_files.items()}
    columns = list(dict.fromkeys(name for header in headers.values() for name in header))
    if not columns:
        columns = ["sf__Id", "sf__Error"]

    async def write(sink: IO[bytes]) -> int:
        text = io.TextIOWrapper(sink, encoding="utf-8", newline="")
        out = csv.writer(text, delimiter=delimiter, lineterminator="\n")
        out.writerow(columns)
        rows = 0
        for job_id, uri in failed_files.items():
            check_stop(stop, f"reading the failed results of job {job_id}")
            header = headers[job_id]
            if "sf__Error" not in header:
                continue
            error = header.index("sf__Error")
            with _path(uri).open("rb") as stream:
                reader = _reader(stream, delimiter)
                next(reader, None)
                for row in reader:
                    if not row or not ledger.is_final_failure(job_id, row[error], policy):
                        continue
                    values = dict(zip(header, row, strict=False))
                    out.writerow([values.get(name, "") for name in columns])
                    rows += 1
        text.flush()
        text.detach()
        return rows

    rows = await write_then_publish(target, token, write, stop)
    return str(target), rows
