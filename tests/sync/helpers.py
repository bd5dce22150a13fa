"""One change-only run against a state, with Salesforce's answers decided by the test."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from airflow_provider_salesforce_bulk.sync import SyncCounts, SyncSpec, advance_state, plan_sync

FIELDS = ("Ext__c", "Name", "Amount__c")


def spec(**overrides: Any) -> SyncSpec:
    settings: dict[str, Any] = {"object_name": "Contact", "external_id_field": "Ext__c", "fieldnames": FIELDS}
    settings.update(overrides)
    return SyncSpec(**settings)


def sf_id(ext: str) -> str:
    return f"003{abs(hash(ext)) % 10**15:015d}"


@dataclass
class Run:
    counts: SyncCounts
    sent: list[dict[str, str | None]]
    deleted: list[tuple[str, str]]
    version: int
    state_rows: int


def run(
    location: Any,
    records: Iterable[Any],
    sync: SyncSpec | None = None,
    *,
    accept: Callable[[str], bool] = lambda ext: True,
    delete_ok: Callable[[str], bool] = lambda ext: True,
    run_key: str = "run",
    run_rows: int = 200_000,
) -> Run:
    sync = sync or spec()
    with tempfile.TemporaryDirectory() as workdir:
        plan = plan_sync(location, records, sync, workdir, run_rows=run_rows)
        pending = plan.pending(location, run_key)
        sent = list(plan.records())
        deleted = list(plan.deletes())
        accepted = [(str(r["Ext__c"]), sf_id(str(r["Ext__c"]))) for r in sent if accept(str(r["Ext__c"]))]
        gone = [sf for ext, sf in deleted if delete_ok(ext)]
        info = advance_state(location, pending, accepted, gone, workdir)
    return Run(plan.counts, sent, deleted, info.version, info.row_count)
