"""Records to Bulk API 2.0 ingest CSV, cut into job-sized chunks.

:func:`serialize_ingest_data` has the public shape of aiosalesforce's function of the same name;
:func:`iter_record_chunks` is the same with each chunk's record accounting, for the caller that must
know which input records went to which job. :mod:`.csv_split` splits CSV that already exists.

Speed comes from working a batch of records column by column: the values of one column are converted
with one C-level ``map`` per batch chosen by their type (``float.__repr__``, ``date.isoformat``, a dict
lookup for booleans, ...), a column is searched for characters that need quoting as one joined
string, and rows are assembled with ``delimiter.join``. Python-level work per value is left only for
the values that need it (those to be quoted, floats in exponent notation, datetimes, Decimals, rare
types). Batches are sized so that, once a chunk is nearly full, records are read one at a time: the
input is consumed lazily and at most one chunk and one batch are held in memory.
"""

from __future__ import annotations

import math
import numbers
import operator
import re
import warnings
from bisect import bisect_right
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from itertools import accumulate, compress, islice, repeat
from typing import TYPE_CHECKING, Any

from airflow_provider_salesforce_bulk.client.chunk_files import ChunkSink, MemorySink
from airflow_provider_salesforce_bulk.client.csv_format import (
    MAX_RECORDS,
    MAX_SIZE_BYTES,
    Chunk,
    check_header_fits,
)
from airflow_provider_salesforce_bulk.client.errors import InputError
from airflow_provider_salesforce_bulk.client.job_spec import (
    DEFAULT_FORMAT,
    DEFAULT_LIMITS,
    ChunkFormat,
    ChunkFormatOptions,
    ChunkLimits,
)
from airflow_provider_salesforce_bulk.client.models import NoneAs

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = [
    "NoneAs",
    "iter_record_chunks",
    "serialize_ingest_data",
    "value_text",
]

#: The text Salesforce takes as "set this field to null".
_NA_MARKER = "#N/A"
_NONE_TEXT = {"empty": "", "null": _NA_MARKER}
_BOOL_TEXT = {"True": "true", "False": "false"}
# Salesforce's limits on the header row (section 4 of the wire contract).
_MAX_FIELDS = 5_000
_MAX_HEADER_CHARS = 32_000
# Records per batch once a chunk has room for that many; larger batches gain little.
_BATCH = 2_048

_bool_repr: Callable[[bool], str] = bool.__repr__
_float_repr: Callable[[float], str] = float.__repr__
_int_repr: Callable[[int], str] = int.__repr__
_match_start = operator.methodcaller("start")


class _BadValue(ValueError):
    """A value that cannot be written; the caller adds the record index and the field."""


def _float_text(value: float) -> str:
    if not math.isfinite(value):
        raise _BadValue(f"{value!r} is not a number Salesforce can store (NaN and infinities are rejected)")
    text = _float_repr(value)
    # repr is the shortest text that reads back as the same float; Decimal keeps exactly its digits.
    return format(Decimal(text), "f") if "e" in text else text


def _real_text(value: Any) -> str:
    if isinstance(value, numbers.Rational):
        raise _BadValue(
            f"{type(value).__name__} {value} has no exact decimal form; pass a Decimal or a float"
        )
    return _float_text(float(value))


def _decimal_text(value: Decimal) -> str:
    if not value.is_finite():
        raise _BadValue(
            f"Decimal {value} is not a number Salesforce can store (NaN and infinities are rejected)"
        )
    return format(value, "f")


def _integral_text(value: Any) -> str:
    return _int_repr(operator.index(value))


def _str_text(value: str) -> str:
    # str() of a str subclass may be anything (an Enum's name, say); the data is the string itself.
    return str.__str__(value)


def value_text(value: Any) -> str:
    """The CSV text of one value that is not None, as the serializer writes it (before quoting).

    Raises
    ------
    ValueError
        A value the serializer refuses (an unsupported type, a float that is not finite, ...).
    """
    return _str_text(value) if isinstance(value, str) else _resolve_converter(type(value))(value)


def _datetime_text(value: datetime) -> str:
    offset = value.utcoffset()
    if offset is None:
        value = value.replace(tzinfo=timezone.utc)
    elif offset % timedelta(minutes=1):
        # Salesforce takes offsets as +HH:mm; one with seconds is written in UTC instead.
        value = value.astimezone(timezone.utc)
    return value.isoformat(timespec="milliseconds")


def _date_text(value: date) -> str:
    return date.isoformat(value)


def _bool_text(value: bool) -> str:
    return "true" if value else "false"


def _resolve_converter(kind: type) -> Callable[[Any], str]:
    """The function writing values of type ``kind``; raises :class:`_BadValue` for unsupported ones."""
    # Order matters: bool is an int, datetime is a date.
    if issubclass(kind, bool):
        return _bool_text
    if issubclass(kind, str):
        return _str_text
    if issubclass(kind, float):
        return _float_text
    if issubclass(kind, Decimal):
        return _decimal_text
    if issubclass(kind, datetime):
        return _datetime_text
    if issubclass(kind, date):
        return _date_text
    if issubclass(kind, numbers.Integral) or (hasattr(kind, "__index__") and not issubclass(kind, Mapping)):
        # Integers that are not int, numpy's among them (numpy need not be installed).
        return _integral_text
    if issubclass(kind, numbers.Real):
        return _real_text
    if issubclass(kind, Mapping):
        raise _BadValue(
            "a nested dict is a relationship and must hold exactly one key, "
            "and its column (key.subkey) must be in fieldnames"
        )
    raise _BadValue(
        f"unsupported value type {kind.__name__!r} (supported: str, bool, int, float, Decimal, "
        "datetime, date, None, and a one-key dict for a relationship)"
    )


class _Writer:
    """Per-call state: the columns, their dialect and the converters chosen so far."""

    def __init__(self, fieldnames: Sequence[str], chunk_format: ChunkFormat) -> None:
        self.fieldnames = list(fieldnames)
        self.allow_na_marker = chunk_format.allow_na_marker
        self.positions = {name: i for i, name in enumerate(self.fieldnames)}
        self.delimiter = delimiter = chunk_format.delimiter
        self.eol = eol = chunk_format.eol
        self.none_text = _NONE_TEXT[chunk_format.none_as]
        self.getters = [operator.itemgetter(name) for name in self.fieldnames]
        self.needs_quotes = re.compile(f'["\r\n{re.escape(delimiter)}]')
        self.converters: dict[type, Callable[[Any], str]] = {type(None): self._none}
        # The type each column held in the last batch: the next batch tries its converter first.
        self.kinds: list[type | None] = [None] * len(self.fieldnames)
        self.warned: set[str] = set()
        self.header = self.delimiter.join(self.quote(self.fieldnames)) + eol

    def _none(self, _value: None) -> str:
        return self.none_text

    # -- records to columns -------------------------------------------------------------------------

    def columns(self, records: list[Any], base: int) -> list[list[Any]]:
        """The batch's values, one list per field, in field order."""
        width = len(self.fieldnames)
        # Fast path: plain dicts holding exactly the fields (same size and every field found).
        if set(map(type, records)) == {dict} and set(map(len, records)) == {width}:
            try:
                return [list(map(getter, records)) for getter in self.getters]
            except KeyError:
                pass
        rows = [self.normalize(record, base + i) for i, record in enumerate(records)]
        return [list(column) for column in zip(*rows, strict=True)]

    def normalize(self, record: Any, index: int) -> list[Any]:
        """One record's values in field order: relationships flattened, missing fields empty."""
        if not isinstance(record, Mapping):
            raise InputError(
                f"record {index} is a {type(record).__name__}, expected a dict of field name to value",
                record_index=index,
            )
        # A missing field is "" (left empty) even when None means #N/A.
        values: list[Any] = [""] * len(self.fieldnames)
        seen = [False] * len(self.fieldnames)
        for key, value in record.items():
            column = key
            if isinstance(value, Mapping):
                column, value = self.relationship(key, value, index)
            position = self.positions.get(column)
            if position is None:
                hint = f" (from the nested dict under {key!r})" if column != key else ""
                raise InputError(
                    f"record {index} has the field {column!r}{hint}, which is not in fieldnames "
                    f"{self.fieldnames!r}",
                    record_index=index,
                    field=column,
                )
            if seen[position]:
                raise InputError(
                    f"record {index} gives the column {column!r} twice (as a flat key and as a relationship)",
                    record_index=index,
                    field=column,
                )
            seen[position] = True
            values[position] = value
        return values

    def relationship(self, key: Any, value: Mapping[Any, Any], index: int) -> tuple[str, Any]:
        """The column name and value of a relationship given as ``{key: {subkey: value}}``."""
        if len(value) != 1:
            raise InputError(
                f"record {index}, field {key!r}: a relationship must be a dict with exactly one key "
                f"(the related object's external ID field), got {len(value)} keys",
                record_index=index,
                field=str(key),
            )
        ((subkey, inner),) = value.items()
        if isinstance(inner, Mapping):
            raise InputError(
                f"record {index}, field {key!r}: relationships nest one level only "
                f"({key}.{subkey} holds another dict)",
                record_index=index,
                field=str(key),
            )
        name = str(key)
        if name.lower().endswith("__c"):
            # As the reference does: a custom lookup field's relationship name ends in __r.
            corrected = f"{name[:-1]}r"
            if name not in self.warned:
                self.warned.add(name)
                warnings.warn(
                    f"Relationships for custom fields must end with '__r'. '{name}' was corrected to "
                    f"'{corrected}'.",
                    UserWarning,
                    stacklevel=5,
                )
            name = corrected
        return f"{name}.{subkey}", inner

    # -- values to text -----------------------------------------------------------------------------

    def convert(self, column: list[Any], position: int, base: int) -> list[str]:
        """The column's values as CSV fields (converted and quoted)."""
        kind = self.kinds[position]
        # Try the converter of the column's type in the previous batch: it usually still fits,
        # and these maps fail with TypeError on any other type.
        if kind is str:
            try:
                return self.quote(column, position, base)
            except TypeError:
                pass
        elif kind is float:
            try:
                return self._floats(column, list(map(_float_repr, column)), position, base)
            except TypeError:
                pass
        kinds = set(map(type, column))
        kind = kinds.pop() if len(kinds) == 1 else None
        self.kinds[position] = kind
        if kind is str:
            return self.quote(column, position, base)
        if kind is float:
            return self._floats(column, list(map(_float_repr, column)), position, base)
        if kind is bool:
            return list(map(_BOOL_TEXT.__getitem__, map(_bool_repr, column)))
        if kind is int:
            return list(map(_int_repr, column))
        if kind is date:
            return list(map(date.isoformat, column))
        if kind is type(None):
            return [self.none_text] * len(column)
        # Mixed or rarer types: value by value, then quoted in case a str was among them.
        return self.quote(self._each(column, position, base))

    def _floats(self, column: list[Any], texts: list[str], position: int, base: int) -> list[str]:
        joined = "".join(texts)
        if "n" in joined:  # nan or inf: let the slow path name the record
            return self._each(column, position, base)
        if "e" in joined:
            for i in compress(range(len(texts)), map(operator.contains, texts, repeat("e"))):
                texts[i] = format(Decimal(texts[i]), "f")
        return texts

    def _each(self, column: list[Any], position: int, base: int) -> list[str]:
        converters = self.converters
        texts = []
        for offset, value in enumerate(column):
            if isinstance(value, str) and not self.allow_na_marker and str.__str__(value) == _NA_MARKER:
                raise self._na_marker(position, base + offset)
            try:
                converter = converters.get(type(value))
                if converter is None:
                    converter = converters[type(value)] = _resolve_converter(type(value))
                texts.append(converter(value))
            except _BadValue as exc:
                field = self.fieldnames[position]
                if isinstance(value, Mapping):
                    # A relationship under a key that is itself a column: report it as the slow path does.
                    self.normalize({field: value}, base + offset)
                raise InputError(
                    f"record {base + offset}, field {field!r}: {exc}", record_index=base + offset, field=field
                ) from None
        return texts

    def _na_marker(self, position: int, index: int) -> InputError:
        field = self.fieldnames[position]
        return InputError(
            f"record {index}, field {field!r}: the value is the text {_NA_MARKER!r}, which Salesforce takes "
            f"as 'set this field to null'; to null a field pass None with none_as='null', or pass "
            "allow_na_marker=True if the text is meant to null it",
            record_index=index,
            field=field,
        )

    def quote(self, column: list[Any], position: int = -1, base: int = 0) -> list[str]:
        """Quote the values holding a quote, CR, LF or the delimiter; TypeError if one is not a str.

        With ``position`` (the column's) given, the raw values are checked for the null marker.
        """
        joined = "".join(column)
        # The substring search is one C pass; only a hit pays for the search of the value.
        if position >= 0 and _NA_MARKER in joined and not self.allow_na_marker and _NA_MARKER in column:
            raise self._na_marker(position, base + column.index(_NA_MARKER))
        if self.needs_quotes.search(joined) is not None:
            column = list(column)
            ends = list(accumulate(map(len, column)))
            # Each special character's offset in the joined text tells which value holds it.
            for i in dict.fromkeys(
                map(bisect_right, repeat(ends), map(_match_start, self.needs_quotes.finditer(joined)))
            ):
                column[i] = '"' + column[i].replace('"', '""') + '"'
        return column

    # -- rows to bytes ------------------------------------------------------------------------------

    def assemble(self, columns: list[list[str]]) -> list[str]:
        """Rows of the given columns, each ending with the line ending."""
        return list(map(str.__add__, map(self.delimiter.join, zip(*columns, strict=True)), repeat(self.eol)))

    def encode(self, rows: list[str], columns: list[list[Any]], base: int) -> tuple[bytes, list[int]]:
        """The rows as UTF-8 and the byte offset of each row's start (plus the end)."""
        text = "".join(rows)
        try:
            data = text.encode()
        except UnicodeEncodeError:
            raise self._locate(columns, base, "a lone surrogate, which UTF-8 cannot encode") from None
        if b"\x00" in data:
            raise self._locate(columns, base, "a NUL character, which Salesforce does not accept")
        if len(data) == len(text):
            sizes: Iterable[int] = map(len, rows)
        else:
            sizes = map(len, map(str.encode, rows))
        return data, list(accumulate(sizes, initial=0))

    def _locate(self, columns: list[list[Any]], base: int, what: str) -> InputError:
        for position, column in enumerate(columns):
            for offset, value in enumerate(column):
                if isinstance(value, str) and ("\x00" in value or not _encodable(value)):
                    field = self.fieldnames[position]
                    return InputError(
                        f"record {base + offset}, field {field!r}: the value holds {what}",
                        record_index=base + offset,
                        field=field,
                    )
        return InputError(f"a record among {base} to {base + len(columns[0]) - 1} holds {what}")

    def batch(self, records: list[Any], base: int) -> tuple[bytes, list[int]]:
        """Serialize records ``base``.. into CSV rows: the bytes and each row's byte offset."""
        columns = self.columns(records, base)
        texts = [self.convert(column, position, base) for position, column in enumerate(columns)]
        if len(texts) == 1 and "" in texts[0]:
            # A lone empty field would be a blank line, which is no record at all.
            texts[0] = ['""' if text == "" else text for text in texts[0]]
        return self.encode(self.assemble(texts), columns, base)


def _encodable(value: str) -> bool:
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


def _check_fieldnames(fieldnames: Collection[str]) -> list[str]:
    if isinstance(fieldnames, (str, bytes)) or not isinstance(fieldnames, Iterable):
        raise InputError(
            f"fieldnames must be a collection of field names, got {type(fieldnames).__name__} {fieldnames!r}",
            field="fieldnames",
        )
    names = list(fieldnames)
    if not names:
        raise InputError("fieldnames is empty: a CSV needs at least one column", field="fieldnames")
    seen: dict[str, str] = {}
    for name in names:
        if not isinstance(name, str) or not name:
            raise InputError(
                f"field names must be non-empty strings, got {name!r} in fieldnames", field="fieldnames"
            )
        # Salesforce field names are case-insensitive, so Name and name are the same column.
        other = seen.setdefault(name.lower(), name)
        if other is not name:
            raise InputError(
                f"fieldnames holds the column {name!r} twice (as {other!r} and {name!r})", field=name
            )
    if len(names) > _MAX_FIELDS:
        raise InputError(
            f"{len(names):_} fields; Salesforce takes at most {_MAX_FIELDS:_} per record", field="fieldnames"
        )
    return names


def _infer_fieldnames(records: list[Any], warned: set[str]) -> list[str]:
    """Column names in first-seen order, relationships flattened (``Account.External_Id__c``)."""
    if set(map(type, records)) == {dict}:
        names: dict[Any, None] = dict.fromkeys(key for record in records for key in record)
        values = (value for record in records for value in record.values())
        if not any(isinstance(value, Mapping) for value in values):
            return list(names)
    probe = _Writer(["_"], DEFAULT_FORMAT)
    probe.warned = warned
    columns: dict[str, None] = {}
    for index, record in enumerate(records):
        if not isinstance(record, Mapping):
            raise InputError(
                f"record {index} is a {type(record).__name__}, expected a dict of field name to value",
                record_index=index,
            )
        for key, value in record.items():
            name = probe.relationship(key, value, index)[0] if isinstance(value, Mapping) else key
            columns.setdefault(name, None)
    return list(columns)


def iter_record_chunks(
    data: Iterable[Mapping[str, Any]],
    fieldnames: Collection[str] | None = None,
    limits: ChunkLimits = DEFAULT_LIMITS,
    chunk_format: ChunkFormat = DEFAULT_FORMAT,
    *,
    sink: ChunkSink | None = None,
) -> Iterator[Chunk]:
    """Serialize records into Bulk API 2.0 ingest CSV chunks, with each chunk's record accounting.

    The same as :func:`serialize_ingest_data` (see there for the rules on data and values), yielding
    :class:`CsvChunk` objects that say which input records each chunk holds, and taking the limits
    and the format as the objects that checked them. The field names are checked when this is
    called; problems in the data are raised while iterating, before the chunk holding the bad record
    is yielded.

    Parameters
    ----------
    data, fieldnames
        As for :func:`serialize_ingest_data`.
    limits : ChunkLimits
        How large a chunk may be (Salesforce's limits by default).
    chunk_format : ChunkFormat
        The CSV dialect and how ``None`` and ``#N/A`` are written (comma, LF, ``None`` empty).
    sink : ChunkSink, optional
        Where each chunk's bytes are written while it is built; by default they are joined in memory
        and each chunk is a :class:`CsvChunk`. A :class:`~.chunk_files.FileSink` gives
        :class:`~.csv_format.StagedChunk` objects and never holds a chunk whole.

    Yields
    ------
    CsvChunk
        In input order; ``first_record_index`` of each is the previous one's plus its ``record_count``.

    Raises
    ------
    InputError
        Bad arguments (raised at once) or bad data (raised while iterating).
    """
    if fieldnames is None:
        if isinstance(data, Iterator):
            warnings.warn(
                "Passing a generator without providing fieldnames causes the entire contents of the "
                "generator to be stored in memory to infer fieldnames. This may result in high memory usage.",
                UserWarning,
                stacklevel=2,
            )
        return _generate_inferred(data, limits, chunk_format, sink)
    writer = _Writer(_check_fieldnames(fieldnames), chunk_format)
    _check_header(writer, limits.max_size_bytes)
    return _generate(writer, iter(data), limits, sink)


def _check_header(writer: _Writer, max_size_bytes: int) -> None:
    if len(writer.header) > _MAX_HEADER_CHARS:
        raise InputError(
            f"the header row is {len(writer.header):_} characters; Salesforce takes at most "
            f"{_MAX_HEADER_CHARS:_}",
            field="fieldnames",
        )
    check_header_fits(len(writer.header.encode()), max_size_bytes)


def _generate_inferred(
    data: Iterable[Mapping[str, Any]], limits: ChunkLimits, chunk_format: ChunkFormat, sink: ChunkSink | None
) -> Iterator[Chunk]:
    records = list(data)
    if not records:
        return
    warned: set[str] = set()
    inferred = _infer_fieldnames(records, warned)
    if not inferred:
        raise InputError("the records hold no fields: a CSV needs at least one column", field="fieldnames")
    writer = _Writer(_check_fieldnames(inferred), chunk_format)
    writer.warned = warned  # one warning per key, not one from inferring and one from writing
    _check_header(writer, limits.max_size_bytes)
    yield from _generate(writer, iter(records), limits, sink)


class ChunkPacker:
    """Packs rows of CSV into chunks within both limits, each chunk starting with the header.

    Serves every writer that turns records into row bytes and offsets a batch at a time (records as
    dicts here, pyarrow batches in :mod:`.arrow_chunks`): :meth:`pack` takes one batch's rows and
    yields each chunk it fills, :meth:`rest` the last partly filled one. The chunk's bytes go to
    ``sink`` as they come (in memory by default; a :class:`~.chunk_files.FileSink` writes them to a
    file, so no chunk is ever held whole).
    """

    def __init__(self, header: bytes, limits: ChunkLimits, sink: ChunkSink | None = None) -> None:
        self.header = header
        self.max_size_bytes = limits.max_size_bytes
        self.max_records = limits.max_records
        self.sink: ChunkSink = sink if sink is not None else MemorySink()
        self.started = False
        self.size = len(header)  # bytes in the chunk so far
        self.count = 0  # records in the chunk so far
        self.first = 0  # input index of the chunk's first record

    def pack(self, data: bytes | memoryview, offsets: Sequence[int], base: int) -> Iterator[Chunk]:
        """Add the rows ``data[offsets[i]:offsets[i + 1]]`` (input records ``base``..), yielding each
        chunk they fill."""
        n = len(offsets) - 1
        start = 0
        while start < n:
            # Rows start..end-1 are the most that fit in both limits.
            end = bisect_right(offsets, offsets[start] + self.max_size_bytes - self.size, lo=start) - 1
            end = min(end, start + self.max_records - self.count)
            if end > start:
                if not self.started:
                    self.sink.begin(self.first)
                    self.sink.write(self.header)
                    self.started = True
                self.sink.write(data[offsets[start] : offsets[end]])
                self.size += offsets[end] - offsets[start]
                self.count += end - start
                start = end
            if start < n or self.count == self.max_records:
                if self.count == 0:
                    index = base + start
                    row_size = offsets[start + 1] - offsets[start]
                    raise InputError(
                        f"record {index} is {row_size:_} bytes as CSV; with the {len(self.header):_}-byte "
                        f"header it does not fit in max_size_bytes={self.max_size_bytes:_}",
                        record_index=index,
                    )
                yield self._end()

    def _end(self) -> Chunk:
        chunk = self.sink.end(self.count)
        self.started = False
        self.size = len(self.header)
        self.first += self.count
        self.count = 0
        return chunk

    def rest(self) -> Iterator[Chunk]:
        """The last chunk, when rows are left in it."""
        if self.count:
            yield self._end()


def _generate(
    writer: _Writer, records: Iterator[Any], limits: ChunkLimits, sink: ChunkSink | None = None
) -> Iterator[Chunk]:
    max_size_bytes, max_records = limits.max_size_bytes, limits.max_records
    packer = ChunkPacker(writer.header.encode(), limits, sink)
    base = 0  # input index of the batch's first record
    largest = 0  # largest row seen, in bytes
    while True:
        # Read only as many records as can still fit (judged by the largest row so far), so the
        # input is not read far past the chunk being filled.
        room = min(max_records - packer.count, (max_size_bytes - packer.size) // largest if largest else 1)
        batch = list(islice(records, min(_BATCH, max(room, 1))))
        if not batch:
            break
        data, offsets = writer.batch(batch, base)
        largest = max(largest, max(map(operator.sub, offsets[1:], offsets)))
        yield from packer.pack(data, offsets, base)
        base += len(batch)
    yield from packer.rest()


def serialize_ingest_data(
    data: Iterable[Mapping[str, Any]],
    fieldnames: Collection[str] | None = None,
    max_size_bytes: int = MAX_SIZE_BYTES,
    max_records: int = MAX_RECORDS,
    **options: Unpack[ChunkFormatOptions],
) -> Iterator[bytes]:
    """Serialize records into CSV payloads for Bulk API 2.0 ingest jobs.

    Every record lands in exactly one payload, in input order. Every payload starts with the header
    row, is valid CSV in the given dialect and is within both limits.

    Values are written as Salesforce reads them:

    ============================  =====================================================================
    ``str``                       as is; quoted (inner quotes doubled) when it holds a double quote,
                                  CR, LF or the delimiter. Values are not trimmed by Salesforce, so
                                  spaces are kept and need no quotes. The text ``#N/A`` is refused
                                  (Salesforce would null the field) unless ``allow_na_marker``.
    ``bool``                      ``true`` / ``false``
    ``int`` (any integral type)   decimal digits; numpy integers and other ``__index__`` types too
    ``float``, ``Decimal``        plain decimal notation, never an exponent (``1e-07`` is written
                                  ``0.0000001``), with the digits of the float's ``repr``; ``-0.0``
                                  is written as ``-0.0``, which Salesforce reads as 0. NaN and
                                  infinities are an :class:`InputError`.
    ``datetime``                  ``yyyy-MM-ddTHH:mm:ss.SSS+HH:MM``; a naive datetime is taken as UTC;
                                  an offset with seconds is converted to UTC
    ``date``                      ``yyyy-MM-dd``
    ``None``                      see ``none_as``
    ``{"Rel": {"ExtId": v}}``     the relationship column ``Rel.ExtId`` (a custom ``X__c`` key is
                                  corrected to ``X__r`` with a warning, as the reference does)
    ============================  =====================================================================

    Anything else (``bytes``, lists, ``time``, ...) is an :class:`InputError` naming the record, the
    field and the type. A string holding a NUL character or a lone surrogate (which UTF-8 cannot
    encode) is an :class:`InputError` too.

    Parameters
    ----------
    data : Iterable[Mapping[str, Any]]
        The records, each a mapping of field name to value. With ``fieldnames`` given it is consumed
        lazily: only the records of the chunk being built (and at most one batch beyond it, usually
        one record) are read before the chunk is yielded.
    fieldnames : Collection[str], optional
        The CSV columns, in order (a relationship is named ``Rel.ExtId``). A record key not among
        them is an :class:`InputError`; a missing one is written empty (even with ``none_as="null"``).
        Without them the columns are inferred in first-seen order from all records, which holds the
        whole input in memory (a warning says so when ``data`` is an iterator).
    max_size_bytes : int, optional
        Largest payload in bytes, header and line endings included; at most 100,000,000 (Salesforce's
        limit per job) and more than the header.
    max_records : int, optional
        Most records per payload; at least 1.
    column_delimiter : {"COMMA", "BACKQUOTE", "CARET", "PIPE", "SEMICOLON", "TAB"}, optional
        The job's ``columnDelimiter``.
    line_ending : {"LF", "CRLF"}, optional
        The job's ``lineEnding``.
    none_as : {"empty", "null"}, optional
        ``"empty"`` writes ``None`` as an empty value, which Salesforce ignores (the field keeps its
        value on update); ``"null"`` writes ``#N/A``, which sets the field to null.
    allow_na_marker : bool, optional
        Salesforce reads a value that is exactly ``#N/A`` as "set the field to null", so a string
        value ``"#N/A"`` in the data would silently null the field: it is an :class:`InputError`
        naming the record and the field unless this is True (the data uses the marker on purpose).
        ``None`` with ``none_as="null"`` is the way to null a field either way.

    Yields
    ------
    bytes
        One job's UTF-8 CSV. Empty input yields nothing, so no job is created.

    Raises
    ------
    InputError
        Bad arguments are raised when this is called; bad data while iterating, with
        ``record_index`` (0-based) and ``field`` set: a key not in fieldnames, an unsupported value,
        NaN or infinity, a NUL character, the text ``#N/A`` (see ``allow_na_marker``), a malformed
        relationship, or a record too large for a payload on its own.
    """
    limits = ChunkLimits(max_size_bytes=max_size_bytes, max_records=max_records)
    chunks = iter_record_chunks(data, fieldnames, limits, ChunkFormat.of(**options))
    return (chunk.data for chunk in chunks)
