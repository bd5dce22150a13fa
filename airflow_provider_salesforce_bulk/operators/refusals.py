"""Two refusals by Salesforce that decide how a task fails: credentials and daily limits.

Refused credentials (``invalid_grant``, ``invalid_client``, ``INVALID_LOGIN``, a session refused
right after a fresh login) fail the task without Airflow retries: retrying a wrong password locks
the Salesforce user. ``REQUEST_LIMIT_EXCEEDED`` fails the try naming the allowance; Airflow's retry
reattaches to the jobs already created and sends only the rest once the allowance refilled.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from airflow.providers.common.compat.sdk import AirflowFailException

from airflow_provider_salesforce_bulk.client import (
    AuthenticationError,
    RequestLimitExceededError,
    SalesforceBulkError,
    SessionExpiredError,
)

__all__ = [
    "REFUSED_CREDENTIALS",
    "credentials_refused",
    "fail_on_refused_credentials",
    "limit_named",
    "refused_credentials_message",
]

REFUSED_CREDENTIALS: tuple[type[SalesforceBulkError], ...] = (AuthenticationError, SessionExpiredError)
"""What the client raises when Salesforce refused the login, or a session's token right after the
session logged in again (it refreshes once per request, so one that escapes is a refusal)."""


def credentials_refused(exc: BaseException) -> bool:
    """Whether ``exc`` (or what it was raised from) says Salesforce refused the credentials."""
    seen: BaseException | None = exc
    for _ in range(5):  # a BulkOperationError carries the refusal as its cause
        if seen is None:
            return False
        if isinstance(seen, REFUSED_CREDENTIALS):
            return True
        seen = seen.__cause__
    return False


def refused_credentials_message(exc: BaseException) -> str:
    """The task's failure message for refused credentials (no secret: the client's texts hold none)."""
    return (
        f"Salesforce refused the connection's credentials ({type(exc).__name__}: {exc}); not retried, "
        "since retrying a wrong password locks the Salesforce user: fix the connection, then clear the "
        "task (a cleared load reattaches to the jobs it already created)"
    )


@contextlib.contextmanager
def fail_on_refused_credentials() -> Iterator[None]:
    """Turn refused credentials raised inside into an ``AirflowFailException`` (no retry)."""
    try:
        yield
    except SalesforceBulkError as exc:
        if credentials_refused(exc):
            raise AirflowFailException(refused_credentials_message(exc)) from None
        raise


def limit_named(exc: RequestLimitExceededError) -> str:
    """The daily allowance a ``REQUEST_LIMIT_EXCEEDED`` answer names: batches or API requests."""
    text = " ".join(str(e.get("message") or "") for e in exc.errors) or str(exc)
    return "DailyBulkApiBatches" if "batch" in text.lower() else "DailyApiRequests"
