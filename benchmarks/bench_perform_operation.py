"""Peak memory of perform_operation does not grow with the data.

A generator of N records (fieldnames given, 10 MB chunks) is loaded through ``perform_operation``
against a stub Bulk API that keeps nothing it is sent. Each size runs in its own process so
the figures do not mix: peak traced Python memory (tracemalloc) and peak RSS. Target: the peak for
1,000,000 records is within 1.1 times the peak for 200,000.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import tracemalloc

import httpx

from benchmarks._support import peak_rss_mb

TARGET_RATIO = 1.1
SIZES = (200_000, 1_000_000)
FIELDS = [
    "External_Id__c",
    "Name",
    "Description",
    "Amount__c",
    "Active__c",
    "Start__c",
    "Score__c",
    "Notes__c",
]


def record_stream(n: int):
    import datetime

    day = datetime.date(2024, 1, 1)
    for i in range(n):
        yield {
            "External_Id__c": f"EXT-{i:09d}",
            "Name": f"Company {i}",
            "Description": 'He said "hi",\nthen left' if i % 7 == 0 else "plain text value",
            "Amount__c": i * 1.25,
            "Active__c": i % 2 == 0,
            "Start__c": day,
            "Score__c": i % 1000,
            "Notes__c": None,
        }


class StubBulkApi:
    """Answers every Bulk API call at once and drops uploaded bodies."""

    def __init__(self) -> None:
        self.jobs: dict[str, int] = {}
        self.bytes_uploaded = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if request.method == "POST":
            job_id = f"750{len(self.jobs):015d}"
            self.jobs[job_id] = 0
            return httpx.Response(200, json={"id": job_id, "state": "Open"})
        job_id = path.split("/jobs/ingest/", 1)[1].split("/")[0]
        if request.method == "PUT":
            body = request.content
            self.bytes_uploaded += len(body)
            self.jobs[job_id] = body.count(b"\n") - 1
            return httpx.Response(201)
        if request.method == "PATCH":
            return httpx.Response(200, json={"id": job_id, "state": json.loads(request.content)["state"]})
        n = self.jobs[job_id]
        return httpx.Response(
            200,
            json={
                "id": job_id,
                "state": "JobComplete",
                "numberRecordsProcessed": n,
                "numberRecordsFailed": 0,
            },
        )


async def load(n: int) -> dict[str, float]:
    from airflow_provider_salesforce_bulk.client import (
        BulkIngestClient,
        SalesforceSession,
        StaticTokenAuth,
        TokenCache,
    )

    stub = StubBulkApi()
    session = SalesforceSession(
        StaticTokenAuth("bench-token", "https://bench.my.salesforce.com"),
        transport=httpx.MockTransport(stub),
        token_cache=TokenCache(),
    )
    async with session:
        client = BulkIngestClient(session)
        records = 0
        async for result in client.perform_operation(
            "upsert",
            "Account",
            record_stream(n),
            fieldnames=FIELDS,
            max_size_bytes=10_000_000,
            external_id_field="External_Id__c",
            polling_interval=0.01,
        ):
            records += result.record_count
    assert records == n, (records, n)
    return {"jobs": len(stub.jobs), "mb_uploaded": stub.bytes_uploaded / 1e6}


def child(n: int) -> None:
    tracemalloc.start()
    started = time.perf_counter()
    info = asyncio.run(load(n))
    elapsed = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    print(json.dumps({"n": n, "peak_mb": peak / 1e6, "rss_mb": peak_rss_mb(), "seconds": elapsed, **info}))


def main() -> bool:
    figures = {}
    for n in SIZES:
        out = subprocess.run(  # noqa: S603 - our own interpreter and module
            [sys.executable, "-m", "benchmarks.bench_perform_operation", "--child", str(n)],
            check=True,
            capture_output=True,
            text=True,
        )
        figures[n] = json.loads(out.stdout.strip().splitlines()[-1])
        f = figures[n]
        print(
            f"{n:>9,} records: {f['jobs']:.0f} jobs, {f['mb_uploaded']:.0f} MB uploaded, "
            f"peak traced {f['peak_mb']:.1f} MB, peak RSS {f['rss_mb']:.0f} MB, {f['seconds']:.1f}s "
            f"({n / f['seconds']:,.0f} records/s with tracing on)"
        )
    small, large = figures[SIZES[0]], figures[SIZES[1]]
    ratio = large["peak_mb"] / small["peak_mb"]
    rss_ratio = large["rss_mb"] / small["rss_mb"]
    print(
        f"peak memory {SIZES[1]:,} / {SIZES[0]:,} records: traced {ratio:.2f}x, RSS {rss_ratio:.2f}x "
        f"(target <= {TARGET_RATIO}x)"
    )
    return ratio <= TARGET_RATIO and rss_ratio <= TARGET_RATIO


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        child(int(sys.argv[2]))
    else:
        sys.exit(0 if main() else 1)
