"""How Salesforce's query result columns become Arrow: their types, and how Arrow reads the CSV.

Needs ``pyarrow`` (imported when first used). Column types come from the object's describe
(:mod:`~airflow_provider_salesforce_bulk.client.describe`):

=====================================================================  ==========================
Salesforce type                                                         Arrow type
=====================================================================  ==========================
string, id, reference, picklist, multipicklist, textarea, email, url,   ``string``
phone, combobox, encryptedstring, anything unknown or unresolved
boolean                                                                 ``bool``
int, long                                                               ``int64``
double, currency, percent                                               ``float64``
date                                                                    ``date32``
datetime                                                                ``timestamp[ms, tz=UTC]``
time                                                                    ``time32[ms]``
=====================================================================  ==========================

Numbers are ``float64`` whatever their scale: Bulk query results write them as Java prints a
double (``9.12260031E8``), so a double holds every value the CSV can carry; a decimal type would
add no precision. Nulls: in Bulk API CSV results an empty field is null (Salesforce stores no
empty strings), so every empty value, quoted or not, becomes null, in text columns too.
"""

from __future__ import annotations

import functools
import importlib
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

from airflow_provider_salesforce_bulk.client.csv_format import COLUMN_DELIMITERS
from airflow_provider_salesforce_bulk.client.describe import FieldDescription
from airflow_provider_salesforce_bulk.client.errors import InputError, UnexpectedResponseError
from airflow_provider_salesforce_bulk.client.models import ColumnDelimiter

__all__ = [
    "ArrowSchema",
    "ArrowType",
    "arrow_schema",
    "arrow_type",
    "conversion_error",
    "csv_options",
    "dictionary_columns",
    "dictionary_option",
    "memory_pool",
    "require_parquet",
    "with_times",
]

ArrowType = Any
"""A ``pyarrow.DataType`` (pyarrow is optional and untyped)."""
ArrowSchema = Any
"""A ``pyarrow.Schema``."""

_FEW_VALUES = frozenset({"picklist", "multipicklist", "combobox", "reference"})
_COLUMN_NUMBER = re.compile(r"In CSV column #(\d+)")


def require_parquet() -> Any:
    """The ``pyarrow`` module with its CSV and Parquet parts; an :class:`InputError` naming
    ``output_format`` when it is missing (checked before any query job)."""
    # importlib keeps pyarrow optional and out of mypy's view (it ships no type information).
    try:
        # pyarrow.compute (only time columns need it) is imported when first needed: building its
        # functions costs more CPU than converting a few thousand records.
        for name in ("pyarrow.csv", "pyarrow.parquet"):
            importlib.import_module(name)
        pyarrow = importlib.import_module("pyarrow")
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise InputError(
            "Parquet output needs pyarrow: install the provider's 'arrow' extra (or pyarrow)",
            field="output_format",
        ) from exc
    return pyarrow


@functools.lru_cache(maxsize=1)
def memory_pool() -> Any:
    """The Arrow memory pool conversions allocate from: jemalloc where pyarrow has it, unless
    ``ARROW_DEFAULT_MEMORY_POOL`` names one (then that one).

    pyarrow's default on Linux is mimalloc, which hands freed pages back to the system and takes them
    again block after block; on a shared virtual machine each round trip (a page fault, a TLB flush
    across the process's threads) cost more system CPU than the whole conversion (measured on a
    500,000-record extract: 0.5-1.4 s of system CPU with mimalloc, about 0.1 s with jemalloc, and a
    third less peak memory).

    pyarrow's jemalloc also purges freed pages at once by default, which on a busy machine cost
    0.3-0.9 s of system CPU on the same extract; its arenas are set to keep them instead (decay
    off: pyarrow's jemalloc serves only callers that ask for it by name, and every extract, or file
    converted alone, ends with ``release_unused``, which hands them all back): 0.07-0.16 s.
    """
    pa = require_parquet()
    if os.environ.get("ARROW_DEFAULT_MEMORY_POOL"):
        return pa.default_memory_pool()
    try:
        # Before the pool's first use: the setting applies to arenas created after it.
        pa.jemalloc_set_decay_ms(-1)
        return pa.jemalloc_memory_pool()
    except NotImplementedError:  # pragma: no cover - a pyarrow built without jemalloc (Windows)
        return pa.default_memory_pool()


def arrow_type(field: FieldDescription | None) -> ArrowType:
    """The Arrow type of a Salesforce field (``string`` for None and for any type not listed)."""
    pa = require_parquet()
    ftype = field.type.lower() if field is not None else "string"
    if ftype == "boolean":
        return pa.bool_()
    if ftype in ("int", "long"):
        return pa.int64()
    if ftype in ("double", "currency", "percent"):
        return pa.float64()
    if ftype == "date":
        return pa.date32()
    if ftype == "datetime":
        return pa.timestamp("ms", tz="UTC")
    if ftype == "time":
        return pa.time32("ms")
    return pa.string()


def arrow_schema(columns: Sequence[str], fields: Mapping[str, FieldDescription | None]) -> ArrowSchema:
    """The Parquet schema of result columns (the CSV header, as written) given their fields."""
    pa = require_parquet()
    return pa.schema([pa.field(name, arrow_type(fields.get(name)), nullable=True) for name in columns])


def csv_options(schema: ArrowSchema, column_delimiter: ColumnDelimiter, times: list[int]) -> tuple[Any, Any]:
    """Arrow's parse and convert options for result CSV: Salesforce's delimiter, every column typed
    from ``schema`` (times read as text: Arrow has no time parser), empty values null."""
    pa = require_parquet()
    parse = pa.csv.ParseOptions(
        delimiter=COLUMN_DELIMITERS.get(column_delimiter, ","),
        newlines_in_values=True,
        # An empty line is a record (one column, null): the rows parsed are the page's count.
        ignore_empty_lines=False,
    )
    convert = pa.csv.ConvertOptions(
        column_types={f.name: (pa.string() if i in times else f.type) for i, f in enumerate(schema)},
        null_values=[""],
        strings_can_be_null=True,
        quoted_strings_can_be_null=True,
        true_values=["true"],
        false_values=["false"],
    )
    return parse, convert


def dictionary_option(use_dictionary: bool | Sequence[str]) -> bool | list[str]:
    if isinstance(use_dictionary, bool):
        return use_dictionary
    return list(use_dictionary)


def dictionary_columns(columns: Sequence[str], fields: Mapping[str, FieldDescription | None]) -> list[str]:
    """The columns worth dictionary-encoding: those whose values come from a short list (picklists,
    references). Hashing every value of a column of unique values (ids, names, numbers) costs more
    CPU than the rest of the Parquet writing and saves nothing."""
    return [name for name in columns if (f := fields.get(name)) is not None and f.type.lower() in _FEW_VALUES]


def with_times(batch: Any, times: list[int], schema: ArrowSchema) -> Any:
    """Salesforce writes times as ``13:30:00.000Z``; Arrow's CSV reader has no time parser.
    ``batch``: a record batch or a table."""
    pa = require_parquet()
    importlib.import_module("pyarrow.compute")
    columns = list(batch.columns)
    pool = memory_pool()
    cast = functools.partial(pa.compute.cast, memory_pool=pool)
    for i in times:
        stamped = pa.compute.binary_join_element_wise("1970-01-01T", columns[i], "", memory_pool=pool)
        try:
            moments = cast(stamped, pa.timestamp("ms", tz="UTC"))
        except pa.ArrowInvalid as exc:
            raise UnexpectedResponseError(f"column {schema.names[i]!r}: not a time: {exc}") from exc
        columns[i] = cast(cast(moments, pa.timestamp("ms")), pa.time32("ms"))
    kind = pa.Table if isinstance(batch, pa.Table) else pa.RecordBatch
    return kind.from_arrays(columns, schema=schema)


def conversion_error(exc: Exception, schema: ArrowSchema, where: str) -> UnexpectedResponseError:
    text = str(exc).strip()
    match = _COLUMN_NUMBER.search(text)
    if match and int(match[1]) < len(schema.names):
        name = schema.names[int(match[1])]
        return UnexpectedResponseError(f"{where}, column {name!r} ({schema.field(name).type}): {text}")
    return UnexpectedResponseError(f"{where}: {text}")
