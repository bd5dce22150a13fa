"""How a query operator's files are named, written off the event loop and shown in its summary."""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Any

__all__ = [
    "DEFAULT_EXTRACTS_FOLDER",
    "OUTPUT_FORMATS",
    "OffLoopSinks",
    "display_path",
    "part_name",
]

DEFAULT_EXTRACTS_FOLDER = "salesforce_bulk_extracts"
"""Under ``$AIRFLOW_HOME``: ``<folder>/<dag_id>/<run_id>/<task_id>[/<map_index>]/part-00000.csv``."""

OUTPUT_FORMATS = ("csv", "parquet")


def part_name(number: int, output_format: str) -> str:
    """The file of result page ``number`` (0-based): stable, so a re-run overwrites the same names."""
    return f"part-{number:05d}.{output_format}"


class _LazySink:
    """A file opened at its first write and closed in a worker thread.

    The Parquet conversion writes from a worker thread, but enters and leaves the sink's context on
    the event loop: an object store's open (a request) and close (the upload of the last part) would
    stall every other page streaming meanwhile. Here the open happens in the writing thread, and the
    close is handed to a thread whose result :meth:`OffLoopSinks.wait` collects.
    """

    def __init__(self, path: Any, closes: list[asyncio.Future[None]]) -> None:
        self._path = path
        self._closes = closes
        self._file: Any = None

    def __enter__(self) -> _LazySink:
        return self

    def write(self, data: Any) -> int:
        if self._file is None:
            self._file = self._path.open("wb")
        written = self._file.write(data)
        return len(memoryview(data)) if written is None else int(written)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        file, self._file = self._file, None
        if file is not None:
            self._closes.append(asyncio.get_running_loop().run_in_executor(None, file.close))


class OffLoopSinks:
    """Sinks for :func:`~..client.query_parquet.copy_results_to_parquet` whose open and close block
    no event loop; :meth:`wait` must be awaited after the copy (a failed close is a failed write)."""

    def __init__(self) -> None:
        self._closes: list[asyncio.Future[None]] = []

    def open(self, path: Any) -> _LazySink:
        return _LazySink(path, self._closes)

    async def wait(self) -> None:
        """Wait for every close; raise the first failure."""
        results = await asyncio.gather(*self._closes, return_exceptions=True)
        self._closes.clear()
        for result in results:
            if isinstance(result, BaseException):
                raise result


def display_path(path: Any) -> str:
    """A local file as a plain path (openable as it is), anything else as its URL."""
    if getattr(path, "protocol", None) in ("", "file", "local"):
        return str(path.path)
    return str(path)
