"""Query result pages as typed Parquet files, converted in bounded batches while they arrive.

Needs ``pyarrow`` (imported when first used); the column types and how Arrow reads Salesforce's
CSV are :mod:`~airflow_provider_salesforce_bulk.client.query_arrow`'s.

A page's CSV is gathered on the event loop into blocks of about ``block_size`` bytes, each cut at its
last line feed (a record cut inside a quoted value goes back to the next block); the extract's
parsing thread parses each block whole (``pyarrow.csv.read_csv``) and writes a few blocks as one row
group, in data pages of :data:`DATA_PAGE_SIZE`, while the loop gathers the next: memory holds a few
blocks whatever the page size. Arrow allocates from jemalloc where pyarrow has it (see
:func:`memory_pool`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import io
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from typing import IO, Any

from airflow_provider_salesforce_bulk.client.csv_format import COLUMN_DELIMITERS, RecordScan, last_record_end
from airflow_provider_salesforce_bulk.client.describe import DescribeCache, describe_columns
from airflow_provider_salesforce_bulk.client.errors import InputError, UnexpectedResponseError
from airflow_provider_salesforce_bulk.client.models import ColumnDelimiter, JobInfo
from airflow_provider_salesforce_bulk.client.page_check import PageCheck, check_distinct_pages
from airflow_provider_salesforce_bulk.client.query import BulkQueryClient
from airflow_provider_salesforce_bulk.client.query_arrow import (
    ArrowSchema,
    arrow_schema,
    conversion_error,
    csv_options,
    dictionary_columns,
    dictionary_option,
    memory_pool,
    require_parquet,
    with_times,
)
from airflow_provider_salesforce_bulk.client.query_pages import PageSummary, ResultPage, read_csv_header

__all__ = [
    "DATA_PAGE_SIZE",
    "DEFAULT_BLOCK_SIZE",
    "ConversionPool",
    "copy_results_to_parquet",
    "csv_to_parquet",
    "page_to_parquet",
]

#: CSV bytes parsed per batch (one Parquet row group each).
DEFAULT_BLOCK_SIZE = 1 << 20
#: Blocks of a result page written as one Parquet row group. Each row group costs the writer buffers
#: of its own, which pyarrow allocates from the default pool whatever pool it is given (mimalloc on
#: Linux, whose handing pages back and taking them again cost more system CPU than the conversion);
#: parsing stays a block at a time (cache-sized), writing a few at a time.
_BLOCKS_PER_ROW_GROUP = 4
#: Bytes of encoded values per Parquet data page (pyarrow's default is 1 MiB). The writer's encoders
#: grow each page's buffer by doubling, from pyarrow's default pool whatever pool it is given: buffers
#: of 1-2 MiB come from fresh memory of that pool's arena (mimalloc on Linux, which asks for
#: transparent huge pages), and each fault there zeroes, or compacts memory for, a 2 MiB page. Pages
#: of 64 KiB keep the buffers small enough to be reused from the writer thread's own free lists.
#: Measured on a 500,000-record extract's writes: 0.05-0.34 s of system CPU with 1 MiB pages,
#: 0.00-0.01 s (once 0.13) with 64 KiB; files 2% larger (a page header per 64 KiB), same values.
DATA_PAGE_SIZE = 64 * 1024


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
    _check_block_size(block_size)
    if column_delimiter not in COLUMN_DELIMITERS:
        raise InputError(f"unknown column_delimiter {column_delimiter!r}", field="column_delimiter")
    times = [i for i, f in enumerate(schema) if pa.types.is_time(f.type)]
    parse_options, convert_options = csv_options(schema, column_delimiter, times)
    pool = memory_pool()
    try:
        reader = pa.csv.open_csv(
            source,
            read_options=pa.csv.ReadOptions(block_size=block_size, use_threads=False),
            parse_options=parse_options,
            convert_options=convert_options,
            memory_pool=pool,
        )
    except pa.ArrowInvalid as exc:
        raise conversion_error(exc, schema, where) from exc
    if reader.schema.names != schema.names:
        raise UnexpectedResponseError(
            f"{where}: header {reader.schema.names} differs from the expected columns {schema.names}"
        )
    counting = _Counting(sink)
    rows = 0
    writer = pa.parquet.ParquetWriter(
        counting,
        schema,
        compression=compression,
        use_dictionary=dictionary_option(use_dictionary),
        data_page_size=DATA_PAGE_SIZE,
        memory_pool=pool,
    )
    try:
        while True:
            try:
                batch = reader.read_next_batch()
            except StopIteration:
                break
            except pa.ArrowInvalid as exc:
                raise conversion_error(exc, schema, where) from exc
            if times:
                batch = with_times(batch, times, schema)
            writer.write_batch(batch)
            rows += batch.num_rows
    finally:
        writer.close()
        # Arrow's allocator keeps freed blocks for reuse; handing them back after each file keeps
        # the process's peak from creeping up with the number of files (measured: 1.15x -> 1.03x
        # from 200,000 to 1,000,000 records).
        release = getattr(pool, "release_unused", None)
        if release is not None:
            release()
    return rows, counting.count


def _check_block_size(block_size: int) -> None:
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1024:
        raise InputError(f"block_size must be at least 1024 bytes, got {block_size!r}", field="block_size")


# -- pages ------------------------------------------------------------------------------------------


def _runs_to_the_end(table: Any) -> bool:
    """Whether the last value of ``table``, parsed from bytes ending in a line feed, ends in a line
    feed: a quoted value the bytes leave open runs on to their end (or a value really ends so)."""
    pa = require_parquet()
    if not table.num_rows:
        return False
    column = table.column(table.num_columns - 1)
    if not pa.types.is_string(column.type):
        return False
    value = column[table.num_rows - 1].as_py()
    return isinstance(value, str) and value.endswith("\n")


class ConversionPool:
    """What the pages of one extract convert with, kept from one page for the next: the buffers
    they gather their bytes in, and the one thread that parses them (used from the event loop only).

    Gathering into fresh memory block after block, and parsing on a new thread per page, made the
    system hand the process new pages for every megabyte (each new thread draws on fresh allocator
    arenas), and two threads parsing at once made it flush both cores' address caches at each page
    handed back: on a shared virtual machine that cost more CPU than parsing the bytes. Measured on
    a 500,000-record extract of 2 pages at a time: 0.8-1.2 s of CPU with a new thread per page,
    0.8-1.1 s with two kept, 0.64-0.68 s with one kept, as here: one thread parses about
    100 MB of CSV a second, more than a page download brings. A page in flight holds two buffers
    of ``2 x block_size`` (grown only for a record longer than that) and blocks queue on the
    pool's thread in turn. :meth:`close` ends the thread and hands Arrow's freed memory back
    to the system.
    """

    def __init__(self, block_size: int = DEFAULT_BLOCK_SIZE) -> None:
        _check_block_size(block_size)
        self.block_size = block_size
        self._buffers: list[bytearray] = []
        self._thread: concurrent.futures.ThreadPoolExecutor | None = None

    def take_buffer(self) -> bytearray:
        return self._buffers.pop() if self._buffers else bytearray(2 * self.block_size)

    def give_buffer(self, buffer: bytearray) -> None:
        self._buffers.append(buffer)

    def thread(self) -> concurrent.futures.ThreadPoolExecutor:
        """The thread every page converts on, started when first needed."""
        if self._thread is None:
            self._thread = concurrent.futures.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="parquet-page"
            )
        return self._thread

    def close(self) -> None:
        """End the thread (work queued on it still runs) and release the memory kept."""
        thread, self._thread, self._buffers = self._thread, None, []
        if thread is not None:
            thread.shutdown(wait=False)
        # Arrow's allocator keeps freed blocks for reuse (see memory_pool); handing them back after
        # each extract keeps the process's peak from creeping up with the number of extracts.
        release = getattr(memory_pool(), "release_unused", None)
        if release is not None:
            release()


class _Blocks:
    """A page's bytes gathered into two buffers in turn: one fills on the event loop while the
    other is parsed."""

    def __init__(self, pool: ConversionPool) -> None:
        self._pool = pool
        self._buffers = [pool.take_buffer(), pool.take_buffer()]
        self._current = 0
        self.size = 0

    def release(self) -> None:
        """Give the buffers back to the pool (neither may be in use any more)."""
        buffers, self._buffers = self._buffers, []
        for buffer in buffers:
            self._pool.give_buffer(buffer)

    def add(self, chunk: bytes | memoryview) -> None:
        buffer = self._buffers[self._current]
        end = self.size + len(chunk)
        if end > len(buffer):
            grown = bytearray(max(end, 2 * len(buffer)))
            grown[: self.size] = memoryview(buffer)[: self.size]
            self._buffers[self._current] = buffer = grown
        buffer[self.size : end] = chunk  # same length: copied in place
        self.size = end

    def line_end(self) -> int:
        """Where the last line gathered ends (0: none yet): a record end unless that line feed is
        inside a quoted value, which the parser finds out (see :meth:`_PageWriter.convert`)."""
        return self._buffers[self._current].rfind(b"\n", 0, self.size) + 1

    def put_back(self, data: bytes) -> None:
        """``data`` (the start of a record a block ended inside) goes before the bytes gathered since."""
        if data:
            gathered = bytes(memoryview(self._buffers[self._current])[: self.size])
            self.size = 0
            self.add(data)
            self.add(gathered)

    def cut(self, end: int) -> bytearray:
        """The buffer holding the records up to ``end``; the bytes after it move to the other buffer,
        which gathers from then on (it must not be in use any more)."""
        full, size = self._buffers[self._current], self.size
        self._current ^= 1
        self.size = 0
        if end < size:
            self.add(memoryview(full)[end:size])
        return full


class _PageWriter:
    """One page's CSV (header row removed) to one Parquet file, a block at a time, in a worker thread.

    The event loop gathers the page's chunks into blocks of about ``block_size`` bytes (two buffers
    in turn, see :class:`_Blocks`) and hands each to :meth:`convert` in the pool's worker thread
    while it gathers the next. A block ends at its last line feed, found without counting quotes:
    when that line feed is inside a quoted value, the parser says so (see :meth:`convert`), and the
    block's records end at :func:`~.csv_format.last_record_end` instead; the bytes after a block's last record
    open the next block. Each block is parsed whole from memory
    (``pyarrow.csv.read_csv``, one thread, the columns named and typed from the describe); every
    ``_BLOCKS_PER_ROW_GROUP`` blocks are written as one row group. The worker never waits on the
    loop and the loop never waits on Arrow for more than one block of its page: no thread is left
    blocked on a stream that will not come (as a reader pulling from the loop could be at
    interpreter exit).
    """

    def __init__(
        self,
        sink: IO[bytes],
        schema: ArrowSchema,
        *,
        column_delimiter: ColumnDelimiter,
        compression: str,
        use_dictionary: bool | Sequence[str],
        where: str,
    ) -> None:
        self._pa = require_parquet()
        self._pool = memory_pool()
        self._schema = schema
        self._counting = _Counting(sink)
        self._compression = compression
        self._use_dictionary = dictionary_option(use_dictionary)
        self._where = where
        self._times = [i for i, f in enumerate(schema) if self._pa.types.is_time(f.type)]
        self._parse_options, self._convert = csv_options(schema, column_delimiter, self._times)
        self._writer: Any = None
        self._tables: list[Any] = []
        self.rows = 0

    def convert(self, buffer: bytearray, end: int) -> bytes:
        """Parse and write the records in ``buffer[:end]``, which ends at a line feed; returns the
        bytes after the last record end (empty unless that line feed is inside a quoted value).

        Counting the quotes of every block to find its last record end cost about a tenth of the
        event loop's CPU; the parser reads them anyway. A block cut inside a quoted value is caught
        here whichever way it parses: a last row with too few columns or a value that does not
        convert (Arrow raises), or a last value running on, unterminated, to the block's last byte,
        a line feed. Only then are the quotes counted and the records before the true end parsed (a
        last value that really ends in a line feed costs a count, its table is kept).
        """
        if not end:
            return b""
        # An Arrow buffer over the bytes, sliced without a copy; the table parsed holds no
        # reference to them (Arrow copies the values), so the buffer can be filled again.
        block = self._pa.py_buffer(buffer).slice(0, end)
        failure: Exception | None = None
        try:
            table = self._parse(block)
        except self._pa.ArrowInvalid as exc:
            table, failure = None, exc
        records = end
        if table is None or _runs_to_the_end(table):
            records = last_record_end(buffer, end)
            if records < end:
                table = self._read(block.slice(0, records)) if records else None
            elif failure is not None:
                raise conversion_error(failure, self._schema, self._where) from failure
        if table is not None:
            self._write(self._typed(table))
        return bytes(buffer[records:end])

    def finish(self, buffer: bytearray, end: int) -> tuple[int, int]:
        """The last records, then the file's footer; returns ``(rows, bytes written)``."""
        try:
            if end:
                # The page's end is its last record's: parsed whole, whatever its last value holds.
                self._write(self._read(self._pa.py_buffer(buffer).slice(0, end)))
            self._open()
            self._flush()
        finally:
            self.close()
        return self.rows, self._counting.count

    def close(self) -> None:
        # The memory Arrow keeps is handed back by the pool's close, after the extract's last page:
        # the next page reuses it.
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()

    def _parse(self, block: Any) -> Any:
        """``block`` parsed (time columns as text); Arrow's errors as Arrow raises them."""
        pa = self._pa
        read_options = pa.csv.ReadOptions(
            column_names=self._schema.names,
            use_threads=False,
            # One block for the whole buffer: its end is a record end, so Arrow need not look for one.
            block_size=min(block.size + 1, 1 << 30),
        )
        return pa.csv.read_csv(
            block,
            read_options=read_options,
            parse_options=self._parse_options,
            convert_options=self._convert,
            memory_pool=self._pool,
        )

    def _read(self, block: Any) -> Any:
        """``block`` (whole records) parsed and typed; an error names the column."""
        try:
            table = self._parse(block)
        except self._pa.ArrowInvalid as exc:
            raise conversion_error(exc, self._schema, self._where) from exc
        return self._typed(table)

    def _typed(self, table: Any) -> Any:
        return with_times(table, self._times, self._schema) if self._times else table

    def _open(self) -> Any:
        if self._writer is None:
            self._writer = self._pa.parquet.ParquetWriter(
                self._counting,
                self._schema,
                compression=self._compression,
                use_dictionary=self._use_dictionary,
                data_page_size=DATA_PAGE_SIZE,
                memory_pool=self._pool,
            )
        return self._writer

    def _write(self, table: Any) -> None:
        self._tables.append(table)
        self.rows += table.num_rows
        if len(self._tables) >= _BLOCKS_PER_ROW_GROUP:
            self._flush()

    def _flush(self) -> None:
        """The blocks parsed so far as one row group."""
        tables, self._tables = self._tables, []
        if tables:
            table = tables[0] if len(tables) == 1 else self._pa.concat_tables(tables)
            self._open().write_table(table, row_group_size=max(table.num_rows, 1))


async def page_to_parquet(
    page: ResultPage,
    open_sink: Callable[[ResultPage], contextlib.AbstractContextManager[IO[bytes]]],
    schema_for: Callable[[list[str]], Awaitable[ArrowSchema]],
    *,
    column_delimiter: ColumnDelimiter = "COMMA",
    block_size: int = DEFAULT_BLOCK_SIZE,
    compression: str = "snappy",
    use_dictionary: bool | Sequence[str] = True,
    pool: ConversionPool | None = None,
) -> PageSummary:
    """Convert one page to one Parquet file in ``open_sink(page)`` (a sync binary writable).

    ``schema_for(header)`` is awaited for the page's Arrow schema. An empty body writes no file.
    The rows parsed (counted by the CSV parser, quote-aware: an empty line is a record) are
    checked against the page's ``Sforce-NumberOfRecords``; the bytes are not scanned a second time.
    ``pool``: the buffers and threads the page converts with (the pages of one extract share one,
    closed by its owner after the last page; its ``block_size`` then overrides ``block_size``);
    when None, a pool of the page's own, closed when it is done.
    """
    _check_block_size(block_size)
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
        header_end = RecordScan().first_end(first)
        body = first[header_end:] if header_end is not None else b""
        with open_sink(page) as sink:
            writer = _PageWriter(
                sink,
                schema,
                column_delimiter=column_delimiter,
                compression=compression,
                use_dictionary=use_dictionary,
                where=where,
            )
            using = ConversionPool(block_size) if pool is None else pool
            try:
                rows, written = await _write_blocks(writer, body, chunks, using)
            finally:
                if pool is None:
                    using.close()
    finally:
        await chunks.aclose()
    if rows != page.records:
        raise UnexpectedResponseError(
            f"{where} parsed into {rows} rows, but Salesforce counts {page.records} records"
        )
    return PageSummary(page.number, page.locator, rows, written, check.fingerprint(rows))


async def _write_blocks(
    writer: _PageWriter, first: bytes, chunks: AsyncIterator[bytes], pool: ConversionPool
) -> tuple[int, int]:
    """Feed ``writer`` blocks of ``first`` and ``chunks`` (one converting while the next arrives);
    its rows and bytes.

    Every block of a page is converted on one thread of the pool (see :class:`ConversionPool`):
    Arrow's allocators keep memory per thread, and a file's buffers allocated on one thread and
    freed on another cost more system CPU than the conversion."""
    loop = asyncio.get_running_loop()
    thread = pool.thread()
    block_size = pool.block_size
    blocks = _Blocks(pool)
    blocks.add(first)
    # A block is cut once it holds block_size bytes and a line end; a line longer than that is
    # waited for a block_size further each time, not rescanned at every chunk.
    cut_at = block_size
    converting: asyncio.Future[Any] | None = None
    try:
        async for chunk in chunks:
            blocks.add(chunk)
            if blocks.size < cut_at:
                continue
            if converting is not None:
                # The other buffer is free once its block is written; the start of a record the
                # block was cut inside comes back to go first in the next one.
                blocks.put_back(await converting)
                converting = None
            end = blocks.line_end()
            if not end:
                cut_at = blocks.size + block_size
                continue
            converting = loop.run_in_executor(thread, writer.convert, blocks.cut(end), end)
            cut_at = block_size
        if converting is not None:
            blocks.put_back(await converting)
        end = blocks.size
        converting = loop.run_in_executor(thread, writer.finish, blocks.cut(end), end)
        result: tuple[int, int] = await converting
        return result
    except BaseException:
        # A worker thread cannot be cancelled: let it end before the sink is closed under it.
        if converting is not None and not converting.done():
            await asyncio.wait({converting})
        converting = loop.run_in_executor(thread, writer.close)
        await asyncio.wait({converting})
        raise
    finally:
        if converting is None or converting.done():
            # The thread is idle and done with the buffers (not so only if cancelled twice).
            blocks.release()


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
    pool = ConversionPool(block_size)

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
            pool=pool,
        )

    try:
        pages = await client.for_each_result_page(
            job, convert, max_records=max_records, concurrency=concurrency, parallel=parallel
        )
    finally:
        pool.close()
    check_distinct_pages(job.id, ((p.number, p.fingerprint) for p in pages))
    return pages
