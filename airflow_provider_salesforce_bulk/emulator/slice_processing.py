"""Validating and applying one slice of an ingest job's rows, with Salesforce's per-record outcomes.

A slice is written in one transaction together with its outcomes (the worker's ``record``
callback), so it is applied whole or not at all; every rule a record can fail on (values,
references, uniqueness, ids, locks) lives here, apart from the thread that schedules the slices.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any

import orjson

from .faults import FaultInjector
from .ids import DEFAULT_USER_ID, make_id, normalize_id
from .ingest_plan import Plan, Relation
from .schema import SObject
from .store import Store, quote, record_table
from .timestamps import now_text
from .validation import NULL_VALUE, RecordError, error_text, required_missing

_IN_LIST = "(SELECT value FROM json_each(?))"


class SliceOutcome:
    """The outcome of processing one slice of rows: per row ``[id, 1|0]`` (created) or ``[id, error]``."""

    def __init__(self, size: int) -> None:
        self.results: list[list[Any] | None] = [None] * size
        self.failed = 0
        self.locked = 0

    def fail(self, row: int, message: str, record_id: str = "") -> None:
        """Fail ``row`` with ``message``, unless an earlier check already failed it."""
        if self.results[row] is None:
            self.results[row] = [record_id, message]
            self.failed += 1

    def ok(self, row: int, record_id: str, created: bool) -> None:
        """Record ``row`` as applied to ``record_id``."""
        self.results[row] = [record_id, 1 if created else 0]


class JobGone(Exception):
    """The job was deleted while a slice was processed: roll the slice back."""


class _Lookup:
    """A relationship column's value, resolved to an Id once the slice's lookups are done."""

    __slots__ = ("raw", "relation")

    def __init__(self, relation: Relation, raw: str) -> None:
        self.relation = relation
        self.raw = raw


def _no_live_record(deleted: bool, field: str = "") -> str:
    """The error for an id naming no record (``field``: the column holding it) or a deleted one."""
    if deleted:
        return error_text("ENTITY_IS_DELETED", "entity is deleted")
    return error_text("INVALID_CROSS_REFERENCE_KEY", "invalid cross reference id", field)


def _not_writable(names: list[str]) -> str:
    """The error of a record giving a value to fields only the org sets."""
    return error_text(
        "INVALID_FIELD_FOR_INSERT_UPDATE",
        f"Unable to create/update fields: {', '.join(names)}. Please check the security settings of this "
        "field and verify that it is read/write for your role or profile.",
        ",".join(names),
    )


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
            self._check_not_nulled(values)
        return values

    def _check_not_nulled(self, values: dict[str, Any]) -> None:
        # An update may leave a required field out, never set it to null.
        missing = [name for name in self._required if name in values and values[name] is None]
        if missing:
            raise RecordError(required_missing(missing))

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

    def _resolve(self, conn: Any, pending: dict[int, dict[str, Any]], out: SliceOutcome) -> None:
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
                        out.fail(row, _no_live_record(hit is not None, field.name))
                        del pending[row]
                        break

    def _check_unique(
        self,
        conn: Any,
        pending: dict[int, dict[str, Any]],
        own_ids: dict[int, str],
        out: SliceOutcome,
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
        self, conn: Any, rows: dict[int, dict[str, Any]], ids: dict[int, str], out: SliceOutcome, now: str
    ) -> None:
        if not rows:
            return
        names = sorted({name for values in rows.values() for name in values})
        sql = (
            f"INSERT INTO {self.table} (Id, IsDeleted, CreatedDate, LastModifiedDate, CreatedById, "  # noqa: S608
            f"LastModifiedById{''.join(', ' + quote(n) for n in names)}) "
            f"VALUES (?, 0, ?, ?, ?, ?{', ?' * len(names)})"
        )
        params = []
        results = out.results
        user = DEFAULT_USER_ID  # the session's user: the org has one
        for row, values in rows.items():
            record_id = ids[row]
            params.append((record_id, now, now, user, user, *map(values.get, names)))
            results[row] = [record_id, 1]
        conn.executemany(sql, params)

    def _update(
        self, conn: Any, rows: dict[int, dict[str, Any]], ids: dict[int, str], out: SliceOutcome, now: str
    ) -> None:
        groups: dict[tuple[str, ...], list[tuple[Any, ...]]] = {}
        results = out.results
        for row, values in rows.items():
            record_id = ids[row]
            groups.setdefault(tuple(values), []).append((*values.values(), now, DEFAULT_USER_ID, record_id))
            results[row] = [record_id, 0]
        for names, params in groups.items():
            assignments = "".join(f"{quote(n)} = ?, " for n in names)
            conn.executemany(
                f"UPDATE {self.table} SET {assignments}LastModifiedDate = ?, LastModifiedById = ? "  # noqa: S608
                "WHERE Id = ?",
                params,
            )

    # -- operations ------------------------------------------------------------------------------

    def process(
        self, rows: list[list[str]], record: Callable[[sqlite3.Connection, SliceOutcome], bool]
    ) -> SliceOutcome:
        """Validate and apply ``rows``; returns each row's result.

        ``record`` runs in the same transaction to store the results; if it returns False (the
        job is gone) nothing of the slice is kept.
        """
        out = SliceOutcome(len(rows))
        plan = self.plan
        candidates: list[int] = []
        parent_columns = (
            self.parent_columns if self.faults.settings.lock_contention_seconds is not None else []
        )
        read_only = plan.read_only if plan.operation in ("insert", "update", "upsert") else []
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
            elif read_only and (given := [name for i, name in read_only if row[i] != ""]):
                out.fail(n, _not_writable(given))
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
                raise JobGone
        return out

    def _process_insert(
        self, conn: Any, rows: list[list[str]], candidates: list[int], out: SliceOutcome, now: str
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

    def _ids(
        self, rows: list[list[str]], candidates: list[int], out: SliceOutcome, verb: str
    ) -> dict[int, str]:
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
        self, conn: Any, ids: dict[int, str], out: SliceOutcome, allow_deleted: bool
    ) -> dict[int, str]:
        found = self._existing(conn, self.obj, "Id", list(ids.values()))
        live: dict[int, str] = {}
        for n, record_id in ids.items():
            hit = found.get(record_id)
            if hit is None or (hit[1] and not allow_deleted):
                out.fail(n, _no_live_record(hit is not None), record_id)
            else:
                live[n] = record_id
        return live

    def _process_update(
        self, conn: Any, rows: list[list[str]], candidates: list[int], out: SliceOutcome, now: str
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
        self, conn: Any, rows: list[list[str]], candidates: list[int], out: SliceOutcome, now: str
    ) -> None:
        hard = self.plan.operation == "hardDelete"
        ids = self._existing_ids(conn, self._ids(rows, candidates, out, "delete"), out, allow_deleted=hard)
        params = [(record_id,) for record_id in ids.values()]
        if hard:
            conn.executemany(f"DELETE FROM {self.table} WHERE Id = ?", params)  # noqa: S608
        else:
            conn.executemany(
                f"UPDATE {self.table} SET IsDeleted = 1, LastModifiedDate = '{now}', "  # noqa: S608
                f"LastModifiedById = '{DEFAULT_USER_ID}' WHERE Id = ?",
                params,
            )
        for n, record_id in ids.items():
            out.ok(n, record_id, False)

    def _process_upsert(
        self, conn: Any, rows: list[list[str]], candidates: list[int], out: SliceOutcome, now: str
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
                    self._check_not_nulled(values)
                    # Matched on this value, so it is unchanged: leave it (and its index) alone.
                    values.pop(match_field, None)
                    updates[n] = values
                    update_ids[n] = hit[0]
                elif match_field == "Id" and key is not None:
                    raise RecordError(_no_live_record(hit is not None))
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
