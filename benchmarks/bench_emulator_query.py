"""Emulator extract speed: 200,000 records of 8 fields through a Bulk API 2.0 query job at instant speed.

The records are loaded by an ingest job first; then one query job runs (create to JobComplete:
the SOQL scan written as CSV chunks) and its result pages are downloaded by locator with plain
httpx, not the project's client, so the figures are the emulator's. Target: the whole extract
(scan and download) at least 50,000 records per CPU second of this process (emulator threads and
the reading client together), so the emulator never dominates a client benchmark of extracts.
The wall-clock rate is printed too; on a shared machine it measures the neighbours as well.
"""

from __future__ import annotations

import time

import httpx

from airflow_provider_salesforce_bulk.emulator.server import run_emulator
from benchmarks._support import wait_for_job, warehouse_csv

RECORDS = 200_000
PAGE_RECORDS = 50_000
TARGET_RECORDS_PER_SECOND = 50_000
SOQL = (
    "SELECT Id, External_Id__c, Name, Quantity__c, Unit_Price__c, Active__c, Category__c, CreatedDate "
    "FROM Warehouse_Item__c WHERE Quantity__c >= 0 ORDER BY External_Id__c"
)


def _load(client: httpx.Client, base: str) -> None:
    job = client.post(
        f"{base}/jobs/ingest", json={"object": "Warehouse_Item__c", "operation": "insert"}
    ).json()
    body = warehouse_csv(RECORDS)
    client.put(f"{base}/jobs/ingest/{job['id']}/batches", content=body, headers={"Content-Type": "text/csv"})
    client.patch(f"{base}/jobs/ingest/{job['id']}", json={"state": "UploadComplete"}).raise_for_status()
    info = wait_for_job(client, f"{base}/jobs/ingest/{job['id']}", timeout=120, every=0.02)
    if info["numberRecordsProcessed"] != RECORDS or info["numberRecordsFailed"] != 0:
        raise RuntimeError(f"load failed: {info}")


def _download(client: httpx.Client, url: str) -> tuple[int, int, int]:
    """Read every page by locator; returns (records, bytes, pages)."""
    records = size = pages = 0
    locator = ""
    while True:
        params: dict[str, str | int] = {"maxRecords": PAGE_RECORDS}
        if locator:
            params["locator"] = locator
        with client.stream("GET", url, params=params) as response:
            response.raise_for_status()
            for piece in response.iter_bytes():
                size += len(piece)
            records += int(response.headers["Sforce-NumberOfRecords"])
            locator = response.headers["Sforce-Locator"]
        pages += 1
        if locator == "null":
            return records, size, pages


def main() -> bool:
    """Run the benchmark, print records/second, and return False below the target."""
    with run_emulator(db=":memory:") as emulator:
        token = emulator.new_access_token()
        base = f"{emulator.base_url}/services/data/v62.0"
        with httpx.Client(headers={"Authorization": f"Bearer {token}"}, timeout=120) as client:
            _load(client, base)
            started = time.perf_counter()
            cpu_started = time.process_time()
            job = client.post(f"{base}/jobs/query", json={"operation": "query", "query": SOQL}).json()
            info = wait_for_job(client, f"{base}/jobs/query/{job['id']}", timeout=120, every=0.02)
            scanned = time.perf_counter()
            records, size, pages = _download(client, f"{base}/jobs/query/{job['id']}/results")
            done = time.perf_counter()
            cpu = time.process_time() - cpu_started
    if info["state"] != "JobComplete" or records != RECORDS:
        print(f"extract failed: {info}, {records:,} records read")
        return False
    scan, download, total = scanned - started, done - scanned, done - started
    rate = RECORDS / cpu
    print(
        f"query {RECORDS:,} records x 8 fields: "
        f"scan to JobComplete {scan:.2f} s ({RECORDS / scan:,.0f} rec/s), "
        f"download {pages} pages / {size / 1e6:.1f} MB {download:.2f} s ({RECORDS / download:,.0f} rec/s)"
    )
    print(f"extract end to end: {RECORDS / total:,.0f} records/s wall, {total:.2f} s")
    print(
        f"extract CPU: {cpu:.2f} s -> {rate:,.0f} records per CPU second "
        f"(target {TARGET_RECORDS_PER_SECOND:,})"
    )
    return rate >= TARGET_RECORDS_PER_SECOND


if __name__ == "__main__":
    raise SystemExit(0 if main() else 1)
