"""A SQL query's result as Arrow record batches, fetched with ``fetchmany`` in bounded batches.

The query runs on a common-sql connection (any ``DbApiHook``). Its failures are sorted by whose fault
they are, since bad input is never retried and a broken connection is:

- connecting fails: :class:`SqlSourceError` (worth a retry);
- ``execute`` fails: :class:`InputError`. The connection is up; a statement refused at this point is the
  query's, whatever its class (MySQL and SQLite raise ``OperationalError`` for an unknown column);
- a fetch fails: the error's DB-API 2.0 (PEP 249) class decides. ``DataError``, ``ProgrammingError``,
  ``IntegrityError`` and ``NotSupportedError`` are the query's or the data's: :class:`InputError`
  naming the query and how many rows were read. So is an SQLite error whose primary result code is
  ``SQLITE_ERROR`` (a value it cannot compute, such as an integer overflow: SQLite reports those as
  ``OperationalError``, as it does a locked or unreadable database, whose codes differ). Everything
  else (``OperationalError``, ``InterfaceError``, an unclassified error: a lost connection, a lock,
  an I/O error) is :class:`SqlSourceError`: the task fails and Airflow retries it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from airflow_provider_salesforce_bulk.client import InputError
from airflow_provider_salesforce_bulk.client.serialize import value_text

__all__ = ["SqlSourceError", "is_query_fault", "sql_batches"]

Parameters = Mapping[str, Any] | Sequence[Any]
Batches = Callable[[], contextlib.AbstractContextManager[Iterator[Any]]]

#: DB-API 2.0 (PEP 249) errors that are the query's or the data's fault, not the connection's.
_QUERY_FAULTS = frozenset({"DataError", "ProgrammingError", "IntegrityError", "NotSupportedError"})
# SQLite's primary result code of an error in the statement itself (not BUSY, LOCKED, IOERR, ...).
_SQLITE_ERROR = 1


class SqlSourceError(Exception):
    """The database could not be reached or failed while rows were fetched (worth a retry)."""


def is_query_fault(exc: BaseException) -> bool:
    """Whether an error raised while fetching a query's rows is the query's or the data's (see above)."""
    if any(cls.__name__ in _QUERY_FAULTS for cls in type(exc).__mro__):
        return True
    # Python 3.11+ gives sqlite3 errors their result code; the low byte is the primary code.
    code = getattr(exc, "sqlite_errorcode", None)
    return isinstance(code, int) and code & 0xFF == _SQLITE_ERROR


def sql_batches(
    pa: Any,
    sql: str,
    conn_id: str,
    parameters: Parameters | None,
    batch_rows: int,
    allow_empty: bool,
) -> Batches:
    """Passes over the query's result, each running it afresh on a new connection."""

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
                query = _Query(sql, conn_id, parameters, batch_rows, allow_empty)
                yield query.fetch(pa, cursor)
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


class _Query:
    """One run of the query: executed, then fetched batch by batch."""

    def __init__(
        self, sql: str, conn_id: str, parameters: Parameters | None, batch_rows: int, allow_empty: bool
    ) -> None:
        self.sql = sql
        self.conn_id = conn_id
        self.parameters = parameters
        self.batch_rows = batch_rows
        self.allow_empty = allow_empty

    def fetch(self, pa: Any, cursor: Any) -> Iterator[Any]:
        self._execute(cursor)
        names: list[str] | None = None
        base = 0
        while True:
            rows = self._fetchmany(cursor, base)
            if names is None:
                # Read after the first fetch: a server-side cursor describes its columns only then.
                names = self._names(cursor)
            if not rows:
                break
            yield _rows_to_batch(pa, rows, names, base)
            base += len(rows)
        if base == 0 and not self.allow_empty:
            raise InputError(
                f"the query on {self.conn_id!r} returned no rows (pass allow_empty to load nothing instead)",
                field="sql",
            )

    def _execute(self, cursor: Any) -> None:
        try:
            if self.parameters is None:
                cursor.execute(self.sql)
            else:
                cursor.execute(self.sql, self.parameters)
        except Exception as exc:
            # The connection is up: a failing statement is the query's fault, not worth a retry.
            raise InputError(
                f"the query {_shown_query(self.sql)} failed on {self.conn_id!r}: {type(exc).__name__}: {exc}",
                field="sql",
            ) from None

    def _fetchmany(self, cursor: Any, base: int) -> Sequence[Sequence[Any]]:
        try:
            rows: Sequence[Sequence[Any]] = cursor.fetchmany(self.batch_rows)
        except Exception as exc:
            read = f"after {base} rows were read: {type(exc).__name__}: {exc}"
            if is_query_fault(exc):
                # A value the query cannot compute (division by zero, a bad cast) fails every try.
                raise InputError(
                    f"the query {_shown_query(self.sql)} failed on {self.conn_id!r} {read}", field="sql"
                ) from None
            raise SqlSourceError(
                f"fetching the rows of the query {_shown_query(self.sql)} from {self.conn_id!r} failed {read}"
            ) from None
        return rows

    def _names(self, cursor: Any) -> list[str]:
        description = cursor.description
        if not description:
            raise InputError(
                f"the query on {self.conn_id!r} returns no columns (is it a SELECT?)", field="sql"
            )
        return [str(column[0]) for column in description]


def _shown_query(sql: str, limit: int = 200) -> str:
    """The query on one line, cut to ``limit`` characters, quoted for a message."""
    line = " ".join(sql.split())
    return repr(line if len(line) <= limit else line[: limit - 3] + "...")


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
