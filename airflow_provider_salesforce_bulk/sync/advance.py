"""Advancing the sync state with a run's final outcomes.

The next state, per external id (decisions):

- sent and accepted (a successful results row): the digest sent and the Salesforce Id of the result;
- sent and not accepted (failed, or never known to succeed): the old entry if there was one, so the
  record differs from the state and is sent again next run (a new one stays absent, for the same end);
- not sent: the old entry, unless its delete succeeded (then it is gone); a failed delete stays.

A run that sent and deleted nothing keeps the state as it is, version included (nothing written):
its next state would be the same rows. With ``full_sync`` the old entries are not read: the state
is rebuilt from this run's accepted records.

The next state is computed in DuckDB (:mod:`.engine`): the results and the confirmed deletes are
written to Arrow files in ``workdir``, joined with the change set and the state, and the rows sorted
by external id, spilling past the memory limit. When the column set changed since the state was
written, the entries kept from it get the zero digest, so they are sent again. The same inputs give
the same rows, written with fixed options, so the same bytes: a retried advance whose first try
already moved CURRENT finds its own state there and succeeds without writing (see
:func:`~.state.commit_state`). Accepted ids that were not in the change set are ignored (they are
no result of this run's sends).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from airflow_provider_salesforce_bulk.sync.engine import connect, insert_rows, reader, sql_path
from airflow_provider_salesforce_bulk.sync.errors import StateMovedError
from airflow_provider_salesforce_bulk.sync.pending import PendingChanges, RowFile
from airflow_provider_salesforce_bulk.sync.state import (
    CURRENT,
    FORMAT_VERSION,
    ROW_GROUP_ROWS,
    SCHEMA,
    StateInfo,
    check_identity,
    commit_state,
    fetch_state,
    version_file,
    write_state_file,
)
from airflow_provider_salesforce_bulk.sync.storage import SyncStorage, storage_for

_ACCEPTED = pa.schema([pa.field("external_id", pa.string()), pa.field("sf_id", pa.string())])
_DELETED = pa.schema([pa.field("sf_id", pa.string())])
MERGE_ROWS = 262_144
"""At most this many sends and deletes are merged into the old state's order; more are sorted with it in
DuckDB (which spills)."""


def advance_state(
    location: Any,
    pending: PendingChanges,
    accepted: Iterable[tuple[str, str]],
    deleted_ids: Iterable[str],
    workdir: str,
) -> StateInfo:
    """Write and publish the state after ``pending``'s run.

    Parameters
    ----------
    accepted
        ``(external id, Salesforce Id)`` of every successful upsert result of the run's sends.
    deleted_ids
        The Salesforce Ids of every successful delete result.
    """
    storage = storage_for(location)
    base = pending.base_info
    if base is not None:
        check_identity(storage, base, pending.identity)
    expected = _unmoved(storage, pending)
    if _nothing_to_record(pending, base) and storage.read_bytes(CURRENT) == expected:
        # Nothing was sent or deleted: the next state would be this one, so it is kept, version and all
        # (a retry finds the same pointer and keeps it too).
        assert base is not None
        _drop_other_change_sets(storage, pending)
        return base
    old: str | None = None
    if base is not None and not pending.full_sync:
        # Its checksum is the one the plan checked the rows' order of (check_sorted): not scanned again.
        old = fetch_state(storage, base, workdir)
    changes, deletes = pending.fetch(storage, workdir)
    version = pending.next_version
    local = os.path.join(workdir, f"next-v{version}.parquet")
    same_fields = base is not None and base.fields_fingerprint == pending.fields_fingerprint
    # Few changes (counted when planned) are merged into the old state's order, many sorted with it.
    merge = old is not None and same_fields and pending.changes_rows + pending.deletes_rows <= MERGE_ROWS
    count, sha = _write_next(old, changes, deletes, merge, same_fields, accepted, deleted_ids, workdir, local)
    info = StateInfo(
        version=version,
        format_version=FORMAT_VERSION,
        object=pending.object_name,
        external_id_field=pending.external_id_field,
        fields_fingerprint=pending.fields_fingerprint,
        row_count=count,
        sha256=sha,
        file=version_file(version),
    )
    committed = commit_state(storage, local, info, expected)
    _drop_other_change_sets(storage, pending)
    return committed


def _write_next(
    old: str | None,
    changes: RowFile,
    deletes: RowFile,
    merge: bool,
    same_fields: bool,
    accepted: Iterable[tuple[str, str]],
    deleted_ids: Iterable[str],
    workdir: str,
    local: str,
) -> tuple[int, str]:
    """Write the next state's rows to ``local``; their count and the file's sha256."""
    with connect(workdir) as con:
        con.execute("CREATE TEMP TABLE accepted (external_id VARCHAR, sf_id VARCHAR)")
        insert_rows(con, "accepted", _ACCEPTED, accepted)
        con.execute("CREATE TEMP TABLE deleted (sf_id VARCHAR)")
        insert_rows(con, "deleted", _DELETED, ((sf_id,) for sf_id in deleted_ids))
        if merge:
            assert old is not None
            count, sha = write_state_file(_merged(con, old, changes.path, deletes.path), local)
        else:
            # Materialized first, then read sorted: a join streamed straight into a sort's result cannot
            # spill (DuckDB 1.5 runs out of memory there), a table can.
            sql = _next_state_sql(old, changes.path, deletes.path, same_fields)
            con.execute("CREATE TEMP TABLE next_state AS " + sql)
            query = "SELECT external_id, digest_lo, digest_hi, sf_id FROM next_state ORDER BY external_id"
            count, sha = write_state_file(reader(con, query, SCHEMA), local)
    return count, sha


def _nothing_to_record(pending: PendingChanges, base: StateInfo | None) -> bool:
    """Whether the run sent and deleted nothing against a state of its own column set."""
    return (
        base is not None
        and not pending.full_sync
        and base.fields_fingerprint == pending.fields_fingerprint
        and pending.changes_rows == 0
        and pending.deletes_rows == 0
    )


def _drop_other_change_sets(storage: SyncStorage, pending: PendingChanges) -> None:
    # This run's change set stays until the next advance, so a retry of this very advance (its outcome
    # unknown to the plan store) recomputes the same state and finds it published.
    for name in storage.children_of("pending"):
        if name != pending.run_key:
            storage.remove(f"pending/{name}")


def _unmoved(storage: SyncStorage, pending: PendingChanges) -> bytes | None:
    """The ``CURRENT`` this run planned against; a :class:`StateMovedError` when another run has
    advanced the state since (and removed this run's change set): refused before reading anything."""
    expected = None if pending.base_current is None else pending.base_current.encode()
    if storage.read_bytes(CURRENT) != expected and not storage.exists(f"{pending.folder}/changes.parquet"):
        base = pending.base_info
        raise StateMovedError(
            f"the sync state at {storage.url(None)} moved since this run read it (version "
            f"{'none' if base is None else base.version}): another run advanced it, so this run's view "
            "of it is stale and it is left as is"
        )
    return expected


def _merged(con: Any, old: str, changes: str, deletes: str) -> Iterator[pa.RecordBatch]:
    """The next state when the run's changes are few: the old state's sorted rows streamed a row group
    at a time, without the replaced and deleted ids, and the accepted sends (sorted, held in memory:
    at most :data:`MERGE_ROWS`) merged in where they belong. The same rows as :func:`_next_state_sql`
    sorted, without sorting the whole state."""
    sent_sql, gone_sql = _ctes(changes, deletes)
    ordered = f"WITH {sent_sql} SELECT * FROM sent ORDER BY external_id"  # noqa: S608 - our own files
    sent = pa.Table.from_batches(reader(con, ordered, SCHEMA), schema=SCHEMA)
    gone = con.execute(f"WITH {gone_sql} SELECT * FROM gone").to_arrow_reader()  # noqa: S608 - ours
    chunks = sent.column(0).chunks + [batch.column(0).cast(pa.string()) for batch in gone]
    removed = pa.chunked_array(chunks, pa.string()).combine_chunks()
    keys, taken = sent.column(0), 0
    for batch in pq.ParquetFile(old).iter_batches(batch_size=ROW_GROUP_ROWS, use_threads=False):
        if not batch.num_rows:
            continue
        kept = batch.filter(pc.invert(pc.is_in(batch.column(0), value_set=removed)))
        # The sends up to this row group's last id belong in it (those after go with a later one).
        below = pc.less_equal(keys.slice(taken), batch.column(0)[batch.num_rows - 1])
        upto = taken + (pc.sum(below.cast(pa.int64())).as_py() or 0)
        part = pa.concat_tables(
            [pa.Table.from_arrays(kept.columns, schema=SCHEMA), sent.slice(taken, upto - taken)]
        )
        if upto > taken:
            part = part.take(pc.sort_indices(part, sort_keys=[("external_id", "ascending")]))
        taken = upto
        yield from part.to_batches()
    yield from sent.slice(taken).to_batches()


def _ctes(changes: str, deletes: str) -> tuple[str, str]:
    """The accepted sends (``sent``: a result given twice for one id counts once, its smallest Id; an
    accepted id that was not sent is ignored) and the confirmed deletes (``gone``), as SQL CTEs."""
    ok = "(SELECT external_id, min(sf_id) AS sf_id FROM accepted GROUP BY external_id)"
    sent = f"""sent AS (
            SELECT c.external_id, c.digest_lo, c.digest_hi, ok.sf_id
            FROM read_parquet({sql_path(changes)}) c JOIN {ok} ok ON c.external_id = ok.external_id
        )"""  # noqa: S608 - paths of this process's own files, quoted
    gone = f"""gone AS (
            SELECT d.external_id FROM read_parquet({sql_path(deletes)}) d
            SEMI JOIN deleted ON d.sf_id = deleted.sf_id
        )"""  # noqa: S608
    return sent, gone


def _next_state_sql(old: str | None, changes: str, deletes: str, same_fields: bool) -> str:
    """The next state's rows: the accepted sends, and the old entries neither replaced nor
    deleted. A result given twice for one id counts once (its smallest Id), an accepted id that was
    not sent is ignored (no result of this run's sends), a failed send or delete keeps the old entry."""
    digests = "s.digest_lo, s.digest_hi" if same_fields else "0::UBIGINT, 0::UBIGINT"
    kept = ""
    if old is not None:
        # Anti joins (not NOT IN): DuckDB spills a hash join past its memory limit, not a mark join.
        kept = f"""
        UNION ALL
        SELECT s.external_id, {digests}, s.sf_id FROM read_parquet({sql_path(old)}) s
        ANTI JOIN sent ON s.external_id = sent.external_id
        ANTI JOIN gone ON s.external_id = gone.external_id"""  # noqa: S608 - our own file
    sent, gone = _ctes(changes, deletes)
    return f"""
        WITH {sent}, {gone}
        SELECT * FROM sent{kept}
    """  # noqa: S608 - paths of this process's own files, quoted
