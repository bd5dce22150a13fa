"""Change-only syncs: where the state lives, and a state or an option that cannot be trusted.

A state on fsspec ``memory://`` (a URL or an ``ObjectStoragePath``); the delete guard; a corrupt
state, a state of another object, and bad options each fail the task with a clear error naming the
cause, before any job, and without a retry (``AirflowFailException``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from airflow_provider_salesforce_bulk.client import InputError
from airflow_provider_salesforce_bulk.emulator.server import RunningEmulator
from airflow_provider_salesforce_bulk.operators.salesforce_bulk import SalesforceBulkOperator
from tests.airflow.change_sync_helpers import (
    Raw,
    contacts,
    jobs,
    recording_seam,
    records_sent,
    run,
    stored,
    sync_dag,
    write_ndjson,
)
from tests.airflow.helpers import conn_uri_json


@pytest.fixture
def sf(emulator: RunningEmulator, monkeypatch: pytest.MonkeyPatch, airflow_db: object) -> RunningEmulator:
    monkeypatch.setenv("AIRFLOW_CONN_SF_SYNC", conn_uri_json(emulator))
    return emulator


@pytest.mark.parametrize(
    "location",
    [
        "'memory://sync-url/contacts'",
        "ObjectStoragePath('memory://sync-osp/contacts')",
    ],
)
def test_a_state_on_object_storage(
    sf: RunningEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, location: str
) -> None:
    import fsspec
    from airflow.sdk.io import attach

    monkeypatch.setattr("airflow.sdk.io.store._STORE_CACHE", {})
    attach("memory", fs=fsspec.filesystem("memory"))
    write_ndjson(tmp_path / "input.ndjson", contacts(range(120)))
    seam = "        from airflow.sdk import ObjectStoragePath\n"
    dag_id = f"sync_memory_{'osp' if 'Object' in location else 'url'}"
    state, _, summary = run(sync_dag(dag_id, tmp_path, seam=seam, sync_state_path=Raw(location)))
    assert (state, summary["sync"]["sent"], summary["sync"]["version"]) == ("success", 120, 1)
    fs = fsspec.filesystem("memory")
    root = location.split("memory://")[1].rstrip("')")
    assert fs.exists(f"/{root}/CURRENT")
    write_ndjson(tmp_path / "input.ndjson", contacts(range(3), version=1) + contacts(range(3, 120)))
    state, _, summary = run(sync_dag(dag_id, tmp_path, seam=seam, sync_state_path=Raw(location)))
    assert (state, summary["sync"]["sent"], summary["sync"]["changed"]) == ("success", 3, 3)
    assert records_sent(sf, "upsert") == 123


def _failed_before_any_job(sf: RunningEmulator, dag: object, failures: Path) -> str:
    before = len(jobs(sf))
    state, tries, _ = run(dag)
    assert (state, tries) == ("failed", 1)  # not retried: retries=2 in the DAG
    assert len(jobs(sf)) == before
    return failures.read_text()


def test_the_delete_guard_fails_before_any_job_naming_the_numbers(
    sf: RunningEmulator, tmp_path: Path
) -> None:
    write_ndjson(tmp_path / "input.ndjson", contacts(range(100)))
    assert run(sync_dag("sync_guard", tmp_path))[0] == "success"
    write_ndjson(tmp_path / "input.ndjson", contacts(range(5), version=1) + contacts(range(5, 85)))
    failures = tmp_path / "failures.txt"
    dag = sync_dag(
        "sync_guard", tmp_path, seam=recording_seam(failures), operator="Recorded", delete_missing=True
    )
    message = _failed_before_any_job(sf, dag, failures)
    assert "AirflowFailException" in message
    assert "15 of the 100 records in the sync state" in message
    assert "max_delete_ratio=0.1" in message
    assert len(stored(sf)) == 100
    # A higher ratio lets it through: 5 changed sent, 15 deleted.
    dag = sync_dag("sync_guard", tmp_path, delete_missing=True, max_delete_ratio=0.2)
    state, _, summary = run(dag)
    assert (state, summary["sync"]["sent"], summary["sync"]["deleted"]) == ("success", 5, 15)
    assert len(stored(sf)) == 85


@pytest.mark.parametrize("damage", ["current", "state_file"])
def test_a_corrupt_state_fails_clearly_and_sends_nothing(
    sf: RunningEmulator, tmp_path: Path, damage: str
) -> None:
    write_ndjson(tmp_path / "input.ndjson", contacts(range(50)))
    assert run(sync_dag(f"sync_corrupt_{damage}", tmp_path))[0] == "success"
    if damage == "current":
        (tmp_path / "state" / "CURRENT").write_text("{not json")
    else:
        state_file = tmp_path / "state" / "v1" / "state.parquet"
        state_file.write_bytes(state_file.read_bytes()[:-40] + b"x" * 40)
    write_ndjson(tmp_path / "input.ndjson", contacts(range(2), version=1) + contacts(range(2, 50)))
    failures = tmp_path / "failures.txt"
    dag = sync_dag(f"sync_corrupt_{damage}", tmp_path, seam=recording_seam(failures), operator="Recorded")
    message = _failed_before_any_job(sf, dag, failures)
    assert "SyncStateError" in message
    assert str(tmp_path / "state") in message
    # full_sync=True is the way out: it rebuilds the state, sending everything.
    state, _, summary = run(sync_dag(f"sync_corrupt_{damage}", tmp_path, full_sync=True))
    assert (state, summary["sync"]["sent"], summary["sync"]["version"]) == ("success", 50, 2)


def test_a_state_of_another_object_fails_clearly(sf: RunningEmulator, tmp_path: Path) -> None:
    write_ndjson(tmp_path / "input.ndjson", contacts(range(20)))
    assert run(sync_dag("sync_foreign", tmp_path))[0] == "success"
    accounts = tmp_path / "accounts.ndjson"
    write_ndjson(accounts, [{"External_Id__c": f"acc-{i}", "Name": f"Account {i}"} for i in range(20)])
    failures = tmp_path / "failures.txt"
    dag = sync_dag(
        "sync_foreign", tmp_path, seam=recording_seam(failures), operator="Recorded",
        object_name="Account", source=str(accounts),
    )  # fmt: skip
    message = _failed_before_any_job(sf, dag, failures)
    assert "SyncStateError" in message
    assert "Contact" in message
    assert "Account" in message


def _operator(**kwargs: object) -> SalesforceBulkOperator:
    args: dict[str, object] = {
        "task_id": "t",
        "operation": "upsert",
        "object_name": "Contact",
        "external_id_field": "External_Id__c",
        "records": [{"External_Id__c": "a", "LastName": "A"}],
        "changes_only": True,
        "sync_state_path": "/tmp/state",
    }
    args.update(kwargs)
    return SalesforceBulkOperator(**args)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "field", "words"),
    [
        ({"operation": "insert"}, "changes_only", "operation='upsert'"),
        ({"external_id_field": None, "operation": "upsert"}, "external_id_field", "external_id_field"),
        ({"sync_state_path": None}, "sync_state_path", "needs sync_state_path"),
        ({"changes_only": False}, "sync_state_path", "only used with changes_only=True"),
        (
            {"changes_only": False, "sync_state_path": None, "delete_missing": True},
            "delete_missing",
            "only used",
        ),
        ({"changes_only": False, "sync_state_path": None, "full_sync": True}, "full_sync", "only used"),
        (
            {"changes_only": False, "sync_state_path": None, "max_delete_ratio": 0.5},
            "max_delete_ratio",
            "only",
        ),
        ({"max_delete_ratio": 1.5}, "max_delete_ratio", "between 0 and 1"),
        ({"changes_only": "yes"}, "changes_only", "True or False"),
        ({"full_sync": True, "delete_missing": True}, "delete_missing", "full_sync=True"),
        ({"sync_state_path": 42}, "sync_state_path", "sync_state_path must be"),
    ],
)
def test_bad_options_name_the_option(kwargs: dict[str, object], field: str, words: str) -> None:
    with pytest.raises(InputError, match=None) as caught:
        _operator(**kwargs)._sync()
    assert caught.value.field == field
    assert words in str(caught.value)


def test_a_plain_load_has_no_sync() -> None:
    assert _operator(changes_only=False, sync_state_path=None)._sync() is None
