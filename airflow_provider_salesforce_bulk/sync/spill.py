"""An external sort of tuples: sorted runs spilled to temporary files, merged lazily.

Rows are tuples of str/bytes/int (``marshal`` handles them in C, and the files are this process's own
temporary files, never read from anywhere else). At most ``run_rows`` rows are held in memory;
reading back holds one block of each run. Python's str order is code point order, the same as the
byte order of UTF-8, which is how Arrow and Parquet sort the state: both sides of a merge agree.
"""

from __future__ import annotations

import contextlib
import heapq
import marshal
import os
import tempfile
from collections.abc import Iterable, Iterator
from itertools import islice
from typing import Any

RUN_ROWS = 200_000
_BLOCK = 4_096


def write_rows(handle: Any, rows: list[tuple[Any, ...]]) -> None:
    for start in range(0, len(rows), _BLOCK):
        marshal.dump(rows[start : start + _BLOCK], handle)


def read_rows(path: str) -> Iterator[tuple[Any, ...]]:
    with open(path, "rb") as handle:
        while True:
            try:
                block = marshal.load(handle)  # noqa: S302 - our own temporary file
            except EOFError:
                return
            yield from block


class ExternalSorter:
    """Collects rows, then yields them sorted, spilling to ``workdir`` past ``run_rows`` rows."""

    def __init__(self, workdir: str, *, run_rows: int = RUN_ROWS, name: str = "run") -> None:
        self.workdir = workdir
        self.run_rows = run_rows
        self.name = name
        self.rows: list[tuple[Any, ...]] = []
        self.runs: list[str] = []
        self.count = 0

    def add(self, row: tuple[Any, ...]) -> None:
        self.rows.append(row)
        self.count += 1
        if len(self.rows) >= self.run_rows:
            self._spill()

    def extend(self, rows: Iterable[tuple[Any, ...]]) -> None:
        source = iter(rows)
        while block := list(islice(source, _BLOCK)):
            self.rows.extend(block)
            self.count += len(block)
            if len(self.rows) >= self.run_rows:
                self._spill()

    def _spill(self) -> None:
        self.rows.sort()
        fd, path = tempfile.mkstemp(prefix=f"{self.name}-", suffix=".bin", dir=self.workdir)
        with os.fdopen(fd, "wb") as handle:
            write_rows(handle, self.rows)
        self.runs.append(path)
        self.rows = []

    def sorted(self) -> Iterator[tuple[Any, ...]]:
        """Every row added, in order; call once, after the last :meth:`add`."""
        self.rows.sort()
        if not self.runs:
            yield from self.rows
            return
        if self.rows:
            self._spill()
        try:
            yield from heapq.merge(*(read_rows(path) for path in self.runs))
        finally:
            for path in self.runs:
                # Gone already when the caller's workdir was removed before this generator was closed.
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
            self.runs = []


def sorted_rows(rows: Iterable[tuple[Any, ...]], workdir: str, name: str) -> Iterator[tuple[Any, ...]]:
    sorter = ExternalSorter(workdir, name=name)
    sorter.extend(rows)
    return sorter.sorted()
