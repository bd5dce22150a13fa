"""What the stack test counts itself, never trusting a count the provider made: the org's records by a
non-unique field, the rows of the files on S3, the summaries in XCom."""

from __future__ import annotations

import csv
import io
import json
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from tests.stack.airflow_stack import AirflowStack
from tests.stack.scenario_dags import BUCKET, last_name
from tests.stack.servers import Emulator, MotoS3

_DONE = {"success", "failed", "upstream_failed", "skipped"}


def wait_done(
    airflow: AirflowStack,
    dag_id: str,
    run_id: str,
    seconds: float,
    tick: Callable[[dict[str, tuple[str, int]]], None] | None = None,
) -> dict[str, tuple[str, int]]:
    """Poll the run's task instances until all ended; ``tick`` sees each poll (to inject faults)."""
    deadline = time.monotonic() + seconds
    while True:
        tis = airflow.tis(dag_id, run_id)
        if tick is not None:
            tick(tis)
        if tis and all(state in _DONE for state, _ in tis.values()):
            return tis
        dead = [name for name in airflow.exited() if not airflow.expected_down(name)]
        assert not dead, f"stack processes exited: {dead}"
        assert time.monotonic() < deadline, f"run not done within {seconds:.0f} s: {tis}"
        time.sleep(0.3)


def contacts_by_name(emulator: Emulator) -> Counter[str]:
    return Counter(str(r["LastName"]) for r in emulator.records("Contact"))


def load_counts(names: Counter[str], dag_id: str, task_id: str, expected: int) -> dict[str, int]:
    """Stored, distinct, duplicated and missing records of one load, by LastName."""
    prefix = f"{dag_id}/{task_id}/"
    mine = {name: n for name, n in names.items() if name.startswith(prefix)}
    wanted = {last_name(dag_id, task_id, i) for i in range(expected)}
    return {
        "stored": sum(mine.values()),
        "distinct": len(mine),
        "duplicated": sum(n - 1 for n in mine.values()),
        "missing": len(wanted - mine.keys()),
        "unexpected": len(mine.keys() - wanted),
    }


def s3_key(url: str) -> str:
    """The key of an ``s3://[conn@]bucket/key`` URL in a summary."""
    rest = url.split("://", 1)[1]
    bucket_part, key = rest.split("/", 1)
    assert bucket_part.rsplit("@", 1)[-1] == BUCKET, url
    return key


def csv_rows(body: bytes) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(body.decode("utf-8"))))


def summary_problems(summary: dict[str, Any] | None, s3: MotoS3, stored: int, expected: int) -> list[str]:
    """Where a load's summary differs from the org or from its own result files (empty when none)."""
    if summary is None:
        return ["no summary in XCom"]
    problems = []
    totals = summary["totals"]
    if not (totals["records"] == totals["succeeded"] == expected == stored):
        problems.append(f"totals {totals} but {stored} stored of {expected}")
    succeeded_rows = 0
    for job_id, job in summary["jobs"].items():
        for kind, url in job["result_files"].items():
            if not url:
                continue
            body = s3.client().get_object(Bucket=BUCKET, Key=s3_key(url))["Body"].read()
            rows = csv_rows(body)
            if kind == "successful":
                succeeded_rows += len(rows)
                if len(rows) != job["succeeded"]:
                    said = job["succeeded"]
                    problems.append(f"job {job_id}: {len(rows)} rows in {url}, summary says {said}")
    if succeeded_rows != stored:
        problems.append(f"{succeeded_rows} rows in the successful result files, {stored} in the org")
    return problems


def extract_problems(summary: dict[str, Any] | None, s3: MotoS3, prefix: str, org_ids: set[str]) -> list[str]:
    """Where an extract's files or summary differ from the org's Accounts (empty when none)."""
    if summary is None:
        return ["no summary in XCom"]
    objects = s3.objects(prefix)
    ids: list[str] = []
    for key, body in sorted(objects.items()):
        if key.endswith(".csv"):
            ids += [row["Id"] for row in csv_rows(body)]
        elif key.endswith(".parquet"):
            import pyarrow.parquet as pq

            ids += [str(v) for v in pq.read_table(io.BytesIO(body)).column("Id").to_pylist()]
    problems = []
    if len(ids) != len(org_ids) or set(ids) != org_ids:
        problems.append(f"{len(ids)} rows ({len(set(ids))} distinct) in the files, {len(org_ids)} in the org")
    if summary["records"] != len(org_ids) or summary["state"] != "JobComplete":
        problems.append(f"summary says {summary['records']} records, {summary['state']}")
    named = {s3_key(f["path"]) for f in summary["files"]}
    # A complete extract is its parts, the manifest listing exactly them and _SUCCESS, written last.
    markers = {key for key in objects if key.rsplit("/", 1)[-1] in ("_SUCCESS", "_manifest.json")}
    if named != set(objects) - markers:
        problems.append(f"summary names {sorted(named)}, S3 holds {sorted(objects)}")
    by_name = {key.rsplit("/", 1)[-1]: key for key in markers}
    if set(by_name) != {"_SUCCESS", "_manifest.json"}:
        problems.append(f"the extract is not marked complete: S3 holds {sorted(objects)}")
    else:
        listed = json.loads(objects[by_name["_manifest.json"]])
        listed_names = {str(f["name"]) for f in listed["files"]}
        if listed_names != {key.rsplit("/", 1)[-1] for key in named}:
            problems.append(f"the manifest lists {sorted(listed_names)}, the summary names {sorted(named)}")
        if listed["records"] != len(org_ids):
            problems.append(f"the manifest says {listed['records']} records, the org holds {len(org_ids)}")
    return problems


def aborted_jobs(emulator: Emulator) -> dict[str, int]:
    """Every Aborted job of the org: id to the records Salesforce had processed in it."""
    return {
        str(job["id"]): int(emulator.job(kind, str(job["id"])).get("numberRecordsProcessed") or 0)
        for kind in ("ingest", "query")
        for job in emulator.jobs(kind)
        if job.get("state") == "Aborted"
    }
