"""Columnar input as chunk sources: Parquet and Arrow files, DataFrames and tables, SQL query results.

Everything goes through :func:`~airflow_provider_salesforce_bulk.client.iter_arrow_chunks` record
batch by record batch: files are read one row group or record batch at a time, a query is fetched
with ``fetchmany`` in bounded batches, so memory holds one batch and one chunk, never the input.

The operator reads its source twice (validation before any job, then submission) and needs the same
records in the same order both times. A file or an in-memory table gives that by itself; a query
result need not (a query without ORDER BY, or data changing between the passes), and a
RecordBatchReader can be read only once. Those are spooled batch by batch into an Arrow IPC file
in the temporary directory while the first pass reads them; later passes read the spool.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import weakref
from collections.abc import Iterator
from typing import IO, Any

from airflow_provider_salesforce_bulk.client import (
    ChunkFormat,
    ChunkLimits,
    InputError,
    arrow_chunks,
)
from airflow_provider_salesforce_bulk.client.chunk_files import ChunkSink
from airflow_provider_salesforce_bulk.operators.chunk_source import ChunkSource, path_opener
from airflow_provider_salesforce_bulk.operators.source_spec import SourceSpec, file_format_of, is_arrow_data
from airflow_provider_salesforce_bulk.operators.sql_source import Batches, SqlSourceError, sql_batches

# SqlSourceError is raised here too (a query's rows read by a columnar source).
__all__ = ["DEFAULT_BATCH_ROWS", "SqlSourceError", "make_columnar_source"]

#: Rows per record batch read from a file or fetched from a cursor.
DEFAULT_BATCH_ROWS = 10_000


def make_columnar_source(
    spec: SourceSpec,
    *,
    limits: ChunkLimits,
    chunk_format: ChunkFormat,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    spool: bool = True,
) -> ChunkSource:
    """The chunk source of a columnar ``spec``: its Parquet/Arrow file, table or SQL query.

    ``field_mapping`` keeps only the columns it names, renamed and in its order (a column the data
    lacks is an :class:`InputError` when the source is read); ``fieldnames`` is as for
    :func:`~airflow_provider_salesforce_bulk.client.iter_arrow_chunks`. Chunks are cut within
    ``limits`` and written as ``chunk_format`` says; files are read and queries fetched
    ``batch_rows`` rows at a time. A query that returns no row is an :class:`InputError` (usually a
    wrong query or a missed upstream load) unless ``spec.allow_empty``; files and tables may always
    be empty.

    ``spool``: a query result (or a RecordBatchReader) is spooled to a temporary file on the first
    pass so a second pass reads the same rows. A caller that reads the source once (the operator
    stages its chunks instead) turns it off: every pass then runs the query again.

    Raises
    ------
    InputError
        A file that is missing or of no columnar format, ``records`` that are not Arrow data, a
        connection that is not a SQL one, a ``batch_rows`` that is not an int >= 1. Bad data is
        raised when the source is read.
    ImportError
        pyarrow (the ``[arrow]`` extra) or, for ``sql``, the common-sql provider is not installed.
    """
    if isinstance(batch_rows, bool) or not isinstance(batch_rows, int) or batch_rows < 1:
        raise InputError(f"batch_rows must be an int >= 1, got {batch_rows!r}", field="batch_rows")
    pa = arrow_chunks.require_pyarrow()
    batches, description, uri = _batches(pa, spec, batch_rows, spool)
    mapping = dict(spec.field_mapping) if spec.field_mapping else None
    fields = list(spec.fieldnames) if spec.fieldnames is not None else None

    @contextlib.contextmanager
    def chunks(sink: ChunkSink | None = None) -> Iterator[Iterator[Any]]:
        with batches() as stream:
            renamed = _mapped(pa, stream, mapping) if mapping else stream
            yield arrow_chunks.iter_arrow_source_chunks(renamed, fields, limits, chunk_format, sink=sink)

    @contextlib.contextmanager
    def arrow() -> Iterator[Iterator[Any]]:
        with batches() as stream:
            yield _mapped(pa, stream, mapping) if mapping else stream

    return ChunkSource(chunks, description, uri=uri, into_sink=chunks, arrow=arrow, arrow_fieldnames=fields)


def _batches(pa: Any, spec: SourceSpec, batch_rows: int, spool: bool) -> tuple[Batches, str, str | None]:
    """The passes over the spec's record batches, its description and its URI (a file's)."""
    if spec.source is not None:
        return _file_batches(pa, spec.source, spec.source_format, batch_rows)
    if spec.sql is not None:
        assert spec.sql_conn_id is not None  # the spec's check
        produce = sql_batches(pa, spec.sql, spec.sql_conn_id, spec.parameters, batch_rows, spec.allow_empty)
        batches = _spooled(pa, produce) if spool else produce
        return batches, f"SQL query on connection {spec.sql_conn_id!r}", None
    return _table_batches(pa, spec.records, batch_rows, spool), _describe(spec.records), None


def _describe(table: Any) -> str:
    rows = getattr(table, "num_rows", None)
    if rows is None:
        shape = getattr(table, "shape", None)
        rows = shape[0] if isinstance(shape, tuple) and shape else None
    kind = f"{type(table).__module__.split('.')[0]} {type(table).__name__}"
    return f"{kind} of {rows} rows" if rows is not None else kind


def _mapped(pa: Any, batches: Iterator[Any], mapping: dict[str, str]) -> Iterator[Any]:
    """The batches with only the mapped columns, renamed to their Salesforce fields."""
    for batch in batches:
        missing = [column for column in mapping if column not in batch.schema.names]
        if missing:
            raise InputError(
                f"field_mapping names the column {missing[0]!r}, which the source lacks; "
                f"its columns are {batch.schema.names!r}",
                field=missing[0],
            )
        yield pa.RecordBatch.from_arrays(
            [batch.column(column) for column in mapping], names=list(mapping.values())
        )


# -- files -----------------------------------------------------------------------------------------


def _file_batches(
    pa: Any, source: Any, source_format: str | None, batch_rows: int
) -> tuple[Batches, str, str]:
    opener, name = path_opener(source)
    fmt = file_format_of(name, source_format)
    if fmt not in ("parquet", "arrow"):
        raise InputError(
            f"cannot tell the columnar format of source {name!r}: pass source_format='parquet' or 'arrow'",
            field="source_format",
        )
    stream_format = source_format is None and name.lower().endswith(".arrows")

    @contextlib.contextmanager
    def batches() -> Iterator[Iterator[Any]]:
        with opener() as stream:
            if fmt == "parquet":
                yield _parquet_batches(pa, stream, name, batch_rows)
            else:
                yield _ipc_batches(pa, stream, name, stream_format)

    label = "Parquet" if fmt == "parquet" else "Arrow"
    return batches, f"{label} file {name}", name


def _parquet_batches(pa: Any, stream: IO[bytes], name: str, batch_rows: int) -> Iterator[Any]:
    import pyarrow.parquet as pq

    try:
        # Pages written with a CRC are checked on read: a flipped byte is refused, never loaded.
        reader = pq.ParquetFile(stream, page_checksum_verification=True)
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(f"source {name} is not a Parquet file: {exc}", field="source") from None
    return _guarded(pa, _row_group_batches(reader, batch_rows), name)


def _row_group_batches(reader: Any, batch_rows: int) -> Iterator[Any]:
    """The file's batches, one row group's reader at a time.

    One ``iter_batches`` over the whole file keeps every row group's pages it has read until it ends
    (measured with pyarrow 25: live Arrow memory the size of the file), so the peak grew with the
    file; a reader per row group frees them with it, and memory holds one row group.
    """
    for index in range(reader.metadata.num_row_groups):
        yield from reader.iter_batches(batch_size=batch_rows, row_groups=[index])


def _ipc_batches(pa: Any, stream: IO[bytes], name: str, stream_format: bool) -> Iterator[Any]:
    if not stream_format:
        try:
            reader = pa.ipc.open_file(stream)
        except pa.ArrowInvalid:
            stream.seek(0)  # not the file format: try the stream format
        else:
            return _guarded(pa, (reader.get_batch(i) for i in range(reader.num_record_batches)), name)
    try:
        return _guarded(pa, iter(pa.ipc.open_stream(stream)), name)
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(
            f"source {name} is not an Arrow IPC or Feather file: {exc}", field="source"
        ) from None


def _guarded(pa: Any, batches: Iterator[Any], name: str) -> Iterator[Any]:
    """The batches, a corrupt file as an :class:`InputError` naming it."""
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except (pa.ArrowInvalid, OSError) as exc:
            raise InputError(f"source {name} could not be read: {exc}", field="source") from None
        yield batch


# -- tables in memory ----------------------------------------------------------------------------------


def _table_batches(pa: Any, table: Any, batch_rows: int, spool: bool = True) -> Batches:
    if not is_arrow_data(table):
        raise InputError(
            f"table must be a pyarrow Table or a pandas/polars DataFrame, got {type(table).__name__}",
            field="table",
        )
    if isinstance(table, pa.RecordBatchReader):
        # A reader gives its batches once: spooled on the first pass.
        produce: Batches = lambda: _yielding(iter(table))  # noqa: E731
        return _spooled(pa, produce) if spool else produce

    @contextlib.contextmanager
    def batches() -> Iterator[Iterator[Any]]:
        if isinstance(table, pa.Table):
            yield iter(table.to_batches(max_chunksize=batch_rows))
        else:
            # pandas and polars export a fresh stream on each call.
            try:
                reader = pa.RecordBatchReader.from_stream(table)
            except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
                raise _conversion_error(pa, table, exc) from None
            yield iter(reader)

    return batches


def _conversion_error(pa: Any, table: Any, exc: Exception) -> InputError:
    """An :class:`InputError` naming the column of a DataFrame that Arrow could not convert (one
    mixing types, such as numbers and text), found by converting the columns one by one."""
    columns = getattr(table, "columns", None)
    for name in list(columns) if columns is not None else []:
        try:
            pa.array(table[name])
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as column_exc:
            return InputError(
                f"column {str(name)!r} cannot be converted to one Arrow type (does it mix types, such "
                f"as numbers and text?): {column_exc}; give the column one type, e.g. "
                "df[column].astype(str)",
                field=str(name),
            )
        except Exception:  # noqa: S112 - a column that cannot be selected alone: look at the next
            continue
    return InputError(f"the table cannot be converted to Arrow: {exc}", field="records")


@contextlib.contextmanager
def _yielding(batches: Iterator[Any]) -> Iterator[Iterator[Any]]:
    yield batches


# -- spooling a one-shot stream --------------------------------------------------------------------------


class _Spool:
    """The spool files of a one-shot stream, in order: a new file wherever the batches' types change."""

    def __init__(self) -> None:
        self.paths: list[str] | None = None


def _spooled(pa: Any, produce: Batches) -> Batches:
    """Batches read from ``produce`` once, then from Arrow IPC spool files in the temp directory."""
    spool = _Spool()

    @contextlib.contextmanager
    def batches() -> Iterator[Iterator[Any]]:
        if spool.paths is not None:
            yield _read_spool(pa, spool.paths)
            return
        with produce() as stream:
            yield _spooling(pa, stream, spool)

    return batches


def _read_spool(pa: Any, paths: list[str]) -> Iterator[Any]:
    for path in paths:
        # Read batch by batch into memory freed after use; a memory map would keep the pages it
        # touched resident, and the peak RSS would grow with the result.
        with pa.OSFile(path) as source:
            reader = pa.ipc.open_file(source)
            for i in range(reader.num_record_batches):
                yield reader.get_batch(i)


def _spooling(pa: Any, batches: Iterator[Any], spool: _Spool) -> Iterator[Any]:
    paths: list[str] = []
    writer = None
    schema = None
    complete = False
    try:
        for batch in batches:
            if writer is None or not batch.schema.equals(schema):
                # Rows converted batch by batch may infer other types: each run of one schema in a file.
                if writer is not None:
                    writer.close()
                handle, path = tempfile.mkstemp(prefix="sf-bulk-spool-", suffix=".arrow")
                os.close(handle)
                paths.append(path)
                schema = batch.schema
                writer = pa.ipc.new_file(path, schema)
            writer.write_batch(batch)
            yield batch
        if writer is not None:
            writer.close()
            writer = None
        complete = True
        spool.paths = paths
        # The spool lives as long as the source: removed when the source is collected.
        weakref.finalize(spool, _remove, *paths)
    finally:
        if writer is not None:
            writer.close()
        if not complete:
            _remove(*paths)


def _remove(*paths: str) -> None:
    for path in paths:
        with contextlib.suppress(OSError):
            os.remove(path)
