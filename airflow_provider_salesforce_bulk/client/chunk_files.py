"""Where the chunk builders put a chunk's bytes while they write it: in memory, or straight into a file.

Every chunk builder (:mod:`.serialize`, :mod:`.arrow_chunks`, :mod:`.csv_split`) hands the bytes of
the chunk it is filling to a :class:`ChunkSink` piece by piece, as each batch of records is written.
:class:`MemorySink` (the default) joins them into a :class:`CsvChunk`, as the builders always did;
:class:`FileSink` writes them to one file per chunk, hashing and counting as it goes, and gives a
:class:`StagedChunk`: memory then holds one batch of records, never a chunk.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from typing import IO, Protocol

from airflow_provider_salesforce_bulk.client.csv_format import Chunk, CsvChunk, StagedChunk

__all__ = ["ChunkSink", "FileSink", "MemorySink", "file_digest"]

_PIECE = 1 << 20


class ChunkSink(Protocol):
    """Receives one chunk at a time: :meth:`begin`, any number of writes, then :meth:`end`."""

    def begin(self, first_record_index: int) -> None: ...

    def write(self, piece: bytes | memoryview) -> None: ...

    def write_all(self, pieces: Iterable[bytes | memoryview]) -> None: ...

    def end(self, record_count: int) -> Chunk: ...


class MemorySink:
    """Joins a chunk's pieces into :class:`CsvChunk` bytes (the builders' default)."""

    def __init__(self) -> None:
        self._parts: list[bytes | memoryview] = []
        self._first = 0

    def begin(self, first_record_index: int) -> None:
        self._parts = []
        self._first = first_record_index

    def write(self, piece: bytes | memoryview) -> None:
        self._parts.append(piece)

    def write_all(self, pieces: Iterable[bytes | memoryview]) -> None:
        self._parts.extend(pieces)

    def end(self, record_count: int) -> CsvChunk:
        data = b"".join(self._parts)
        self._parts = []
        return CsvChunk(data=data, first_record_index=self._first, record_count=record_count)


class FileSink:
    """Writes each chunk to its own file (``chunk-000000.csv``, ...), computing its SHA-256 and size.

    Parameters
    ----------
    create : callable
        ``create(name)`` opens a new file of that name for writing in binary.
    reader : callable
        ``reader(name)`` returns a function opening that file for reading (the chunk keeps it).
    locate : callable
        ``locate(name)`` the file's full path or URL, for the chunk and for messages.
    """

    def __init__(
        self,
        create: Callable[[str], IO[bytes]],
        reader: Callable[[str], Callable[[], IO[bytes]]],
        locate: Callable[[str], str],
    ) -> None:
        self._create = create
        self._reader = reader
        self._locate = locate
        self._number = 0
        self._file: IO[bytes] | None = None
        self._name = ""
        self._hash = hashlib.sha256()
        self._size = 0
        self._first = 0
        self.chunks: list[StagedChunk] = []
        """Every chunk ended so far, in order."""

    @staticmethod
    def name_of(number: int) -> str:
        return f"chunk-{number:06d}.csv"

    def begin(self, first_record_index: int) -> None:
        self.close()
        self._name = self.name_of(self._number)
        self._number += 1
        self._file = self._create(self._name)
        self._hash = hashlib.sha256()
        self._size = 0
        self._first = first_record_index

    def write(self, piece: bytes | memoryview) -> None:
        assert self._file is not None, "write before begin"
        self._file.write(piece)
        self._hash.update(piece)
        self._size += len(piece)

    def write_all(self, pieces: Iterable[bytes | memoryview]) -> None:
        # One write per batch, not per record: the file and the hash are called a few times a block.
        self.write(b"".join(pieces))

    def end(self, record_count: int) -> StagedChunk:
        assert self._file is not None, "end before begin"
        self._file.close()
        self._file = None
        chunk = StagedChunk(
            path=self._locate(self._name),
            first_record_index=self._first,
            record_count=record_count,
            size=self._size,
            digest=self._hash.hexdigest(),
            reader=self._reader(self._name),
        )
        self.chunks.append(chunk)
        return chunk

    def close(self) -> None:
        """Close a file left open by a builder that failed mid-chunk (its owner removes it)."""
        if self._file is not None:
            self._file.close()
            self._file = None


def file_digest(opener: Callable[[], IO[bytes]]) -> tuple[str, int]:
    """Hex SHA-256 and size of what ``opener()`` reads, in pieces."""
    digest = hashlib.sha256()
    size = 0
    with opener() as stream:
        while piece := stream.read(_PIECE):
            digest.update(piece)
            size += len(piece)
    return digest.hexdigest(), size
