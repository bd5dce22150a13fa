"""Query result pages as typed Parquet files, converted in bounded batches while they arrive.

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

The CSV of a page is parsed by ``pyarrow.csv.open_csv`` in a worker thread, ``block_size`` bytes
at a time, each block written as one row group: memory holds a few blocks whatever the page size.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import importlib
import io
import re
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import IO, Any

from airflow_provider_salesforce_bulk.client.csv_format import COLUMN_DELIMITERS
from airflow_provider_salesforce_bulk.client.describe import DescribeCache, FieldDescription, describe_columns
from airflow_provider_salesforce_bulk.client.errors import InputError, UnexpectedResponseError
from airflow_provider_salesforce_bulk.client.models import ColumnDelimiter, JobInfo
from airflow_provider_salesforce_bulk.client.page_check import PageCheck, check_distinct_pages
from airflow_provider_salesforce_bulk.client.query import BulkQueryClient
from airflow_provider_salesforce_bulk.client.query_pages import PageSummary, ResultPage, read_csv_header

__all__ = [
    "DEFAULT_BLOCK_SIZE",
    "arrow_schema",
    "arrow_type",
    "copy_results_to_parquet",
    "csv_to_parquet",
    "dictionary_columns",
    "page_to_parquet",
]

ArrowType = Any
"""A ``pyarrow.DataType`` (pyarrow is optional and untyped)."""
ArrowSchema = Any
"""A ``pyarrow.Schema``."""

#: CSV bytes parsed per batch (one Parquet row group each).
DEFAULT_BLOCK_SIZE = 1 << 20
_TEXT = frozenset(
    {
        "string",
        "id",
        "reference",
        "picklist",
        "multipicklist",
        "textarea",
        "email",
        "url",
        "phone",
        "combobox",
        "encryptedstring",
    }
)
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


def csv_to_parquet(
    source: IO[bytes],
    sink: IO[bytes],
    schema: ArrowSchema,
    *,
    column_delimiter: ColumnDelimiter = "COMMA",
    block_size: int = DEFAULT_BLOCK_SIZE,
    compression: str = "snappy",
    where: str = "result CSV",
    use_dictionary: bool | Sequence[str] = True,
) -> tuple[int, int]:
    """Convert one result CSV (header row first) to one Parquet file; returns ``(rows, bytes)``.

    ``schema`` names every column of the header in order (see :func:`arrow_schema`); ``where``
    names the input in error messages; ``use_dictionary``: dictionary-encode every column (True),
    none, or the columns named (see :func:`dictionary_columns`).

    Raises
    ------
    UnexpectedResponseError
        The header differs from ``schema``, or a value does not parse as its column's type
        (the message names the column and the value).
    """
    pa = require_parquet()
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1024:
        raise InputError(f"block_size must be at least 1024 bytes, got {block_size!r}", field="block_size")
    delimiter = COLUMN_DELIMITERS.get(column_delimiter)
    if delimiter is None:
        raise InputError(f"unknown column_delimiter {column_delimiter!r}", field="column_delimiter")
    times = [i for i, f in enumerate(schema) if pa.types.is_time(f.type)]
    read_types = {f.name: (pa.string() if i in times else f.type) for i, f in enumerate(schema)}
    try:
        reader = pa.csv.open_csv(
            source,
            read_options=pa.csv.ReadOptions(block_size=block_size, use_threads=False),
            # An empty line is a record (one column, null): the rows parsed are the page's count.
            parse_options=pa.csv.ParseOptions(
                delimiter=delimiter, newlines_in_values=True, ignore_empty_lines=False
            ),
            convert_options=pa.csv.ConvertOptions(
                column_types=read_types,
                null_values=[""],
                strings_can_be_null=True,
                quoted_strings_can_be_null=True,
                true_values=["true"],
                false_values=["false"],
            ),
        )
    except pa.ArrowInvalid as exc:
        raise _conversion_error(exc, schema, where) from exc
    if reader.schema.names != schema.names:
        raise UnexpectedResponseError(
            f"{where}: header {reader.schema.names} differs from the expected columns {schema.names}"
        )
    counting = _Counting(sink)
    rows = 0
    writer = pa.parquet.ParquetWriter(
        counting, schema, compression=compression, use_dictionary=_dictionary_option(use_dictionary)
    )
    try:
        while True:
            try:
                batch = reader.read_next_batch()
            except StopIteration:
                break
            except pa.ArrowInvalid as exc:
                raise _conversion_error(exc, schema, where) from exc
            if times:
                batch = _with_times(batch, times, schema)
            writer.write_batch(batch)
            rows += batch.num_rows
    finally:
        writer.close()
        # Arrow's allocator keeps freed blocks for reuse; handing them back after each file keeps
        # the process's peak from creeping up with the number of files (measured: 1.15x -> 1.03x
        # from 200,000 to 1,000,000 records).
        release = getattr(pa.default_memory_pool(), "release_unused", None)
        if release is not None:
            release()
    return rows, counting.count


def _dictionary_option(use_dictionary: bool | Sequence[str]) -> bool | list[str]:
    if isinstance(use_dictionary, bool):
        return use_dictionary
    return list(use_dictionary)


def dictionary_columns(columns: Sequence[str], fields: Mapping[str, FieldDescription | None]) -> list[str]:
    """The columns worth dictionary-encoding: those whose values come from a short list (picklists,
    references). Hashing every value of a column of unique values (ids, names, numbers) costs more
    CPU than the rest of the Parquet writing and saves nothing."""
    return [name for name in columns if (f := fields.get(name)) is not None and f.type.lower() in _FEW_VALUES]


def _with_times(batch: Any, times: list[int], schema: ArrowSchema) -> Any:
    """Salesforce writes times as ``13:30:00.000Z``; Arrow's CSV reader has no time parser."""
    pa = require_parquet()
    importlib.import_module("pyarrow.compute")
    columns = list(batch.columns)
    for i in times:
        stamped = pa.compute.binary_join_element_wise("1970-01-01T", columns[i], "")
        try:
            moments = pa.compute.cast(stamped, pa.timestamp("ms", tz="UTC"))
        except pa.ArrowInvalid as exc:
            raise UnexpectedResponseError(f"column {schema.names[i]!r}: not a time: {exc}") from exc
        columns[i] = pa.compute.cast(pa.compute.cast(moments, pa.timestamp("ms")), pa.time32("ms"))
    return pa.RecordBatch.from_arrays(columns, schema=schema)


def _conversion_error(exc: Exception, schema: ArrowSchema, where: str) -> UnexpectedResponseError:
    text = str(exc).strip()
    match = _COLUMN_NUMBER.search(text)
    if match and int(match[1]) < len(schema.names):
        name = schema.names[int(match[1])]
        return UnexpectedResponseError(f"{where}, column {name!r} ({schema.field(name).type}): {text}")
    return UnexpectedResponseError(f"{where}: {text}")


# -- pages ------------------------------------------------------------------------------------------


class _Bridge(io.RawIOBase):
    """A blocking reader, for a worker thread, of an async byte stream advanced on its loop."""

    def __init__(self, first: bytes, rest: AsyncIterator[bytes], loop: asyncio.AbstractEventLoop) -> None:
        self._pending = memoryview(first)
        self._rest = rest
        self._loop = loop
        self._done = False
        self._stopped = False
        self._current: concurrent.futures.Future[bytes | None] | None = None
        self.failure: BaseException | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._pending:
            if self._done:
                return 0
            if self._stopped:
                raise OSError("the page's reader was stopped")
            self._current = asyncio.run_coroutine_threadsafe(_next(self._rest), self._loop)
            if self._stopped:
                self._current.cancel()
            try:
                chunk = self._current.result()
            except BaseException as exc:
                self.failure = exc
                raise
            if chunk is None:
                self._done = True
                return 0
            self._pending = memoryview(chunk)
        size = min(len(buffer), len(self._pending))
        buffer[:size] = self._pending[:size]
        self._pending = self._pending[size:]
        return size

    def stop(self) -> None:
        """From the loop: make the worker's next (or current) read fail so its thread ends."""
        self._stopped = True
        if self._current is not None:
            self._current.cancel()


async def _next(chunks: AsyncIterator[bytes]) -> bytes | None:
    try:
        return await chunks.__anext__()
    except StopAsyncIteration:
        return None


async def page_to_parquet(
    page: ResultPage,
    open_sink: Callable[[ResultPage], contextlib.AbstractContextManager[IO[bytes]]],
    schema_for: Callable[[list[str]], Awaitable[ArrowSchema]],
    *,
    column_delimiter: ColumnDelimiter = "COMMA",
    block_size: int = DEFAULT_BLOCK_SIZE,
    compression: str = "snappy",
    use_dictionary: bool | Sequence[str] = True,
) -> PageSummary:
    """Convert one page to one Parquet file in ``open_sink(page)`` (a sync binary writable).

    ``schema_for(header)`` is awaited for the page's Arrow schema. An empty body writes no file.
    The rows parsed (counted by the CSV parser, quote-aware: an empty line is a record) are
    checked against the page's ``Sforce-NumberOfRecords``; the bytes are not scanned a second time.
    """
    delimiter = COLUMN_DELIMITERS.get(column_delimiter, ",")
    where = f"page {page.number} of query job {page.job_id}"
    check = PageCheck(count=False)
    chunks = _checked(page.iter_bytes(), check)
    try:
        columns, first = await read_csv_header(chunks, delimiter)
        if columns is None:
            if page.records:
                raise UnexpectedResponseError(f"{where} is empty but counts {page.records} records")
            return PageSummary(page.number, page.locator, 0, 0)
        schema = await schema_for(columns)
        loop = asyncio.get_running_loop()
        bridge = _Bridge(first, chunks, loop)
        with open_sink(page) as sink:
            work = functools.partial(
                csv_to_parquet,
                io.BufferedReader(bridge, buffer_size=1 << 16),
                sink,
                schema,
                column_delimiter=column_delimiter,
                block_size=block_size,
                compression=compression,
                where=where,
                use_dictionary=use_dictionary,
            )
            converting = loop.run_in_executor(None, work)
            try:
                rows, written = await asyncio.shield(converting)
            except asyncio.CancelledError:
                # The thread cannot be cancelled: stop its reads and let it end before the stream closes.
                bridge.stop()
                await asyncio.wait({converting})
                raise
            except Exception:
                # A failure reading the page (dropped beyond its re-fetches) beats pyarrow's wrapping of it.
                if bridge.failure is not None and not isinstance(
                    bridge.failure, concurrent.futures.CancelledError
                ):
                    raise bridge.failure from None
                raise
    finally:
        await chunks.aclose()
    if rows != page.records:
        raise UnexpectedResponseError(
            f"{where} parsed into {rows} rows, but Salesforce counts {page.records} records"
        )
    return PageSummary(page.number, page.locator, rows, written, check.fingerprint(rows))


async def _checked(chunks: AsyncGenerator[bytes, None], check: PageCheck) -> AsyncGenerator[bytes, None]:
    """``chunks``, each fed to ``check`` on its way (for the page's fingerprint)."""
    try:
        async for chunk in chunks:
            check.feed(chunk)
            yield chunk
    finally:
        await chunks.aclose()


async def copy_results_to_parquet(
    client: BulkQueryClient,
    job_id: str | JobInfo,
    sink_factory: Callable[[ResultPage], contextlib.AbstractContextManager[IO[bytes]]],
    *,
    max_records: int | None = None,
    concurrency: int = 2,
    parallel: bool | None = None,
    block_size: int = DEFAULT_BLOCK_SIZE,
    compression: str = "snappy",
    describe: DescribeCache | None = None,
) -> list[PageSummary]:
    """Write each result page of a JobComplete query job as one typed Parquet file.

    Same paging, order and exactly-once guarantees as :meth:`BulkQueryClient.copy_results_to`;
    one file per page, so ``max_records`` sets the records per file. Types come from the describe
    of the job's object (and of objects its relationship columns lead to), asked once, before any
    page streams, for the columns of a one-record page. Memory holds about ``concurrency`` x
    ``block_size`` x a small factor, whatever the number of records.
    """
    require_parquet()
    job = await client.finished_job(job_id)
    if not job.object:
        raise UnexpectedResponseError(f"query job {job.id} names no object; its columns cannot be typed")
    # The schema is settled before any page streams: a handler holding a page's request slot never
    # waits for another request (describe), which could deadlock a session with few slots.
    columns = await client.result_columns(job)
    cache = describe or DescribeCache(client.session)
    schema = None
    dictionary: list[str] = []
    if columns is not None:
        fields = await describe_columns(cache, job.object, columns)
        schema = arrow_schema(columns, fields)
        dictionary = dictionary_columns(columns, fields)
    column_delimiter = job.column_delimiter or "COMMA"

    async def schema_for(header: list[str]) -> ArrowSchema:
        if schema is None or header != columns:
            raise UnexpectedResponseError(
                f"a result page of query job {job.id} has the columns {header}, the first page {columns}"
            )
        return schema

    async def convert(page: ResultPage) -> PageSummary:
        return await page_to_parquet(
            page,
            sink_factory,
            schema_for,
            column_delimiter=column_delimiter,
            block_size=block_size,
            compression=compression,
            use_dictionary=dictionary,
        )

    pages = await client.for_each_result_page(
        job, convert, max_records=max_records, concurrency=concurrency, parallel=parallel
    )
    check_distinct_pages(job.id, ((p.number, p.fingerprint) for p in pages))
    return pages
