"""The live state of one emulator: settings, org, database, sessions, limits, faults and worker.

The routes, the workers and the test handle all reach the state through one :class:`Emulator`
(no module globals), so each emulator in a process (tests start many) keeps its own org, database,
sessions and faults.
"""

from __future__ import annotations

import math
import secrets
import threading
import time

from .credentials import Credentials
from .faults import FaultInjector
from .ids import DEFAULT_USER_ID, ORG_PREFIX, make_id
from .job_worker import JobProcessor
from .limits import Limits
from .query_jobs import QueryJobs
from .schema import Schema, load_schema
from .settings import EmulatorSettings
from .store import Store

ORG_ID = make_id(ORG_PREFIX, 42)
USER_ID = DEFAULT_USER_ID


class Emulator:
    """Everything one running emulator holds, shared by the routes and the worker.

    Parameters
    ----------
    settings
        Initial settings; runtime changes go through :meth:`update_settings`.
    credentials
        The org's logins; defaults to fixed test credentials with a fresh RSA key pair.
    base_url
        The URL clients reach the emulator at (returned as ``instance_url``).
    """

    def __init__(
        self, settings: EmulatorSettings, credentials: Credentials | None = None, base_url: str = ""
    ) -> None:
        self.settings = settings
        self.credentials = credentials or Credentials()
        self.base_url = base_url
        self.schema: Schema = load_schema(settings.schema_path)
        self.store = Store(settings.db, self.schema)
        self.store.seed_user(self.credentials.username)
        self.faults = FaultInjector(settings)
        self.limits = Limits()
        self.processor = JobProcessor(self.store, settings, self.faults, self.limits)
        self.query_jobs = QueryJobs(self.store, self.schema, settings, self.faults)
        self.started_at = time.time()
        self._sessions = self.store.load_sessions()
        self._sessions_lock = threading.Lock()

    def start(self) -> None:
        """Start the worker (resuming unfinished jobs)."""
        self.processor.start()
        self.query_jobs.start()

    def stop(self) -> None:
        """Stop the worker and close the database."""
        self.processor.stop()
        self.query_jobs.stop()
        self.store.close()

    def update_settings(self, changes: dict[str, object]) -> None:
        """Apply runtime setting changes (see :data:`~.settings.RUNTIME_SETTINGS`)."""
        self.settings.update(changes)
        if "seed" in changes:
            self.faults.reseed(self.settings.seed)

    def reset(self) -> None:
        """Forget every job and record and refill the limits; sessions stay valid."""
        self.store.reset()
        self.store.seed_user(self.credentials.username)
        self.query_jobs.reset()
        self.limits.clear()
        self.faults.forget_parents()

    # -- sessions --------------------------------------------------------------------------------

    def new_session(self) -> tuple[str, float]:
        """Issue an access token; returns it with its issue time (epoch seconds)."""
        token = f"{ORG_ID[:15]}!{secrets.token_urlsafe(72)}"
        issued = time.time()
        self.store.add_session(token, issued)
        with self._sessions_lock:
            self._sessions[token] = issued
        return token, issued

    def session_valid(self, token: str) -> bool:
        """True if ``token`` was issued here and has not expired."""
        with self._sessions_lock:
            issued = self._sessions.get(token)
        if issued is None:
            return False
        now = time.time()
        if now - issued > self.settings.session_timeout_seconds:
            return False
        every = self.settings.session_expiry_every_seconds
        if every:
            # Sessions die together at each multiple of `every` seconds since the start.
            epoch = math.floor((now - self.started_at) / every)
            return issued >= self.started_at + epoch * every
        return True
