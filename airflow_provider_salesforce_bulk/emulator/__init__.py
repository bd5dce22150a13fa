"""A local Salesforce org: OAuth, SOAP login, Bulk API 2.0 ingest and query on a real HTTP server and SQLite.

Start it in tests with :func:`run_emulator`, or from a shell with ``salesforce-bulk-emulator``.
It imports nothing from the project's client, so the two cannot share a bug.
"""

from .credentials import Credentials
from .server import RunningEmulator, run_emulator
from .settings import EmulatorSettings

__all__ = ["Credentials", "EmulatorSettings", "RunningEmulator", "run_emulator"]
