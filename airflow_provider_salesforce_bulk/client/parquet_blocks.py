"""Result CSV to Parquet, one block of whole records at a time: the block cut where a record ends,
parsed by Arrow's CSV reader from memory and written as one row group.

Arrow parses each block from an in-memory buffer (no Python file object between the bytes and the
parser, so no per-read calls back into Python, no read-ahead threads, no copy): the only Python work
per block is finding its last record end (one ``bytes.count`` of its quotes) and the calls below.
Rows are counted from the tables Arrow parsed, so the count is the parser's own.
"""

from __future__ import annotations

import importlib
import io
import re
from collections.abc import Iterable, Sequence
from typing import IO, Any

from airflow_provider_salesforce_bulk.client.errors import UnexpectedResponseError

__all__ = ["MAX_RECORD_BYTES", "BlockWriter", "last_record_end"]

#: A block grows until it holds a record end; past this many bytes without one (a record this long,
#: or a quote that never closes) the page is refused rather than held in memory whole.
MAX_RECORD_BYTES = 64 << 20
_COLUMN_NUMBER = re.compile(r"In CSV column #(\d+)")


def last_record_end(block: bytes) -> int:
    """The offset after the last line feed outside double quotes in ``block`` (0 if none), ``block``
    beginning where a record begins.

    Inside a quoted value quotes come in pairs (``""``) but for the one closing it, so a line feed
    ends a record exactly when an even number of quotes precedes it. One count covers the block;
    a line feed inside a value steps back one line at a time, counting only that line.
    """
    newline = block.rfind(b"\n")
    if newline < 0:
        return 0
    odd = block.count(b'"', 0, newline) & 1
    while odd:
        previous = block.rfind(b"\n", 0, newline)
        if previous < 0:
            return 0
        odd ^= block.count(b'"', previous, newline) & 1
        newline = previous
    return newline + 1


class _Counting(io.RawIOBase):
    """A write-only view of a sink that counts bytes (and answers ``tell``) for the Parquet writer."""

    def __init__(self, sink: IO[bytes]) -> None:
        self.sink = sink
        self.count = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        size = memoryview(data).nbytes
        self.sink.write(data)  # as given: some object-store files take only bytes-like they know
        self.count += size
        return size

    def tell(self) -> int:
        return self.count

    def close(self) -> None:
        # The sink belongs to whoever opened it.
        super().close()


class BlockWriter:
    """Writes blocks of whole CSV records to one Parquet file, one row group per block; blocking
    (run it in a worker thread), one block at a time.

    The first block starts with the header row, which must name ``schema``'s columns in order.
    """

    def __init__(
        self,
        pa: Any,
        sink: IO[bytes],
        schema: Any,
        *,
        delimiter: str,
        compression: str,
        use_dictionary: bool | Sequence[str],
        where: str,
    ) -> None:
        self._pa = pa
        self._schema = schema
        self._where = where
        self._times = [i for i, f in enumerate(schema) if pa.types.is_time(f.type)]
        self._parse = pa.csv.ParseOptions(
            delimiter=delimiter, newlines_in_values=True, ignore_empty_lines=False
        )
        # An empty line is a record (one column, null): the rows parsed are the page's count.
        self._convert = pa.csv.ConvertOptions(
            column_types={
                f.name: (pa.string() if i in self._times else f.type) for i, f in enumerate(schema)
            },
            null_values=[""],
            strings_can_be_null=True,
            quoted_strings_can_be_null=True,
            true_values=["true"],
            false_values=["false"],
        )
        self._counting = _Counting(sink)
        dictionary = use_dictionary if isinstance(use_dictionary, bool) else list(use_dictionary)
        self._writer: Any = pa.parquet.ParquetWriter(
            self._counting, schema, compression=compression, use_dictionary=dictionary
        )
        self._header = True
        self.rows = 0

    @property
    def header_read(self) -> bool:
        """Whether a block with the header row was written."""
        return not self._header

    def write(self, block: Any) -> None:
        """Parse ``block`` (bytes-like, whole records) and write its rows as one row group."""
        pa = self._pa
        size = memoryview(block).nbytes
        if not size:
            return
        read = pa.csv.ReadOptions(
            use_threads=False,
            # One Arrow block for the whole of ours: one table chunk, one row group.
            block_size=max(size + 1, 1 << 16),
            column_names=None if self._header else self._schema.names,
        )
        try:
            table = pa.csv.read_csv(
                pa.BufferReader(pa.py_buffer(block)),
                read_options=read,
                parse_options=self._parse,
                convert_options=self._convert,
            )
        except pa.ArrowInvalid as exc:
            raise conversion_error(exc, self._schema, self._where) from exc
        if self._header:
            self._header = False
            if table.schema.names != self._schema.names:
                raise UnexpectedResponseError(
                    f"{self._where}: header {table.schema.names} differs from the expected columns "
                    f"{self._schema.names}"
                )
        if not table.num_rows:
            return
        if self._times:
            table = self._with_times(table)
        self._writer.write_table(table, row_group_size=table.num_rows)
        self.rows += table.num_rows

    def write_all(self, blocks: Iterable[Any]) -> None:
        for block in blocks:
            self.write(block)

    def close(self) -> int:
        """Finish the file (also after a failure: the sink gets a footer); the bytes written."""
        try:
            self._writer.close()
        finally:
            # Arrow's allocator keeps freed blocks for reuse; handing them back after each file keeps
            # the process's peak from creeping up with the number of files.
            release = getattr(self._pa.default_memory_pool(), "release_unused", None)
            if release is not None:
                release()
        return self._counting.count

    def _with_times(self, table: Any) -> Any:
        """Salesforce writes times as ``13:30:00.000Z``; Arrow's CSV reader has no time parser."""
        pa = self._pa
        importlib.import_module("pyarrow.compute")
        for i in self._times:
            stamped = pa.compute.binary_join_element_wise("1970-01-01T", table.column(i), "")
            try:
                moments = pa.compute.cast(stamped, pa.timestamp("ms", tz="UTC"))
            except pa.ArrowInvalid as exc:
                raise UnexpectedResponseError(f"column {self._schema.names[i]!r}: not a time: {exc}") from exc
            times = pa.compute.cast(pa.compute.cast(moments, pa.timestamp("ms")), pa.time32("ms"))
            table = table.set_column(i, self._schema.field(i), times)
        return table


def cut_blocks(pieces: Iterable[bytes], block_size: int, where: str) -> Iterable[memoryview | bytes]:
    """Blocks of whole records, each about ``block_size`` bytes or more, from CSV arriving in pieces
    (the last block may end without a line feed)."""
    pending: list[bytes] = []
    size = 0
    threshold = block_size
    for piece in pieces:
        pending.append(piece)
        size += len(piece)
        if size < threshold:
            continue
        block, rest = split_block(pending, where)
        if block is None:
            threshold = size + block_size  # no record end yet: look again after another block's worth
            pending = [rest]
            continue
        yield block
        pending, size, threshold = ([rest] if rest else []), len(rest), block_size
    if size:
        yield b"".join(pending)


def split_block(pending: list[bytes], where: str) -> tuple[memoryview | None, bytes]:
    """The whole records at the start of ``pending`` joined (None if no record ends in it) and the
    bytes after them."""
    joined = b"".join(pending)
    end = last_record_end(joined)
    if not end:
        if len(joined) > MAX_RECORD_BYTES:
            raise UnexpectedResponseError(
                f"{where}: no record ends in {len(joined)} bytes (a quote never closes, or a record "
                f"is longer than {MAX_RECORD_BYTES} bytes)"
            )
        return None, joined
    return memoryview(joined)[:end], joined[end:]


def conversion_error(exc: Exception, schema: Any, where: str) -> UnexpectedResponseError:
    text = str(exc).strip()
    match = _COLUMN_NUMBER.search(text)
    if match and int(match[1]) < len(schema.names):
        name = schema.names[int(match[1])]
        return UnexpectedResponseError(f"{where}, column {name!r} ({schema.field(name).type}): {text}")
    return UnexpectedResponseError(f"{where}: {text}")
