"""Arrow tables and record batches to Bulk API 2.0 ingest CSV chunks, column by column in C++.

The output is the same, byte for byte, as :func:`~.serialize.iter_record_chunks` on the same rows
as dicts (``table.to_pylist()``), except that timestamps with a time zone other than UTC are written
as the same instant in UTC (``+00:00``) rather than in their zone's local time.

Each column of a record batch is turned into the text of its CSV fields with ``pyarrow.compute``
(casts, substring matches, joins); the rows are then joined element-wise, which gives the batch's
CSV as one buffer and each row's byte offset, so chunks are cut at exact record boundaries without
Python work per row. Python formats only the values whose Arrow text differs from the dict path's:
floats Arrow writes with an exponent or at 1e16 and above, and decimals Arrow writes in E-notation
(each through the dict path's own converter).

``pyarrow.csv.write_csv`` is not used for the output: its "needed" quoting style quotes every string
value, and it gives no row offsets.

pyarrow is imported only when this module's function is called (the ``[arrow]`` extra).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Iterator
from decimal import Decimal
from typing import TYPE_CHECKING, Any, cast

from airflow_provider_salesforce_bulk.client.chunk_files import ChunkSink
from airflow_provider_salesforce_bulk.client.csv_format import MAX_RECORDS, MAX_SIZE_BYTES, Chunk, CsvChunk
from airflow_provider_salesforce_bulk.client.errors import InputError
from airflow_provider_salesforce_bulk.client.job_spec import ChunkFormat, ChunkFormatOptions, ChunkLimits
from airflow_provider_salesforce_bulk.client.serialize import (
    _NA_MARKER,
    _NONE_TEXT,
    ChunkPacker,
    _check_fieldnames,
    _check_header,
    _decimal_text,
    _float_text,
    _Writer,
)

if TYPE_CHECKING:
    import pyarrow as pa
    from typing_extensions import Unpack

__all__ = ["ArrowSource", "iter_arrow_chunks", "iter_arrow_source_chunks", "require_pyarrow"]

#: A pyarrow Table, RecordBatch, RecordBatchReader, an iterable of RecordBatches, or any object with
#: ``__arrow_c_stream__`` (a pandas or polars DataFrame, for one).
ArrowSource = Any

# Rows converted at a time are bounded by this many bytes of input (at most _MAX_SLICE_ROWS rows):
# the batch's CSV text is about as large and lives until its rows are in chunks.
_SLICE_BYTES = 16 << 20
_MAX_SLICE_ROWS = 65_536
# Python's datetime and date range (years 1 to 9999), in days since 1970-01-01.
_MIN_DAY = -719_162
_MAX_DAY = 2_932_896
_SECONDS_PER_DAY = 86_400
_UNIT_PER_SECOND = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}
_SUPPORTED = (
    "string, bool, integers, floats, decimals, date32/date64, timestamps, null, and dictionaries of these"
)


def require_pyarrow() -> Any:
    """The ``pyarrow`` module; an :class:`ImportError` saying how to install it when it is missing."""
    try:
        import pyarrow
        import pyarrow.compute  # the compute kernels' module, reached as pyarrow.compute
    except ImportError as exc:
        raise ImportError(
            "Arrow input needs pyarrow: install airflow-provider-salesforce-bulk[arrow]"
        ) from exc
    return pyarrow


def iter_arrow_chunks(
    source: ArrowSource,
    fieldnames: Collection[str] | None = None,
    max_size_bytes: int = MAX_SIZE_BYTES,
    max_records: int = MAX_RECORDS,
    **options: Unpack[ChunkFormatOptions],
) -> Iterator[CsvChunk]:
    """Serialize Arrow data into Bulk API 2.0 ingest CSV chunks.

    Values are written as :func:`~.serialize.serialize_ingest_data` writes the same rows as dicts:

    ==========================  =====================================================================
    string (any of the three)   as is, quoted (inner quotes doubled) when holding ``"``, CR, LF or
                                the delimiter; a NUL character, or the text ``#N/A`` unless
                                ``allow_na_marker``, is an :class:`InputError`
    bool                        ``true`` / ``false``
    integers                    decimal digits
    floats                      the digits of Python's ``repr`` of the value as a float64, never an
                                exponent; NaN and infinities are an :class:`InputError`
    decimals                    plain notation with the type's scale (``1.50``)
    date32, date64              ``yyyy-MM-dd``
    timestamp                   ``yyyy-MM-ddTHH:mm:ss.SSS+00:00``, truncated to milliseconds; a
                                timestamp without a time zone is taken as UTC, one with a time zone
                                is written in UTC
    null (any type)             see ``none_as``
    dictionary                  as its values
    ==========================  =====================================================================

    Any other type (binary, time, duration, lists, structs, ...) is an :class:`InputError` naming
    the column, raised before any chunk.

    Parameters
    ----------
    source : pyarrow.Table, RecordBatch, RecordBatchReader, Iterable[RecordBatch] or Arrow stream
        The data; anything with ``__arrow_c_stream__`` (pandas or polars DataFrames) is read as a
        stream. Batches are read one at a time: memory holds one batch, its CSV and one chunk.
    fieldnames : Collection[str], optional
        The CSV columns, in order; by default the source's column names. A source column not among
        them is an :class:`InputError`; a field name that is not a source column is written empty.
    max_size_bytes, max_records, column_delimiter, line_ending, none_as, allow_na_marker
        As for :func:`~.serialize.serialize_ingest_data`.

    Yields
    ------
    CsvChunk
        In input order, each within both limits; every row is in exactly one chunk.

    Raises
    ------
    InputError
        Bad arguments, an unsupported column type or a column not in ``fieldnames`` (at once for a
        source whose schema is known, else at the first batch); bad values (NaN, NUL, a date out of
        the years 1 to 9999, a row too large for a chunk) while iterating, with ``record_index`` and
        ``field``.
    ImportError
        pyarrow is not installed.
    """
    limits = ChunkLimits(max_size_bytes=max_size_bytes, max_records=max_records)
    # Without a sink every chunk is a CsvChunk in memory.
    return cast(
        "Iterator[CsvChunk]", iter_arrow_source_chunks(source, fieldnames, limits, ChunkFormat.of(**options))
    )


def iter_arrow_source_chunks(
    source: ArrowSource,
    fieldnames: Collection[str] | None,
    limits: ChunkLimits,
    chunk_format: ChunkFormat,
    *,
    sink: ChunkSink | None = None,
) -> Iterator[Chunk]:
    """:func:`iter_arrow_chunks` taking the limits and the format as the objects that checked them,
    as :func:`~.serialize.iter_record_chunks` does for records (``sink`` as there)."""
    pa = require_pyarrow()
    names = _check_fieldnames(fieldnames) if fieldnames is not None else None
    schema, batches = _open(pa, source)
    if schema is None:
        return _generate_peeked(pa, batches, names, limits, chunk_format, sink)
    plan = _Plan(pa, schema, names, chunk_format)
    _check_header(plan.writer, limits.max_size_bytes)
    return _generate(plan, batches, limits, sink)


def _open(pa: Any, source: ArrowSource) -> tuple[pa.Schema | None, Iterator[pa.RecordBatch]]:
    """The source's schema when known without reading, and its record batches."""
    if isinstance(source, pa.Table):
        return source.schema, iter(source.to_batches())
    if isinstance(source, pa.RecordBatch):
        return source.schema, iter([source])
    if isinstance(source, pa.RecordBatchReader):
        return source.schema, iter(source)
    if hasattr(source, "__arrow_c_stream__"):
        reader = pa.RecordBatchReader.from_stream(source)
        return reader.schema, iter(reader)
    if isinstance(source, (str, bytes)) or not isinstance(source, Iterable):
        raise InputError(
            f"source must be a pyarrow Table, RecordBatch, RecordBatchReader or an iterable of "
            f"RecordBatches, got {type(source).__name__}",
            field="source",
        )
    return None, iter(source)


def _generate_peeked(
    pa: Any,
    batches: Iterator[Any],
    names: list[str] | None,
    limits: ChunkLimits,
    chunk_format: ChunkFormat,
    sink: ChunkSink | None,
) -> Iterator[Chunk]:
    first = next(batches, None)
    if first is None:
        return
    if not isinstance(first, pa.RecordBatch):
        raise InputError(
            f"the source yielded a {type(first).__name__}, expected pyarrow RecordBatches", field="source"
        )
    plan = _Plan(pa, first.schema, names, chunk_format)
    _check_header(plan.writer, limits.max_size_bytes)

    def chained() -> Iterator[Any]:
        yield first
        yield from batches

    yield from _generate(plan, chained(), limits, sink)


Formatter = Callable[["pa.Array", str, int], "pa.Array"]


class _Plan:
    """How each CSV column is made from a batch: a source column and its formatter, or empty."""

    def __init__(
        self,
        pa: Any,
        schema: pa.Schema,
        names: list[str] | None,
        chunk_format: ChunkFormat,
    ) -> None:
        self.pa = pa
        self.pc = pa.compute
        self.source_names: list[str] = list(schema.names)
        repeated = sorted({name for name in self.source_names if self.source_names.count(name) > 1})
        if repeated:
            raise InputError(f"the source has the column {repeated[0]!r} twice", field=repeated[0])
        if names is None:
            names = _check_fieldnames(self.source_names)
        else:
            for name in self.source_names:
                if name not in names:
                    raise InputError(
                        f"the source has the column {name!r}, which is not in fieldnames {names!r}",
                        record_index=0,
                        field=name,
                    )
        self.writer = _Writer(names, chunk_format)
        self.allow_na_marker = chunk_format.allow_na_marker
        self.names = names
        self.eol = chunk_format.eol
        self.delimiter = chunk_format.delimiter
        self.none_text = _NONE_TEXT[chunk_format.none_as]
        self.specials = ("\x00", '"', "\r", "\n", self.delimiter)
        self.schema = schema
        self.formatters = self._formatters(schema)

    def _formatters(self, schema: pa.Schema) -> list[Formatter | None]:
        return [
            # A field name that is not a source column is left empty, as a key missing from a dict.
            self._formatter(schema.field(name).type, name) if name in self.source_names else None
            for name in self.names
        ]

    # -- choosing a formatter per column type ---------------------------------------------------------

    def _formatter(self, kind: pa.DataType, name: str) -> Formatter:
        types = self.pa.types
        if types.is_dictionary(kind):
            inner = self._formatter(kind.value_type, name)
            return lambda array, field, base: inner(array.dictionary_decode(), field, base)
        if types.is_null(kind):
            return self._nulls
        if types.is_boolean(kind) or types.is_integer(kind):
            return self._cast
        if types.is_floating(kind):
            return self._floats
        if types.is_decimal(kind):
            return self._decimals
        if types.is_string(kind) or types.is_large_string(kind) or types.is_string_view(kind):
            return self._strings
        if types.is_date(kind):
            return self._dates
        if types.is_timestamp(kind):
            return self._timestamps
        raise InputError(
            f"column {name!r} has the Arrow type {kind}, which has no Salesforce CSV form "
            f"(supported: {_SUPPORTED})",
            field=name,
        )

    # -- formatters: an Arrow array to the text of its CSV fields (nulls stay null) -------------------

    def _nulls(self, array: pa.Array, name: str, base: int) -> pa.Array:
        return self.pa.nulls(len(array), self.pa.string())

    def _cast(self, array: pa.Array, name: str, base: int) -> pa.Array:
        return array.cast(self.pa.string())

    def _floats(self, array: pa.Array, name: str, base: int) -> pa.Array:
        pa, pc = self.pa, self.pc
        if array.type != pa.float64():
            # The dict path writes float(value): a float32 0.1 is 0.10000000149011612 there too.
            array = array.cast(pa.float64())
        bad = pc.invert(pc.is_finite(array))
        if pc.any(bad).as_py():
            index = pc.index(bad, True).as_py()
            value = array[index].as_py()
            raise InputError(
                f"record {base + index}, field {name!r}: {value!r} is not a number Salesforce can store "
                "(NaN and infinities are rejected)",
                record_index=base + index,
                field=name,
            )
        text = array.cast(pa.string())
        # Arrow and repr write the same shortest digits; they differ in the notation: Arrow uses an
        # exponent from 1e15 on and writes 1.0 as "1". Python formats the exponent cases.
        data = _string_bytes(pa, text)
        special = pc.greater_equal(pc.abs(array), 1e16)
        if b"e" in data:
            special = pc.or_(special, pc.match_substring(text, "e"))
        if data.count(b".") < len(text) - text.null_count:
            whole = pc.invert(pc.match_substring(text, "."))
            whole = pc.fill_null(whole, False)
            dotted = pc.binary_join_element_wise(text.filter(whole), ".0", "")
            text = pc.replace_with_mask(text, whole, dotted)
        return self._replace(text, special, array, lambda value: _float_text(value.as_py()))

    def _decimals(self, array: pa.Array, name: str, base: int) -> pa.Array:
        text = array.cast(self.pa.string())
        # Arrow writes E-notation for a negative scale and for tiny values (0E-10); the dict path
        # writes Decimal(text) in plain notation.
        special = self.pc.match_substring(text, "E")
        return self._replace(text, special, text, lambda value: _decimal_text(Decimal(value.as_py())))

    def _replace(
        self, text: pa.Array, special: pa.Array, source: pa.Array, convert: Callable[[Any], str]
    ) -> pa.Array:
        special = self.pc.fill_null(special, False)
        if not self.pc.any(special).as_py():
            return text
        indices = self.pc.indices_nonzero(special).to_pylist()
        fixed = [convert(source[i]) for i in indices]
        return self.pc.replace_with_mask(text, special, self.pa.array(fixed, text.type))

    def _strings(self, array: pa.Array, name: str, base: int) -> pa.Array:
        pa, pc = self.pa, self.pc
        if not pa.types.is_string(array.type):
            # One text type for the row join; a slice holds far less than string's 2 GiB.
            try:
                array = array.cast(pa.string())
            except pa.ArrowInvalid:
                raise InputError(
                    f"column {name!r} holds more text in {len(array):_} rows than fits in a chunk",
                    field=name,
                ) from None
        try:
            array.validate(full=True)
        except pa.ArrowInvalid as exc:
            raise InputError(
                f"column {name!r} holds text that is not valid UTF-8: {exc}", field=name
            ) from None
        # memchr over the column's bytes finds which special characters occur at all (usually none),
        # so only those are searched for value by value.
        data = _string_bytes(pa, array)
        if not self.allow_na_marker and _NA_MARKER.encode() in data:
            exact = pc.fill_null(pc.equal(array, _NA_MARKER), False)
            position = pc.index(exact, True).as_py()
            if position >= 0:
                raise self.writer._na_marker(self.names.index(name), base + position)
        present = [char for char in self.specials if char.encode() in data]
        if not present:
            return array
        if "\x00" in present:
            nul = pc.fill_null(pc.match_substring(array, "\x00"), False)
            index = base + pc.index(nul, True).as_py()
            raise InputError(
                f"record {index}, field {name!r}: the value holds a NUL character, which Salesforce "
                "does not accept",
                record_index=index,
                field=name,
            )
        special = pc.match_substring(array, present[0])
        for char in present[1:]:
            special = pc.or_(special, pc.match_substring(array, char))
        special = pc.fill_null(special, False)
        chosen = array.filter(special)
        quoted = pc.binary_join_element_wise('"', pc.replace_substring(chosen, '"', '""'), '"', "")
        return pc.replace_with_mask(array, special, quoted)

    def _dates(self, array: pa.Array, name: str, base: int) -> pa.Array:
        pa = self.pa
        days = array.cast(pa.date32(), safe=False) if pa.types.is_date64(array.type) else array
        self._check_range(days.view(pa.int32()), _MIN_DAY, _MAX_DAY, name, base, "date")
        return days.cast(pa.string())

    def _timestamps(self, array: pa.Array, name: str, base: int) -> pa.Array:
        pa, pc = self.pa, self.pc
        unit = array.type.unit
        per_day = _SECONDS_PER_DAY * _UNIT_PER_SECOND[unit]
        low, high = _MIN_DAY * per_day, (_MAX_DAY + 1) * per_day - 1
        self._check_range(array.view(pa.int64()), low, high, name, base, "timestamp")
        # Viewed without its time zone, a timestamp holds the UTC time: written in UTC.
        naive = array.view(pa.timestamp(unit))
        if unit in ("us", "ns"):
            naive = pc.floor_temporal(naive, unit="millisecond").cast(pa.timestamp("ms"))
        elif unit == "s":
            naive = naive.cast(pa.timestamp("ms"))
        text = pc.replace_substring(naive.cast(pa.string()), " ", "T", max_replacements=1)
        return pc.binary_join_element_wise(text, "+00:00", "")

    def _check_range(self, values: pa.Array, low: int, high: int, name: str, base: int, what: str) -> None:
        pc = self.pc
        bounds = pc.min_max(values)
        smallest, largest = bounds["min"].as_py(), bounds["max"].as_py()
        if smallest is None or (smallest >= low and largest <= high):
            return
        outside = pc.or_(pc.less(values, low), pc.greater(values, high))
        index = base + pc.index(outside, True).as_py()
        raise InputError(
            f"record {index}, field {name!r}: the {what} is outside the years 1 to 9999",
            record_index=index,
            field=name,
        )

    # -- a batch to CSV rows -----------------------------------------------------------------------------

    def rows(self, batch: pa.RecordBatch, base: int) -> pa.Array:
        """The batch's rows as CSV text, each ending with the line ending."""
        pa, pc = self.pa, self.pc
        if not batch.schema.equals(self.schema):
            # Batches built from rows (a SQL result, say) may infer other types batch by batch.
            self.formatters = self._formatters(batch.schema)
            self.schema = batch.schema
        columns: list[Any] = []
        for name, formatter in zip(self.names, self.formatters, strict=True):
            if formatter is None:
                columns.append(pa.array([""] * batch.num_rows, pa.string()))
                continue
            text = formatter(batch.column(name), name, base)
            if text.null_count:
                text = pc.fill_null(text, self.none_text)
            columns.append(text)
        if len(columns) == 1:
            # A lone empty field would be a blank line, which is no record at all.
            columns[0] = pc.if_else(pc.equal(columns[0], ""), '""', columns[0])
        # The line ending goes on the last field: cheaper than on the whole row.
        columns[-1] = pc.binary_join_element_wise(columns[-1], "", self.eol)
        if len(columns) == 1:
            return columns[0]
        return pc.binary_join_element_wise(*columns, self.delimiter)


def _offsets(pa: Any, kind: Any, buffer: Any) -> memoryview[int]:
    """A string array's offsets buffer as integers (64-bit for large_string)."""
    raw = memoryview(buffer).cast("B")
    return raw.cast("q") if pa.types.is_large_string(kind) else raw.cast("i")


def _string_bytes(pa: Any, array: Any) -> bytes:
    """The UTF-8 bytes of a string array's values, all together (the array may be a slice)."""
    _, offsets, data = array.buffers()
    if data is None or not len(array):
        return b""
    view = _offsets(pa, array.type, offsets)
    return memoryview(data)[view[array.offset] : view[array.offset + len(array)]].tobytes()


def _row_buffers(pa: Any, rows: Any) -> tuple[memoryview, memoryview]:
    """The rows' text buffer and their byte offsets (``len(rows) + 1`` of them)."""
    _, offsets, data = rows.buffers()
    view = _offsets(pa, rows.type, offsets)[rows.offset : rows.offset + len(rows) + 1]
    return memoryview(data if data is not None else b""), view


def _slices(batch: Any) -> Iterator[Any]:
    rows = batch.num_rows
    if not rows:
        return
    per_row = max(1, batch.nbytes // rows)
    step = max(1, min(_MAX_SLICE_ROWS, _SLICE_BYTES // per_row))
    for start in range(0, rows, step):
        yield batch.slice(start, step)


def _generate(
    plan: _Plan, batches: Iterator[Any], limits: ChunkLimits, sink: ChunkSink | None
) -> Iterator[Chunk]:
    pa = plan.pa
    packer = ChunkPacker(plan.writer.header.encode(), limits, sink)
    base = 0
    for batch in batches:
        if not isinstance(batch, pa.RecordBatch):
            raise InputError(
                f"the source yielded a {type(batch).__name__}, expected pyarrow RecordBatches", field="source"
            )
        if batch.schema.names != plan.source_names:
            raise InputError(
                f"a record batch from record {base} on has the columns {batch.schema.names!r}, "
                f"the first had {plan.source_names!r}",
                record_index=base,
                field="source",
            )
        for piece in _slices(batch):
            rows, error = _valid_prefix(plan, piece, base)
            data, offsets = _row_buffers(pa, rows)
            yield from packer.pack(data, offsets, base)
            base += len(offsets) - 1
            if error is not None:
                raise error
    yield from packer.rest()


def _valid_prefix(plan: _Plan, piece: Any, base: int) -> tuple[Any, InputError | None]:
    """The rows of ``piece`` before its first bad record, and that record's error (``None`` if none).

    Columns are formatted one at a time, so the error raised first may name a later record than
    another column's, or than a record of the piece that is too large to send: the rows before it are
    formatted and packed first, so every path reports the first bad record, as the dict path does.
    """
    try:
        return plan.rows(piece, base), None
    except InputError as exc:
        at = exc.record_index
        if at is None or not base < at < base + piece.num_rows:
            raise
        rows, earlier = _valid_prefix(plan, piece.slice(0, at - base), base)
        return rows, earlier or exc
