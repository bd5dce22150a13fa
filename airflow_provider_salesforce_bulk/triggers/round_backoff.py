"""``ResubmitBackoffTrigger``: the wait between two resubmission rounds, in the triggerer.

The wait ends at a fixed moment, so a triggerer restarted meanwhile does not wait the whole backoff
again. Its event echoes the round's state: ``airflow dags test`` does not pass ``defer()``'s kwargs on,
so the state that the resumed method needs travels in the event as it does for the jobs trigger.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_provider_salesforce_bulk.triggers.events import ResubmitState

__all__ = ["ResubmitBackoffTrigger"]


class ResubmitBackoffTrigger(BaseTrigger):
    """Fire once at ``moment`` (epoch seconds) with ``{"resubmit", "retry_from", "instance_url"}``.

    It holds no secret: the round's state is job ids, counts and result file URIs.
    """

    def __init__(
        self, moment: float, resubmit: ResubmitState, retry_from: Sequence[str], instance_url: str
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.moment = float(moment)
        self.resubmit = resubmit
        self.retry_from = list(retry_from)
        self.instance_url = instance_url

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "moment": self.moment,
                "resubmit": self.resubmit,
                "retry_from": self.retry_from,
                "instance_url": self.instance_url,
            },
        )

    def __repr__(self) -> str:
        return f"<ResubmitBackoffTrigger round={self.resubmit['round'] + 1} at={self.moment:.0f}>"

    async def run(self) -> AsyncIterator[TriggerEvent]:
        await asyncio.sleep(max(0.0, self.moment - time.time()))
        event = {"resubmit": self.resubmit, "retry_from": self.retry_from, "instance_url": self.instance_url}
        yield TriggerEvent(event)  # type: ignore[no-untyped-call]
