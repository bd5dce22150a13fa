"""Parent lock contention: children of one parent in jobs close together fail with UNABLE_TO_LOCK_ROW."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from airflow_provider_salesforce_bulk.emulator.server import RunningEmulator

from .helpers import run_job


@pytest.fixture
def contention(emulator: RunningEmulator) -> Iterator[RunningEmulator]:
    yield emulator
    emulator.update_settings(lock_contention_seconds=None)


def account_ids(api, n: int) -> list[str]:
    info, results = run_job(
        api, "Name\n" + "".join(f"P{i}\n" for i in range(n)), object="Account", operation="insert"
    )
    assert info["numberRecordsFailed"] == 0
    return [line.split(",")[0].strip('"') for line in results["successfulResults"].splitlines()[1:]]


def test_a_parent_held_by_another_job_locks_its_children_until_the_window_ends(contention, api):
    first, second = account_ids(api, 2)
    contention.update_settings(lock_contention_seconds=600.0)
    info, _ = run_job(
        api, f"LastName,AccountId\nA,{first}\nB,{first}\n", object="Contact", operation="insert"
    )
    assert info["numberRecordsFailed"] == 0  # one job may save many children of one parent
    info, results = run_job(
        api, f"LastName,AccountId\nC,{first}\nD,{second}\nE,\n", object="Contact", operation="insert"
    )
    assert info["numberRecordsFailed"] == 1
    assert "UNABLE_TO_LOCK_ROW" in results["failedResults"]
    assert '"C"' not in results["successfulResults"]
    assert '"C"' in results["failedResults"]
    contention.update_settings(lock_contention_seconds=0.0)  # the window is over: the lock is free
    info, _ = run_job(api, f"LastName,AccountId\nC,{first}\n", object="Contact", operation="insert")
    assert info["numberRecordsFailed"] == 0


def test_the_window_is_checked_like_every_setting(contention):
    with pytest.raises(ValueError, match="lock_contention_seconds"):
        contention.update_settings(lock_contention_seconds=-1.0)
    with pytest.raises(ValueError, match="lock_contention_seconds"):
        contention.update_settings(lock_contention_seconds=float("nan"))
