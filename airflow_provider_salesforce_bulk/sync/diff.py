"""The streamed comparison of a run's input with the sync state.

One pass over the input normalizes and digests each record, writes its column texts to a spill file
(in input order) and feeds ``(external id, digest, row)`` to an external sort; a merge of the sorted
keys with the sorted state then decides each record: unchanged, new or changed (to send), and each
state entry absent from the input (to delete). Memory holds one sort run, one block per run and a
bitmap of the rows to send (one bit a row), whatever the input's size; :meth:`SyncPlan.records` reads
the spill file again and yields the records to send in input order.

Bad input fails here, before any job: an empty or missing external id, or an external id given twice
(both rows named). The delete guard too: with ``delete_missing``, more deletes than
``max_delete_ratio`` of the state is a :class:`DeleteGuardError` naming the numbers.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from itertools import islice
from typing import Any

import orjson
import pyarrow as pa

from airflow_provider_salesforce_bulk.client.errors import InputError
from airflow_provider_salesforce_bulk.sync.digest import RecordDigester, fields_fingerprint
from airflow_provider_salesforce_bulk.sync.errors import DeleteGuardError
from airflow_provider_salesforce_bulk.sync.pending import PendingChanges, RowFile
from airflow_provider_salesforce_bulk.sync.spill import RUN_ROWS, ExternalSorter
from airflow_provider_salesforce_bulk.sync.state import (
    CURRENT,
    StateInfo,
    StateRow,
    SyncIdentity,
    check_identity,
    fetch_state,
    iter_state,
    read_current,
)
from airflow_provider_salesforce_bulk.sync.storage import storage_for


@dataclass(frozen=True, kw_only=True)
class SyncSpec:
    """One change-only sync's settings, checked once."""

    object_name: str
    external_id_field: str
    fieldnames: tuple[str, ...]
    none_as: str = "empty"
    allow_na_marker: bool = False
    delete_missing: bool = False
    max_delete_ratio: float = 0.1
    full_sync: bool = False

    def __post_init__(self) -> None:
        if self.external_id_field not in self.fieldnames:
            raise InputError(
                f"external_id_field {self.external_id_field!r} is not among the columns "
                f"{list(self.fieldnames)!r}",
                field="external_id_field",
            )
        if not 0 <= self.max_delete_ratio <= 1:
            raise InputError(
                f"max_delete_ratio must be between 0 and 1, got {self.max_delete_ratio!r}",
                field="max_delete_ratio",
            )
        if self.full_sync and self.delete_missing:
            raise InputError(
                "full_sync=True rebuilds the state without reading it, so delete_missing has nothing to "
                "compare with: run the full sync first, then delete_missing",
                field="delete_missing",
            )

    @property
    def identity(self) -> SyncIdentity:
        return SyncIdentity(self.object_name, self.external_id_field, fields_fingerprint(self.fieldnames))


@dataclass(frozen=True)
class SyncCounts:
    read: int
    unchanged: int
    new: int
    changed: int
    to_delete: int
    state_rows: int

    @property
    def sent(self) -> int:
        return self.new + self.changed


class SyncPlan:
    """What a run sends and deletes; the files behind it live in ``workdir``."""

    def __init__(
        self,
        spec: SyncSpec,
        base: StateInfo | None,
        base_current: bytes | None,
        counts: SyncCounts,
        records_file: str,
        send: bytearray,
        changes: RowFile,
        deletes: RowFile,
    ) -> None:
        self.spec = spec
        self.base = base
        self.base_current = base_current
        self.counts = counts
        self.records_file = records_file
        self.send = send
        self.changes = changes
        self.deletes_file = deletes

    def records(self) -> Iterator[dict[str, str | None]]:
        """The records to send (new and changed), in input order, as the job's column texts."""
        names = self.spec.fieldnames
        send = self.send
        with open(self.records_file, "rb") as handle:
            for row, line in enumerate(handle):
                if send[row >> 3] & (1 << (row & 7)):
                    yield dict(zip(names, orjson.loads(line), strict=True))

    def deletes(self) -> Iterator[tuple[str, str]]:
        """``(external id, Salesforce Id)`` of each record to delete, by external id."""
        for ext, sf_id in self.deletes_file.rows():
            yield str(ext), str(sf_id)

    def pending(self, location: Any, run_key: str) -> PendingChanges:
        """Publish the change set next to the state (before any job), for :func:`~.advance.advance_state`.

        The returned value is what the plan store records: a retried task instance advances from it.
        """
        storage = storage_for(location)
        return PendingChanges.publish(
            storage,
            run_key,
            spec_identity=self.spec.identity,
            base=self.base,
            base_current=self.base_current,
            full_sync=self.spec.full_sync,
            changes=self.changes,
            deletes=self.deletes_file,
        )


_BATCH = 4_096


def _no_external_id(spec: SyncSpec, index: int, ext: str | None) -> InputError:
    return InputError(
        f"record {index} has no {spec.external_id_field} (the external id field is "
        f"{'empty' if ext == '' else 'None'}): every record of a change-only sync needs one",
        record_index=index,
        field=spec.external_id_field,
    )


def _mappings(records: Iterable[Any]) -> Iterator[Mapping[str, Any]]:
    for item in records:
        if isinstance(item, (pa.RecordBatch, pa.Table)):
            yield from item.to_pylist()
        else:
            yield item


def plan_sync(
    location: Any, records: Iterable[Any], spec: SyncSpec, workdir: str, *, run_rows: int = RUN_ROWS
) -> SyncPlan:
    """Compare ``records`` (dicts, or Arrow record batches/tables) with the state at ``location``."""
    storage = storage_for(location)
    state_rows: Iterator[StateRow] = iter(())
    if spec.full_sync:
        # The old state is not read (it may be the unreadable one this run replaces); only its pointer's
        # bytes are kept, so that the advance sees whether another run moved it meanwhile.
        base, base_current = None, storage.read_bytes(CURRENT)
    else:
        base, base_current = read_current(storage)
    if base is not None:
        check_identity(storage, base, spec.identity)
        state_rows = iter_state(fetch_state(storage, base, workdir), storage.url(base.file))
    digester = RecordDigester(spec.fieldnames, none_as=spec.none_as, allow_na_marker=spec.allow_na_marker)
    key = spec.fieldnames.index(spec.external_id_field)
    sorter = ExternalSorter(workdir, run_rows=run_rows, name="keys")
    records_file = os.path.join(workdir, "records.ndjson")
    with open(records_file, "wb") as spill:
        base_index = 0
        source = _mappings(records)
        while batch := list(islice(source, _BATCH)):
            rows, digests = digester.batch(batch, base_index)
            exts = [row[key] for row in rows]
            if "" in exts or None in exts:
                offset = next(i for i, ext in enumerate(exts) if not ext)
                raise _no_external_id(spec, base_index + offset, exts[offset])
            sorter.extend(zip(exts, digests, range(base_index, base_index + len(rows)), strict=True))
            spill.write(b"\n".join(map(orjson.dumps, rows)) + b"\n")
            base_index += len(batch)
    read = sorter.count
    send = bytearray((read + 7) // 8)
    changes = RowFile(os.path.join(workdir, "changes.parquet"), ("external_id", "digest"))
    deletes = RowFile(os.path.join(workdir, "deletes.parquet"), ("external_id", "sf_id"))
    with changes.writer() as put_change, deletes.writer() as put_delete:
        # Without delete_missing the absent records stay in Salesforce, so they stay in the state too.
        tally = _merge(
            sorter.sorted(), state_rows, send, put_change, put_delete if spec.delete_missing else _skip
        )
    unchanged, new, changed, to_delete, in_state = tally
    counts = SyncCounts(read, unchanged, new, changed, to_delete if spec.delete_missing else 0, in_state)
    if spec.delete_missing and to_delete > spec.max_delete_ratio * in_state:
        raise DeleteGuardError(
            f"{to_delete:,} of the {in_state:,} records in the sync state are absent from this run's input "
            f"({to_delete / in_state:.1%}); max_delete_ratio={spec.max_delete_ratio} allows at most "
            f"{int(spec.max_delete_ratio * in_state):,}: nothing was sent. Raise max_delete_ratio if the "
            "input is complete"
        )
    return SyncPlan(
        spec, None if spec.full_sync else base, base_current, counts, records_file, send, changes, deletes
    )


def _skip(_row: tuple[Any, Any]) -> None:
    pass


def _merge(
    keys: Iterator[tuple[Any, ...]],
    state: Iterator[StateRow],
    send: bytearray,
    put_change: Any,
    put_delete: Any,
) -> tuple[int, int, int, int, int]:
    """Walk the sorted input keys and the sorted state together; mark and record what differs."""
    unchanged = new = changed = deleted = in_state = 0
    sentinel = (None, b"", "")
    current: tuple[Any, ...] = next(state, sentinel)
    previous: tuple[Any, ...] | None = None
    for ext, digest, row in keys:
        if previous is not None and previous[0] == ext:
            raise InputError(
                f"the external id {ext!r} is given twice in the input (records {min(previous[2], row)} and "
                f"{max(previous[2], row)}): "
                "a change-only sync needs one record per external id",
                record_index=row,
            )
        previous = (ext, digest, row)
        while current[0] is not None and current[0] < ext:
            put_delete((current[0], current[2]))
            deleted += 1
            in_state += 1
            current = next(state, sentinel)
        if current[0] == ext:
            in_state += 1
            same = current[1] == digest
            current = next(state, sentinel)
            if same:
                unchanged += 1
                continue
            changed += 1
        else:
            new += 1
        send[row >> 3] |= 1 << (row & 7)
        put_change((ext, digest))
    while current[0] is not None:
        put_delete((current[0], current[2]))
        deleted += 1
        in_state += 1
        current = next(state, sentinel)
    return unchanged, new, changed, deleted, in_state
