"""Serializer speed: ``serialize_ingest_data`` against plain ``csv.writer`` and aiosalesforce's serializer.

Targets (issue 2, "Speed and memory"): on the same 300,000 records of eight mixed fields, at least
0.8 of ``csv.writer`` writing the same rows (already converted to what it accepts) into one
``io.StringIO`` then encoded, and at least 2.5 times aiosalesforce's ``serialize_ingest_data``.
Each figure is the best of three runs. The CSV split fast path is measured too (no target).
"""

from __future__ import annotations

import csv
import datetime
import io
import random
from typing import Any

from airflow_provider_salesforce_bulk.client.csv_split import split_csv_stream
from airflow_provider_salesforce_bulk.client.serialize import serialize_ingest_data
from benchmarks._support import best_of

RECORDS = 300_000
RUNS = 3
TARGET_VS_CSV_WRITER = 0.8
TARGET_VS_AIOSALESFORCE = 2.5

FIELDS = ["Name", "Description", "Amount", "Rate", "IsActive", "Verified", "CloseDate", "Code__c"]
_WORDS = [
    "Acme",
    "Globex, Inc.",
    'the "best" one',
    "multi\nline",
    "Ünïcödé GmbH",
    "plain text value",
    "x" * 40,
    "a;b|c",
]


def make_records(n: int = RECORDS, seed: int = 2) -> list[dict[str, Any]]:
    """Eight mixed fields: strings with quotes and newlines, floats, booleans, dates."""
    rng = random.Random(seed)
    day0 = datetime.date(2020, 1, 1)
    records = []
    for i in range(n):
        records.append(
            {
                "Name": f"{rng.choice(_WORDS)} {i}",
                "Description": rng.choice(_WORDS),
                "Amount": round(rng.random() * 10_000, 2),
                # Now and then a float whose repr has an exponent, which must be written out.
                "Rate": rng.random() if i % 100 else rng.random() * 1e-7,
                "IsActive": rng.random() < 0.5,
                "Verified": i % 3 == 0,
                "CloseDate": day0 + datetime.timedelta(days=i % 2_000),
                "Code__c": f"C-{i:08d}",
            }
        )
    return records


def main() -> bool:
    records = make_records()
    n = len(records)
    bool_text = {True: "true", False: "false"}
    # The baseline gets rows already in the form csv.writer writes correctly, so only writing is timed.
    rows = [
        (
            r["Name"],
            r["Description"],
            r["Amount"],
            r["Rate"],
            bool_text[r["IsActive"]],
            bool_text[r["Verified"]],
            r["CloseDate"].isoformat(),
            r["Code__c"],
        )
        for r in records
    ]

    def run_csv_writer() -> int:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(FIELDS)
        writer.writerows(rows)
        return len(buffer.getvalue().encode())

    def run_ours() -> int:
        return sum(map(len, serialize_ingest_data(records, FIELDS)))

    results: dict[str, float] = {}
    for name, fn in (("csv.writer (baseline)", run_csv_writer), ("serialize_ingest_data", run_ours)):
        seconds, size = best_of(RUNS, fn)
        results[name] = n / seconds
        print(f"{name:32s} {n / seconds:>12,.0f} rows/s  ({seconds:.3f} s, {size / 1e6:.1f} MB)")

    ok = True
    ratio = results["serialize_ingest_data"] / results["csv.writer (baseline)"]
    passed = ratio >= TARGET_VS_CSV_WRITER
    ok &= passed
    verdict = "OK" if passed else "MISSED"
    print(f"ratio vs csv.writer:      {ratio:.2f} (target >= {TARGET_VS_CSV_WRITER}) {verdict}")

    try:
        from aiosalesforce.bulk.v2._csv import serialize_ingest_data as reference
    except ImportError as exc:
        print(f"aiosalesforce not importable ({exc}); the comparison with it is skipped")
    else:

        def run_reference() -> int:
            return sum(map(len, reference(records, FIELDS)))

        seconds, size = best_of(RUNS, run_reference)
        results["aiosalesforce"] = n / seconds
        label = "aiosalesforce 0.6 (reference)"
        print(f"{label:32s} {n / seconds:>12,.0f} rows/s  ({seconds:.3f} s, {size / 1e6:.1f} MB)")
        ratio = results["serialize_ingest_data"] / results["aiosalesforce"]
        passed = ratio >= TARGET_VS_AIOSALESFORCE
        ok &= passed
        print(
            f"ratio vs aiosalesforce:   {ratio:.2f} (target >= {TARGET_VS_AIOSALESFORCE}) "
            f"{'OK' if passed else 'MISSED'}"
        )

    # The split fast path over the same data as one CSV file, cut into 10 MB chunks (no target).
    whole = b"".join(serialize_ingest_data(records, FIELDS))

    def run_split() -> int:
        return sum(map(len, split_csv_stream(io.BytesIO(whole), 10_000_000)))

    seconds, size = best_of(RUNS, run_split)
    label = "split_csv_stream (10 MB chunks)"
    print(f"{label:32s} {n / seconds:>12,.0f} rows/s  ({size / seconds / 1e6:.0f} MB/s)")
    return ok


if __name__ == "__main__":
    raise SystemExit(0 if main() else 1)
