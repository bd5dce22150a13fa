"""Split an existing Bulk API 2.0 CSV file into job-sized chunks without re-encoding its values.

This is the fast path next to :mod:`airflow_provider_salesforce_bulk.client.serialize`: the input is
already CSV in the job's format, so only record boundaries are looked for. A record ends at a line
ending outside double quotes; the scan works on whole lines with ``bytes.find`` and
``bytes.count(b'"')`` (an odd number of quotes on a line means a quoted value goes on), so Python
does a few operations per line, not per byte. The input is read in blocks and at most one chunk (plus
one block) is held in memory.

This module also holds what both paths share: :class:`CsvChunk`, the format names and the limit checks.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Union

from airflow_provider_salesforce_bulk.client.errors import InputError
from airflow_provider_salesforce_bulk.client.models import (
    COLUMN_DELIMITERS,
    LINE_ENDINGS,
    ColumnDelimiter,
    LineEnding,
)

__all__ = [
    "COLUMN_DELIMITERS",
    "LINE_ENDINGS",
    "MAX_SIZE_BYTES",
    "ColumnDelimiter",
    "CsvChunk",
    "LineEnding",
    "iter_csv_stream_chunks",
    "split_csv_stream",
]

#: Salesforce takes at most 100 MB of raw CSV per job.
MAX_SIZE_BYTES = 100_000_000

_BLOCK_SIZE = 1 << 20
_UTF8_BOM = b"\xef\xbb\xbf"

CsvSource = Union[IO[bytes], str, "os.PathLike[str]"]


@dataclass(frozen=True)
class CsvChunk:
    """One job's worth of CSV and which input records it holds.

    Attributes
    ----------
    data : bytes
        UTF-8 CSV: the header row, then ``record_count`` records, each ended by the job's line ending.
    first_record_index : int
        0-based index, in the input, of the first record in ``data`` (the header is not a record).
    record_count : int
        Number of records in ``data``; the chunk holds input records
        ``first_record_index`` to ``first_record_index + record_count - 1``.
    """

    data: bytes
    first_record_index: int
    record_count: int

    def fieldnames(self, column_delimiter: str = "COMMA") -> list[str]:
        """The column names of the header row."""
        end = self.data.find(b"\n")
        header = self.data[: end if end >= 0 else len(self.data)].decode("utf-8").rstrip("\r")
        return next(csv.reader([header], delimiter=check_column_delimiter(column_delimiter)), [])


def check_line_ending(line_ending: str) -> str:
    """The characters of a ``lineEnding`` name; an :class:`InputError` for an unknown one."""
    try:
        return LINE_ENDINGS[line_ending]
    except (KeyError, TypeError):
        raise InputError(
            f"line_ending must be one of {', '.join(LINE_ENDINGS)}, got {line_ending!r}",
            field="line_ending",
        ) from None


def check_column_delimiter(column_delimiter: str) -> str:
    """The character of a ``columnDelimiter`` name; an :class:`InputError` for an unknown one."""
    try:
        return COLUMN_DELIMITERS[column_delimiter]
    except (KeyError, TypeError):
        raise InputError(
            f"column_delimiter must be one of {', '.join(COLUMN_DELIMITERS)}, got {column_delimiter!r}",
            field="column_delimiter",
        ) from None


def check_limits(max_size_bytes: int, max_records: int) -> None:
    """Raise :class:`InputError` unless both chunk limits are integers in range."""
    # bool is an int, but True as a byte limit is a mistake, not a request for 1.
    if isinstance(max_size_bytes, bool) or not isinstance(max_size_bytes, int):
        raise InputError(
            f"max_size_bytes must be an int, got {type(max_size_bytes).__name__}", field="max_size_bytes"
        )
    if not 0 < max_size_bytes <= MAX_SIZE_BYTES:
        raise InputError(
            f"max_size_bytes must be between 1 and {MAX_SIZE_BYTES:_} (Salesforce's limit per job), "
            f"got {max_size_bytes:_}",
            field="max_size_bytes",
        )
    if isinstance(max_records, bool) or not isinstance(max_records, int):
        raise InputError(f"max_records must be an int, got {type(max_records).__name__}", field="max_records")
    if max_records < 1:
        raise InputError(f"max_records must be at least 1, got {max_records}", field="max_records")


def check_header_fits(header_size: int, max_size_bytes: int) -> None:
    """Raise :class:`InputError` when no record fits next to a header of ``header_size`` bytes."""
    if header_size >= max_size_bytes:
        raise InputError(
            f"max_size_bytes={max_size_bytes:_} leaves no room for records: "
            f"the header row alone is {header_size:_} bytes",
            field="max_size_bytes",
        )


def _oversize(
    index: int, size: int, header_size: int, max_size_bytes: int, *, at_least: bool = False
) -> InputError:
    """The error for a record (or, at ``index`` -1, the header) too large for a chunk."""
    bytes_ = f"{'at least ' if at_least else ''}{size:_} bytes"
    if index < 0:
        return InputError(
            f"the header row is {bytes_}: max_size_bytes={max_size_bytes:_} leaves no room for records",
            field="max_size_bytes",
        )
    return InputError(
        f"record {index} is {bytes_}; with the {header_size:_}-byte header it does not fit in "
        f"max_size_bytes={max_size_bytes:_}",
        record_index=index,
    )


def _unterminated(index: int, size: int) -> InputError:
    what = "the header" if index < 0 else f"record {index}"
    return InputError(
        f"{what} ({size:_} bytes) ends inside a quoted value: the input ends before the closing quote",
        record_index=None if index < 0 else index,
    )


def _wrong_ending(index: int, found: str, expected: str) -> InputError:
    what = "the header" if index < 0 else f"record {index}"
    return InputError(
        f"{what} ends with {found} but line_ending={expected!r}: the input's line endings must match "
        "the job's (convert the input or pass the matching line_ending)",
        record_index=None if index < 0 else index,
        field="line_ending",
    )


def _iter_records(stream: IO[bytes], eol: bytes, block_size: int, max_size_bytes: int) -> Iterator[bytes]:
    """Yield the header, then every record, each as ``bytes`` ending with ``eol``.

    Records are found line by line: ``quotes`` counts the double quotes seen since the record began,
    and a line ending closes the record only when that count is even (it is outside quotes). The
    buffer is indexed by offsets, never sliced per line, so each byte is copied a bounded number of
    times; a record larger than a chunk can hold is reported as soon as that much of it is read.
    """
    crlf = eol == b"\r\n"
    buffer = b""
    start = 0  # where the current record begins in buffer
    pos = 0  # where the search for its closing line ending goes on
    quotes = 0
    index = -1  # the header is -1, data records count from 0
    header_size = 0
    limit = max_size_bytes  # largest record acceptable now
    while True:
        newline = buffer.find(b"\n", pos)
        if newline < 0:
            quotes += buffer.count(b'"', pos)
            if len(buffer) - start > limit:
                raise _oversize(index, len(buffer) - start, header_size, max_size_bytes, at_least=True)
            block = stream.read(block_size)
            if block:
                pos = len(buffer) - start
                buffer = buffer[start:] + block
                start = 0
                continue
            # End of input: the last record may lack its line ending.
            record = buffer[start:]
            if record.endswith(b"\r"):
                record = record[:-1]
            if not record:
                return
            if quotes % 2:
                raise _unterminated(index, len(record))
            record += eol
            if len(record) > limit:
                raise _oversize(index, len(record), header_size, max_size_bytes)
            if index < 0:
                check_header_fits(len(record), max_size_bytes)
            yield record
            return
        quotes += buffer.count(b'"', pos, newline)
        pos = newline + 1
        if quotes % 2:
            continue  # this line ending is inside a quoted value
        has_cr = newline > start and buffer[newline - 1] == 0x0D
        if newline - start == has_cr:
            # A blank line holds no record (csv readers skip it too) and is not counted.
            start = pos
            continue
        if has_cr != crlf:
            raise _wrong_ending(index, "CRLF" if has_cr else "LF", "CRLF" if crlf else "LF")
        if pos - start > limit:
            raise _oversize(index, pos - start, header_size, max_size_bytes)
        record = buffer[start:pos]
        start = pos
        quotes = 0
        if index < 0:
            if record.startswith(_UTF8_BOM):
                record = record[len(_UTF8_BOM) :]
            header_size = len(record)
            check_header_fits(header_size, max_size_bytes)
            limit = max_size_bytes - header_size
        yield record
        index += 1


def iter_csv_stream_chunks(
    source: CsvSource,
    max_size_bytes: int = MAX_SIZE_BYTES,
    max_records: int = 150_000_000,
    *,
    line_ending: str = "LF",
    block_size: int = _BLOCK_SIZE,
) -> Iterator[CsvChunk]:
    """Split CSV that is already in the job's format into :class:`CsvChunk` objects.

    The first record is the header; it is repeated at the top of every chunk. Records are copied
    byte for byte: the values are neither parsed nor re-encoded, so the input must already be UTF-8
    CSV with the job's column delimiter (the delimiter plays no part in finding records, only double
    quotes and line endings do).

    Parameters
    ----------
    source : binary file object, str or os.PathLike
        An open binary stream (read from its current position, not closed) or a file path.
    max_size_bytes : int, optional
        Largest chunk in bytes, header and line endings included; at most 100,000,000.
    max_records : int, optional
        Most records per chunk (the header is not counted); at least 1.
    line_ending : {"LF", "CRLF"}, optional
        The job's line ending. Every record of the input must end with it: a file with the other
        line ending is an :class:`InputError` rather than silently converted, because converting
        would rewrite the data. Line endings inside quoted values are data and are left alone.
    block_size : int, optional
        Bytes read from the stream at a time.

    Yields
    ------
    CsvChunk
        Chunks in input order; every record is in exactly one chunk. Blank lines between records
        are dropped and not counted as records; a missing line ending after the last record is added;
        a UTF-8 byte order mark before the header is dropped.

    Raises
    ------
    InputError
        For limits out of range, a header too large for ``max_size_bytes``, a line ending that does
        not match ``line_ending``, a quoted value left open at the end of the input, or a record too
        large for a chunk (``record_index`` set). Raised while iterating, once the problem is read.
    """
    check_limits(max_size_bytes, max_records)
    eol = check_line_ending(line_ending).encode()
    if block_size < 1:
        raise InputError(f"block_size must be at least 1, got {block_size}", field="block_size")
    if isinstance(source, (str, os.PathLike)):
        return _iter_file_chunks(os.fspath(source), max_size_bytes, max_records, eol, block_size)
    return _iter_chunks(source, max_size_bytes, max_records, eol, block_size)


def _iter_file_chunks(
    path: str, max_size_bytes: int, max_records: int, eol: bytes, block_size: int
) -> Iterator[CsvChunk]:
    with open(path, "rb") as stream:
        yield from _iter_chunks(stream, max_size_bytes, max_records, eol, block_size)


def _iter_chunks(
    stream: IO[bytes], max_size_bytes: int, max_records: int, eol: bytes, block_size: int
) -> Iterator[CsvChunk]:
    records = _iter_records(stream, eol, block_size, max_size_bytes)
    header = next(records, None)
    if header is None:
        return
    header_size = len(header)
    parts: list[bytes] = [header]
    size = header_size
    count = 0
    first = 0
    # _iter_records already rejected any record that cannot fit next to the header.
    for record in records:
        if size + len(record) > max_size_bytes:
            yield CsvChunk(b"".join(parts), first, count)
            parts = [header]
            size = header_size
            first += count
            count = 0
        parts.append(record)
        size += len(record)
        count += 1
        if count == max_records:
            # Yield as soon as the chunk is full so no further input is read for it.
            yield CsvChunk(b"".join(parts), first, count)
            parts = [header]
            size = header_size
            first += count
            count = 0
    if count:
        yield CsvChunk(b"".join(parts), first, count)


def split_csv_stream(
    source: CsvSource,
    max_size_bytes: int = MAX_SIZE_BYTES,
    max_records: int = 150_000_000,
    *,
    line_ending: str = "LF",
    block_size: int = _BLOCK_SIZE,
) -> Iterator[bytes]:
    """Split CSV that is already in the job's format into job-sized CSV payloads.

    The same as :func:`iter_csv_stream_chunks` (see there for the parameters and rules), yielding
    only each chunk's bytes.

    Yields
    ------
    bytes
        UTF-8 CSV, the header first, within both limits.
    """
    chunks = iter_csv_stream_chunks(
        source, max_size_bytes, max_records, line_ending=line_ending, block_size=block_size
    )
    return (chunk.data for chunk in chunks)
