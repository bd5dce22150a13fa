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
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import IO, Any

from airflow_provider_salesforce_bulk import client
from airflow_provider_salesforce_bulk.client import (
    ChunkFormat,
    ChunkLimits,
    ChunkSink,
    InputError,
    value_text,
)
from airflow_provider_salesforce_bulk.operators.chunk_source import ChunkSource, path_opener

__all__ = ["COLUMNAR_FORMATS", "SqlSourceError", "columnar_format", "is_arrow_data", "make_columnar_source"]

COLUMNAR_FORMATS = ("parquet", "arrow")
_EXTENSIONS = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".arrow": "arrow",
    ".feather": "arrow",
    ".ipc": "arrow",
    ".arrows": "arrow",
}
#: Rows per record batch read from a file or fetched from a cursor.
DEFAULT_BATCH_ROWS = 10_000

Batches = Callable[[], contextlib.AbstractContextManager[Iterator[Any]]]


class SqlSourceError(Exception):
    """The database could not be reached or failed while rows were fetched (worth a retry)."""


def columnar_format(source: Any, source_format: str | None) -> str | None:
    """``parquet`` or ``arrow`` when ``source`` is such a file (by ``source_format`` or its name)."""
    if source is None:
        return None
    if source_format:
        fmt = source_format.lower()
        return fmt if fmt in COLUMNAR_FORMATS else None
    name = str(source).lower()
    for extension, fmt in _EXTENSIONS.items():
        if name.endswith(extension):
            return fmt
    return None


def is_arrow_data(value: Any) -> bool:
    """Whether ``value`` is tabular Arrow data: a pyarrow Table, a pandas or polars DataFrame, ..."""
    return hasattr(value, "__arrow_c_stream__") and not isinstance(value, (str, bytes, Mapping))


def make_columnar_source(
    *,
    source: Any = None,
    source_format: str | None = None,
    table: Any = None,
    sql: str | None = None,
    sql_conn_id: str | None = None,
    parameters: Mapping[str, Any] | Sequence[Any] | None = None,
    field_mapping: Mapping[str, str] | None = None,
    fieldnames: Sequence[str] | None = None,
    limits: ChunkLimits,
    chunk_format: ChunkFormat,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    allow_empty: bool = False,
    spool: bool = True,
) -> ChunkSource:
    """The chunk source for exactly one of a file, a table and a SQL query.

    Parameters
    ----------
    source : str, os.PathLike or ObjectStoragePath
        A Parquet or Arrow IPC/Feather file (local or any ObjectStoragePath scheme).
    source_format : {"parquet", "arrow"}, optional
        The file's format; by default from its extension (``.parquet``/``.pq``;
        ``.arrow``/``.feather``/``.ipc``, or ``.arrows`` for the IPC stream format).
    table : pyarrow Table, RecordBatch, RecordBatchReader, pandas or polars DataFrame
        Data in memory; anything with ``__arrow_c_stream__``.
    sql, sql_conn_id, parameters
        A query run on the connection ``sql_conn_id``, whose hook must be a common-sql ``DbApiHook``;
        ``parameters`` are passed to ``cursor.execute``. Column names come from the cursor.
    field_mapping : Mapping[str, str], optional
        Source column to Salesforce field: only these columns are loaded, renamed and in this order.
        A source column it names that the data lacks is an :class:`InputError` before any job.
    fieldnames : Sequence[str], optional
        As for :func:`~airflow_provider_salesforce_bulk.client.iter_arrow_chunks`.
    limits : ChunkLimits
        How large a chunk may be.
    chunk_format : ChunkFormat
        How the values are written (``allow_na_marker`` lets a text value be the literal ``#N/A``).
    batch_rows : int
        Rows per record batch read from a file or fetched from the database.
    allow_empty : bool
        Without it, a query that returns no row is an :class:`InputError` (usually a wrong query or a
        missed upstream load); with it the load is simply empty. Files and tables may always be empty.
    spool : bool
        Spool a query result (or a RecordBatchReader) to a temporary file on the first pass so a
        second pass reads the same rows. A caller that reads the source once (the operator stages
        its chunks instead) turns it off: every pass then runs the query again.

    Raises
    ------
    InputError
        Not exactly one input, an unknown format, a missing file, a connection that is not a SQL one,
        a bad ``field_mapping``. Bad data is raised when the source is read.
    ImportError
        pyarrow (the ``[arrow]`` extra) or, for ``sql``, the common-sql provider is not installed.
    """
    given = [
        name for name, value in (("source", source), ("table", table), ("sql", sql)) if value is not None
    ]
    if len(given) != 1:
        raise InputError(
            f"give exactly one of source, table and sql, got {', '.join(given) or 'none'}",
            field=given[-1] if given else "source",
        )
    if isinstance(batch_rows, bool) or not isinstance(batch_rows, int) or batch_rows < 1:
        raise InputError(f"batch_rows must be an int >= 1, got {batch_rows!r}", field="batch_rows")
    mapping = _check_mapping(field_mapping)
    pa = client.require_pyarrow()
    if source is not None:
        batches, description, uri = _file_batches(pa, source, source_format, batch_rows)
    elif table is not None:
        batches, description, uri = _table_batches(pa, table, batch_rows, spool), _describe(table), None
    else:
        if not sql_conn_id:
            raise InputError("sql needs sql_conn_id, the connection to run it on", field="sql_conn_id")
        if not isinstance(sql, str) or not sql.strip():
            raise InputError("sql must be a non-empty query", field="sql")
        produce = _sql_batches(pa, sql, sql_conn_id, parameters, batch_rows, allow_empty)
        batches = _spooled(pa, produce) if spool else produce
        description, uri = f"SQL query on connection {sql_conn_id!r}", None
    fields = list(fieldnames) if fieldnames is not None else None

    @contextlib.contextmanager
    def chunks(sink: ChunkSink | None = None) -> Iterator[Iterator[Any]]:
        with batches() as stream:
            renamed = _mapped(pa, stream, mapping) if mapping else stream
            yield client.iter_arrow_source_chunks(renamed, fields, limits, chunk_format, sink=sink)

    return ChunkSource(chunks, description, uri=uri, into_sink=chunks)


def _describe(table: Any) -> str:
    rows = getattr(table, "num_rows", None)
    if rows is None:
        shape = getattr(table, "shape", None)
        rows = shape[0] if isinstance(shape, tuple) and shape else None
    kind = f"{type(table).__module__.split('.')[0]} {type(table).__name__}"
    return f"{kind} of {rows} rows" if rows is not None else kind


def _check_mapping(field_mapping: Mapping[str, str] | None) -> dict[str, str]:
    if field_mapping is None:
        return {}
    if not isinstance(field_mapping, Mapping) or not field_mapping:
        raise InputError(
            "field_mapping must be a non-empty dict of source column to Salesforce field",
            field="field_mapping",
        )
    targets: dict[str, str] = {}
    for column, target in field_mapping.items():
        if not isinstance(column, str) or not isinstance(target, str) or not column or not target:
            raise InputError(
                f"field_mapping must map column names to field names (strings), got {column!r}: {target!r}",
                field="field_mapping",
            )
        other = targets.setdefault(target.lower(), column)
        if other != column:
            raise InputError(
                f"field_mapping maps both {other!r} and {column!r} to the field {target!r}",
                field="field_mapping",
            )
    return dict(field_mapping)


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
    fmt = columnar_format(name, source_format)
    if fmt is None:
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


# -- SQL ---------------------------------------------------------------------------------------------------


def _sql_batches(
    pa: Any,
    sql: str,
    conn_id: str,
    parameters: Mapping[str, Any] | Sequence[Any] | None,
    batch_rows: int,
    allow_empty: bool,
) -> Batches:
    @contextlib.contextmanager
    def batches() -> Iterator[Iterator[Any]]:
        hook = _sql_hook(conn_id)
        try:
            conn = hook.get_conn()
        except Exception as exc:
            raise SqlSourceError(
                f"connection {conn_id!r}: could not connect ({type(exc).__name__}: {exc})"
            ) from None
        try:
            cursor = _cursor(hook, conn)
            try:
                yield _fetch(pa, cursor, sql, conn_id, parameters, batch_rows, allow_empty)
            finally:
                with contextlib.suppress(Exception):
                    cursor.close()
        finally:
            with contextlib.suppress(Exception):
                conn.close()

    return batches


def _sql_hook(conn_id: str) -> Any:
    try:
        from airflow.providers.common.sql.hooks.sql import DbApiHook
    except ImportError as exc:
        raise ImportError("a sql source needs apache-airflow-providers-common-sql") from exc
    from airflow.sdk import BaseHook

    try:
        hook = BaseHook.get_connection(conn_id).get_hook()  # type: ignore[no-untyped-call]
    except Exception as exc:
        raise InputError(
            f"sql_conn_id {conn_id!r}: no usable connection ({type(exc).__name__}: {exc})",
            field="sql_conn_id",
        ) from None
    if not isinstance(hook, DbApiHook):
        raise InputError(
            f"sql_conn_id {conn_id!r} has the hook {type(hook).__name__}, which is not a SQL (DbApiHook) "
            "connection",
            field="sql_conn_id",
        )
    return hook


def _cursor(hook: Any, conn: Any) -> Any:
    if getattr(hook, "conn_type", None) == "postgres":
        # psycopg's default cursor loads the whole result on execute; a named one streams it.
        with contextlib.suppress(TypeError):
            return conn.cursor(name="salesforce_bulk_source")
    return conn.cursor()


def _fetch(
    pa: Any,
    cursor: Any,
    sql: str,
    conn_id: str,
    parameters: Mapping[str, Any] | Sequence[Any] | None,
    batch_rows: int,
    allow_empty: bool,
) -> Iterator[Any]:
    try:
        if parameters is None:
            cursor.execute(sql)
        else:
            cursor.execute(sql, parameters)
    except Exception as exc:
        # The connection is up: a failing statement is the query's fault, not worth a retry.
        raise InputError(
            f"the query {_shown_query(sql)} failed on {conn_id!r}: {type(exc).__name__}: {exc}", field="sql"
        ) from None
    names: list[str] | None = None
    base = 0
    while True:
        try:
            rows = cursor.fetchmany(batch_rows)
        except Exception as exc:
            if _is_query_fault(exc):
                # A value the query cannot compute (division by zero, a bad cast) fails every try.
                raise InputError(
                    f"the query {_shown_query(sql)} failed on {conn_id!r} after {base} rows were read: "
                    f"{type(exc).__name__}: {exc}",
                    field="sql",
                ) from None
            raise SqlSourceError(
                f"fetching the rows of the query {_shown_query(sql)} from {conn_id!r} failed after {base} "
                f"rows were read: {type(exc).__name__}: {exc}"
            ) from None
        if names is None:
            # Read after the first fetch: a server-side cursor describes its columns only then.
            description = cursor.description
            if not description:
                raise InputError(
                    f"the query on {conn_id!r} returns no columns (is it a SELECT?)", field="sql"
                )
            names = [str(column[0]) for column in description]
        if not rows:
            break
        yield _rows_to_batch(pa, rows, names, base)
        base += len(rows)
    if base == 0 and not allow_empty:
        raise InputError(
            f"the query on {conn_id!r} returned no rows (pass allow_empty to load nothing instead)",
            field="sql",
        )


def _shown_query(sql: str, limit: int = 200) -> str:
    """The query on one line, cut to ``limit`` characters, quoted for a message."""
    line = " ".join(sql.split())
    return repr(line if len(line) <= limit else line[: limit - 3] + "...")


#: DB-API 2.0 (PEP 249) errors that are the query's or the data's fault, not the connection's.
_QUERY_FAULTS = frozenset({"DataError", "ProgrammingError", "IntegrityError", "NotSupportedError"})


def _is_query_fault(exc: BaseException) -> bool:
    return any(cls.__name__ in _QUERY_FAULTS for cls in type(exc).__mro__)


def _rows_to_batch(pa: Any, rows: Sequence[Sequence[Any]], names: list[str], base: int) -> Any:
    columns = list(zip(*rows, strict=True)) if rows else [() for _ in names]
    arrays = []
    for name, values in zip(names, columns, strict=True):
        try:
            arrays.append(pa.array(values))
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, TypeError):
            # Mixed types (SQLite's dynamic typing) or integers past 64 bits: written value by value
            # as the dict path writes them, then as text.
            arrays.append(pa.array(_as_text(values, name, base), pa.string()))
    return pa.RecordBatch.from_arrays(arrays, names=names)


def _as_text(values: Sequence[Any], name: str, base: int) -> list[str | None]:
    texts: list[str | None] = []
    for offset, value in enumerate(values):
        if value is None:
            texts.append(None)
            continue
        try:
            texts.append(value_text(value))
        except Exception as exc:
            raise InputError(
                f"record {base + offset}, field {name!r}: {exc}", record_index=base + offset, field=name
            ) from None
    return texts
