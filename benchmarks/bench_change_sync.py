"""Change-only sync against a plain full upsert: 1,000,000 rows of which 1% changed.

Two inputs of the same rows: a Parquet file (a warehouse table, the realistic case) and Python dicts.
For each, every run loads into the emulator (a process of its own) through the client, in a child
process of its own so its CPU figure is its alone:

- full: the plain upsert of every row (Parquet: the client's Arrow chunks; dicts: ``perform_operation``);
- seed: a first change-only run of the unchanged input (every row new), which creates the state;
- sync: :func:`~airflow_provider_salesforce_bulk.sync.plan_sync` against the seeded state, the
  upsert of the changed rows only, their successful results, and
  :func:`~airflow_provider_salesforce_bulk.sync.advance_state`.

Libraries are imported before a child's clock starts (a worker has them loaded already); reading the
input (the Parquet file, or making the dicts) is in every child's CPU, and its cost alone is printed
beside as ``floor``: Parquet read and formatted into CSV lines, or the dicts made. Goals (issue 18):
>= 10x less worker CPU and >= 50x fewer records sent. ``CHANGE_SYNC_ROWS`` sets a smaller size.
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
BATCH_ROWS = 65_536


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


def write_parquet(path: str, changed: bool) -> None:
    """The same rows as :func:`records`, as a typed Parquet table."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    n = np.arange(ROWS, dtype=np.int64)
    quantity = n % 500 + (changed & (n % CHANGED_EVERY == 0))
    i = pa.array(n)
    table = pa.table(
        {
            EXTERNAL_ID: pc.binary_join_element_wise("WI-", pc.utf8_lpad(i.cast(pa.string()), 9, "0"), ""),
            "Name": pc.binary_join_element_wise("Item ", i.cast(pa.string()), ""),
            "Quantity__c": pa.array(quantity),
            "Unit_Price__c": pa.array((n % 997) + 0.25),
            "Active__c": pa.array(n % 2 == 1),
            "Category__c": pc.take(pa.array(CATEGORIES), pa.array(n % 4)),
        }
    )
    pq.write_table(table, path, row_group_size=BATCH_ROWS)


def _cpu() -> float:
    times = os.times()
    return times.user + times.system


def _source(kind: str, data: str, changed: bool) -> Any:
    if kind == "dict":
        return records(ROWS, changed)
    import pyarrow.parquet as pq

    return pq.ParquetFile(os.path.join(data, "changed.parquet" if changed else "base.parquet")).iter_batches(
        BATCH_ROWS
    )


async def _upsert(base_url: str, kind: str, rows: Any, accepted: list[tuple[str, str]] | None = None) -> Any:
    """Upsert ``rows`` (dicts, or Arrow batches); with ``accepted``, collect (external id, Id) of each
    successful result. Returns (jobs, records sent)."""
    from airflow_provider_salesforce_bulk.client import (
        BulkIngestClient,
        ClientCredentialsAuth,
        SalesforceSession,
        iter_arrow_chunks,
    )
    from airflow_provider_salesforce_bulk.client.job_spec import JobSpec
    from airflow_provider_salesforce_bulk.client.operation import perform_chunks
    from airflow_provider_salesforce_bulk.emulator.credentials import Credentials

    c = Credentials()
    jobs = sent = 0
    async with SalesforceSession(ClientCredentialsAuth(c.client_id, c.client_secret, base_url)) as session:
        client = BulkIngestClient(session)
        if kind == "arrow":
            spec = JobSpec(operation="upsert", object=OBJECT, external_id_field=EXTERNAL_ID)
            chunks = iter_arrow_chunks(rows, list(FIELDS))
            results = perform_chunks(client, spec, chunks, polling_interval=0.2)
        else:
            results = client.perform_operation(
                "upsert",
                OBJECT,
                rows,
                fieldnames=list(FIELDS),
                external_id_field=EXTERNAL_ID,
                polling_interval=0.2,
            )
        async for result in results:
            jobs += 1
            sent += result.record_count
            if accepted is not None:
                async for row in result.iter_successful_results():
                    accepted.append((row[EXTERNAL_ID], row["sf__Id"]))
    return jobs, sent


async def _sync(base_url: str, source: Any, state: str, workdir: str) -> dict[str, Any]:
    from airflow_provider_salesforce_bulk.sync import SyncSpec, advance_state, plan_sync

    spec = SyncSpec(object_name=OBJECT, external_id_field=EXTERNAL_ID, fieldnames=FIELDS)
    started = _cpu()
    plan = plan_sync(state, source, spec, workdir)
    pending = plan.pending(state, "bench")
    diff_cpu = _cpu() - started
    accepted: list[tuple[str, str]] = []
    jobs, sent = await _upsert(base_url, "dict", plan.records(), accepted)
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


def _floor(kind: str, data: str) -> dict[str, Any]:
    """Only reading the input: the dicts made, or the Parquet file read and formatted into CSV lines."""
    if kind == "dict":
        return {"jobs": 0, "sent": 0, "read": sum(1 for _ in records(ROWS, True))}
    from airflow_provider_salesforce_bulk.sync import RowFormatter

    formatter = RowFormatter(FIELDS, EXTERNAL_ID)
    base = 0
    for batch in _source(kind, data, True):
        base += formatter.lines(batch, base).num_rows
    return {"jobs": 0, "sent": 0, "read": base}


def child(kind: str, mode: str, base_url: str, data: str) -> None:
    import duckdb  # noqa: F401 - loaded before the clock, as in a worker
    import pyarrow.parquet  # noqa: F401

    import airflow_provider_salesforce_bulk.client
    import airflow_provider_salesforce_bulk.sync  # noqa: F401

    cpu, wall = _cpu(), time.perf_counter()
    if mode == "floor":
        figures = _floor(kind, data)
    elif mode == "full":
        jobs, sent = asyncio.run(_upsert(base_url, kind, _source(kind, data, True)))
        figures = {"jobs": jobs, "sent": sent}
    else:
        state = os.path.join(data, f"state-{kind}")
        with tempfile.TemporaryDirectory() as workdir:
            source = _source(kind, data, mode == "sync")
            figures = asyncio.run(_sync(base_url, source, state, workdir))
    figures.update(cpu=_cpu() - cpu, wall=time.perf_counter() - wall, rss_mb=peak_rss_mb())
    print(json.dumps(figures))


def _run(kind: str, mode: str, base_url: str, data: str) -> dict[str, Any]:
    out = subprocess.run(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", "benchmarks.bench_change_sync", "--child", kind, mode, base_url, data],
        capture_output=True,
        text=True,
        env={**os.environ, "CHANGE_SYNC_ROWS": str(ROWS)},
    )
    if out.returncode:
        raise RuntimeError(f"the {kind} {mode} run failed:\n{out.stderr[-3000:]}")
    figures: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return figures


def _report(kind: str, runs: dict[str, dict[str, Any]]) -> bool:
    label = "Parquet" if kind == "arrow" else "dicts"
    for mode, f in runs.items():
        extra = ""
        if "diff_cpu" in f:
            extra = (
                f", diff {f['diff_cpu']:.2f}s CPU, advance {f['advance_cpu']:.2f}s CPU, counts {f['counts']}"
            )
        print(
            f"{label:>8} {mode:>5}: {f['sent']:>9,} records sent in {f['jobs']} jobs, worker CPU "
            f"{f['cpu']:.2f}s, wall {f['wall']:.2f}s, peak RSS {f['rss_mb']:.0f} MB{extra}"
        )
    full, sync = runs["full"], runs["sync"]
    cpu_ratio = full["cpu"] / sync["cpu"]
    sent_ratio = full["sent"] / max(sync["sent"], 1)
    print(
        f"{label}, {ROWS:,} rows, 1% changed: change-only sync vs full upsert: {cpu_ratio:.1f}x less worker "
        f"CPU (goal {CPU_GOAL:g}x), {sent_ratio:.0f}x fewer records sent (goal {SENT_GOAL:g}x), "
        f"{full['wall'] / sync['wall']:.1f}x less wall, jobs {full['jobs']} vs {sync['jobs']}; reading the "
        f"input alone is {runs['floor']['cpu'] / full['cpu']:.0%} of the full upsert's CPU"
    )
    return cpu_ratio >= CPU_GOAL and sent_ratio >= SENT_GOAL


def main() -> bool:
    met = []
    with tempfile.TemporaryDirectory() as data, emulator_process() as base_url:
        write_parquet(os.path.join(data, "base.parquet"), changed=False)
        write_parquet(os.path.join(data, "changed.parquet"), changed=True)
        for kind in ("arrow", "dict"):
            runs = {mode: _run(kind, mode, base_url, data) for mode in ("floor", "seed", "full", "sync")}
            met.append(_report(kind, runs))
    return all(met)


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "--child":
        child(*sys.argv[2:6])
    else:
        sys.exit(0 if main() else 1)
