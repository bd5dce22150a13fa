"""The background worker that processes closed jobs in internal batches, like Salesforce does.

Runs in its own thread; the event loop only enqueues job ids. Each slice of rows is validated,
written and recorded (records, results and counters) in one transaction, so a restart resumes a
job after its last committed slice and never applies a row twice.
"""

from __future__ import annotations

import dataclasses
import datetime
import heapq
import itertools
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import orjson

from .faults import FaultInjector
from .ids import make_id, normalize_id
from .limits import Limits
from .schema import Field, Schema, SObject
from .settings import EmulatorSettings
from .store import Store, quote, record_table
from .upload_csv import UploadFormatError, check_line_ending, read_rows
from .validation import (
    NULL_VALUE,
    Converter,
    RecordError,
    converter_for,
    error_text,
    format_datetime,
    required_missing,
)

logger = logging.getLogger(__name__)

#: Salesforce processes ingest data in internal batches of this many records.
BATCH_SIZE = 10_000

_IN_LIST = "(SELECT value FROM json_each(?))"
_HOLD_POLL_SECONDS = 0.05


def now_text() -> str:
    """The current time in Salesforce's JSON datetime format."""
    return format_datetime(datetime.datetime.now(datetime.timezone.utc))


class JobFailure(Exception):
    """The whole job fails; ``str(error)`` is its ``errorMessage``."""


@dataclasses.dataclass
class _Relation:
    column: int
    field: Field
    target: SObject
    target_field: str


@dataclasses.dataclass
class Plan:
    """How the columns of one job's CSV map onto its object."""

    obj: SObject
    operation: str
    id_column: int | None
    columns: list[tuple[int, Field, Converter]]
    relations: list[_Relation]
    match_field: str | None  # upsert: the external id field, or "Id"
    match_column: int | None
    width: int


def make_plan(schema: Schema, job: dict[str, Any], header: list[str]) -> Plan:
    """Map the CSV header onto the job's object.

    Raises
    ------
    JobFailure
        ``InvalidBatch : Field name not found : X`` for a column the object does not have.
    """
    obj = schema.get(job["object"])
    if obj is None:  # the schema file changed since the job was created
        raise JobFailure(f"InvalidJob : Unable to find object: {job['object']}")
    id_column = None
    columns: list[tuple[int, Field, Converter]] = []
    relations: list[_Relation] = []
    for index, name in enumerate(header):
        if name.lower() == "id":
            id_column = index
            continue
        field = obj.field(name)
        if field is not None:
            columns.append((index, field, converter_for(field, index)))
            continue
        relation = _relation(schema, obj, name, index)
        if relation is None:
            raise JobFailure(f"InvalidBatch : Field name not found : {name}")
        relations.append(relation)
    match_field = match_column = None
    if job["operation"] == "upsert":
        match_field = job["external_id_field"]
        if match_field.lower() == "id":
            match_field, match_column = "Id", id_column
        else:
            for index, field, _ in columns:
                if field.name.lower() == match_field.lower():
                    match_field, match_column = field.name, index
    return Plan(obj, job["operation"], id_column, columns, relations, match_field, match_column, len(header))


def _relation(schema: Schema, obj: SObject, name: str, index: int) -> _Relation | None:
    # "Account.External_Id__c", custom "Account__r.External_Id__c", polymorphic "Account:Owner.Ext".
    path, _, target_field_name = name.rpartition(".")
    if not path or "." in path:
        return None
    target_name, _, relationship = path.rpartition(":")
    field = obj.relationship(relationship)
    if field is None or field.reference_to is None:
        return None
    if target_name and target_name.lower() != field.reference_to.lower():
        return None
    target = schema.get(field.reference_to)
    if target is None:
        return None
    if target_field_name.lower() == "id":
        return _Relation(index, field, target, "Id")
    target_field = target.field(target_field_name)
    if target_field is None or not (target_field.external_id or target_field.unique):
        return None
    return _Relation(index, field, target, target_field.name)


class _Slice:
    """The outcome of processing one slice of rows."""

    def __init__(self, size: int) -> None:
        self.results: list[list[Any] | None] = [None] * size
        self.failed = 0
        self.locked = 0

    def fail(self, row: int, message: str, record_id: str = "") -> None:
        if self.results[row] is None:
            self.results[row] = [record_id, message]
            self.failed += 1

    def ok(self, row: int, record_id: str, created: bool) -> None:
        self.results[row] = [record_id, 1 if created else 0]


class SliceProcessor:
    """Validates and applies one slice of rows of a job against the database."""

    def __init__(self, store: Store, faults: FaultInjector, plan: Plan, job_id: str = "") -> None:
        self.store = store
        self.faults = faults
        self.plan = plan
        self.job_id = job_id
        # The columns naming a parent record, for lock contention: reference ids, relationship keys.
        self.parent_columns = [(index, "") for index, field, _ in plan.columns if field.reference_to] + [
            (r.column, f"{r.target.name}.{r.target_field}=") for r in plan.relations
        ]
        self.obj = plan.obj
        self.table = record_table(plan.obj)
        # Worked out once per job so the per-record loop stays lean.
        self._columns = [(index, field.name, convert) for index, field, convert in plan.columns]
        self._relations = [(r.column, r.field.name, r) for r in plan.relations]
        self._required = [f.name for f in plan.obj.fields if f.required]
        self._defaults = [
            (f.name, int(f.default) if isinstance(f.default, bool) else f.default)
            for f in plan.obj.fields
            if f.default is not None
        ]
        self._reference_columns = [f.name for _, f, _ in plan.columns if f.type == "reference"]

    # -- value conversion ------------------------------------------------------------------------

    def _values(self, row: list[str], for_update: bool) -> dict[str, Any]:
        """Converted values of one row; '' means "not given" and #N/A means null."""
        values: dict[str, Any] = {}
        for index, name, convert in self._columns:
            raw = row[index]
            if raw == "":
                continue
            values[name] = None if raw == NULL_VALUE else convert(raw)
        for index, name, relation in self._relations:
            raw = row[index]
            if raw == "":
                continue
            values[name] = None if raw == NULL_VALUE else _Lookup(relation, raw)
        if for_update:
            missing = [name for name in self._required if name in values and values[name] is None]
            if missing:
                raise RecordError(required_missing(missing))
        return values

    def _complete_new(self, values: dict[str, Any]) -> None:
        for name, default in self._defaults:
            if name not in values:
                values[name] = default
        missing = [name for name in self._required if values.get(name) is None]
        if missing:
            raise RecordError(required_missing(missing))

    # -- lookups ---------------------------------------------------------------------------------

    def _existing(self, conn: Any, obj: SObject, column: str, keys: list[Any]) -> dict[Any, tuple[str, int]]:
        if not keys:
            return {}
        # Deleted rows first, so that a live record holding the same value wins.
        sql = (
            f"SELECT {quote(column)}, Id, IsDeleted FROM {record_table(obj)} "  # noqa: S608
            f"WHERE {quote(column)} IN {_IN_LIST} ORDER BY IsDeleted DESC"
        )
        rows = conn.execute(sql, (orjson.dumps(keys).decode(),)).fetchall()
        return {key: (record_id, deleted) for key, record_id, deleted in rows}

    def _resolve(self, conn: Any, pending: dict[int, dict[str, Any]], out: _Slice) -> None:
        """Replace relationship lookups and check referenced ids, failing rows that do not resolve."""
        if not self._relations and not self._reference_columns:
            return
        wanted: dict[tuple[str, str], set[str]] = {}
        ids: dict[str, set[str]] = {}
        for values in pending.values():
            for name, value in values.items():
                if isinstance(value, _Lookup):
                    wanted.setdefault((value.relation.target.name, value.relation.target_field), set()).add(
                        value.raw
                    )
                elif value is not None:
                    field = self.obj.field(name)
                    if field is not None and field.type == "reference":
                        ids.setdefault(field.reference_to or "", set()).add(value)
        resolved: dict[tuple[str, str], dict[Any, tuple[str, int]]] = {}
        for (target_name, target_field), keys in wanted.items():
            target = self.store.schema.get(target_name)
            assert target is not None
            if target_field == "Id":
                normalized = [k for k in (normalize_id(k) for k in keys) if k]
                found = self._existing(conn, target, "Id", normalized)
                resolved[(target_name, target_field)] = {
                    k: found[n] for k in keys if (n := normalize_id(k)) and n in found
                }
            else:
                resolved[(target_name, target_field)] = self._existing(conn, target, target_field, list(keys))
        referenced = {}
        for target_name, keys in ids.items():
            target = self.store.schema.get(target_name)
            assert target is not None
            referenced[target_name] = self._existing(conn, target, "Id", list(keys))
        for row, values in list(pending.items()):
            for name, value in values.items():
                if isinstance(value, _Lookup):
                    relation = value.relation
                    hit = resolved[(relation.target.name, relation.target_field)].get(value.raw)
                    if hit is None or hit[1]:
                        out.fail(
                            row,
                            error_text(
                                "INVALID_FIELD",
                                f"Foreign key external ID: {value.raw} not found for field "
                                f"{relation.target_field} in entity {relation.target.name}",
                            ),
                        )
                        del pending[row]
                        break
                    values[name] = hit[0]
                elif value is not None:
                    field = self.obj.field(name)
                    if field is None or field.type != "reference":
                        continue
                    target_name = field.reference_to or ""
                    target = self.store.schema.get(target_name)
                    hit = referenced[target_name].get(value)
                    if target is None or not value.startswith(target.key_prefix):
                        out.fail(
                            row,
                            error_text(
                                "FIELD_INTEGRITY_EXCEPTION",
                                f"{field.name}: id value of incorrect type: {value}",
                                field.name,
                            ),
                        )
                        del pending[row]
                        break
                    if hit is None or hit[1]:
                        out.fail(
                            row,
                            error_text(
                                "ENTITY_IS_DELETED" if hit else "INVALID_CROSS_REFERENCE_KEY",
                                "entity is deleted" if hit else "invalid cross reference id",
                                field.name if not hit else "",
                            ),
                        )
                        del pending[row]
                        break

    def _check_unique(
        self,
        conn: Any,
        pending: dict[int, dict[str, Any]],
        own_ids: dict[int, str],
        out: _Slice,
        new: bool = False,
        checked: str | None = None,
    ) -> None:
        """Fail rows whose unique values another record holds, or an earlier row of this slice."""
        for field in self.obj.fields:
            if not field.unique or field.name == checked:
                continue
            name = field.name
            values = {row: v[name] for row, v in pending.items() if v.get(name) is not None}
            if not values:
                continue
            holders = self._existing(conn, self.obj, name, list(set(values.values())))
            seen: dict[Any, str] = {}
            for row, value in values.items():
                holder = holders.get(value)
                # A failed insert reports no sf__Id; a failed update reports the record's.
                reported = "" if new else own_ids.get(row, "")
                if holder is not None and not holder[1] and holder[0] != own_ids.get(row):
                    out.fail(
                        row,
                        error_text(
                            "DUPLICATE_VALUE",
                            f"duplicate value found: {name} duplicates value on record with id: {holder[0]}",
                        ),
                        reported,
                    )
                    del pending[row]
                elif value in seen:
                    out.fail(
                        row,
                        error_text(
                            "DUPLICATE_VALUE",
                            f"duplicate value found: {name} duplicates value on record with id: "
                            f"{seen[value]}",
                        ),
                        reported,
                    )
                    del pending[row]
                else:
                    seen[value] = own_ids.get(row, "")

    # -- writes ----------------------------------------------------------------------------------

    def _new_ids(self, conn: Any, rows: dict[int, dict[str, Any]]) -> dict[int, str]:
        if not rows:
            return {}
        first = self.store.allocate_numbers(conn, self.obj.key_prefix, len(rows))
        prefix = self.obj.key_prefix
        return {row: make_id(prefix, first + offset) for offset, row in enumerate(rows)}

    def _insert(
        self, conn: Any, rows: dict[int, dict[str, Any]], ids: dict[int, str], out: _Slice, now: str
    ) -> None:
        if not rows:
            return
        names = sorted({name for values in rows.values() for name in values})
        sql = (
            f"INSERT INTO {self.table} (Id, IsDeleted, CreatedDate, LastModifiedDate"  # noqa: S608
            f"{''.join(', ' + quote(n) for n in names)}) VALUES (?, 0, ?, ?{', ?' * len(names)})"
        )
        params = []
        results = out.results
        for row, values in rows.items():
            record_id = ids[row]
            params.append((record_id, now, now, *map(values.get, names)))
            results[row] = [record_id, 1]
        conn.executemany(sql, params)

    def _update(
        self, conn: Any, rows: dict[int, dict[str, Any]], ids: dict[int, str], out: _Slice, now: str
    ) -> None:
        groups: dict[tuple[str, ...], list[tuple[Any, ...]]] = {}
        results = out.results
        for row, values in rows.items():
            record_id = ids[row]
            groups.setdefault(tuple(values), []).append((*values.values(), now, record_id))
            results[row] = [record_id, 0]
        for names, params in groups.items():
            assignments = "".join(f"{quote(n)} = ?, " for n in names)
            conn.executemany(
                f"UPDATE {self.table} SET {assignments}LastModifiedDate = ? WHERE Id = ?",  # noqa: S608
                params,
            )

    # -- operations ------------------------------------------------------------------------------

    def process(self, rows: list[list[str]], record: Callable[[sqlite3.Connection, _Slice], bool]) -> _Slice:
        """Validate and apply ``rows``; returns each row's result.

        ``record`` runs in the same transaction to store the results; if it returns False (the
        job is gone) nothing of the slice is kept.
        """
        out = _Slice(len(rows))
        plan = self.plan
        candidates: list[int] = []
        parent_columns = (
            self.parent_columns if self.faults.settings.lock_contention_seconds is not None else []
        )
        for n, row in enumerate(rows):
            if len(row) != plan.width:
                out.fail(
                    n,
                    error_text(
                        "INVALID_FIELD",
                        f"Number of fields in header is different from the row. header = {plan.width} "
                        f"row = {len(row)}",
                    ),
                )
            elif self.faults.record_locked() or (
                parent_columns
                and self.faults.parent_locked(
                    self.job_id, [prefix + row[i] for i, prefix in parent_columns if row[i]]
                )
            ):
                out.locked += 1
                out.fail(
                    n,
                    error_text(
                        "UNABLE_TO_LOCK_ROW", "unable to obtain exclusive access to this record or 1 records"
                    ),
                )
            else:
                candidates.append(n)
        now = now_text()
        with self.store.transaction() as conn:
            if plan.operation == "insert":
                self._process_insert(conn, rows, candidates, out, now)
            elif plan.operation == "upsert":
                self._process_upsert(conn, rows, candidates, out, now)
            elif plan.operation == "update":
                self._process_update(conn, rows, candidates, out, now)
            else:
                self._process_delete(conn, rows, candidates, out, now)
            if not record(conn, out):
                raise _JobGone
        return out

    def _process_insert(
        self, conn: Any, rows: list[list[str]], candidates: list[int], out: _Slice, now: str
    ) -> None:
        pending: dict[int, dict[str, Any]] = {}
        id_column = self.plan.id_column
        for n in candidates:
            row = rows[n]
            try:
                if id_column is not None and row[id_column] not in ("", NULL_VALUE):
                    raise RecordError(
                        error_text(
                            "INVALID_FIELD_FOR_INSERT_UPDATE", "cannot specify Id in an insert call", "Id"
                        )
                    )
                values = self._values(row, for_update=False)
                self._complete_new(values)
            except RecordError as exc:
                out.fail(n, str(exc))
                continue
            pending[n] = values
        self._resolve(conn, pending, out)
        new_ids = self._new_ids(conn, pending)
        self._check_unique(conn, pending, new_ids, out, new=True)
        self._insert(conn, pending, new_ids, out, now)

    def _ids(self, rows: list[list[str]], candidates: list[int], out: _Slice, verb: str) -> dict[int, str]:
        """Well-formed, unrepeated Ids of the rows, failing the others."""
        ids: dict[int, str] = {}
        seen: set[str] = set()
        column = self.plan.id_column
        for n in candidates:
            raw = rows[n][column] if column is not None else ""
            if raw == "":
                out.fail(n, error_text("MISSING_ARGUMENT", f"Id not specified in an {verb} call"))
                continue
            record_id = normalize_id(raw)
            if record_id is None:
                out.fail(n, error_text("MALFORMED_ID", f"malformed id {raw}"))
                continue
            if not record_id.startswith(self.obj.key_prefix):
                out.fail(
                    n,
                    error_text(
                        "MALFORMED_ID", f"{self.obj.name} ID: id value of incorrect type: {raw}", "Id"
                    ),
                )
                continue
            if record_id in seen:
                out.fail(n, error_text("DUPLICATE_VALUE", f"Duplicate id in list: {record_id}"), record_id)
                continue
            seen.add(record_id)
            ids[n] = record_id
        return ids

    def _existing_ids(
        self, conn: Any, ids: dict[int, str], out: _Slice, allow_deleted: bool
    ) -> dict[int, str]:
        found = self._existing(conn, self.obj, "Id", list(ids.values()))
        live: dict[int, str] = {}
        for n, record_id in ids.items():
            hit = found.get(record_id)
            if hit is None:
                out.fail(
                    n, error_text("INVALID_CROSS_REFERENCE_KEY", "invalid cross reference id"), record_id
                )
            elif hit[1] and not allow_deleted:
                out.fail(n, error_text("ENTITY_IS_DELETED", "entity is deleted"), record_id)
            else:
                live[n] = record_id
        return live

    def _process_update(
        self, conn: Any, rows: list[list[str]], candidates: list[int], out: _Slice, now: str
    ) -> None:
        ids = self._existing_ids(conn, self._ids(rows, candidates, out, "update"), out, allow_deleted=False)
        pending: dict[int, dict[str, Any]] = {}
        for n, record_id in ids.items():
            try:
                pending[n] = self._values(rows[n], for_update=True)
            except RecordError as exc:
                out.fail(n, str(exc), record_id)
        self._resolve(conn, pending, out)
        self._check_unique(conn, pending, ids, out)
        self._update(conn, pending, ids, out, now)

    def _process_delete(
        self, conn: Any, rows: list[list[str]], candidates: list[int], out: _Slice, now: str
    ) -> None:
        hard = self.plan.operation == "hardDelete"
        ids = self._existing_ids(conn, self._ids(rows, candidates, out, "delete"), out, allow_deleted=hard)
        params = [(record_id,) for record_id in ids.values()]
        if hard:
            conn.executemany(f"DELETE FROM {self.table} WHERE Id = ?", params)  # noqa: S608
        else:
            conn.executemany(
                f"UPDATE {self.table} SET IsDeleted = 1, LastModifiedDate = '{now}' "  # noqa: S608
                "WHERE Id = ?",
                params,
            )
        for n, record_id in ids.items():
            out.ok(n, record_id, False)

    def _process_upsert(
        self, conn: Any, rows: list[list[str]], candidates: list[int], out: _Slice, now: str
    ) -> None:
        match_field, match_column = self.plan.match_field or "", self.plan.match_column
        keys: dict[int, Any] = {}
        values_of: dict[int, dict[str, Any]] = {}
        seen: set[Any] = set()
        for n in candidates:
            row = rows[n]
            raw = row[match_column] if match_column is not None else ""
            try:
                values = self._values(row, for_update=False)
                if match_field == "Id":
                    key = normalize_id(raw) if raw else None
                    if raw and (key is None or not key.startswith(self.obj.key_prefix)):
                        raise RecordError(error_text("MALFORMED_ID", f"malformed id {raw}"))
                else:
                    key = values.get(match_field)
                    if key is None:
                        raise RecordError(error_text("MISSING_ARGUMENT", f"{match_field} not specified"))
            except RecordError as exc:
                out.fail(n, str(exc))
                continue
            if key is not None and key in seen:
                out.fail(n, error_text("DUPLICATE_VALUE", f"Duplicate external id specified: {raw}"))
                continue
            seen.add(key)
            keys[n] = key
            values_of[n] = values
        found = self._existing(
            conn,
            self.obj,
            "Id" if match_field == "Id" else match_field,
            [k for k in keys.values() if k is not None],
        )
        inserts: dict[int, dict[str, Any]] = {}
        updates: dict[int, dict[str, Any]] = {}
        update_ids: dict[int, str] = {}
        for n, key in keys.items():
            hit = found.get(key) if key is not None else None
            values = values_of[n]
            try:
                if hit is not None and not hit[1]:
                    missing = [
                        f.name
                        for f in self.obj.fields
                        if f.required and f.name in values and values[f.name] is None
                    ]
                    if missing:
                        raise RecordError(
                            error_text(
                                "REQUIRED_FIELD_MISSING",
                                f"Required fields are missing: [{', '.join(missing)}]",
                                ",".join(missing),
                            )
                        )
                    # Matched on this value, so it is unchanged: leave it (and its index) alone.
                    values.pop(match_field, None)
                    updates[n] = values
                    update_ids[n] = hit[0]
                elif match_field == "Id" and key is not None:
                    raise RecordError(
                        error_text(
                            "ENTITY_IS_DELETED" if hit else "INVALID_CROSS_REFERENCE_KEY",
                            "entity is deleted" if hit else "invalid cross reference id",
                        )
                    )
                else:
                    self._complete_new(values)
                    inserts[n] = values
            except RecordError as exc:
                out.fail(n, str(exc), hit[0] if hit else "")
        self._resolve(conn, updates, out)
        self._resolve(conn, inserts, out)
        new_ids = self._new_ids(conn, inserts)
        self._check_unique(conn, updates, update_ids, out)
        # The match values of new rows were just looked up and de-duplicated.
        self._check_unique(conn, inserts, new_ids, out, new=True, checked=match_field)
        self._update(conn, updates, update_ids, out, now)
        self._insert(conn, inserts, new_ids, out, now)


class _JobGone(Exception):
    """The job was deleted while a slice was processed: roll the slice back."""


class _Lookup:
    """A relationship column's value, resolved to an Id once the slice's lookups are done."""

    __slots__ = ("raw", "relation")

    def __init__(self, relation: _Relation, raw: str) -> None:
        self.relation = relation
        self.raw = raw


class JobProcessor:
    """The worker thread: takes closed jobs and processes them, interleaving jobs slice by slice.

    Parameters
    ----------
    store, settings, faults, limits
        The emulator's state; ``settings.records_per_second`` paces the work (None: instant).
    """

    def __init__(
        self, store: Store, settings: EmulatorSettings, faults: FaultInjector, limits: Limits
    ) -> None:
        self.store = store
        self.settings = settings
        self.faults = faults
        self.limits = limits
        self._cond = threading.Condition()
        self._ready: list[tuple[float, int, Iterator[float]]] = []
        self._counter = 0
        self._queued: set[str] = set()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="salesforce-emulator-worker", daemon=True)

    def start(self) -> None:
        """Start the worker and resume the jobs a previous run left unfinished."""
        self._thread.start()
        for job_id in self.store.jobs_in_states(("UploadComplete", "InProgress")):
            self.submit(job_id)

    def stop(self) -> None:
        """Stop after the current slice; unfinished jobs resume at the next start."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(timeout=30)

    def submit(self, job_id: str) -> None:
        """Queue a job that was just closed."""
        with self._cond:
            if job_id in self._queued:
                return
            self._queued.add(job_id)
            self._push(time.monotonic(), self._job(job_id))
            self._cond.notify_all()

    def _push(self, when: float, steps: Iterator[float]) -> None:
        self._counter += 1
        heapq.heappush(self._ready, (when, self._counter, steps))

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopping and (
                    self.settings.hold_processing or not self._ready or self._ready[0][0] > time.monotonic()
                ):
                    timeout = self._ready[0][0] - time.monotonic() if self._ready else None
                    if self.settings.hold_processing:
                        timeout = _HOLD_POLL_SECONDS  # a settings change does not notify the worker
                    self._cond.wait(timeout)
                if self._stopping:
                    return
                _, _, steps = heapq.heappop(self._ready)
            try:
                when = next(steps)
            except StopIteration:
                continue
            except Exception:
                logger.exception("emulator worker failed on a job")
                continue
            with self._cond:
                self._push(when, steps)

    def _job(self, job_id: str) -> Iterator[float]:
        try:
            yield from self._process(job_id)
        finally:
            with self._cond:
                self._queued.discard(job_id)

    def _finish(
        self, job_id: str, state: str, started: float, active: float, error: str | None = None
    ) -> None:
        changes: dict[str, Any] = {
            "state": state,
            "system_modstamp": now_text(),
            "total_processing_time": int((time.monotonic() - started) * 1000),
            "api_active_processing_time": int(active * 1000),
        }
        if error is not None:
            changes["error_message"] = error
        self.store.transition_job(job_id, ("InProgress",), changes)

    def _process(self, job_id: str) -> Iterator[float]:
        job, _ = self.store.transition_job(
            job_id, ("UploadComplete",), {"state": "InProgress", "system_modstamp": now_text()}
        )
        if job is None or job["state"] != "InProgress":
            return
        started = time.monotonic()
        active = job["api_active_processing_time"] / 1000  # resumed after a restart: go on from there
        if job["upload"] != "done":
            self._finish(
                job_id, "Failed", started, active, "InvalidBatch : No data was uploaded for this job"
            )
            return
        try:
            first = next(self.store.iter_upload(job_id), b"")
            check_line_ending(first, job["line_ending"])
            header, rows = read_rows(self.store, job_id, job["column_delimiter"])
            plan = make_plan(self.store.schema, job, header)
        except (UploadFormatError, JobFailure) as exc:
            self._finish(job_id, "Failed", started, active, str(exc))
            return
        processor = SliceProcessor(self.store, self.faults, plan, job_id)
        batches_done, rows_done = self.store.processed_batches(job_id)
        for _ in range(rows_done):  # resuming after a restart: skip what was committed
            next(rows, None)
        slice_no, processed = batches_done, rows_done
        if self.faults.job_fails():
            self._finish(
                job_id,
                "Failed",
                started,
                active,
                "Timeout : The job exceeded the number of batch retries and was not completed",
            )
            return
        while True:
            speed = self.settings.records_per_second
            size = BATCH_SIZE if not speed else max(1, min(BATCH_SIZE, int(speed / 5)))
            # A batch boundary never falls inside a slice, so batches count exactly per 10,000 records.
            size = min(size, BATCH_SIZE - processed % BATCH_SIZE)
            state = self.store.query("SELECT state FROM jobs WHERE id = ?", (job_id,))
            if not state or state[0][0] != "InProgress":
                return  # aborted or deleted: the rest stays unprocessed
            tick = time.monotonic()
            try:
                chunk = list(itertools.islice(rows, size))
            except UploadFormatError as exc:
                self._finish(job_id, "Failed", started, active, str(exc))
                return
            if not chunk:
                break
            if processed % BATCH_SIZE == 0:
                self.limits.bulk_batches.add(1)

            # A paced emulator pretends each slice takes len/speed seconds of work: count that as active.
            paced = len(chunk) / speed if speed else 0.0

            def record(
                conn: sqlite3.Connection,
                out: _Slice,
                n: int = slice_no,
                first: int = processed,
                count: int = len(chunk),
                active_before: float = active,
                tick: float = tick,
                paced: float = paced,
            ) -> bool:
                if conn.execute("SELECT 1 FROM jobs WHERE id = ?", (job_id,)).fetchone() is None:
                    return False
                conn.execute(
                    "INSERT INTO result_batches (job_id, n, first_row, count, results) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (job_id, n, first, count, orjson.dumps(out.results)),
                )
                # Salesforce's apiActiveProcessingTime grows batch by batch while the job is InProgress.
                active_ms = int((active_before + max(time.monotonic() - tick, paced)) * 1000)
                conn.execute(
                    "UPDATE jobs SET processed = processed + ?, failed = failed + ?, retries = retries + ?, "
                    "api_active_processing_time = ? WHERE id = ?",
                    (count, out.failed, 1 if out.locked else 0, active_ms, job_id),
                )
                return True

            try:
                processor.process(chunk, record)
            except _JobGone:
                return
            slice_no += 1
            processed += len(chunk)
            active += max(time.monotonic() - tick, paced)
            yield tick + len(chunk) / speed if speed else time.monotonic()
        self._finish(job_id, "JobComplete", started, active)
