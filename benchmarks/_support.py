"""What several benchmarks need: the emulator in a process of its own, this process's peak RSS, the best
of a few timed runs, a warehouse CSV to load and a wait for a job to end."""

from __future__ import annotations

import contextlib
import json
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx


def peak_rss_mb() -> float:
    """This process's own peak resident memory in MB.

    ``VmHWM`` rather than ``ru_maxrss``: on Linux ``ru_maxrss`` keeps the peak of the process a
    child was forked from, so every child of a large parent would report the parent's size.
    """
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def emulator_process(speed: str = "instant") -> Iterator[str]:
    """Start ``salesforce-bulk-emulator`` on a free loopback port; yield its base URL; stop it.

    A process of its own, so the benchmark's CPU and memory figures are the client's alone.
    """
    port = free_port()
    script = Path(sys.executable).with_name("salesforce-bulk-emulator")
    proc = subprocess.Popen(  # noqa: S603 - our own console script
        [str(script), "--port", str(port), "--db", ":memory:", "--speed", speed, "--log-level", "warning"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("the emulator did not start")
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def best_of(runs: int, run: Callable[[], int]) -> tuple[float, int]:
    """The fastest of ``runs`` calls of ``run`` in seconds, and the size the last one returned."""
    best = float("inf")
    size = 0
    for _ in range(runs):
        started = time.perf_counter()
        size = run()
        best = min(best, time.perf_counter() - started)
    return best, size


def warehouse_csv(count: int) -> bytes:
    """``count`` Warehouse_Item__c records as an ingest CSV."""
    lines = ["External_Id__c,Name,Quantity__c,Unit_Price__c,Active__c,Category__c"]
    categories = ("Hardware", "Software", "Consumable", "Spare Part")
    lines += [
        f"WI-{n:07d},Item {n},{n % 500},{n % 997}.25,{'true' if n % 2 else 'false'},{categories[n % 4]}"
        for n in range(count)
    ]
    return ("\n".join(lines) + "\n").encode()


def wait_for_job(client: httpx.Client, url: str, *, timeout: float, every: float) -> dict[str, Any]:
    """The job at ``url`` once it has ended, asked every ``every`` seconds for at most ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info: dict[str, Any] = client.get(url).json()
        if info["state"] in ("JobComplete", "Failed", "Aborted"):
            return info
        time.sleep(every)
    raise RuntimeError(f"job {url} did not finish in {timeout:g}s")


class TaskStateStore:
    """The task state store's get/set/delete, JSON round-tripped as the real one is."""

    def __init__(self) -> None:
        self.data: dict[str, str] = {}

    def get(self, key: str, default: Any = None) -> Any:
        return json.loads(self.data[key]) if key in self.data else default

    def set(self, key: str, value: Any) -> None:
        self.data[key] = json.dumps(value)

    def delete(self, key: str) -> None:
        self.data.pop(key, None)
