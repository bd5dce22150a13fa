"""What the change-only sync tests share: a DAG loading Contacts from an NDJSON file, and counts.

Each ``run()`` is a new DAG run (a new task instance, so a new plan store) over the file as it is
then; the emulator keeps its records between runs, as an org does.
"""

from __future__ import annotations

import collections
import json
from pathlib import Path
from typing import Any

from airflow_provider_salesforce_bulk.emulator.server import RunningEmulator
from tests.airflow.helpers import load_dag_file

EXT = "External_Id__c"


def contacts(ids: range | list[int], version: int = 0) -> list[dict[str, Any]]:
    """Contacts keyed ``ext-<i>``; ``version`` changes every LastName (a changed row)."""
    return [{EXT: f"ext-{i}", "LastName": f"Last {i} v{version}", "Email": f"c{i}@example.com"} for i in ids]


def write_ndjson(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def sync_dag(
    dag_id: str, tmp_path: Path, *, seam: str = "", operator: str = "SalesforceBulkOperator", **kwargs: Any
) -> Any:
    """A DAG of one change-only upsert task ``load`` reading ``tmp_path / 'input.ndjson'``."""
    args = {
        "task_id": "load",
        "operation": "upsert",
        "object_name": "Contact",
        "external_id_field": EXT,
        "conn_id": "sf_sync",
        "deferrable": False,
        "poll_interval": 0.2,
        "max_records_per_job": 100,
        "results_path": str(tmp_path / "results"),
        "source": str(tmp_path / "input.ndjson"),
        "changes_only": True,
        "sync_state_path": str(tmp_path / "state"),
        "retries": 2,
    }
    args.update(kwargs)
    rendered = ", ".join(f"{k}={v!r}" for k, v in args.items())
    return load_dag_file(
        dag_id,
        f"""
        import datetime
        from airflow.sdk import DAG
        from airflow_provider_salesforce_bulk.operators.salesforce_bulk import SalesforceBulkOperator
{seam}
        with DAG({dag_id!r}, schedule=None, start_date=datetime.datetime(2024, 1, 1)) as dag:
            {operator}({rendered}, retry_delay=datetime.timedelta(0))
        """,
    )


def run(dag: Any) -> tuple[str, int, Any]:
    """One DAG run: its state, the load's try number and its summary (the XCom of that run)."""
    dr = dag.test()
    ti = dr.get_task_instance("load")
    return dr.state, ti.try_number, summary_of(dag.dag_id, dr.run_id)


def summary_of(dag_id: str, run_id: str, task_id: str = "load") -> Any:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        row = session.scalars(
            select(XComModel.value).where(
                XComModel.dag_id == dag_id,
                XComModel.run_id == run_id,
                XComModel.task_id == task_id,
                XComModel.key == "return_value",
            )
        ).first()
    return json.loads(row) if isinstance(row, str) else row


def stored(sf: RunningEmulator) -> dict[str, dict[str, Any]]:
    """The org's Contacts by external id (a duplicate would fail the uniqueness, so count them too)."""
    records = sf.records("Contact")
    counts = collections.Counter(record[EXT] for record in records)
    assert all(n == 1 for n in counts.values()), counts
    return {record[EXT]: record for record in records}


def jobs(sf: RunningEmulator) -> list[dict[str, Any]]:
    return sf.emulator.store.list_jobs(0, 1000)  # type: ignore[no-any-return]


def records_sent(sf: RunningEmulator, operation: str) -> int:
    """Records Salesforce processed in jobs of ``operation`` (every job, every run)."""
    return sum(int(job["processed"]) for job in jobs(sf) if job["operation"] == operation)


# -- kills ---------------------------------------------------------------------------------------------


class WorkerKilled(BaseException):
    """A worker's death at a point: nothing after it runs in that try (a BaseException, as a kill)."""


KILL_POINTS = (
    "planned",  # the change set recorded, no job yet (the input then changes: the retry must not plan)
    "upsert_uploaded",  # the first upsert job created and uploaded, never closed
    "upsert_done",  # every upsert job ended, the state not advanced
    "advanced_unrecorded",  # the state advanced, "advanced" not yet in the plan store
    "advanced_not_done",  # advanced and recorded, the plan not marked done
    "delete_open",  # the delete job created, its upload never sent
    "delete_sent",  # the delete jobs sent and closed, not waited for
)


def install_kill(point: str, before_death: Any = None) -> Any:
    """Make this try die at ``point`` (calling ``before_death()`` first: what happens before the
    retry); returns a function restoring what was patched."""
    from airflow_provider_salesforce_bulk import sync as engine
    from airflow_provider_salesforce_bulk.client import BulkIngestClient
    from airflow_provider_salesforce_bulk.operators import change_sync, sync_finish
    from airflow_provider_salesforce_bulk.operators.job_plan import JobPlan

    patched: list[tuple[Any, str, Any]] = []
    state = {"deleting": False, "dead": False}

    def patch(owner: Any, name: str, make: Any) -> None:
        patched.append((owner, name, owner.__dict__.get(name)))  # None: inherited
        setattr(owner, name, make(getattr(owner, name)))

    def die(why: str) -> None:
        state["dead"] = True
        if before_death is not None:
            before_death()
        raise WorkerKilled(why)

    async def no_abort(client: Any, job_id: str) -> Any:
        if state["dead"]:
            raise WorkerKilled(f"abort of {job_id} after the kill")
        return await original_abort(client, job_id)

    original_abort = BulkIngestClient.abort_job
    patch(BulkIngestClient, "abort_job", lambda _orig: no_abort)
    if point == "planned":

        def prepare(orig: Any) -> Any:
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                out = orig(*args, **kwargs)
                die(point)
                return out

            return wrapper

        patch(change_sync, "prepare", prepare)
    elif point in ("upsert_uploaded", "delete_open"):

        def upload(orig: Any) -> Any:
            async def wrapper(client: Any, job_id: str, data: Any, **kwargs: Any) -> Any:
                if point == "delete_open" and state["deleting"]:
                    die(point)
                result = await orig(client, job_id, data, **kwargs)
                if point == "upsert_uploaded":
                    die(point)
                return result

            return wrapper

        patch(BulkIngestClient, "upload_job_data", upload)
    if point in ("delete_open", "delete_sent"):

        def submit(orig: Any) -> Any:
            async def wrapper(*args: Any, **kwargs: Any) -> Any:
                state["deleting"] = True
                result = await orig(*args, **kwargs)
                die(point)
                return result

            return wrapper

        patch(sync_finish, "submit_chunks", submit)
    if point in ("upsert_done", "advanced_unrecorded"):

        def advance(orig: Any) -> Any:
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                if point == "upsert_done":
                    die(point)
                result = orig(*args, **kwargs)
                die(point)
                return result

            return wrapper

        patch(engine, "advance_state", advance)  # the operator calls sync.advance_state
    if point == "advanced_not_done":
        patch(JobPlan, "mark_done", lambda _orig: staticmethod(lambda *a, **k: die(point)))

    def restore() -> None:
        for owner, name, original in reversed(patched):
            if original is None:
                delattr(owner, name)
            else:
                setattr(owner, name, original)

    return restore


KILL_SEAM = """
        from tests.airflow.change_sync_helpers import WorkerKilled, install_kill

        class KilledOnce(SalesforceBulkOperator):
            point = None
            before_death = None

            def execute(self, context):
                if context["ti"].try_number != 1:
                    return super().execute(context)
                restore = install_kill(KilledOnce.point, KilledOnce.before_death)
                try:
                    return super().execute(context)
                except WorkerKilled as exc:
                    raise RuntimeError(f"worker killed at {exc}") from None
                finally:
                    restore()
"""


class Raw:
    """A DAG-file expression given as an operator argument by :func:`sync_dag` (its repr is the code)."""

    def __init__(self, code: str) -> None:
        self.code = code

    def __repr__(self) -> str:
        return self.code


def recording_seam(path: Path) -> str:
    """A ``Recorded`` operator writing each try's failure (type and message) to ``path``."""
    return f"""
        class Recorded(SalesforceBulkOperator):
            def execute(self, context):
                try:
                    return super().execute(context)
                except Exception as exc:
                    with open({str(path)!r}, "a") as out:
                        out.write(type(exc).__name__ + ": " + str(exc) + "\\n")
                    raise
"""
