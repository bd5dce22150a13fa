"""Change-only sync against a plain full upsert: 1,000,000 rows of which 1% changed.

Both runs load the same input into the emulator (a process of its own) through the client
(``BulkIngestClient.perform_operation``), each in a child process of its own so its CPU figure is
its alone:

- full: the plain upsert of every row;
- sync: :func:`~airflow_provider_salesforce_bulk.sync.plan_sync` against the state of the previous
  run, the upsert of the changed rows only, their successful results, and
  :func:`~airflow_provider_salesforce_bulk.sync.advance_state`.

The state is seeded by a first change-only run (every row new) of the unchanged input, which is
measured too. Input generation is in every child's CPU (a real source costs at least that); its own
cost is printed beside. Goals (issue 18): >= 10x less worker CPU and >= 50x fewer records sent.
``CHANGE_SYNC_ROWS`` sets a smaller size for a quick run.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any

from benchmarks._support import emulator_process, peak_rss_mb

ROWS = int(os.environ.get("CHANGE_SYNC_ROWS", "1000000"))
CHANGED_EVERY = 100  # 1% of the rows changed in the second input
CPU_GOAL = 10.0
SENT_GOAL = 50.0
OBJECT = "Warehouse_Item__c"
EXTERNAL_ID = "External_Id__c"
FIELDS = (EXTERNAL_ID, "Name", "Quantity__c", "Unit_Price__c", "Active__c", "Category__c")
CATEGORIES = ("Hardware", "Software", "Consumable", "Spare Part")


def records(n: int, changed: bool) -> Iterator[dict[str, Any]]:
    for i in range(n):
        quantity = i % 500 + (1 if changed and i % CHANGED_EVERY == 0 else 0)
        yield {
            EXTERNAL_ID: f"WI-{i:09d}",
            "Name": f"Item {i}",
            "Quantity__c": quantity,
            "Unit_Price__c": (i % 997) + 0.25,
            "Active__c": i % 2 == 1,
            "Category__c": CATEGORIES[i % 4],
        }


def _cpu() -> float:
    times = os.times()
    return times.user + times.system


async def _upsert(base_url: str, rows: Any, accepted: list[tuple[str, str]] | None = None) -> tuple[int, int]:
    """Upsert ``rows``; with ``accepted``, collect (external id, Id) of each successful result."""
    from airflow_provider_salesforce_bulk.client import (
        BulkIngestClient,
        ClientCredentialsAuth,
        SalesforceSession,
    )
    from airflow_provider_salesforce_bulk.emulator.credentials import Credentials

    c = Credentials()
    jobs = sent = 0
    async with SalesforceSession(ClientCredentialsAuth(c.client_id, c.client_secret, base_url)) as session:
        client = BulkIngestClient(session)
        async for result in client.perform_operation(
            "upsert",
            OBJECT,
            rows,
            fieldnames=list(FIELDS),
            external_id_field=EXTERNAL_ID,
            polling_interval=0.2,
        ):
            jobs += 1
            sent += result.record_count
            if accepted is not None:
                async for row in result.iter_successful_results():
                    accepted.append((row[EXTERNAL_ID], row["sf__Id"]))
    return jobs, sent


async def _sync(base_url: str, state: str, changed: bool, workdir: str) -> dict[str, Any]:
    from airflow_provider_salesforce_bulk.sync import SyncSpec, advance_state, plan_sync

    spec = SyncSpec(object_name=OBJECT, external_id_field=EXTERNAL_ID, fieldnames=FIELDS)
    started = _cpu()
    plan = plan_sync(state, records(ROWS, changed), spec, workdir)
    pending = plan.pending(state, "bench")
    diff_cpu = _cpu() - started
    accepted: list[tuple[str, str]] = []  # the changed rows' results: 1% of the input
    jobs, sent = await _upsert(base_url, plan.records(), accepted)
    started = _cpu()
    info = advance_state(state, pending, accepted, [], workdir)
    advance_cpu = _cpu() - started
    return {
        "jobs": jobs,
        "sent": sent,
        "diff_cpu": diff_cpu,
        "advance_cpu": advance_cpu,
        "state_rows": info.row_count,
        "counts": vars(plan.counts),
    }


def child(mode: str, base_url: str, state: str) -> None:
    cpu, wall = _cpu(), time.perf_counter()
    if mode == "generate":
        figures: dict[str, Any] = {"jobs": 0, "sent": sum(1 for _ in records(ROWS, True))}
    elif mode == "full":
        jobs, sent = asyncio.run(_upsert(base_url, records(ROWS, True)))
        figures = {"jobs": jobs, "sent": sent}
    else:
        with tempfile.TemporaryDirectory() as workdir:
            figures = asyncio.run(_sync(base_url, state, mode == "sync", workdir))
    figures.update(cpu=_cpu() - cpu, wall=time.perf_counter() - wall, rss_mb=peak_rss_mb())
    print(json.dumps(figures))


def _run(mode: str, base_url: str, state: str) -> dict[str, Any]:
    out = subprocess.run(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", "benchmarks.bench_change_sync", "--child", mode, base_url, state],
        capture_output=True,
        text=True,
        env={**os.environ, "CHANGE_SYNC_ROWS": str(ROWS)},
    )
    if out.returncode:
        raise RuntimeError(f"the {mode} run failed:\n{out.stderr[-3000:]}")
    figures: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return figures


def main() -> bool:
    with tempfile.TemporaryDirectory() as state, emulator_process() as base_url:
        runs = {mode: _run(mode, base_url, state) for mode in ("generate", "seed", "full", "sync")}
    for mode, f in runs.items():
        extra = ""
        if "diff_cpu" in f:
            extra = (
                f", diff {f['diff_cpu']:.1f}s CPU, advance {f['advance_cpu']:.1f}s CPU, counts {f['counts']}"
            )
        print(
            f"{mode:>8}: {f['sent']:>9,} records sent in {f['jobs']} jobs, worker CPU {f['cpu']:.1f}s, "
            f"wall {f['wall']:.1f}s, peak RSS {f['rss_mb']:.0f} MB{extra}"
        )
    full, sync = runs["full"], runs["sync"]
    cpu_ratio = full["cpu"] / sync["cpu"]
    sent_ratio = full["sent"] / max(sync["sent"], 1)
    print(
        f"{ROWS:,} rows, 1% changed: change-only sync vs full upsert: {cpu_ratio:.1f}x less worker CPU "
        f"(goal {CPU_GOAL:g}x), {sent_ratio:.0f}x fewer records sent (goal {SENT_GOAL:g}x), "
        f"{full['wall'] / sync['wall']:.1f}x less wall, jobs {full['jobs']} vs {sync['jobs']}"
    )
    return cpu_ratio >= CPU_GOAL and sent_ratio >= SENT_GOAL


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        sys.exit(0 if main() else 1)
