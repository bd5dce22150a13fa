"""What every CSV path of the client shares: the job's format names, the chunk type, the limit checks and
the quote-aware scan for where a record ends.

The serializer (:mod:`.serialize`), the CSV splitter (:mod:`.csv_split`), the Arrow path, the result
readers and the operator's sources all build or read the same Bulk API CSV; one definition of each
piece keeps them agreeing on it.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import hashlib
import io
import os
from collections.abc import Callable, Mapping
from typing import IO, AnyStr, TypeVar, Union

from airflow_provider_salesforce_bulk.client.errors import InputError
from airflow_provider_salesforce_bulk.client.models import ColumnDelimiter

__all__ = [
    "COLUMN_DELIMITERS",
    "LINE_ENDINGS",
    "MAX_RECORDS",
    "MAX_SIZE_BYTES",
    "Chunk",
    "CsvChunk",
    "CsvSource",
    "RecordScan",
    "StagedChunk",
    "check_column_delimiter",
    "check_header_fits",
    "check_line_ending",
    "count_records",
    "last_record_end",
]

#: The ``columnDelimiter`` values of a job and the character each stands for.
COLUMN_DELIMITERS: dict[str, str] = {
    "BACKQUOTE": "`",
    "CARET": "^",
    "COMMA": ",",
    "PIPE": "|",
    "SEMICOLON": ";",
    "TAB": "\t",
}
#: The ``lineEnding`` values of a job and the characters each stands for.
LINE_ENDINGS: dict[str, str] = {"LF": "\n", "CRLF": "\r\n"}

#: Salesforce takes at most 100 MB of raw CSV per job.
MAX_SIZE_BYTES = 100_000_000
#: The reference client's default record limit per job (Salesforce's own is 150 million a day).
MAX_RECORDS = 150_000_000

CsvSource = Union[IO[bytes], str, "os.PathLike[str]"]


@dataclasses.dataclass(frozen=True)
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

    @functools.cached_property
    def digest(self) -> str:
        """Hex SHA-256 of the exact bytes uploaded (``data``)."""
        return hashlib.sha256(self.data).hexdigest()

    @property
    def size(self) -> int:
        """Bytes uploaded."""
        return len(self.data)

    def open(self) -> IO[bytes]:
        """The bytes as a binary stream (a file-backed chunk opens its file: see :class:`StagedChunk`)."""
        return io.BytesIO(self.data)

    def fieldnames(self, column_delimiter: ColumnDelimiter = "COMMA") -> list[str]:
        """The column names of the header row."""
        return _header_names(self.data, column_delimiter)


def _header_names(data: bytes, column_delimiter: ColumnDelimiter) -> list[str]:
    end = data.find(b"\n")
    try:
        header = data[: end if end >= 0 else len(data)].decode("utf-8").rstrip("\r")
    except UnicodeDecodeError as exc:
        raise InputError(
            f"the header row is not UTF-8 (byte {exc.start}): the CSV must be UTF-8", field="fieldnames"
        ) from None
    return next(csv.reader([header], delimiter=check_column_delimiter(column_delimiter)), [])


# A header row is at most 32,000 characters (Salesforce's limit): 4 bytes each at most.
_HEADER_READ = 4 * 32_000 + 2


@dataclasses.dataclass(frozen=True, kw_only=True)
class StagedChunk:
    """One job's CSV kept in a file (a staged copy) rather than in memory: what is uploaded is read
    from the file in pieces, so memory never holds the chunk.

    Attributes
    ----------
    path : str
        Where the file is (a local path or an object storage URL), for messages.
    first_record_index, record_count
        As in :class:`CsvChunk`.
    size : int
        Bytes in the file.
    digest : str
        Hex SHA-256 of the file's bytes, computed while it was written.
    reader : callable
        Opens the file for reading in binary (every call a fresh stream, so an upload can be sent again).
    """

    path: str
    first_record_index: int
    record_count: int
    size: int
    digest: str
    reader: Callable[[], IO[bytes]] = dataclasses.field(compare=False, repr=False)

    def open(self) -> IO[bytes]:
        """A fresh binary stream over the file, from its start."""
        return self.reader()

    @property
    def data(self) -> bytes:
        """The whole file (for callers that need bytes; an upload streams it instead)."""
        with self.open() as stream:
            return stream.read()

    def fieldnames(self, column_delimiter: ColumnDelimiter = "COMMA") -> list[str]:
        """The column names of the header row (read from the file's start)."""
        with self.open() as stream:
            head = stream.read(_HEADER_READ)
        return _header_names(head, column_delimiter)


Chunk = CsvChunk | StagedChunk
"""A chunk in memory or in a file: both have ``first_record_index``, ``record_count``, ``size``,
``digest``, ``open()`` and ``fieldnames()``."""


def check_line_ending(line_ending: str) -> str:
    """The characters of a ``lineEnding`` name; an :class:`InputError` for an unknown one."""
    return _named(LINE_ENDINGS, line_ending, "line_ending")


def check_column_delimiter(column_delimiter: str) -> str:
    """The character of a ``columnDelimiter`` name; an :class:`InputError` for an unknown one."""
    return _named(COLUMN_DELIMITERS, column_delimiter, "column_delimiter")


def _named(table: Mapping[str, str], name: str, field: str) -> str:
    """``table[name]``, or an :class:`InputError` naming ``field`` and the names it may be."""
    try:
        return table[name]
    except (KeyError, TypeError):
        raise InputError(f"{field} must be one of {', '.join(table)}, got {name!r}", field=field) from None


def check_header_fits(header_size: int, max_size_bytes: int) -> None:
    """Raise :class:`InputError` when no record fits next to a header of ``header_size`` bytes."""
    if header_size >= max_size_bytes:
        raise InputError(
            f"max_size_bytes={max_size_bytes:_} leaves no room for records: "
            f"the header row alone is {header_size:_} bytes",
            field="max_size_bytes",
        )


_Text = TypeVar("_Text", str, bytes, bytearray)
"""Text a scan reads: decoded, or the bytes (a reused buffer, too) it arrived as."""


@dataclasses.dataclass
class RecordScan:
    """Where records end in CSV arriving piece by piece: at a line feed outside double quotes.

    A line with an odd number of quotes opens (or closes) a quoted value, so counting quotes
    (``str.count``/``bytes.count``, C-level) finds record ends without parsing values. The scan
    resumes where it stopped: text already scanned is never counted twice.

    Attributes
    ----------
    scanned : int
        Offset, in the text given to :meth:`last_end`, up to which the quotes were counted.
    quotes_open : bool
        Whether a quoted value is open at ``scanned``.
    """

    scanned: int = 0
    quotes_open: bool = False

    def last_end(self, text: _Text, size: int | None = None) -> int:
        """The offset after the last line feed outside quotes in ``text[:size]`` (0 if none),
        scanning on from :attr:`scanned`; ``text`` is the same buffer as before, grown at its end.

        Searched from the end: the quotes before the last line feed are counted at once, so a
        chunk of a million short records costs a few C-level calls, not a Python step per line;
        only a line feed inside a quoted value sends the search one line further back.
        """
        lf, quote = _marks(text)
        start = self.scanned
        last = text.rfind(lf, start, len(text) if size is None else size)
        if last < 0:
            return 0
        self.scanned = last + 1
        self.quotes_open ^= text.count(quote, start, last) % 2 == 1
        # Back from the last line feed while it is inside quotes: each step flips by its line's quotes.
        inside, newline = self.quotes_open, last
        while inside:
            previous = text.rfind(lf, start, newline)
            if previous < 0:
                return 0
            inside ^= text.count(quote, previous, newline) % 2 == 1
            newline = previous
        return newline + 1

    def first_end(self, text: AnyStr) -> int | None:
        """The offset after the first line feed outside quotes in ``text`` from :attr:`scanned` on
        (None if the record goes on past ``text``), leaving the scan just after it."""
        lf, quote = _marks(text)
        position = self.scanned
        while True:
            newline = text.find(lf, position)
            if newline < 0:
                return None
            if text.count(quote, position, newline) % 2:
                self.quotes_open = not self.quotes_open
            position = self.scanned = newline + 1
            if not self.quotes_open:
                return position

    def consumed(self, end: int) -> None:
        """The caller dropped ``text[:end]``: offsets now count from there."""
        self.scanned -= end


def last_record_end(data: _Text, size: int | None = None) -> int:
    """The offset after the last line feed of ``data[:size]`` outside double quotes (0 when there is
    none), for ``data`` beginning at a record's start: :meth:`RecordScan.last_end` of a new scan."""
    return RecordScan().last_end(data, size)


def count_records(text: str) -> int | None:
    """The records in ``text`` (whole records, from a record's start to a record end) as
    :mod:`csv` reads them, blank lines not counted, found without parsing a value.

    ``None`` when that cannot be told line by line (a line with an odd number of quotes, so a
    quoted value over several lines; a carriage return that ends no line): the caller parses. A
    result file of a million records is counted in about a third of a parse's CPU.
    """
    if text.count("\r") != text.count("\r\n"):
        return None  # csv also ends a record at a lone carriage return
    lines = text.split("\n")
    if any(line.count('"') % 2 for line in lines):
        return None
    # The text ends at a record end, so its last piece is empty; blank lines are no records.
    return len(lines) - lines.count("") - lines.count("\r")


def _marks(text: _Text) -> tuple[_Text, _Text]:
    if isinstance(text, str):
        return "\n", '"'
    if isinstance(text, bytearray):
        return bytearray(b"\n"), bytearray(b'"')
    return b"\n", b'"'
