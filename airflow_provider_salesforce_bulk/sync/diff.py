"""The comparison of a run's input with the sync state, in C++ with bounded memory.

One pass over the input turns each batch into its records' external ids and CSV lines
(:class:`~.digest.RowFormatter`, the client's own serializer) and appends them to an Arrow IPC file
in ``workdir``; Python touches a batch, not a row. DuckDB (:mod:`.engine`) then hashes the lines and
joins them with the state (a full outer join: new, changed, unchanged, and state entries absent from
the input), spilling past its memory limit, and writes the change set, the deletes and the rows to
send. :meth:`SyncPlan.records` reads the lines of the rows to send back in input order and parses them
with Arrow's CSV reader into the job's column texts.

Bad input fails here, before any job: an empty or missing external id, or an external id given twice
(two rows named). The delete guard too: with ``delete_missing``, more deletes than
``max_delete_ratio`` of the state is a :class:`DeleteGuardError` naming the numbers.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from airflow_provider_salesforce_bulk.client.errors import InputError
from airflow_provider_salesforce_bulk.sync.digest import (
    DIGEST_SQL,
    LINES_SCHEMA,
    RowFormatter,
    fields_fingerprint,
)
from airflow_provider_salesforce_bulk.sync.engine import connect, insert, reader, sql_path
from airflow_provider_salesforce_bulk.sync.errors import DeleteGuardError
from airflow_provider_salesforce_bulk.sync.pending import (
    CHANGES_SCHEMA,
    DELETES_SCHEMA,
    PendingChanges,
    RowFile,
)
from airflow_provider_salesforce_bulk.sync.state import (
    CURRENT,
    StateInfo,
    SyncIdentity,
    check_identity,
    check_sorted,
    fetch_state,
    read_current,
)
from airflow_provider_salesforce_bulk.sync.storage import storage_for

RUN_ROWS = 65_536  # records formatted at a time (a batch of dicts; Arrow batches come as they are)
_NA_MARKER = "#N/A"
_INSERT_ROWS = 65_536  # lines gathered before they are written and handed to DuckDB


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
        lines_file: str,
        send_file: str,
        changes: RowFile,
        deletes: RowFile,
    ) -> None:
        self.spec = spec
        self.base = base
        self.base_current = base_current
        self.counts = counts
        self.lines_file = lines_file
        self.send_file = send_file
        self.changes = changes
        self.deletes_file = deletes

    def records(self) -> Iterator[dict[str, str | None]]:
        """The records to send (new and changed), in input order, as the job's column texts.

        A value is its text as the job writes it; with ``none_as="null"`` the ``#N/A`` of a ``None``
        comes back as ``None`` (and with ``none_as="empty"`` a ``None`` as ``""``): the job then sends
        exactly the bytes the digest was made of.
        """
        with pa.OSFile(self.lines_file) as source:
            # Only the line column is read, a batch at a time (no memory map: the file is the input's size).
            options = ipc.IpcReadOptions(included_fields=[LINES_SCHEMA.get_field_index("line")])
            lines = ipc.open_file(source, options=options)
            wanted = (
                row
                for batch in pq.ParquetFile(self.send_file).iter_batches(batch_size=RUN_ROWS)
                for row in batch.column(0).to_pylist()
            )
            row = next(wanted, None)
            chosen: list[Any] = []
            held = end = 0
            # The input's batches and the sorted rows to send advance together: one batch at a time.
            for index in range(lines.num_record_batches):
                batch = lines.get_batch(index)
                start, end = end, end + batch.num_rows
                picked = []
                while row is not None and row < end:
                    picked.append(row - start)
                    row = next(wanted, None)
                if picked:
                    chosen.append(batch.column(0).take(pa.array(picked, pa.int64())))
                    held += len(picked)
                if held >= RUN_ROWS:
                    yield from self._parse(chosen)
                    chosen, held = [], 0
            yield from self._parse(chosen)

    def _parse(self, chosen: list[Any]) -> Iterator[dict[str, str | None]]:
        """CSV lines back to the column texts, by Arrow's CSV reader (quotes and all)."""
        if not chosen:
            return
        data = b"".join(_text_bytes(array) for array in chosen)
        names = list(self.spec.fieldnames)
        table = pcsv.read_csv(
            io.BytesIO(data),
            read_options=pcsv.ReadOptions(column_names=names, block_size=max(1 << 20, len(data) + 1)),
            parse_options=pcsv.ParseOptions(newlines_in_values=True),
            convert_options=pcsv.ConvertOptions(
                column_types=dict.fromkeys(names, pa.string()),
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
            ),
        )
        if self.spec.none_as == "null":
            table = pa.table(
                [pc.if_else(pc.equal(column, _NA_MARKER), None, column) for column in table.columns],
                names=names,
            )
        yield from table.to_pylist()

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


def _batches(records: Iterable[Any], run_rows: int) -> Iterator[Any]:
    """Arrow record batches as they come, one at a time (a table as its batches), dicts a list of
    ``run_rows`` at a time."""
    source = iter(records)
    arrow = (pa.RecordBatch, pa.Table)
    for first in source:
        if isinstance(first, arrow):
            # Not gathered in a block: an Arrow input's batches are held one at a time.
            yield from [first] if isinstance(first, pa.RecordBatch) else first.to_batches()
            continue
        block = [first, *islice(source, run_rows - 1)]
        if not any(kind in arrow for kind in set(map(type, block))):
            yield block
            continue
        dicts: list[Any] = []
        for item in block:
            if isinstance(item, arrow):
                if dicts:
                    yield dicts
                    dicts = []
                yield from [item] if isinstance(item, pa.RecordBatch) else item.to_batches()
            else:
                dicts.append(item)
        if dicts:
            yield dicts


def _text_bytes(array: Any) -> bytes:
    """The UTF-8 bytes of a string array's values, all together (the array may be a slice)."""
    _, offsets, data = array.buffers()
    if data is None or not len(array):
        return b""
    view = memoryview(offsets).cast("B").cast("i")
    return memoryview(data)[view[array.offset] : view[array.offset + len(array)]].tobytes()


def _write_lines(con: Any, records: Iterable[Any], spec: SyncSpec, path: str, run_rows: int) -> int:
    """Format the input into ``path`` (external id, line, row) and its keys and digests into the table
    ``input_keys``; the number of records read."""
    con.execute(
        "CREATE TEMP TABLE input_keys (external_id VARCHAR, row BIGINT, digest_lo UBIGINT, digest_hi UBIGINT)"
    )
    formatter = RowFormatter(
        spec.fieldnames, spec.external_id_field, none_as=spec.none_as, allow_na_marker=spec.allow_na_marker
    )
    read = 0
    held: list[pa.Table] = []

    def flush() -> None:
        # Small batches (a file's, a query's) are gathered first: each insert costs a query's planning.
        lines = pa.concat_tables(held)
        writer.write_table(lines)
        insert(con, "input_keys", lines, f"external_id, row, {DIGEST_SQL}")
        held.clear()

    with ipc.new_file(path, LINES_SCHEMA) as writer:
        for batch in _batches(records, run_rows):
            count = batch.num_rows if isinstance(batch, pa.RecordBatch) else len(batch)
            if not count:
                continue
            held.append(formatter.lines(batch, read))
            read += count
            if sum(table.num_rows for table in held) >= _INSERT_ROWS:
                flush()
        if held:
            flush()
    return read


def plan_sync(
    location: Any, records: Iterable[Any], spec: SyncSpec, workdir: str, *, run_rows: int = RUN_ROWS
) -> SyncPlan:
    """Compare ``records`` (dicts, or Arrow record batches/tables) with the state at ``location``.

    ``run_rows`` is how many dicts are formatted at a time.
    """
    storage = storage_for(location)
    if spec.full_sync:
        # The old state is not read (it may be the unreadable one this run replaces); only its pointer's
        # bytes are kept, so that the advance sees whether another run moved it meanwhile.
        base, base_current = None, storage.read_bytes(CURRENT)
    else:
        base, base_current = read_current(storage)
    state_file: str | None = None
    if base is not None:
        check_identity(storage, base, spec.identity)
        state_file = fetch_state(storage, base, workdir)
        check_sorted(state_file, storage.url(base.file))
    lines_file = os.path.join(workdir, "lines.arrow")
    send_file = os.path.join(workdir, "send.parquet")
    changes = RowFile(os.path.join(workdir, "changes.parquet"), CHANGES_SCHEMA)
    deletes = RowFile(os.path.join(workdir, "deletes.parquet"), DELETES_SCHEMA)
    same_fields = base is not None and base.fields_fingerprint == spec.identity.fields_fingerprint
    with connect(workdir) as con:
        read = _write_lines(con, records, spec, lines_file, max(1, run_rows))
        _no_duplicates(con, spec, read)
        new, changed, to_delete = _compare(con, state_file, same_fields, spec.delete_missing)
        in_state = 0 if base is None else base.row_count
        if spec.delete_missing and to_delete > spec.max_delete_ratio * in_state:
            raise DeleteGuardError(
                f"{to_delete:,} of the {in_state:,} records in the sync state are absent from this run's "
                f"input ({to_delete / in_state:.1%}); max_delete_ratio={spec.max_delete_ratio} allows at "
                f"most {int(spec.max_delete_ratio * in_state):,}: nothing was sent. Raise max_delete_ratio "
                "if the input is complete"
            )
        con.execute(
            f"COPY (SELECT row FROM diff WHERE row IS NOT NULL ORDER BY row) TO {sql_path(send_file)}"  # noqa: S608
        )
        changes.write(
            reader(
                con,
                "SELECT external_id, digest_lo, digest_hi FROM diff WHERE row IS NOT NULL "
                "ORDER BY external_id",
                CHANGES_SCHEMA,
            )
        )
        deletes.write(
            reader(
                con,
                "SELECT external_id, sf_id FROM diff WHERE row IS NULL ORDER BY external_id",
                DELETES_SCHEMA,
            )
        )
    counts = SyncCounts(read, read - new - changed, new, changed, to_delete, in_state)
    return SyncPlan(
        spec, None if spec.full_sync else base, base_current, counts, lines_file, send_file, changes, deletes
    )


def _no_duplicates(con: Any, spec: SyncSpec, read: int) -> None:
    # A grouped count rather than count(DISTINCT ...): DuckDB spills the first, not the second.
    (distinct,) = con.execute(
        "SELECT count(*) FROM (SELECT external_id FROM input_keys GROUP BY external_id)"
    ).fetchone()
    if distinct == read:
        return
    # Only now the dearer query that names the rows.
    found = con.execute(
        "SELECT external_id, min(row), max(row) FROM input_keys GROUP BY external_id "
        "HAVING count(*) > 1 ORDER BY min(row) LIMIT 1"
    ).fetchone()
    if found is not None:
        ext, first, second = found
        raise InputError(
            f"the external id {ext!r} is given twice in the input (records {first} and {second}): "
            "a change-only sync needs one record per external id",
            record_index=second,
            field=spec.external_id_field,
        )


def _compare(
    con: Any, state_file: str | None, same_fields: bool, delete_missing: bool
) -> tuple[int, int, int]:
    """Join the input with the state into the table ``diff``; the counts of new, changed and deletes."""
    if state_file is None:
        state = (
            "(SELECT * FROM (VALUES ('', 0::UBIGINT, 0::UBIGINT, '')) "
            "t(external_id, digest_lo, digest_hi, sf_id) WHERE false)"
        )
    else:
        state = f"read_parquet({sql_path(state_file)})"
    # Without delete_missing the absent records stay in Salesforce, so they stay in the state too.
    absent = "s.external_id IS NOT NULL" if delete_missing else "false"
    differs = "true" if not same_fields else "i.digest_lo <> s.digest_lo OR i.digest_hi <> s.digest_hi"
    con.execute(
        f"""
        CREATE TEMP TABLE diff AS
        WITH i AS (SELECT * FROM input_keys)
        SELECT i.row, coalesce(i.external_id, s.external_id) AS external_id, i.digest_lo, i.digest_hi,
               s.sf_id, s.external_id IS NOT NULL AS in_state
        FROM i FULL OUTER JOIN {state} s ON i.external_id = s.external_id
        WHERE (i.external_id IS NULL AND {absent})
           OR (i.external_id IS NOT NULL AND (s.external_id IS NULL OR {differs}))
        """  # noqa: S608 - paths of this process's own files, quoted
    )
    row = con.execute(
        "SELECT count(*) FILTER (WHERE row IS NOT NULL AND NOT in_state), "
        "count(*) FILTER (WHERE row IS NOT NULL AND in_state), count(*) FILTER (WHERE row IS NULL) FROM diff"
    ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2])
