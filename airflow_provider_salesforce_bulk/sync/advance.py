"""Advancing the sync state with a run's final outcomes.

The next state, per external id (decisions):

- sent and accepted (a successful results row): the digest sent and the Salesforce Id of the result;
- sent and not accepted (failed, or never known to succeed): the old entry if there was one, so the
  record differs from the state and is sent again next run (a new one stays absent, for the same end);
- not sent: the old entry, unless its delete succeeded (then it is gone); a failed delete stays.

With ``full_sync`` the old entries are not read: the state is rebuilt from this run's accepted records.

Everything is streamed: the results and the confirmed deletes are sorted externally and merged with
the state and the change set, all sorted by external id. The same inputs give the same rows, written
with fixed options, so the same bytes: a retried advance whose first try already moved CURRENT finds
its own state there and succeeds without writing (see :func:`~.state.commit_state`). Accepted ids that
were not in the change set are ignored (they are no result of this run's sends).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import Any

from airflow_provider_salesforce_bulk.sync.errors import StateMovedError
from airflow_provider_salesforce_bulk.sync.pending import PendingChanges
from airflow_provider_salesforce_bulk.sync.spill import sorted_rows
from airflow_provider_salesforce_bulk.sync.state import (
    CURRENT,
    FORMAT_VERSION,
    StateInfo,
    StateRow,
    check_identity,
    commit_state,
    fetch_state,
    iter_state,
    version_file,
    write_state_file,
)
from airflow_provider_salesforce_bulk.sync.storage import storage_for

_END = (None, None)


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
    old: Iterator[StateRow] = iter(())
    if base is not None and not pending.full_sync:
        old = iter_state(fetch_state(storage, base, workdir), storage.url(base.file))
    expected = None if pending.base_current is None else pending.base_current.encode()
    if storage.read_bytes(CURRENT) != expected and not storage.exists(f"{pending.folder}/changes.parquet"):
        # Another run advanced the state (and removed this run's change set): refuse before reading.
        raise StateMovedError(
            f"the sync state at {storage.url(None)} moved since this run read it (version "
            f"{'none' if base is None else base.version}): another run advanced it, so this run's view "
            "of it is stale and it is left as is"
        )
    changes, deletes = pending.fetch(storage, workdir)
    confirmed = _confirmed_deletes(deletes.rows(), deleted_ids, workdir)
    results = sorted_rows(((ext, sf_id) for ext, sf_id in accepted), workdir, "accepted")
    rows = _next_rows(old, changes.rows(), results, confirmed)
    version = pending.next_version
    local = os.path.join(workdir, f"next-v{version}.parquet")
    count, sha = write_state_file(rows, local)
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
    # This run's change set stays until the next advance, so a retry of this very advance (its outcome
    # unknown to the plan store) recomputes the same state and finds it published.
    for name in storage.children_of("pending"):
        if name != pending.run_key:
            storage.remove(f"pending/{name}")
    return committed


def _confirmed_deletes(
    planned: Iterator[tuple[Any, Any]], deleted_ids: Iterable[str], workdir: str
) -> Iterator[tuple[Any, ...]]:
    """The external ids whose delete succeeded, sorted: planned deletes joined with the results by Id."""
    by_sf_id = sorted_rows(((sf_id, ext) for ext, sf_id in planned), workdir, "planned")
    done = sorted_rows(((sf_id,) for sf_id in deleted_ids), workdir, "deleted")

    def joined() -> Iterator[tuple[Any, ...]]:
        ok = next(done, None)
        for sf_id, ext in by_sf_id:
            while ok is not None and ok[0] < sf_id:
                ok = next(done, None)
            if ok is not None and ok[0] == sf_id:
                yield (ext,)

    return sorted_rows(joined(), workdir, "confirmed")


def _next_rows(
    old: Iterator[StateRow],
    changes: Iterator[tuple[Any, Any]],
    results: Iterator[tuple[Any, ...]],
    confirmed: Iterator[tuple[Any, ...]],
) -> Iterator[StateRow]:
    state: Any = next(old, _END)
    change: Any = next(changes, _END)
    result: Any = next(results, _END)
    gone: Any = next(confirmed, _END)
    while state[0] is not None or change[0] is not None:
        ext = min(x for x in (state[0], change[0]) if x is not None)
        while result[0] is not None and result[0] < ext:
            result = next(results, _END)
        while gone[0] is not None and gone[0] < ext:
            gone = next(confirmed, _END)
        in_state = state[0] == ext
        entry = state if in_state else None
        if in_state:
            state = next(old, _END)
        if change[0] == ext:
            if result[0] == ext:
                entry = (ext, change[1], result[1])
            change = next(changes, _END)
        elif gone[0] == ext:
            entry = None
        if entry is not None:
            yield (entry[0], entry[1], entry[2])
