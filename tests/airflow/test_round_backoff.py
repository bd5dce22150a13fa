"""The wait between two resubmission rounds: a trigger firing at a fixed moment with the round's state."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from airflow_provider_salesforce_bulk.client.resubmit import ResubmitLedger
from airflow_provider_salesforce_bulk.triggers.events import ResubmitState

STATE: ResubmitState = {
    "round": 1,
    "ledger": ResubmitLedger().to_dict(),
    "entries": {},
    "by_code": {"UNABLE_TO_LOCK_ROW": 3},
    "samples": {},
    "input_records": 10,
}


def _trigger(moment: float) -> Any:
    from airflow_provider_salesforce_bulk.triggers.round_backoff import ResubmitBackoffTrigger

    return ResubmitBackoffTrigger(moment, STATE, ["7505e000000000AAAA"], "https://x.my.salesforce.com")


def test_it_serializes_to_plain_json_and_is_rebuilt_from_its_kwargs() -> None:
    path, kwargs = _trigger(1234.5).serialize()
    assert path == "airflow_provider_salesforce_bulk.triggers.round_backoff.ResubmitBackoffTrigger"
    again = type(_trigger(0))(**json.loads(json.dumps(kwargs)))
    assert again.serialize() == (path, kwargs)


def test_it_fires_at_its_moment_with_the_rounds_state() -> None:
    async def first() -> tuple[float, Any]:
        start = time.monotonic()
        async for event in _trigger(time.time() + 0.5).run():
            return time.monotonic() - start, event.payload
        raise AssertionError("no event")

    waited, payload = asyncio.run(first())
    assert waited >= 0.45
    assert payload == {
        "resubmit": STATE,
        "retry_from": ["7505e000000000AAAA"],
        "instance_url": "https://x.my.salesforce.com",
    }
    # A moment already past (a triggerer restarted after it) fires at once.
    waited, _ = asyncio.run(_first_past())
    assert waited < 5


async def _first_past() -> tuple[float, Any]:
    start = time.monotonic()
    async for event in _trigger(time.time() - 100).run():
        return time.monotonic() - start, event.payload
    raise AssertionError("no event")


@pytest.mark.parametrize(
    ("event", "message"),
    [
        (None, "needs the backoff trigger's event, got NoneType"),
        ({"retry_from": "x"}, "needs the backoff trigger's event"),
        ({"retry_from": [], "resubmit": {"round": 1}}, "resubmit has no"),
        ({"retry_from": [], "resubmit": STATE, "instance_url": 3}, "instance_url is not a string"),
    ],
)
def test_send_next_round_names_a_malformed_event(event: Any, message: str) -> None:
    from airflow.providers.common.compat.sdk import AirflowException

    from airflow_provider_salesforce_bulk.operators.salesforce_bulk import SalesforceBulkOperator

    operator = SalesforceBulkOperator(
        task_id="load", operation="insert", object_name="Account", records=[{"Name": "x"}]
    )
    with pytest.raises(AirflowException, match=message):
        operator.send_next_round({}, event)
