"""The DAG files of the stack test, written into the stack's DAG folder before it starts.

Every file on S3 goes through the ``aws_default`` connection: sources as ``ObjectStoragePath`` objects
with ``conn_id``, results and extracts as ``s3://aws_default@bucket/...`` URLs (the connection id in
the URL), the two forms a user writes.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

BUCKET = "stack"
MAIN = "stack_main"
FROZEN_SUCCESS = "stack_frozen_after_success"
FROZEN_WAITING = "stack_frozen_while_up_for_retry"
#: The main run: this many loads and this many records each (one job per PER_JOB records).
LOADS = 10
RECORDS = 2_000
PER_JOB = 200
#: load_0, the one whose worker is killed mid-upload: many small jobs, so the kill lands mid-upload
#: on a fast machine too.
KILLED_PER_JOB = 50
#: Accounts in the org before the run: what both extracts must find.
ACCOUNTS = 3_000
#: What both extracts ask for: every Account.
EXTRACT_SOQL = "SELECT Id, Name FROM Account"
#: The frozen scenarios' single load: many small jobs, so the freeze lands mid-upload.
FROZEN_RECORDS = 3_000
FROZEN_PER_JOB = 100
#: While up_for_retry: the retry waits this long, longer than the freeze, the thaw and the checks.
WAITING_RETRY_DELAY = 90


def source_key(dag_id: str, task_id: str) -> str:
    return f"sources/{dag_id}/{task_id}.csv"


def last_name(dag_id: str, task_id: str, i: int) -> str:
    """The LastName of record ``i``: not unique in Salesforce, so a record loaded twice shows twice."""
    return f"{dag_id}/{task_id}/{i:06d}"


def source_csv(dag_id: str, task_id: str, n: int) -> bytes:
    lines = ["LastName,Email"]
    lines += [f"{last_name(dag_id, task_id, i)},r{i}@example.com" for i in range(n)]
    return ("\n".join(lines) + "\n").encode()


def results_prefix(dag_id: str, run_id: str, task_id: str) -> str:
    return f"results/{dag_id}/{run_id}/{task_id}/"


def extract_prefix(dag_id: str, run_id: str, task_id: str) -> str:
    return f"extracts/{dag_id}/{run_id}/{task_id}/"


_HEADER = """
import datetime
from airflow.sdk import DAG
from airflow.providers.common.compat.sdk import ObjectStoragePath
from airflow_provider_salesforce_bulk.operators.salesforce_bulk import SalesforceBulkOperator
from airflow_provider_salesforce_bulk.operators.salesforce_bulk_query import SalesforceBulkQueryOperator
"""


def _load(dag_id: str, task_id: str, per_job: int, retries: int, retry_delay: int) -> str:
    return f"""
    SalesforceBulkOperator(
        task_id={task_id!r}, operation="insert", object_name="Contact", conn_id="sf_stack",
        source=ObjectStoragePath("s3://{BUCKET}/{source_key(dag_id, task_id)}", conn_id="aws_default"),
        results_path="s3://aws_default@{BUCKET}/results/{dag_id}/{{{{ run_id }}}}/{task_id}",
        max_records_per_job={per_job}, deferrable=True, poll_interval=1.0,
        retries={retries}, retry_delay=datetime.timedelta(seconds={retry_delay}),
    )"""


def _dag(dag_id: str, body: str) -> str:
    return (
        _HEADER
        + textwrap.dedent(f"""
        with DAG({dag_id!r}, schedule=None, start_date=datetime.datetime(2024, 1, 1),
                 is_paused_upon_creation=False, max_active_tasks=32) as dag:
        """)
        + textwrap.indent(textwrap.dedent(body), "    ")
    )


def main_dag() -> str:
    # Broker restarts and lost workers each cost a try (issue 20): retries outlast them.
    loads = "".join(
        _load(MAIN, f"load_{k}", KILLED_PER_JOB if k == 0 else PER_JOB, retries=6, retry_delay=10)
        for k in range(LOADS)
    )
    extracts = "".join(
        f"""
    SalesforceBulkQueryOperator(
        task_id="extract_{fmt}", conn_id="sf_stack", soql={EXTRACT_SOQL!r},
        output_path="s3://aws_default@{BUCKET}/extracts/{MAIN}/{{{{ run_id }}}}/extract_{fmt}",
        output_format="{fmt}", records_per_file=700, deferrable=True, poll_interval=1.0,
        retries=6, retry_delay=datetime.timedelta(seconds=10),
    )"""
        for fmt in ("csv", "parquet")
    )
    return _dag(MAIN, loads + extracts)


def frozen_dag(dag_id: str, retry_delay: int) -> str:
    return _dag(dag_id, _load(dag_id, "load", FROZEN_PER_JOB, retries=2, retry_delay=retry_delay))


def write_dags(folder: Path) -> None:
    (folder / f"{MAIN}.py").write_text(main_dag())
    (folder / f"{FROZEN_SUCCESS}.py").write_text(frozen_dag(FROZEN_SUCCESS, 5))
    (folder / f"{FROZEN_WAITING}.py").write_text(frozen_dag(FROZEN_WAITING, WAITING_RETRY_DELAY))
