"""The task's state read over the triggerer's real supervisor channel, from the triggerer's loop.

The other tests answer ``GetTaskStates`` with a stand-in for ``SUPERVISOR_COMMS``. Here it is
Airflow's own ``TriggerCommsDecoder`` over a socket pair, with a thread on the other end answering
frames as the triggerer's supervisor does. Its sync ``send`` bridges to the triggerer's event loop
differently per version (``async_to_sync`` before 3.3, ``run_coroutine_threadsafe`` since), and a
trigger cancelled before 3.3 reads the state through it: the read must reach the answer on each.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from typing import Any

import pytest

from tests.airflow.helpers import TI


def _supervisor(sock: socket.socket, state: str, asked: list[Any]) -> None:
    """Answer one request frame with the task's state, as the triggerer's supervisor would."""
    import msgspec
    from airflow.sdk.execution_time.comms import TaskStatesResult, _RequestFrame, _ResponseFrame

    def read_exactly(n: int) -> bytes:
        data = b""
        while len(data) < n:
            part = sock.recv(n - len(data))
            if not part:
                raise ConnectionError("closed")
            data += part
        return data

    length = int.from_bytes(read_exactly(4), "big")
    request = msgspec.msgpack.Decoder(_RequestFrame).decode(read_exactly(length))
    asked.append(request.body)
    body = TaskStatesResult(task_states={TI.run_id: {TI.task_id: state}}).model_dump()
    sock.sendall(bytes(_ResponseFrame(id=request.id, body=body).as_bytes()))


@pytest.mark.parametrize(("state", "expected"), [("failed", True), ("deferred", False)])
async def test_the_state_is_read_over_the_triggerers_channel(
    monkeypatch: pytest.MonkeyPatch, state: str, expected: bool
) -> None:
    from airflow.jobs.triggerer_job_runner import TriggerCommsDecoder
    from airflow.sdk.execution_time import task_runner

    from airflow_provider_salesforce_bulk.triggers.task_state import atry_is_over

    ours, theirs = socket.socketpair()
    asked: list[Any] = []
    answering = threading.Thread(target=_supervisor, args=(theirs, state, asked), daemon=True)
    answering.start()
    reader, writer = await asyncio.open_connection(sock=ours)
    comms = TriggerCommsDecoder(async_writer=writer, async_reader=reader, socket=ours)
    if hasattr(comms, "start_reader"):  # Airflow 3.3: responses are read by a task of the loop
        await comms.start_reader()
    monkeypatch.setattr(task_runner, "SUPERVISOR_COMMS", comms, raising=False)
    try:
        assert await atry_is_over(TI) is expected
    finally:
        writer.close()
        theirs.close()
    answering.join(10)
    assert len(asked) == 1
    assert asked[0]["type"] == "GetTaskStates"
    assert asked[0]["dag_id"] == TI.dag_id
