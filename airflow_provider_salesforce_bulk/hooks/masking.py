"""Registering secrets with Airflow's secret masker, once per value per process."""

from __future__ import annotations

import hashlib
import threading

__all__ = ["amask", "mask"]

# Hashes, not values: this set must not become one more place a secret sits in plain text.
_MASKED: set[str] = set()
_GUARD = threading.Lock()


def _new(secret: str | None) -> bool:
    if not secret:
        return False
    digest = hashlib.sha256(secret.encode("utf-8")).hexdigest()
    with _GUARD:
        if digest in _MASKED:
            return False
        _MASKED.add(digest)
        return True


def mask(secret: str | None) -> None:
    """Mask ``secret`` in every log line of this process (and the task supervisor's)."""
    if _new(secret):
        from airflow.sdk.log import mask_secret

        mask_secret(secret)


async def amask(secret: str | None) -> None:
    """:func:`mask` for code running in an event loop (no blocking round trip to the supervisor)."""
    if not _new(secret):
        return
    try:
        # Typed against whichever Airflow is installed: the 3.1/3.2 venvs of `make test-airflow` lack it.
        from airflow.sdk.log import amask_secret  # type: ignore[attr-defined, unused-ignore]
    except ImportError:  # Airflow < 3.3: only the sync call, which blocks on the supervisor
        from airflow.sdk.log import mask_secret
        from asgiref.sync import sync_to_async

        # In a worker thread as the compat connection helpers do: on the loop's own thread the
        # blocking round trip raises DeadlockImminentError while another request is in flight.
        await sync_to_async(mask_secret)(secret)
        return
    await amask_secret(secret)
