"""SQLite persistence: jobs, uploaded CSV chunks, per-batch results, sessions and each object's records.

One connection serves every thread, guarded by a lock: with ``:memory:`` a second connection would
see a different database, and with a file it keeps writers from tripping over each other. Callers
on the event loop reach the store through a worker thread, never directly.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator
from typing import Any

from .ids import DEFAULT_USER_ID, USER_PREFIX, make_id
from .schema import Field, Schema, SObject
from .timestamps import now_text

_DDL = """
CREATE TABLE IF NOT EXISTS id_counters (prefix TEXT PRIMARY KEY, next INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    object TEXT NOT NULL,
    operation TEXT NOT NULL,
    external_id_field TEXT,
    assignment_rule_id TEXT,
    line_ending TEXT NOT NULL,
    column_delimiter TEXT NOT NULL,
    api_version REAL NOT NULL,
    state TEXT NOT NULL,
    created_by_id TEXT NOT NULL,
    created_date TEXT NOT NULL,
    system_modstamp TEXT NOT NULL,
    upload TEXT NOT NULL DEFAULT 'none',
    upload_bytes INTEGER NOT NULL DEFAULT 0,
    processed INTEGER NOT NULL DEFAULT 0,
    failed INTEGER NOT NULL DEFAULT 0,
    retries INTEGER NOT NULL DEFAULT 0,
    total_processing_time INTEGER NOT NULL DEFAULT 0,
    api_active_processing_time INTEGER NOT NULL DEFAULT 0,
    error_message TEXT
);
CREATE TABLE IF NOT EXISTS upload_chunks (
    job_id TEXT NOT NULL, n INTEGER NOT NULL, data BLOB NOT NULL, PRIMARY KEY (job_id, n)
);
CREATE TABLE IF NOT EXISTS result_batches (
    job_id TEXT NOT NULL, n INTEGER NOT NULL, first_row INTEGER NOT NULL, count INTEGER NOT NULL,
    results BLOB NOT NULL, PRIMARY KEY (job_id, n)
);
CREATE TABLE IF NOT EXISTS sessions (token TEXT PRIMARY KEY, issued_at REAL NOT NULL);
"""


def record_table(obj: SObject) -> str:
    """Name of the SQLite table holding the records of ``obj`` (quoted, ready for SQL)."""
    return f'"rec_{obj.name}"'


def quote(name: str) -> str:
    """Quote an identifier for SQL (schema names are alphanumeric with underscores)."""
    return f'"{name}"'


def _column_type(field: Field) -> str:
    if field.type in {"number", "currency", "percent"}:
        return "INTEGER" if field.scale == 0 else "REAL"
    if field.type == "boolean":
        return "INTEGER"
    return "TEXT"


class Store:
    """The emulator's database.

    Parameters
    ----------
    path
        SQLite file, or ``":memory:"``.
    schema
        The org; a table is created (or extended with new columns) for each object.
    """

    def __init__(self, path: str, schema: Schema) -> None:
        self.path = path
        self.schema = schema
        self.lock = threading.RLock()
        self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._conn.row_factory = sqlite3.Row
        if path != ":memory:":
            self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute("PRAGMA temp_store=MEMORY")
        self._conn.execute("PRAGMA cache_size=-65536")
        for statement in _DDL.split(";"):
            if statement.strip():
                self._conn.execute(statement)
        for obj in schema.objects:
            self._create_record_table(obj)

    def close(self) -> None:
        """Close the connection."""
        with self.lock:
            self._conn.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """Hold the lock and run the block in one transaction, rolled back if it raises."""
        with self.lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def query(self, sql: str, params: tuple[Any, ...] | list[Any] = ()) -> list[sqlite3.Row]:
        """Run a read and return all rows."""
        with self.lock:
            return self._conn.execute(sql, params).fetchall()

    def execute(self, sql: str, params: tuple[Any, ...] | list[Any] = ()) -> sqlite3.Cursor:
        """Start a read whose rows are fetched later, a batch at a time under :attr:`lock`.

        Query jobs scan this way so an extract never holds all its rows at once.
        """
        with self.lock:
            return self._conn.execute(sql, params)

    def _create_record_table(self, obj: SObject) -> None:
        table = record_table(obj)
        columns = [
            "Id TEXT PRIMARY KEY",
            "IsDeleted INTEGER NOT NULL DEFAULT 0",
            "CreatedDate TEXT",
            "LastModifiedDate TEXT",
        ]
        columns += [f"{quote(f.name)} {_column_type(f)}" for f in obj.fields]
        with self.lock:
            self._conn.execute(f"CREATE TABLE IF NOT EXISTS {table} ({', '.join(columns)})")
            existing = {row[1].lower() for row in self._conn.execute(f"PRAGMA table_info({table})")}
            for f in obj.fields:
                if f.name.lower() not in existing:
                    self._conn.execute(f"ALTER TABLE {table} ADD COLUMN {quote(f.name)} {_column_type(f)}")
            for f in obj.fields:
                if f.unique or f.external_id:
                    index = quote(f"idx_{obj.name}_{f.name}")
                    self._conn.execute(f"CREATE INDEX IF NOT EXISTS {index} ON {table} ({quote(f.name)})")

    def seed_user(self, username: str) -> None:
        """Make sure the org's one user exists (the record every ``OwnerId``/``CreatedById`` names).

        Only the User fields the schema has are filled; user numbers of later inserts start past it.
        """
        user = self.schema.get("User")
        if user is None:
            return
        now = now_text()
        wanted = {
            "Username": username,
            "LastName": "User",
            "FirstName": "Integration",
            "Email": username,
            "Alias": "integ",
            "IsActive": 1,
            "CreatedById": DEFAULT_USER_ID,
            "LastModifiedById": DEFAULT_USER_ID,
        }
        values = {user.field(k).name: v for k, v in wanted.items() if user.field(k) is not None}  # type: ignore[union-attr]
        names = ["Id", "IsDeleted", "CreatedDate", "LastModifiedDate", *values]
        marks = ", ".join("?" for _ in names)
        sql = f"INSERT OR IGNORE INTO {record_table(user)} ({', '.join(map(quote, names))}) VALUES ({marks})"  # noqa: S608 - names from the schema
        number = 42
        assert make_id(USER_PREFIX, number) == DEFAULT_USER_ID
        with self.transaction() as conn:
            conn.execute(sql, (DEFAULT_USER_ID, 0, now, now, *values.values()))
            conn.execute(
                "INSERT INTO id_counters (prefix, next) VALUES (?, ?) "
                "ON CONFLICT(prefix) DO UPDATE SET next = MAX(next, excluded.next)",
                (USER_PREFIX, number + 1),
            )

    # -- ids -------------------------------------------------------------------------------------

    def allocate_numbers(self, conn: sqlite3.Connection, prefix: str, count: int) -> int:
        """Reserve ``count`` consecutive record numbers for ``prefix`` and return the first one.

        Must be called inside :meth:`transaction` so a restart never hands out a number twice.
        """
        row = conn.execute("SELECT next FROM id_counters WHERE prefix = ?", (prefix,)).fetchone()
        first = int(row[0]) if row else 1
        conn.execute(
            "INSERT INTO id_counters (prefix, next) VALUES (?, ?) "
            "ON CONFLICT(prefix) DO UPDATE SET next = excluded.next",
            (prefix, first + count),
        )
        return first

    # -- jobs ------------------------------------------------------------------------------------

    # -- job rows (the ingest ``jobs`` table and the query ``query_jobs`` table alike) -------------

    def insert_row(self, table: str, row: dict[str, Any]) -> None:
        """Insert a new row into ``table`` (keys are column names)."""
        names = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        with self.transaction() as conn:
            sql = f"INSERT INTO {table} ({names}) VALUES ({marks})"  # noqa: S608 - names are ours
            conn.execute(sql, tuple(row.values()))

    def get_row(self, table: str, row_id: str) -> dict[str, Any] | None:
        """The row of ``table`` with ``id`` ``row_id`` as a dict, or None."""
        rows = self.query(f"SELECT * FROM {table} WHERE id = ?", (row_id,))  # noqa: S608 - names are ours
        return dict(rows[0]) if rows else None

    def list_rows(self, table: str, offset: int, limit: int) -> list[dict[str, Any]]:
        """One page of ``table``'s rows in creation order."""
        sql = f"SELECT * FROM {table} ORDER BY seq LIMIT ? OFFSET ?"  # noqa: S608 - names are ours
        return [dict(r) for r in self.query(sql, (limit, offset))]

    def transition_row(
        self, table: str, row_id: str, allowed: tuple[str, ...], changes: dict[str, Any]
    ) -> tuple[dict[str, Any] | None, bool]:
        """Atomically apply ``changes`` to a row of ``table`` if its state is one of ``allowed``.

        Returns
        -------
        (row, applied)
            The row after the call (None if unknown) and whether the change was made.
        """
        with self.transaction() as conn:
            row = conn.execute(f"SELECT * FROM {table} WHERE id = ?", (row_id,)).fetchone()  # noqa: S608
            if row is None:
                return None, False
            if row["state"] not in allowed:
                return dict(row), False
            assignments = ", ".join(f"{name} = ?" for name in changes)
            sql = f"UPDATE {table} SET {assignments} WHERE id = ?"  # noqa: S608 - column names are ours
            conn.execute(sql, (*changes.values(), row_id))
            job = dict(row)
            job.update(changes)
            return job, True

    def delete_row_if(
        self, table: str, row_id: str, allowed: tuple[str, ...], children: tuple[str, ...]
    ) -> str:
        """Delete a row of ``table`` and its rows in ``children`` (by ``job_id``) if its state is allowed.

        Returns
        -------
        str
            ``"ok"``, ``"missing"`` or the row's state when it may not be deleted.
        """
        with self.transaction() as conn:
            row = conn.execute(f"SELECT state FROM {table} WHERE id = ?", (row_id,)).fetchone()  # noqa: S608
            if row is None:
                return "missing"
            if row[0] not in allowed:
                return str(row[0])
            conn.execute(f"DELETE FROM {table} WHERE id = ?", (row_id,))  # noqa: S608
            for child in children:
                conn.execute(f"DELETE FROM {child} WHERE job_id = ?", (row_id,))  # noqa: S608
            return "ok"

    def insert_job(self, job: dict[str, Any]) -> None:
        """Insert a new job row (keys are column names)."""
        self.insert_row("jobs", job)

    def get_job(self, job_id: str) -> dict[str, Any] | None:
        """Return the job row as a dict, or None."""
        return self.get_row("jobs", job_id)

    def update_job(self, job_id: str, **changes: Any) -> None:
        """Set columns of a job row."""
        assignments = ", ".join(f"{name} = ?" for name in changes)
        with self.transaction() as conn:
            sql = f"UPDATE jobs SET {assignments} WHERE id = ?"  # noqa: S608 - column names are ours
            conn.execute(sql, (*changes.values(), job_id))

    def transition_job(
        self, job_id: str, allowed: tuple[str, ...], changes: dict[str, Any]
    ) -> tuple[dict[str, Any] | None, bool]:
        """Atomically apply ``changes`` if the job's state is one of ``allowed``: (job after, applied)."""
        return self.transition_row("jobs", job_id, allowed, changes)

    def delete_job_if(self, job_id: str, allowed: tuple[str, ...]) -> str:
        """Delete a job with its data and results if its state is one of ``allowed``: ``ok``, ``missing``
        or the job's state."""
        return self.delete_row_if("jobs", job_id, allowed, ("upload_chunks", "result_batches"))

    def next_id(self, prefix: str) -> int:
        """Reserve one record number for ``prefix``."""
        with self.transaction() as conn:
            return self.allocate_numbers(conn, prefix, 1)

    def list_jobs(self, offset: int, limit: int) -> list[dict[str, Any]]:
        """Return one page of jobs in creation order."""
        return self.list_rows("jobs", offset, limit)

    def jobs_in_states(self, states: tuple[str, ...]) -> list[str]:
        """Ids of jobs in any of ``states``, oldest first."""
        marks = ", ".join("?" for _ in states)
        rows = self.query(f"SELECT id FROM jobs WHERE state IN ({marks}) ORDER BY seq", states)  # noqa: S608 - identifiers from the schema
        return [r[0] for r in rows]

    # -- uploads ---------------------------------------------------------------------------------

    def claim_upload(self, job_id: str) -> str:
        """Mark the job as receiving its one upload.

        Returns
        -------
        str
            ``"ok"``, ``"missing"``, ``"state"`` (the job is not Open) or ``"duplicate"``
            (an upload was already received or is in progress).
        """
        with self.transaction() as conn:
            row = conn.execute("SELECT state, upload FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                return "missing"
            if row["upload"] != "none":
                return "duplicate"
            if row["state"] != "Open":
                return "state"
            conn.execute("UPDATE jobs SET upload = 'receiving' WHERE id = ?", (job_id,))
            return "ok"

    def append_chunk(self, job_id: str, n: int, data: bytes) -> None:
        """Store the ``n``-th piece of an upload."""
        with self.transaction() as conn:
            conn.execute("INSERT INTO upload_chunks (job_id, n, data) VALUES (?, ?, ?)", (job_id, n, data))

    def finish_upload(self, job_id: str, size: int) -> None:
        """Mark the upload complete."""
        self.update_job(job_id, upload="done", upload_bytes=size)

    def release_upload(self, job_id: str) -> None:
        """Forget a failed upload so the job can receive another one."""
        with self.transaction() as conn:
            conn.execute("DELETE FROM upload_chunks WHERE job_id = ?", (job_id,))
            conn.execute("UPDATE jobs SET upload = 'none' WHERE id = ? AND upload = 'receiving'", (job_id,))

    def iter_upload(self, job_id: str) -> Iterator[bytes]:
        """Yield an upload's pieces in order, reading one at a time."""
        n = 0
        while True:
            rows = self.query("SELECT data FROM upload_chunks WHERE job_id = ? AND n = ?", (job_id, n))
            if not rows:
                return
            yield bytes(rows[0][0])
            n += 1

    # -- results ---------------------------------------------------------------------------------

    def result_batches(self, job_id: str) -> Iterator[tuple[int, int, bytes]]:
        """Yield ``(first_row, count, results)`` of each processed batch in order, one at a time."""
        n = 0
        while True:
            rows = self.query(
                "SELECT first_row, count, results FROM result_batches WHERE job_id = ? AND n = ?", (job_id, n)
            )
            if not rows:
                return
            yield int(rows[0][0]), int(rows[0][1]), bytes(rows[0][2])
            n += 1

    def processed_batches(self, job_id: str) -> tuple[int, int]:
        """Return ``(number of batches, number of rows)`` already processed for a job."""
        rows = self.query(
            "SELECT COUNT(*), COALESCE(SUM(count), 0) FROM result_batches WHERE job_id = ?", (job_id,)
        )
        return int(rows[0][0]), int(rows[0][1])

    # -- sessions --------------------------------------------------------------------------------

    def add_session(self, token: str, issued_at: float) -> None:
        """Remember an access token."""
        with self.transaction() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO sessions (token, issued_at) VALUES (?, ?)", (token, issued_at)
            )

    def load_sessions(self) -> dict[str, float]:
        """Return every stored access token with its issue time."""
        return {r[0]: float(r[1]) for r in self.query("SELECT token, issued_at FROM sessions")}

    # -- records ---------------------------------------------------------------------------------

    def records(self, obj: SObject, include_deleted: bool = False) -> list[dict[str, Any]]:
        """Return the stored records of ``obj`` with typed values, in creation order."""
        where = "" if include_deleted else " WHERE IsDeleted = 0"
        rows = self.query(f"SELECT * FROM {record_table(obj)}{where} ORDER BY rowid")  # noqa: S608 - identifiers from the schema
        booleans = [f.name for f in obj.fields if f.type == "boolean"]
        out = []
        for row in rows:
            record = dict(row)
            record["IsDeleted"] = bool(record["IsDeleted"])
            for name in booleans:
                if record[name] is not None:
                    record[name] = bool(record[name])
            out.append(record)
        return out

    def reset(self) -> None:
        """Delete every job, upload, result and record; sessions stay valid and ids keep counting up."""
        with self.transaction() as conn:
            for table in ("jobs", "upload_chunks", "result_batches"):
                conn.execute(f"DELETE FROM {table}")  # noqa: S608 - fixed table names
            for obj in self.schema.objects:
                conn.execute(f"DELETE FROM {record_table(obj)}")  # noqa: S608
