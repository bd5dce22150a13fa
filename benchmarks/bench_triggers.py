"""500 triggers for 500 jobs on one connection in one event loop, against the emulator.

Targets: exactly one token request, one connection pool, no loop block over 0.2 s (a watchdog
coroutine measures how late its sleeps wake up), and the CPU time per poll (reported). The emulator
runs in its own process so the CPU figures are the triggers' own.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time

from benchmarks._support import emulator_process

TRIGGERS = 500
MAX_BLOCK_SECONDS = 0.2
CSV = b"LastName\n" + b"".join(b"Bench %d\n" % i for i in range(20))


async def _watchdog(stop: asyncio.Event, worst: list[float]) -> None:
    tick = 0.02
    while not stop.is_set():
        started = time.perf_counter()
        await asyncio.sleep(tick)
        worst[0] = max(worst[0], time.perf_counter() - started - tick)


async def _run(base_url: str) -> dict[str, float]:
    from airflow_provider_salesforce_bulk.client import (
        BulkIngestClient,
        ClientCredentialsAuth,
        SalesforceSession,
    )
    from airflow_provider_salesforce_bulk.emulator.credentials import Credentials
    from airflow_provider_salesforce_bulk.hooks.pool import shared_pools
    from airflow_provider_salesforce_bulk.triggers.salesforce_bulk import SalesforceBulkJobTrigger

    creds = Credentials()
    # Jobs are created by a separate session with its own token cache, so the triggers' token
    # count starts at zero.
    from airflow_provider_salesforce_bulk.client import TokenCache

    setup_auth = ClientCredentialsAuth(creds.client_id, creds.client_secret, base_url, use_basic_auth=True)
    async with SalesforceSession(setup_auth, token_cache=TokenCache()) as session:
        client = BulkIngestClient(session)
        limit = asyncio.Semaphore(20)

        async def submit() -> str:
            async with limit:
                job = await client.create_job("insert", "Contact")
                await client.upload_job_data(job.id, CSV)
                return job.id

        job_ids = await asyncio.gather(*(submit() for _ in range(TRIGGERS)))

    token_requests = 0
    original_fetch = ClientCredentialsAuth.fetch_token

    async def counting_fetch(self: ClientCredentialsAuth, http: object, **options: object) -> object:
        nonlocal token_requests
        token_requests += 1
        return await original_fetch(self, http, **options)  # type: ignore[arg-type]

    polls = 0
    original_get = BulkIngestClient.get_job

    async def counting_get(self: BulkIngestClient, job_id: str) -> object:
        nonlocal polls
        polls += 1
        return await original_get(self, job_id)

    ClientCredentialsAuth.fetch_token = counting_fetch  # type: ignore[method-assign,assignment]
    BulkIngestClient.get_job = counting_get  # type: ignore[method-assign,assignment]
    pools_before = shared_pools.created
    stop = asyncio.Event()
    worst = [0.0]
    watchdog = asyncio.create_task(_watchdog(stop, worst))
    triggers = [
        SalesforceBulkJobTrigger("sf_bench", [job_id], deadline=time.time() + 300, poll_interval=2.0)
        for job_id in job_ids
    ]
    cpu = time.process_time()
    wall = time.perf_counter()
    # Started as Airflow's TriggerRunner.create_triggers starts them: one task per trigger, yielding
    # to the loop between two, so a new trigger's first step shares an iteration with the others.
    tasks = []
    for trigger in triggers:
        tasks.append(asyncio.create_task(trigger.run().__anext__()))
        await asyncio.sleep(0)
    events = await asyncio.gather(*tasks)
    cpu = time.process_time() - cpu
    wall = time.perf_counter() - wall
    stop.set()
    await watchdog
    ClientCredentialsAuth.fetch_token = original_fetch  # type: ignore[method-assign]
    BulkIngestClient.get_job = original_get  # type: ignore[method-assign]
    succeeded = sum(1 for e in events if e.payload["status"] == "success")
    return {
        "succeeded": succeeded,
        "token_requests": token_requests,
        "pools": shared_pools.created - pools_before,
        "polls": polls,
        "wall_s": wall,
        "cpu_s": cpu,
        "cpu_ms_per_poll": 1000 * cpu / max(polls, 1),
        "worst_block_s": worst[0],
    }


def main() -> bool:
    home = tempfile.mkdtemp(prefix="bench-airflow-")
    os.environ.setdefault("AIRFLOW_HOME", home)
    os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    from airflow_provider_salesforce_bulk.emulator.credentials import Credentials

    creds = Credentials()
    with emulator_process(speed="10") as base_url:
        os.environ["AIRFLOW_CONN_SF_BENCH"] = creds.airflow_connection(base_url)
        figures = asyncio.run(_run(base_url))
    print(f"{TRIGGERS} triggers, one connection, one event loop:")
    print(f"  finished with success:  {figures['succeeded']:.0f}")
    print(f"  token requests:         {figures['token_requests']:.0f} (target 1)")
    print(f"  connection pools:       {figures['pools']:.0f} (target 1)")
    print(f"  polls:                  {figures['polls']:.0f} in {figures['wall_s']:.1f}s")
    print(
        f"  CPU per poll:           {figures['cpu_ms_per_poll']:.2f} ms ({figures['cpu_s']:.2f}s CPU in all)"
    )
    print(
        f"  worst loop block:       {figures['worst_block_s'] * 1000:.0f} ms "
        f"(target < {MAX_BLOCK_SECONDS * 1000:.0f})"
    )
    return (
        figures["succeeded"] == TRIGGERS
        and figures["token_requests"] == 1
        and figures["pools"] == 1
        and figures["worst_block_s"] < MAX_BLOCK_SECONDS
    )


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
