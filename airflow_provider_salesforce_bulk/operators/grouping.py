"""Ordering records by a parent field so one parent's children share a job (fewer UNABLE_TO_LOCK_ROW).

Salesforce locks a parent record while it saves a child (a Contact locks its Account). Children of
one parent spread over jobs or batches that run in parallel wait for each other's lock and fail
with ``UNABLE_TO_LOCK_ROW``. :func:`group_by_parent` wraps a :class:`ChunkSource` and gives the same
records ordered by the parent field's value, cut so that a parent's records are never split across
two chunks when they fit in one.

Memory stays flat in the data size and in the chunk size: the source writes its chunks into a
sink that sends every record's CSV bytes, exactly as the source serialized them, to a temporary
SQLite file with its parent value and its position in the source, a piece at a time. SQLite sorts
them once (an external sort that spills to disk) and counts each group's records and bytes; each
pass reads them back in order and writes them into the pass's sink (a staged file), placing a group
from its counts before reading it. No chunk is held whole, unless the pass asks for chunks in
memory (:meth:`GroupedSource.open`).
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
from collections.abc import Generator, Iterable, Iterator
from dataclasses import dataclass, field
from typing import cast

from airflow_provider_salesforce_bulk.client import ChunkFormat, ChunkLimits, InputError
from airflow_provider_salesforce_bulk.client.chunk_files import ChunkSink, MemorySink
from airflow_provider_salesforce_bulk.client.csv_format import Chunk, CsvChunk, RecordScan
from airflow_provider_salesforce_bulk.operators.chunk_source import ChunkSource

__all__ = ["GroupedChunk", "GroupedSource", "group_by_parent"]

# Records are handed to the chunk's sink in batches of about this many bytes (one write, one hash
# update a batch, not a record).
_PIECE = 1 << 20
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
    :meth:`close` (or leaving a ``with`` block, or garbage collection) deletes it. ``open_into``
    writes each chunk into a sink as it is packed; ``open`` gives chunks in memory, each a
    :class:`GroupedChunk` with its ``source_indexes``.
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
        super().__init__(
            self._open,
            f"{source.description}, grouped by {parent_field}",
            uri=source.uri,
            into_sink=self._open_into,
        )
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
        with contextlib.closing(_connect(path)) as db:
            db.execute(
                "CREATE TABLE spool (pos INTEGER NOT NULL, parent TEXT NOT NULL, record BLOB NOT NULL)"
            )
            # The source writes its chunks into the spool a batch at a time: no chunk is held whole.
            sink = _SpoolSink(db, self)
            with self.source.open_into(sink) as chunks:
                for _ in chunks:
                    pass
            # One external sort; every pass then reads the rows in rowid order, sequentially. Each
            # group's size comes from SQL too, so a pass places a group before reading its records.
            db.execute("CREATE TABLE ordered AS SELECT pos, record FROM spool ORDER BY parent, pos")
            db.execute(
                "CREATE TABLE group_sizes AS SELECT parent, count(*) AS n, sum(length(record)) AS size "
                "FROM spool GROUP BY parent ORDER BY parent"
            )
            db.execute("DROP TABLE spool")
            db.commit()
        return sink.header

    def _parent_column(self, header: bytes) -> int:
        names = CsvChunk(header, 0, 0).fieldnames(self.column_delimiter)
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
        chunks = self._read_chunks(MemorySink(), positions=True)
        try:
            # A MemorySink ends CsvChunks (the packer makes them GroupedChunks).
            yield cast(Iterator[CsvChunk], chunks)
        finally:
            chunks.close()

    @contextlib.contextmanager
    def _open_into(self, sink: ChunkSink) -> Iterator[Iterator[Chunk]]:
        chunks = self._read_chunks(sink, positions=False)
        try:
            yield chunks
        finally:
            chunks.close()

    def _read_chunks(self, sink: ChunkSink, *, positions: bool) -> Generator[Chunk, None, None]:
        # Spooling and reading happen on the first next(), in whichever thread pulls the chunks
        # (the client pulls them in a worker thread), never in the event loop that opened the pass.
        with contextlib.closing(_connect(self._spool())) as db:
            packer = _Packer(self._header, self.max_size_bytes, self.max_records, sink, positions)
            groups = db.execute("SELECT parent, n, size FROM group_sizes ORDER BY rowid")
            rows = db.execute("SELECT pos, record FROM ordered ORDER BY rowid")
            yield from packer.pack(groups, rows)


class _Packer:
    """Fills chunks within both limits, writing each record into ``sink`` as it places it.

    Both cursors are in parent order: ``groups`` gives each parent's record count and bytes,
    ``rows`` the records, so a group is placed (in the current chunk, a fresh one, or split when
    larger than a chunk) before any of its records is read. Only a batch of records is held.
    """

    def __init__(
        self, header: bytes, max_size: int, max_records: int, sink: ChunkSink, positions: bool
    ) -> None:
        self.header = header
        self.max_size = max_size
        self.max_records = max_records
        self.sink = sink
        self.keep_positions = positions
        self.positions = array.array("q")
        self.batch: list[bytes] = []
        self.batch_size = 0
        self.count = 0
        self.size = len(header)
        self.first = 0

    def pack(self, groups: sqlite3.Cursor, rows: sqlite3.Cursor) -> Iterator[Chunk]:
        for parent, count, size in groups:
            if not parent:
                # An empty parent value ties nothing together: each record is a group of its own.
                for _ in range(count):
                    pos, record = next(rows)
                    yield from self.place(1, len(record))
                    yield from self.add(pos, record)
                continue
            yield from self.place(count, size)
            for _ in range(count):
                pos, record = next(rows)
                yield from self.add(pos, record)
        yield from self.flush()

    def place(self, count: int, size: int) -> Iterator[Chunk]:
        """Make room for a group: a fresh chunk when it does not fit in the current one; when it
        is larger than any chunk, a fresh chunk too, so that it is cut least."""
        fits_alone = count <= self.max_records and len(self.header) + size <= self.max_size
        if not fits_alone or self.count + count > self.max_records or self.size + size > self.max_size:
            yield from self.flush()

    def add(self, pos: int, record: bytes) -> Iterator[Chunk]:
        if self.count >= self.max_records or self.size + len(record) > self.max_size:
            yield from self.flush()
        if not self.count:
            self.sink.begin(self.first)
            self.sink.write(self.header)
        self.batch.append(record)
        self.batch_size += len(record)
        if self.batch_size >= _PIECE:
            self._write()
        if self.keep_positions:
            self.positions.append(pos)
        self.count += 1
        self.size += len(record)

    def _write(self) -> None:
        self.sink.write_all(self.batch)
        self.batch = []
        self.batch_size = 0

    def flush(self) -> Iterator[Chunk]:
        if not self.count:
            return
        self._write()
        chunk = self.sink.end(self.count)
        if self.keep_positions and isinstance(chunk, CsvChunk):
            chunk = GroupedChunk(chunk.data, chunk.first_record_index, chunk.record_count, self.positions)
        yield chunk
        self.first += self.count
        self.count = 0
        self.size = len(self.header)
        self.positions = array.array("q")


class _SpoolSink:
    """The :class:`ChunkSink` the wrapped source writes into while spooling: each piece's complete
    records go to the spool with their parent value, so memory holds a piece, never a chunk.

    The source's chunker wrote (and checked the quoting of) every record in the job's format, so a
    record ends at the first line feed after an even number of quotes; a chunk's first record is
    its header.
    """

    def __init__(self, db: sqlite3.Connection, grouped: GroupedSource) -> None:
        self.db = db
        self.grouped = grouped
        self.header = b""
        self.column = -1
        self.first = 0
        self.seen = 0  # records of the current chunk spooled so far
        self.header_pending = True
        self.carry = b""  # the start of a record the next piece ends
        self.scan = RecordScan()

    def begin(self, first_record_index: int) -> None:
        self.first = first_record_index
        self.seen = 0
        self.header_pending = True
        self.carry = b""
        self.scan = RecordScan()

    def write(self, piece: bytes | memoryview) -> None:
        data = self.carry + piece if self.carry else bytes(piece)
        ends = list(iter(lambda: self.scan.first_end(data), None))
        done = ends[-1] if ends else 0
        self.carry = data[done:]
        self.scan.consumed(done)
        self._records([data[start:end] for start, end in itertools.pairwise([0, *ends])])

    def write_all(self, pieces: Iterable[bytes | memoryview]) -> None:
        self.write(b"".join(pieces))

    def end(self, record_count: int) -> CsvChunk:
        if self.carry:  # the last record without its line ending
            tail, self.carry = self.carry, b""
            self._records([tail])
        if self.seen != record_count:
            raise InputError(
                f"records {self.first}.. of the source: the chunk says {record_count} records but "
                f"holds {self.seen}",
                record_index=self.first,
            )
        return CsvChunk(b"", self.first, record_count)

    def _records(self, records: list[bytes]) -> None:
        if records and self.header_pending:
            self._header(records[0])
            records = records[1:]
        if not records:
            return
        parents = self._parents(records)
        base = self.first + self.seen
        self.db.executemany(
            "INSERT INTO spool VALUES (?, ?, ?)",
            zip(range(base, base + len(records)), parents, records, strict=True),
        )
        self.seen += len(records)

    def _header(self, header: bytes) -> None:
        self.header_pending = False
        if not self.header:
            self.column = self.grouped._parent_column(header)
            self.header = header
        elif header != self.header:
            raise InputError(
                f"{self.grouped.source.description}: records {self.first}.. have another header than "
                "the first chunk's; grouping needs one header",
                record_index=self.first,
            )

    def _parents(self, records: list[bytes]) -> list[str]:
        text = b"".join(records).decode("utf-8")
        reader = csv.reader(io.StringIO(text, newline=""), delimiter=self.grouped.delimiter, strict=True)
        column = self.column
        values = [row[column] if column < len(row) else "" for row in reader]
        if len(values) != len(records):
            first = self.first + self.seen
            raise InputError(
                f"records {first}.. of the source could not be read back as {len(records)} CSV rows",
                record_index=first,
            )
        return values


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
