"""The sync state's storage: round trip, atomic replace, corrupt and foreign states, concurrent runs."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import tempfile
import textwrap
import uuid
from typing import Any

import fsspec
import pytest

from airflow_provider_salesforce_bulk.sync import (
    StateMovedError,
    SyncStateError,
    advance_state,
    plan_sync,
    read_current,
    storage_for,
)
from tests.sync.helpers import run, spec

RECORDS = [{"Ext__c": f"E{i:03d}", "Name": f"n{i}", "Amount__c": i} for i in range(300)]


def changed(step: int) -> list[dict[str, Any]]:
    return [{**r, "Amount__c": r["Amount__c"] + (step if i % 10 == 0 else 0)} for i, r in enumerate(RECORDS)]


@pytest.fixture(params=["local", "memory", "upath", "pair"])
def location(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> Any:
    name = f"sync-{uuid.uuid4().hex}"
    if request.param == "local":
        return tmp_path / "state"
    if request.param == "memory":
        return f"memory://{name}/state"
    if request.param == "upath":
        from upath import UPath

        return UPath(f"memory://{name}/state")
    return (fsspec.filesystem("memory"), f"/{name}/state")


def test_a_state_round_trips_on_every_kind_of_location(location: Any) -> None:
    first = run(location, RECORDS)
    assert (first.counts.new, first.version, first.state_rows) == (300, 1, 300)
    second = run(location, changed(1))
    assert (second.counts.changed, second.counts.unchanged, second.version) == (30, 270, 2)
    third = run(location, changed(2))
    assert (third.counts.changed, third.version) == (30, 3)
    storage = storage_for(location)
    info, _ = read_current(storage)
    assert info is not None
    assert (info.version, info.row_count) == (3, 300)
    # The previous version is kept for a retried advance; older ones are pruned.
    assert [n for n in storage.children() if n.startswith("v")] == ["v2", "v3"]
    assert storage.children_of("pending") == ["run"]


def test_the_same_inputs_give_the_same_state_bytes(tmp_path: pathlib.Path) -> None:
    a = run(tmp_path / "a", RECORDS)
    b = run(tmp_path / "b", list(reversed(RECORDS)))
    assert a.version == b.version
    bytes_a = (tmp_path / "a" / "v1" / "state.parquet").read_bytes()
    assert bytes_a == (tmp_path / "b" / "v1" / "state.parquet").read_bytes()
    assert read_current(storage_for(tmp_path / "a"))[0] == read_current(storage_for(tmp_path / "b"))[0]


def test_a_retried_advance_is_idempotent_and_a_concurrent_one_is_refused(tmp_path: pathlib.Path) -> None:
    run(tmp_path, RECORDS)
    with tempfile.TemporaryDirectory() as w1, tempfile.TemporaryDirectory() as w2:
        one = plan_sync(tmp_path, changed(1), spec(), w1)
        two = plan_sync(tmp_path, changed(5), spec(), w2)
        p1, p2 = one.pending(tmp_path, "one"), two.pending(tmp_path, "two")
        accepted = [(str(r["Ext__c"]), "003X") for r in one.records()]
        info = advance_state(tmp_path, p1, accepted, [], w1)
        # The same advance again (its first outcome unknown to the caller): nothing changes.
        assert advance_state(tmp_path, p1, accepted, [], w1) == info
        assert read_current(storage_for(tmp_path))[0] == info
        # The other run read version 1 too: its advance would lose the first one's outcomes.
        with pytest.raises(StateMovedError, match=r"moved since this run read it \(version 1\)"):
            advance_state(tmp_path, p2, [(str(r["Ext__c"]), "003Y") for r in two.records()], [], w2)
    assert read_current(storage_for(tmp_path))[0] == info


def test_a_run_with_nothing_to_send_keeps_the_state_and_its_version(location: Any) -> None:
    run(location, RECORDS)
    storage = storage_for(location)
    pointer = storage.read_bytes("CURRENT")
    state_file = storage.read_bytes("v1/state.parquet")
    with tempfile.TemporaryDirectory() as workdir:
        plan = plan_sync(location, list(reversed(RECORDS)), spec(delete_missing=True), workdir)
        assert (plan.counts.unchanged, plan.counts.sent, plan.counts.to_delete) == (300, 0, 0)
        pending = plan.pending(location, "same")
        info = advance_state(location, pending, [], [], workdir)
        # Retried (its outcome unknown to the plan store): the same answer, still nothing written.
        assert advance_state(location, pending, [], [], workdir) == info
    assert (info.version, info.row_count) == (1, 300)
    assert storage.read_bytes("CURRENT") == pointer
    assert storage.read_bytes("v1/state.parquet") == state_file
    assert [n for n in storage.children() if n.startswith("v")] == ["v1"]
    # A change afterwards advances from the kept version as usual.
    assert run(location, changed(1)).version == 2


def test_a_run_with_nothing_to_send_over_a_moved_state_is_refused(tmp_path: pathlib.Path) -> None:
    run(tmp_path, RECORDS)
    with tempfile.TemporaryDirectory() as workdir:
        plan = plan_sync(tmp_path, RECORDS, spec(), workdir)
        pending = plan.pending(tmp_path, "stale")
        moved = run(tmp_path, changed(1), run_key="other")  # removes the stale run's change set
        with pytest.raises(StateMovedError, match="moved since this run read it"):
            advance_state(tmp_path, pending, [], [], workdir)
    assert read_current(storage_for(tmp_path))[0].version == moved.version == 2  # type: ignore[union-attr]


KILLED_WRITER = """
import os, signal, sys, tempfile
from airflow_provider_salesforce_bulk.sync import advance_state, plan_sync, storage
from tests.sync.helpers import spec
from tests.sync.test_state import changed

def die(self, name, data):
    os.kill(os.getpid(), signal.SIGKILL)

storage.SyncStorage.write_atomic = die
with tempfile.TemporaryDirectory() as workdir:
    plan = plan_sync(sys.argv[1], changed(1), spec(), workdir)
    pending = plan.pending(sys.argv[1], "killed")
    advance_state(sys.argv[1], pending, [(str(r["Ext__c"]), "003K") for r in plan.records()], [], workdir)
"""


def test_a_writer_killed_before_current_moves_leaves_the_old_state_readable(tmp_path: pathlib.Path) -> None:
    run(tmp_path, RECORDS)
    before = (tmp_path / "CURRENT").read_bytes()
    child = subprocess.run(  # noqa: S603 - our own interpreter
        [sys.executable, "-c", textwrap.dedent(KILLED_WRITER), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=pathlib.Path(__file__).parents[2],
    )
    assert child.returncode == -9, child.stderr
    assert (tmp_path / "v2" / "state.parquet").exists()  # written, never named
    assert (tmp_path / "CURRENT").read_bytes() == before
    # The old state is read as it was: the killed run's records are sent again.
    again = run(tmp_path, changed(1))
    assert (again.counts.changed, again.version) == (30, 2)


def corrupt_current(root: pathlib.Path, **changes: Any) -> None:
    raw = json.loads((root / "CURRENT").read_text())
    raw.update(changes)
    (root / "CURRENT").write_text(json.dumps(raw))


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (lambda root: (root / "CURRENT").write_text("{not json"), "is not JSON"),
        (lambda root: corrupt_current(root, format_version=99), "has format version 99"),
        (lambda root: corrupt_current(root, object="Account"), "is for object 'Account', not 'Contact'"),
        (lambda root: corrupt_current(root, external_id_field="Email"), "is for external id field 'Email'"),
        (lambda root: corrupt_current(root, row_count=7), "holds 300 rows"),
        (lambda root: corrupt_current(root, extra=1), "has unexpected fields"),
        (lambda root: (root / "v1" / "state.parquet").unlink(), "is missing"),
        (
            lambda root: (root / "v1" / "state.parquet").write_bytes(
                (root / "v1" / "state.parquet").read_bytes()[:-9] + b"corrupted"
            ),
            "is corrupt: its sha256",
        ),
    ],
)
def test_a_corrupt_or_foreign_state_fails_naming_the_path(
    tmp_path: pathlib.Path, damage: Any, expected: str
) -> None:
    run(tmp_path, RECORDS)
    damage(tmp_path)
    with tempfile.TemporaryDirectory() as workdir, pytest.raises(SyncStateError) as raised:
        plan_sync(tmp_path, RECORDS, spec(), workdir)
    assert expected in str(raised.value)
    assert str(tmp_path) in str(raised.value)
    # full_sync is the way out: everything is sent and the state rebuilt.
    rebuilt = run(tmp_path, RECORDS, spec(full_sync=True))
    assert (rebuilt.counts.new, rebuilt.state_rows) == (300, 300)
    assert run(tmp_path, RECORDS).counts.sent == 0


def test_a_state_written_unsorted_is_refused(tmp_path: pathlib.Path) -> None:
    import hashlib

    import pyarrow.parquet as pq

    from airflow_provider_salesforce_bulk.sync.state import SCHEMA

    run(tmp_path, RECORDS)
    path = tmp_path / "v1" / "state.parquet"
    table = pq.read_table(path).cast(SCHEMA)
    pq.write_table(table.take(list(reversed(range(table.num_rows)))), path)
    corrupt_current(tmp_path, sha256=hashlib.sha256(path.read_bytes()).hexdigest())
    with tempfile.TemporaryDirectory() as workdir, pytest.raises(SyncStateError, match="not sorted"):
        plan_sync(tmp_path, RECORDS, spec(), workdir)


def test_a_local_pointer_is_replaced_by_a_rename(tmp_path: pathlib.Path) -> None:
    run(tmp_path, RECORDS)
    inode = os.stat(tmp_path / "CURRENT").st_ino
    run(tmp_path, changed(1))
    assert os.stat(tmp_path / "CURRENT").st_ino != inode
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_a_tampered_change_set_is_refused_and_the_state_left_as_is(tmp_path: pathlib.Path) -> None:
    run(tmp_path, RECORDS)
    before = (tmp_path / "CURRENT").read_bytes()
    with tempfile.TemporaryDirectory() as workdir:
        plan = plan_sync(tmp_path, changed(1), spec(), workdir)
        pending = plan.pending(tmp_path, "tampered")
        changes = tmp_path / "pending" / "tampered" / "changes.parquet"
        changes.write_bytes(changes.read_bytes() + b"x")
        with pytest.raises(SyncStateError, match=r"pending/tampered/changes.parquet is corrupt"):
            advance_state(tmp_path, pending, [], [], workdir)
    assert (tmp_path / "CURRENT").read_bytes() == before


def test_a_full_sync_over_an_unreadable_state_advances_once_even_when_retried(tmp_path: pathlib.Path) -> None:
    run(tmp_path, RECORDS)
    (tmp_path / "CURRENT").write_text("{broken")
    with tempfile.TemporaryDirectory() as workdir:
        plan = plan_sync(tmp_path, RECORDS, spec(full_sync=True), workdir)
        assert plan.counts.new == 300
        pending = plan.pending(tmp_path, "full")
        accepted = [(str(r["Ext__c"]), "003F") for r in plan.records()]
        info = advance_state(tmp_path, pending, accepted, [], workdir)
        assert (info.version, info.row_count) == (2, 300)
        assert advance_state(tmp_path, pending, accepted, [], workdir) == info
    assert run(tmp_path, RECORDS).counts.unchanged == 300
