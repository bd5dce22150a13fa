"""The trigger <-> operator contract: the event is built by one function and checked by one."""

from __future__ import annotations

import json
import types
from pathlib import Path
from typing import Any

import pytest
from airflow.providers.common.compat.sdk import (
    AirflowException,
    AirflowFailException,
)

from airflow_provider_salesforce_bulk.client import (
    JobInfo,
)
from airflow_provider_salesforce_bulk.triggers.events import job_summary, jobs_event, validate_event
from airflow_provider_salesforce_bulk.triggers.salesforce_bulk import SalesforceBulkJobTrigger
from tests.airflow.helpers import TI, DictStore

JOB = "7505e0000000001AAA"
NEXT = "7505e0000000002AAA"


def _job(**overrides: Any) -> dict[str, Any]:
    info = JobInfo(
        id=JOB,
        state="JobComplete",
        object="Contact",
        operation="insert",
        number_records_processed=10,
        number_records_failed=1,
        column_delimiter="COMMA",
    )
    return {**job_summary(info), **overrides}


def _history() -> list[dict[str, Any]]:
    # As JobPlan.history() writes it; an aborted job's info may hold only its id and state.
    return [
        {
            "id": NEXT,
            "chunk": 0,
            "count": 5,
            "outcome": "resent",
            "next": JOB,
            "info": {"id": NEXT, "state": None},
        }
    ]


def _resubmit() -> dict[str, Any]:
    return {
        "round": 2,
        "ledger": {"jobs": {}, "resubmitted": {}},
        "entries": {},
        "by_code": {"UNABLE_TO_LOCK_ROW": 1},
        "samples": {"UNABLE_TO_LOCK_ROW": "UNABLE_TO_LOCK_ROW:unable to obtain exclusive access"},
        "input_records": 10,
    }


def test_the_built_event_is_plain_json_and_checks_as_itself() -> None:
    event = jobs_event(
        "success",
        {JOB: job_summary(JobInfo(id=JOB, state="JobComplete", number_records_processed=3))},
        instance_url="https://acme.my.salesforce.com",
        record_counts={JOB: 3},
        history=validate_event({"status": "success", "jobs": {}, "history": _history()})["history"],
    )
    assert json.loads(json.dumps(event)) == event
    assert validate_event(event) == event
    assert validate_event(json.loads(json.dumps(event))) == event


def test_an_event_of_the_previous_release_is_completed_with_empty_values() -> None:
    # What the operators built themselves before the event had one builder: no message, history...
    old = {"status": "success", "jobs": {JOB: {"id": JOB, "state": "JobComplete"}}, "instance_url": None}
    checked = validate_event(old)
    assert checked["message"] is None
    assert checked["history"] == []
    assert checked["record_counts"] == {}
    assert checked["resubmit"] is None
    assert checked["jobs"][JOB]["numberRecordsProcessed"] == 0
    assert checked["jobs"][JOB]["columnDelimiter"] is None
    history = validate_event({**old, "history": _history()})["history"]
    assert history[0]["info"]["numberRecordsFailed"] == 0
    assert history[0]["next"] == JOB


@pytest.mark.parametrize("event", [None, "done", ["success"], 3])
def test_no_event_is_a_clear_error(event: Any) -> None:
    with pytest.raises(AirflowException, match=r"no trigger event \(\w+\)"):
        validate_event(event)


@pytest.mark.parametrize(
    ("event", "named"),
    [
        ({"jobs": {}}, "no 'status'"),
        ({"status": "success"}, "no 'jobs'"),
        ({}, "no 'status' or 'jobs'"),
        (
            {"status": "success", "jobs": {}, "history": [{"id": NEXT, "count": 1}]},
            "history\\[0\\] has no chunk",
        ),
        ({"status": "success", "jobs": {}, "resubmit": {"round": 2}}, "resubmit has no by_code, entries"),
    ],
)
def test_a_missing_key_is_named(event: dict[str, Any], named: str) -> None:
    with pytest.raises(AirflowException, match=f"malformed trigger event: {named}"):
        validate_event(event)


@pytest.mark.parametrize(
    ("event", "named"),
    [
        ({"status": "finished", "jobs": {}}, "status 'finished' is not one of success, timeout, error"),
        ({"status": "success", "jobs": []}, "jobs must be an object, not list"),
        ({"status": "success", "jobs": {JOB: "JobComplete"}}, f"job {JOB} must be an object, not str"),
        ({"status": "success", "jobs": {JOB: _job(id=NEXT)}}, f"job {JOB}: its id is '{NEXT}'"),
        (
            {"status": "success", "jobs": {JOB: _job(numberRecordsProcessed="10")}},
            f"job {JOB}: numberRecordsProcessed must be a whole number >= 0, not '10'",
        ),
        (
            {"status": "success", "jobs": {JOB: _job(numberRecordsFailed=True)}},
            f"job {JOB}: numberRecordsFailed must be a whole number >= 0, not True",
        ),
        ({"status": "success", "jobs": {JOB: _job(state=7)}}, f"job {JOB}: state must be a string or null"),
        ({"status": "error", "jobs": {}, "message": {"x": 1}}, "message must be a string or null"),
        ({"status": "success", "jobs": {}, "instance_url": 5}, "instance_url must be a string or null"),
        ({"status": "success", "jobs": {}, "record_counts": [1]}, "record_counts must be an object"),
        ({"status": "success", "jobs": {}, "record_counts": {JOB: -1}}, f"record_counts\\[{JOB}\\] must be"),
        ({"status": "success", "jobs": {}, "history": {"id": JOB}}, "history must be a list, not dict"),
        (
            {"status": "success", "jobs": {}, "resubmit": {**_resubmit(), "round": 1}},
            "resubmit: round must be 2 or more",
        ),
        (
            {"status": "success", "jobs": {}, "resubmit": {**_resubmit(), "ledger": []}},
            "resubmit: ledger must be",
        ),
    ],
)
def test_a_wrong_type_is_named(event: dict[str, Any], named: str) -> None:
    with pytest.raises(AirflowException, match=f"malformed trigger event: {named}"):
        validate_event(event)


@pytest.mark.parametrize(
    "event",
    [
        {"status": "success", "jobs": {"../../x": {"id": "../../x"}}},
        {"status": "success", "jobs": {}, "history": [{**_history()[0], "next": "../x"}]},
        {"status": "success", "jobs": {}, "resubmit": {**_resubmit(), "entries": {"/etc": {}}}},
    ],
)
def test_a_job_id_that_is_not_one_fails_for_good(event: dict[str, Any]) -> None:
    with pytest.raises(AirflowFailException, match="not a Salesforce Bulk API job id"):
        validate_event(event)


def _ingest_operator(tmp_path: Path) -> Any:
    from airflow_provider_salesforce_bulk.operators.salesforce_bulk import SalesforceBulkOperator

    return SalesforceBulkOperator(
        task_id="load",
        operation="insert",
        object_name="Contact",
        records=[{"LastName": "A"}],
        conn_id="sf_events",
        results_path=str(tmp_path / "results"),
    )


def _query_operator(tmp_path: Path) -> Any:
    from airflow_provider_salesforce_bulk.operators.salesforce_bulk_query import SalesforceBulkQueryOperator

    return SalesforceBulkQueryOperator(
        task_id="extract", soql="SELECT Id FROM Account", conn_id="sf_events", output_path=tmp_path / "out"
    )


@pytest.mark.parametrize("make", [_ingest_operator, _query_operator])
@pytest.mark.parametrize(
    ("event", "message"),
    [
        (None, "no trigger event"),
        ({"jobs": {JOB: _job()}}, "malformed trigger event: no 'status'"),
        ({"status": "success"}, "malformed trigger event: no 'jobs'"),
        ({"status": "success", "jobs": {JOB: _job(numberRecordsProcessed=None, state=[])}}, "state must be"),
        ({"status": "success", "jobs": {JOB: _job()}, "resubmit": "2"}, "resubmit must be an object"),
    ],
)
def test_both_operators_refuse_a_bad_event_before_anything_is_written(
    make: Any, event: Any, message: str, tmp_path: Path
) -> None:
    operator = make(tmp_path)
    pushed: dict[str, Any] = {}
    ti = types.SimpleNamespace(**vars(TI), xcom_push=lambda key, value: pushed.__setitem__(key, value))
    with pytest.raises(AirflowException, match=message):
        operator.execute_complete({"ti": ti, "task_state_store": DictStore()}, event)
    assert pushed == {}
    assert not tmp_path.exists() or list(tmp_path.iterdir()) == []


def test_a_trigger_deferred_by_the_previous_release_resumes() -> None:
    # The kwargs a running deployment stored before this release (trigger row in the metadata DB).
    stored = {
        "resubmit": _resubmit(),
        "conn_id": "sf_events",
        "job_ids": [JOB],
        "deadline": 1_900_000_000.0,
        "poll_interval": 5.0,
        "instance_url": "https://acme.my.salesforce.com",
        "record_counts": {JOB: 10},
        "history": _history(),
        "job_kind": "ingest",
    }
    trigger = SalesforceBulkJobTrigger(**stored)
    _, kwargs = trigger.serialize()
    assert SalesforceBulkJobTrigger(**kwargs).serialize()[1] == kwargs
    event = trigger._event("success", {JOB: _job()})
    checked = validate_event(event)
    assert checked["resubmit"] == stored["resubmit"]
    assert checked["record_counts"] == {JOB: 10}
    assert [entry["id"] for entry in checked["history"]] == [NEXT]
    with pytest.raises(AirflowException, match=r"history\[0\] has no info"):
        SalesforceBulkJobTrigger(
            **{**stored, "history": [{k: v for k, v in _history()[0].items() if k != "info"}]}
        )


def test_the_poll_in_the_worker_checks_its_event_as_execute_complete_does() -> None:
    from airflow.triggers.base import TriggerEvent

    from airflow_provider_salesforce_bulk.operators.deferral import defer_or_wait

    class BrokenTrigger(SalesforceBulkJobTrigger):
        async def run(self) -> Any:
            yield TriggerEvent({"status": "success", "jobs": {JOB: {"id": JOB, "numberRecordsFailed": -1}}})

    operator = types.SimpleNamespace(deferrable=False)
    with pytest.raises(AirflowException, match=f"job {JOB}: numberRecordsFailed must be a whole number"):
        defer_or_wait(operator, BrokenTrigger("sf_events", [JOB]), timeout=10, poll_interval=1)  # type: ignore[arg-type]
