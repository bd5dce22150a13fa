"""Ordering records by a parent field so one parent's children share a job (fewer UNABLE_TO_LOCK_ROW).

Salesforce locks a parent record while it saves a child (a Contact locks its Account). Children of
one parent spread over jobs or batches that run in parallel wait for each other's lock and fail
with ``UNABLE_TO_LOCK_ROW``. :func:`group_by_parent` wraps a :class:`ChunkSource` and gives the same
records ordered by the parent field's value, cut so that a parent's records are never split across
two chunks when they fit in one.

Memory stays flat in the data size: every record's CSV bytes, exactly as the source serialized
them, go to a temporary SQLite file with its parent value and its position in the source; SQLite
sorts them once (an external sort that spills to disk), and each pass reads them back in order.
"""

from __future__ import annotations

import array
import contextlib
import csv
import io
import itertools
import os
import sqlite3
import tempfile
import threading
import weakref
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field

from airflow_provider_salesforce_bulk.client import ChunkFormat, ChunkLimits, InputError
from airflow_provider_salesforce_bulk.client.csv_format import CsvChunk, RecordScan
from airflow_provider_salesforce_bulk.operators.chunk_source import ChunkSource

__all__ = ["GroupedChunk", "GroupedSource", "group_by_parent"]

_FETCH = 2_000
# SQLite's page cache (and so its sorter's memory before it spills to disk), in KiB.
_CACHE_KIB = 8_192


@dataclass(frozen=True)
class GroupedChunk(CsvChunk):
    """A chunk of records in parent order.

    ``first_record_index`` counts records in the grouped order (chunks are contiguous in it, and the
    same input gives the same order on every pass and every try). ``source_indexes[i]`` is the
    position in the wrapped source's input of the chunk's record ``i``.
    """

    source_indexes: array.array[int] = field(
        default_factory=lambda: array.array("q"), compare=False, repr=False
    )


class GroupedSource(ChunkSource):
    """A :class:`ChunkSource` giving the wrapped source's records grouped by a parent field.

    The first pass spools the source to a temporary SQLite file; later passes read that file again.
    :meth:`close` (or leaving a ``with`` block, or garbage collection) deletes it.
    """

    def __init__(
        self,
        source: ChunkSource,
        parent_field: str,
        *,
        limits: ChunkLimits,
        chunk_format: ChunkFormat,
        spool_dir: str | None = None,
    ) -> None:
        super().__init__(self._open, f"{source.description}, grouped by {parent_field}", uri=source.uri)
        self.source = source
        self.parent_field = parent_field
        self.max_size_bytes = limits.max_size_bytes
        self.max_records = limits.max_records
        # Records are cut where the chunker ended them, in any line ending: only the delimiter matters.
        self.column_delimiter = chunk_format.column_delimiter
        self.delimiter = chunk_format.delimiter
        self.spool_dir = spool_dir
        self._path: str | None = None
        self._header = b""
        self._lock = threading.Lock()
        self._cleanup: weakref.finalize | None = None  # type: ignore[type-arg]

    def close(self) -> None:
        """Delete the spool file (a later pass spools again)."""
        with self._lock:
            if self._cleanup is not None:
                self._cleanup()
            self._path = None
            self._cleanup = None

    def __enter__(self) -> GroupedSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- spooling ---------------------------------------------------------------------------------

    def _spool(self) -> str:
        with self._lock:
            if self._path is not None:
                return self._path
            try:
                handle, path = tempfile.mkstemp(prefix="sf-bulk-group-", suffix=".sqlite", dir=self.spool_dir)
            except OSError as exc:
                where = self.spool_dir or tempfile.gettempdir()
                raise InputError(
                    f"group_by_parent cannot make its spool file in {where}: {exc.strerror or exc}",
                    field="spool_dir",
                ) from None
            os.close(handle)
            cleanup = weakref.finalize(self, _unlink, path)
            try:
                self._header = self._fill(path)
            except sqlite3.Error as exc:
                cleanup()
                # A full disk, most likely: not the input's fault, so not an InputError.
                raise OSError(f"group_by_parent could not write its spool file {path}: {exc}") from None
            except BaseException:
                cleanup()
                raise
            self._path, self._cleanup = path, cleanup
            return path

    def _fill(self, path: str) -> bytes:
        header = b""
        column = -1
        with contextlib.closing(_connect(path)) as db:
            db.execute(
                "CREATE TABLE spool (pos INTEGER NOT NULL, parent TEXT NOT NULL, record BLOB NOT NULL)"
            )
            with self.source.open() as chunks:
                for chunk in chunks:
                    chunk_header, records = _split(chunk)
                    if not header:
                        header = chunk_header
                        column = self._parent_column(chunk)
                    elif chunk_header != header:
                        raise InputError(
                            f"{self.source.description}: records {chunk.first_record_index}.. have another "
                            "header than the first chunk's; grouping needs one header",
                            record_index=chunk.first_record_index,
                        )
                    parents = _column(chunk, column, self.delimiter, len(records))
                    base = chunk.first_record_index
                    db.executemany(
                        "INSERT INTO spool VALUES (?, ?, ?)",
                        zip(range(base, base + len(records)), parents, records, strict=True),
                    )
            # One external sort; every pass then reads the rows in rowid order, sequentially.
            db.execute("CREATE TABLE ordered AS SELECT pos, parent, record FROM spool ORDER BY parent, pos")
            db.execute("DROP TABLE spool")
            db.commit()
        return header

    def _parent_column(self, chunk: CsvChunk) -> int:
        names = chunk.fieldnames(self.column_delimiter)
        if self.parent_field not in names:
            raise InputError(
                f"group_by_parent field {self.parent_field!r} is not a column of {self.source.description} "
                f"(columns: {', '.join(names)})",
                field="group_by_parent",
            )
        return names.index(self.parent_field)

    # -- reading ----------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _open(self) -> Iterator[Iterator[CsvChunk]]:
        chunks = self._read_chunks()
        try:
            yield chunks
        finally:
            chunks.close()

    def _read_chunks(self) -> Generator[CsvChunk, None, None]:
        # Spooling and reading happen on the first next(), in whichever thread pulls the chunks
        # (the client pulls them in a worker thread), never in the event loop that opened the pass.
        with contextlib.closing(_connect(self._spool())) as db:
            yield from self._pack(db.execute("SELECT pos, parent, record FROM ordered ORDER BY rowid"))

    def _pack(self, rows: sqlite3.Cursor) -> Iterator[CsvChunk]:
        packer = _Packer(self._header, self.max_size_bytes, self.max_records)
        group: list[tuple[int, bytes]] = []
        group_size = 0
        parent: str | None = None
        overflowing = False
        while batch := rows.fetchmany(_FETCH):
            for pos, value, record in batch:
                if value != parent or not value:
                    # A new group (an empty parent value ties nothing together: each record alone).
                    yield from packer.place(group, group_size)
                    group, group_size, parent, overflowing = [], 0, value, False
                if overflowing:
                    yield from packer.add(pos, record)
                    continue
                group.append((pos, record))
                group_size += len(record)
                if not packer.fits_alone(len(group), group_size):
                    # Larger than any chunk: split it anyway, starting a fresh chunk to cut it least.
                    yield from packer.flush()
                    for member_pos, member in group:
                        yield from packer.add(member_pos, member)
                    group, group_size, overflowing = [], 0, True
        yield from packer.place(group, group_size)
        yield from packer.flush()


class _Packer:
    """Fills chunks within both limits."""

    def __init__(self, header: bytes, max_size: int, max_records: int) -> None:
        self.header = header
        self.max_size = max_size
        self.max_records = max_records
        self.parts: list[bytes] = []
        self.positions = array.array("q")
        self.size = len(header)
        self.first = 0

    def fits_alone(self, count: int, size: int) -> bool:
        return count <= self.max_records and len(self.header) + size <= self.max_size

    def place(self, group: list[tuple[int, bytes]], size: int) -> Iterator[GroupedChunk]:
        """Put a whole group (that fits in a chunk) in the current chunk, or in a new one."""
        if not group:
            return
        if len(self.parts) + len(group) > self.max_records or self.size + size > self.max_size:
            yield from self.flush()
        for pos, record in group:
            self.parts.append(record)
            self.positions.append(pos)
        self.size += size

    def add(self, pos: int, record: bytes) -> Iterator[GroupedChunk]:
        if len(self.parts) >= self.max_records or self.size + len(record) > self.max_size:
            yield from self.flush()
        self.parts.append(record)
        self.positions.append(pos)
        self.size += len(record)

    def flush(self) -> Iterator[GroupedChunk]:
        if not self.parts:
            return
        count = len(self.parts)
        yield GroupedChunk(self.header + b"".join(self.parts), self.first, count, self.positions)
        self.first += count
        self.parts = []
        self.positions = array.array("q")
        self.size = len(self.header)


def group_by_parent(
    source: ChunkSource,
    parent_field: str,
    *,
    limits: ChunkLimits,
    chunk_format: ChunkFormat,
    spool_dir: str | None = None,
) -> GroupedSource:
    """Wrap ``source`` so its records come ordered by ``parent_field`` (e.g. ``"AccountId"``).

    Records with the same non-empty value are adjacent and in one chunk whenever they fit in one
    (``limits``: those ``source`` was cut with; ``chunk_format``: the one it was written in); a larger
    group starts a fresh chunk and fills as few as it can. Within a group, and among records with an
    empty value (which are not grouped), the source's order is kept. Each record's bytes are those
    the source wrote. ``spool_dir`` is where the temporary SQLite file goes (default: the system's temp dir);
    it holds about the whole input.

    Raises
    ------
    InputError
        ``parent_field`` empty or not a string; while reading the first pass, ``parent_field`` not a
        column, or chunks of the source with different headers.
    """
    if not isinstance(parent_field, str) or not parent_field:
        raise InputError(
            f"group_by_parent must be a field name, got {parent_field!r}", field="group_by_parent"
        )
    return GroupedSource(source, parent_field, limits=limits, chunk_format=chunk_format, spool_dir=spool_dir)


def _connect(path: str) -> sqlite3.Connection:
    # One pass is read by one consumer at a time, but possibly from a worker thread.
    db = sqlite3.connect(path, check_same_thread=False)
    # A scratch file: no journal, no fsync; a bounded cache makes SQLite spill to disk, not grow.
    db.execute("PRAGMA journal_mode = OFF")
    db.execute("PRAGMA synchronous = OFF")
    db.execute(f"PRAGMA cache_size = -{_CACHE_KIB}")
    db.execute("PRAGMA temp_store = FILE")
    return db


def _unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _split(chunk: CsvChunk) -> tuple[bytes, list[bytes]]:
    """The header and each record of a chunk, as bytes, without re-encoding anything.

    The chunk was written (and its quoting checked) by the source's chunker in the job's format, so
    a record ends at the first line ending after an even number of quotes.
    """
    data = chunk.data
    scan = RecordScan()
    ends = list(iter(lambda: scan.first_end(data), None))
    if not ends or ends[-1] < len(data):
        ends.append(len(data))  # the last record without its line ending
    header = data[: ends[0]]
    records = [data[start:end] for start, end in itertools.pairwise(ends)]
    if len(records) != chunk.record_count:
        raise InputError(
            f"records {chunk.first_record_index}.. of the source: the chunk says {chunk.record_count} "
            f"records but holds {len(records)}",
            record_index=chunk.first_record_index,
        )
    return header, records


def _column(chunk: CsvChunk, column: int, delimiter: str, expected: int) -> list[str]:
    text = chunk.data.decode("utf-8")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    next(reader, None)
    values = [row[column] if column < len(row) else "" for row in reader]
    if len(values) != expected:
        raise InputError(
            f"records {chunk.first_record_index}.. of the source could not be read back as "
            f"{expected} CSV rows",
            record_index=chunk.first_record_index,
        )
    return values
