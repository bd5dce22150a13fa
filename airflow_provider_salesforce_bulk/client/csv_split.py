"""Split an existing Bulk API 2.0 CSV file into job-sized chunks without re-encoding its values.

This is the fast path next to :mod:`airflow_provider_salesforce_bulk.client.serialize`: the input is
already CSV in the job's format, so only record boundaries are looked for. A record ends at a line
ending outside double quotes; the scan works on whole lines with ``bytes.find`` and
``bytes.count(b'"')`` (an odd number of quotes on a line means a quoted value goes on), so Python
does a few operations per line, not per byte. The input is read in blocks and at most one chunk (plus
one block) is held in memory.

What both paths share (:class:`CsvChunk`, the format names, the limit checks) is in :mod:`.csv_format`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from typing import IO

from airflow_provider_salesforce_bulk.client.chunk_files import ChunkSink, MemorySink
from airflow_provider_salesforce_bulk.client.csv_format import (
    MAX_RECORDS,
    MAX_SIZE_BYTES,
    Chunk,
    CsvSource,
    check_header_fits,
)
from airflow_provider_salesforce_bulk.client.errors import InputError
from airflow_provider_salesforce_bulk.client.job_spec import (
    DEFAULT_FORMAT,
    DEFAULT_LIMITS,
    ChunkFormat,
    ChunkLimits,
)
from airflow_provider_salesforce_bulk.client.models import ColumnDelimiter, LineEnding

__all__ = ["iter_csv_stream_chunks", "split_csv_stream"]

_BLOCK_SIZE = 1 << 20
_UTF8_BOM = b"\xef\xbb\xbf"


def _oversize(
    index: int, size: int, header_size: int, max_size_bytes: int, line: int, *, at_least: bool = False
) -> InputError:
    """The error for a record (or, at ``index`` -1, the header) too large for a chunk."""
    bytes_ = f"{'at least ' if at_least else ''}{size:_} bytes"
    if index < 0:
        return InputError(
            f"the header row is {bytes_}: max_size_bytes={max_size_bytes:_} leaves no room for records",
            field="max_size_bytes",
        )
    return InputError(
        f"record {index} (from line {line}) is {bytes_}; with the {header_size:_}-byte header it does not "
        f"fit in max_size_bytes={max_size_bytes:_}",
        record_index=index,
    )


def _what(index: int) -> str:
    return "the header" if index < 0 else f"record {index}"


def _unterminated(index: int, size: int, line: int) -> InputError:
    return InputError(
        f"{_what(index)} (from line {line}, {size:_} bytes) ends inside a quoted value: the input ends "
        "before the closing quote",
        record_index=None if index < 0 else index,
    )


def _wrong_ending(index: int, found: str, expected: str, line: int) -> InputError:
    return InputError(
        f"{_what(index)} ends with {found} but line_ending={expected!r} (line {line}): the input's line "
        "endings must match the job's (convert the input or pass the matching line_ending)",
        record_index=None if index < 0 else index,
        field="line_ending",
    )


def _bad_input(index: int, line: int, what: str) -> InputError:
    return InputError(f"line {line} ({_what(index)}): {what}", record_index=None if index < 0 else index)


_STRAY_QUOTE = (
    "malformed quoting: a double quote inside an unquoted value (quote the whole value and double "
    'the quotes in it: 5" -> "5""")'
)
_AFTER_CLOSE = (
    "malformed quoting: characters after the closing quote of a quoted value (a quote inside a quoted "
    'value must be doubled: "a ""b"" c")'
)
_NUL = "a NUL byte, which Salesforce does not accept"
_NOT_UTF8 = "bytes that are not UTF-8 (the CSV must be UTF-8; convert the file)"


def _find_problem(
    data: bytes, delimiter: int, index: int, line: int, *, complete: bool = True
) -> InputError | None:
    """The first malformed quote, NUL byte or invalid UTF-8 in ``data``, which starts a record.

    The error path of :func:`_iter_records`: a byte-by-byte walk, so it can say which line and
    record hold the problem. ``complete`` is false when ``data`` ends inside a record that was not
    read to its end; its encoding is then checked only up to its last whole line.
    """
    quote, lf, cr = 0x22, 0x0A, 0x0D
    record_start = 0
    record_line = line
    field_start = True  # at the start of a field, outside quotes
    in_quotes = False
    after_close = False
    size = len(data)
    for i, byte in enumerate(data):
        if in_quotes:
            if byte == quote:
                in_quotes = False
                after_close = True
            elif byte == lf:
                line += 1
            continue
        if after_close:
            after_close = False
            if byte == quote:  # a doubled quote inside the value
                in_quotes = True
                continue
            ends_line = byte == lf or (byte == cr and i + 1 < size and data[i + 1] == lf)
            if byte != delimiter and not ends_line:
                return _bad_input(index, line, _AFTER_CLOSE)
        if byte == quote:
            if not field_start:
                return _bad_input(index, line, _STRAY_QUOTE)
            in_quotes = True
            field_start = False
        elif byte == delimiter:
            field_start = True
        elif byte == lf:
            record = data[record_start : i + 1]
            if record not in (b"\n", b"\r\n"):  # a blank line is no record
                problem = _encoding_problem(record, index, record_line)
                if problem is not None:
                    return problem
                index += 1
            line += 1
            record_start = i + 1
            record_line = line
            field_start = True
        else:
            field_start = False
    tail = data[record_start:]
    if not complete:
        tail = tail[: tail.rfind(b"\n") + 1]
    return _encoding_problem(tail, index, record_line)


def _encoding_problem(record: bytes, index: int, line: int) -> InputError | None:
    nul = record.find(b"\x00")
    if nul >= 0:
        return _bad_input(index, line + record.count(b"\n", 0, nul), _NUL)
    try:
        record.decode()
    except UnicodeDecodeError as exc:
        return _bad_input(index, line + record.count(b"\n", 0, exc.start), _NOT_UTF8)
    return None


def _quote_check(delimiter: str) -> re.Pattern[bytes]:
    """A search for a quote mark (see :func:`_span_is_clean`) with a neighbour CSV does not allow."""
    d = re.escape(delimiter.encode())
    # Starting with the literal quote lets the regex engine jump from quote to quote.
    return re.compile(b'"(?:(?<=[^"\\n' + d + b']")|[^"\\r\\n' + d + b"]|\\r(?!\\n))")


def _span_is_clean(span: bytes, bad_quote: re.Pattern[bytes]) -> bool:
    """Whether whole records hold only UTF-8 without NUL, and every double quote is where CSV allows.

    Every step is one C-level pass over the span. Splitting on quotes alternates text outside and
    inside quoted values (each record holds an even number of quotes); joining the outside parts
    with ``"`` leaves one ``"`` mark per quoted value (two in a row for a doubled quote inside one).
    The quoting is well formed exactly when each mark follows a delimiter, a line ending, another
    mark or the start, and is followed by a delimiter, a line ending or another mark.
    """
    if b"\x00" in span:
        return False
    if not span.isascii():
        try:
            span.decode()
        except UnicodeDecodeError:
            return False
    return b'"' not in span or bad_quote.search(b'"'.join(span.split(b'"')[::2])) is None


def _iter_records(
    stream: IO[bytes], eol: bytes, delimiter: str, block_size: int, max_size_bytes: int
) -> Iterator[list[bytes]]:
    """Yield lists of records: the header first, then every record, each ``bytes`` ending with ``eol``.

    Records are found line by line: ``quotes`` counts the double quotes seen since the record began,
    and a line ending closes the record only when that count is even (it is outside quotes). The
    buffer is indexed by offsets, never sliced per line, so each byte is copied a bounded number of
    times; a record larger than a chunk can hold is reported as soon as that much of it is read.

    The records found in a block are checked together before any of them is yielded (quoting,
    NUL, UTF-8: see :func:`_span_is_clean`), so a chunk never holds an unchecked record. Lines are
    counted per block too; a problem is then located by :func:`_find_problem`.
    """
    crlf = eol == b"\r\n"
    bad_quote = _quote_check(delimiter)
    delimiter_byte = ord(delimiter)
    buffer = stream.read(block_size)
    while buffer and len(buffer) < len(_UTF8_BOM) and _UTF8_BOM.startswith(buffer):
        more = stream.read(block_size)
        if not more:
            break
        buffer += more
    start = len(_UTF8_BOM) if buffer.startswith(_UTF8_BOM) else 0  # where the current record begins
    pos = start  # where the search for its closing line ending goes on
    quotes = 0
    index = -1  # the header is -1, data records count from 0
    header_size = 0
    limit = max_size_bytes  # largest record acceptable now
    checked = start  # records before this offset are checked
    checked_index = -1  # index of the first record after ``checked``
    checked_line = 1  # line number at ``checked``
    ready: list[bytes] = []
    eof = False

    def check(end: int) -> None:
        """Raise the first problem in the records from ``checked`` up to ``end``."""
        span = buffer[checked:end]
        if not _span_is_clean(span, bad_quote):
            problem = _find_problem(span, delimiter_byte, checked_index, checked_line)
            raise problem or InputError(
                f"malformed CSV in {_what(checked_index)} or a later record, from line {checked_line}",
                record_index=None if checked_index < 0 else checked_index,
            )

    def fail(error: InputError, end: int | None = None) -> InputError:
        """``error`` for the record at ``start``, unless malformed input before or in it comes first."""
        check(start)
        record = buffer[start:end]
        problem = _find_problem(record, delimiter_byte, index, line_of(start), complete=end is not None)
        return problem or error

    def line_of(offset: int) -> int:
        return checked_line + buffer.count(b"\n", checked, offset)

    while True:
        newline = buffer.find(b"\n", pos)
        if newline < 0:
            quotes += buffer.count(b'"', pos)
            if ready:
                check(start)
                checked_line = line_of(start)
                checked = start
                checked_index = index
                yield ready
                ready = []
            if len(buffer) - start > limit:
                size = len(buffer) - start
                raise fail(_oversize(index, size, header_size, max_size_bytes, line_of(start), at_least=True))
            if eof:
                if start < len(buffer):
                    raise fail(_unterminated(index, len(buffer) - start, line_of(start)))
                return
            block = stream.read(block_size)
            if block:
                checked_line = line_of(start)
                pos = len(buffer) - start
                buffer = buffer[start:] + block
                start = checked = 0
                continue
            # End of input: the last record may lack its line ending.
            eof = True
            tail = buffer[start:]
            if tail.endswith(b"\r"):
                tail = tail[:-1]
            pos = start + len(tail)
            buffer = buffer[:start] + tail + eol if tail else buffer[:start]
            continue
        quotes += buffer.count(b'"', pos, newline)
        pos = newline + 1
        if quotes & 1:
            continue  # this line ending is inside a quoted value
        has_cr = newline > start and buffer[newline - 1] == 0x0D
        if newline - start == has_cr:
            # A blank line holds no record (csv readers skip it too) and is not counted.
            start = pos
            continue
        if has_cr != crlf:
            found, expected = ("CRLF", "LF") if has_cr else ("LF", "CRLF")
            raise fail(_wrong_ending(index, found, expected, line_of(start)), pos)
        if pos - start > limit:
            raise fail(_oversize(index, pos - start, header_size, max_size_bytes, line_of(start)), pos)
        ready.append(buffer[start:pos])
        if index < 0:
            header_size = pos - start
            check_header_fits(header_size, max_size_bytes)
            limit = max_size_bytes - header_size
        start = pos
        quotes = 0
        index += 1


def iter_csv_stream_chunks(
    source: CsvSource,
    limits: ChunkLimits = DEFAULT_LIMITS,
    chunk_format: ChunkFormat = DEFAULT_FORMAT,
    *,
    block_size: int = _BLOCK_SIZE,
    sink: ChunkSink | None = None,
) -> Iterator[Chunk]:
    """Split CSV that is already in the job's format into :class:`CsvChunk` objects.

    The first record is the header; it is repeated at the top of every chunk. Records are copied
    byte for byte: the values are neither parsed nor re-encoded, so the input must already be UTF-8
    CSV with the job's column delimiter. Records are counted as Salesforce reads them, so quoting
    must be well formed: a double quote may only open a value (right after a delimiter or a line
    ending), close it (right before one) or be doubled inside a quoted value. Anything else, such as
    ``5" screen`` unquoted or ``"a"b``, would make the count differ from Salesforce's and is an
    :class:`InputError` naming the line and the record.

    Parameters
    ----------
    source : binary file object, str or os.PathLike
        An open binary stream (read from its current position, not closed) or a file path.
    limits : ChunkLimits, optional
        How large a chunk may be (Salesforce's limits by default).
    chunk_format : ChunkFormat, optional
        The job's dialect; the values are copied, not written, so only two of its options apply.
        ``line_ending``: every record of the input must end with it: a file with the other line
        ending is an :class:`InputError` rather than silently converted, because converting would
        rewrite the data (line endings inside quoted values are data and are left alone).
        ``column_delimiter``: the quoting check needs it to know where values begin and end.
    block_size : int, optional
        Bytes read from the stream at a time.
    sink : ChunkSink, optional
        Where each chunk's bytes go while it is cut (see :func:`~.serialize.iter_record_chunks`):
        with a :class:`~.chunk_files.FileSink` memory holds one block, never a chunk.

    Yields
    ------
    CsvChunk
        Chunks in input order; every record is in exactly one chunk. Blank lines between records
        are dropped and not counted as records; a missing line ending after the last record is added;
        a UTF-8 byte order mark before the header is dropped.

    Raises
    ------
    InputError
        For a ``block_size`` out of range or a file that cannot be opened; while iterating, before the chunk
        holding the problem is yielded: a header too large for ``max_size_bytes``, a line ending that
        does not match ``line_ending``, malformed quoting, a NUL byte, bytes that are not UTF-8, a
        quoted value left open at the end of the input, or a record too large for a chunk. The
        message names the line (1-based, the header is line 1, lines inside quoted values count)
        and ``record_index`` is set for a data record.
    """
    max_size_bytes, max_records = limits.max_size_bytes, limits.max_records
    eol = chunk_format.eol.encode()
    delimiter = chunk_format.delimiter
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise InputError(f"block_size must be an int of at least 1, got {block_size!r}", field="block_size")
    if isinstance(source, (str, os.PathLike)):
        return _iter_file_chunks(
            os.fspath(source), max_size_bytes, max_records, eol, delimiter, block_size, sink
        )
    return _iter_chunks(source, max_size_bytes, max_records, eol, delimiter, block_size, sink)


def _iter_file_chunks(
    path: str,
    max_size_bytes: int,
    max_records: int,
    eol: bytes,
    delimiter: str,
    block_size: int,
    sink: ChunkSink | None,
) -> Iterator[Chunk]:
    try:
        stream = open(path, "rb")  # noqa: SIM115 - closed by the with below, once it is open
    except OSError as exc:
        raise InputError(
            f"cannot read the CSV file {path!r}: {exc.strerror or exc}", field="source"
        ) from None
    with stream:
        yield from _iter_chunks(stream, max_size_bytes, max_records, eol, delimiter, block_size, sink)


def _iter_chunks(
    stream: IO[bytes],
    max_size_bytes: int,
    max_records: int,
    eol: bytes,
    delimiter: str,
    block_size: int,
    sink: ChunkSink | None = None,
) -> Iterator[Chunk]:
    out: ChunkSink = sink if sink is not None else MemorySink()
    header = b""
    pending: list[bytes] = []  # records of this block not yet handed to the sink
    started = False
    size = 0
    count = 0
    first = 0
    # _iter_records already rejected any record that cannot fit next to the header.
    for batch in _iter_records(stream, eol, delimiter, block_size, max_size_bytes):
        if not header:
            header = batch[0]
            size = len(header)
            batch = batch[1:]
        for record in batch:
            if size + len(record) > max_size_bytes:
                out.write_all(pending)
                pending = []
                yield out.end(count)
                started = False
                size = len(header)
                first += count
                count = 0
            if not started:
                out.begin(first)
                out.write(header)
                started = True
            pending.append(record)
            size += len(record)
            count += 1
            if count == max_records:
                # Yield as soon as the chunk is full so no further input is read for it.
                out.write_all(pending)
                pending = []
                yield out.end(count)
                started = False
                size = len(header)
                first += count
                count = 0
        if pending:
            out.write_all(pending)
            pending = []
    if count:
        yield out.end(count)


def split_csv_stream(
    source: CsvSource,
    max_size_bytes: int = MAX_SIZE_BYTES,
    max_records: int = MAX_RECORDS,
    *,
    line_ending: LineEnding = "LF",
    column_delimiter: ColumnDelimiter = "COMMA",
    block_size: int = _BLOCK_SIZE,
) -> Iterator[bytes]:
    """Split CSV that is already in the job's format into job-sized CSV payloads.

    The same as :func:`iter_csv_stream_chunks` (see there for the rules), with the limits, the
    line ending and the column delimiter given one by one, yielding only each chunk's bytes.

    Raises
    ------
    InputError
        Arguments out of range (at once), or as :func:`iter_csv_stream_chunks` while iterating.

    Yields
    ------
    bytes
        UTF-8 CSV, the header first, within both limits.
    """
    limits = ChunkLimits(max_size_bytes=max_size_bytes, max_records=max_records)
    chunk_format = ChunkFormat(column_delimiter=column_delimiter, line_ending=line_ending)
    return (
        chunk.data for chunk in iter_csv_stream_chunks(source, limits, chunk_format, block_size=block_size)
    )
