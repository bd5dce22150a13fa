"""Fixtures the client tests share. Helpers that tests import live in ``helpers.py``: a conftest is
imported by pytest as ``conftest``, and importing it again under its package name would load it twice."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from airflow_provider_salesforce_bulk.emulator.server import RunningEmulator, run_emulator


@pytest.fixture(scope="module")
def emulator() -> Iterator[RunningEmulator]:
    """A local org over a real socket, in memory, processing at once; one per test module (each
    module's own autouse fixture resets it and its fault settings between tests)."""
    with run_emulator(db=":memory:", records_per_second=None) as running:
        yield running
