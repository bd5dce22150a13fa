"""``ResubmitBackoffTrigger``: the wait between two resubmission rounds, in the triggerer.

The wait ends at a fixed moment, so a triggerer restarted meanwhile does not wait the whole backoff
again. It carries only that moment and the number of the round it leads to: the round's state is in
the task's plan store (:mod:`~airflow_provider_salesforce_bulk.operators.round_state`), saved before
the wait, where the resumed task reads it in any worker.
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
    """Fire once at ``moment`` (epoch seconds) with ``{"next_round": next_round}``.

    ``resubmit``, ``retry_from`` and ``instance_url`` come only from a trigger serialized by an earlier
    release, which carried the round's state: it fires ``{"resubmit", "retry_from", "instance_url"}``
    as that release did, so a task deferred before an upgrade sends its round. No secret either way.
    """

    def __init__(
        self,
        moment: float,
        resubmit: ResubmitState | None = None,
        retry_from: Sequence[str] | None = None,
        instance_url: str | None = None,
        *,
        next_round: int | None = None,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.moment = float(moment)
        self.resubmit = resubmit
        self.retry_from = None if retry_from is None else list(retry_from)
        self.instance_url = instance_url
        if resubmit is None and not isinstance(next_round, int):
            raise ValueError(f"next_round must be the number of the round to send, not {next_round!r}")
        self.next_round = next_round

    def _legacy(self) -> dict[str, Any] | None:
        if self.resubmit is None:
            return None
        return {
            "resubmit": self.resubmit,
            "retry_from": self.retry_from or [],
            "instance_url": self.instance_url,
        }

    def serialize(self) -> tuple[str, dict[str, Any]]:
        legacy = self._legacy()
        kwargs = {"moment": self.moment, **(legacy or {"next_round": self.next_round})}
        return f"{type(self).__module__}.{type(self).__qualname__}", kwargs

    def __repr__(self) -> str:
        number = self.next_round if self.resubmit is None else self.resubmit["round"] + 1
        return f"<ResubmitBackoffTrigger round={number} at={self.moment:.0f}>"

    async def run(self) -> AsyncIterator[TriggerEvent]:
        await asyncio.sleep(max(0.0, self.moment - time.time()))
        yield TriggerEvent(self._legacy() or {"next_round": self.next_round})  # type: ignore[no-untyped-call]
