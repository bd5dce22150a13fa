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

A page's CSV is cut into blocks of whole records of about ``block_size`` bytes as it arrives; each
block is parsed by Arrow's CSV reader from memory and written as one row group, in a worker thread
while the next block arrives (:mod:`.parquet_blocks`): memory holds a few blocks whatever the page
size, and the rows of every page are counted by the parser that wrote them.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import IO, Any, TypeVar

from airflow_provider_salesforce_bulk.client.csv_format import COLUMN_DELIMITERS
from airflow_provider_salesforce_bulk.client.describe import DescribeCache, FieldDescription, describe_columns
from airflow_provider_salesforce_bulk.client.errors import InputError, UnexpectedResponseError
from airflow_provider_salesforce_bulk.client.models import ColumnDelimiter, JobInfo
from airflow_provider_salesforce_bulk.client.page_check import PageCheck, check_distinct_pages
from airflow_provider_salesforce_bulk.client.parquet_blocks import BlockWriter, cut_blocks, split_block
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

#: CSV bytes parsed per block (one Parquet row group each; a block ends at a record end).
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
_T = TypeVar("_T")


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
    delimiter = _check_options(block_size, column_delimiter)
    writer = BlockWriter(
        pa,
        sink,
        schema,
        delimiter=delimiter,
        compression=compression,
        use_dictionary=use_dictionary,
        where=where,
    )
    try:
        writer.write_all(cut_blocks(iter(functools.partial(source.read, block_size), b""), block_size, where))
        if not writer.header_read:
            raise UnexpectedResponseError(f"{where} is empty: no header row")
    finally:
        written = writer.close()
    return writer.rows, written


def _check_options(block_size: int, column_delimiter: ColumnDelimiter) -> str:
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1024:
        raise InputError(f"block_size must be at least 1024 bytes, got {block_size!r}", field="block_size")
    delimiter = COLUMN_DELIMITERS.get(column_delimiter)
    if delimiter is None:
        raise InputError(f"unknown column_delimiter {column_delimiter!r}", field="column_delimiter")
    return delimiter


def dictionary_columns(columns: Sequence[str], fields: Mapping[str, FieldDescription | None]) -> list[str]:
    """The columns worth dictionary-encoding: those whose values come from a short list (picklists,
    references). Hashing every value of a column of unique values (ids, names, numbers) costs more
    CPU than the rest of the Parquet writing and saves nothing."""
    return [name for name in columns if (f := fields.get(name)) is not None and f.type.lower() in _FEW_VALUES]


# -- pages ------------------------------------------------------------------------------------------


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
    pa = require_parquet()
    delimiter = _check_options(block_size, column_delimiter)
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
        with open_sink(page) as sink:
            writer = BlockWriter(
                pa,
                sink,
                schema,
                delimiter=delimiter,
                compression=compression,
                use_dictionary=use_dictionary,
                where=where,
            )
            try:
                await _write_blocks(first, chunks, writer, block_size, where)
            finally:
                written = await _in_thread(writer.close)
    finally:
        await chunks.aclose()
    if writer.rows != page.records:
        raise UnexpectedResponseError(
            f"{where} parsed into {writer.rows} rows, but Salesforce counts {page.records} records"
        )
    return PageSummary(page.number, page.locator, writer.rows, written, check.fingerprint(writer.rows))


async def _write_blocks(
    first: bytes, chunks: AsyncIterator[bytes], writer: BlockWriter, block_size: int, where: str
) -> None:
    """Hand ``writer`` blocks of whole records, each in a worker thread while the next one arrives.

    The thread cuts the block at its last record end and gives back the bytes after it, which begin
    the next block; memory holds about two blocks. The loop only gathers chunks: joining, cutting,
    parsing and writing happen in the thread, one block at a time.
    """

    def convert(pieces: list[bytes]) -> bytes:
        block, rest = split_block(pieces, where)
        if block is not None:
            writer.write(block)
        return rest

    pending = [first]
    size = len(first)
    rest = b""
    running: asyncio.Future[bytes] | None = None
    try:
        async for chunk in chunks:
            pending.append(chunk)
            size += len(chunk)
            if size < max(block_size, len(rest)):
                continue
            if running is not None:
                rest, running = await _settled(running), None
                if size < len(rest):
                    # No record end in the last block, which came back whole: hand it over again once
                    # as much again has arrived, so that a long record is scanned a bounded number of times.
                    continue
            pieces = [rest, *pending] if rest else pending
            running = asyncio.get_running_loop().run_in_executor(None, convert, pieces)
            rest, pending, size = b"", [], 0
        if running is not None:
            rest, running = await _settled(running), None
    except BaseException:
        if running is not None:
            await asyncio.wait({running})  # the writer is closed next: not while a block is written
        raise
    tail = b"".join([rest, *pending])
    if tail:
        await _in_thread(writer.write, tail)


async def _settled(running: asyncio.Future[_T]) -> _T:
    """The result of work in a thread; if cancelled, return only once the thread is done with it."""
    try:
        return await asyncio.shield(running)
    except asyncio.CancelledError:
        await asyncio.wait({running})
        raise


async def _in_thread(function: Callable[..., _T], *args: Any) -> _T:
    return await _settled(asyncio.get_running_loop().run_in_executor(None, function, *args))


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
