"""``SalesforceBulkBaseOperator``: what the ingest and query operators share.

The connection (and its old name ``conn_id``), deferral, polling, the timeout, the output folder's
rule, the stop event ``on_kill`` sets, the abort ``on_kill`` runs when a user ended the try, and one
event loop per try for ``deferrable=False`` (one login, one pool).
"""

from __future__ import annotations

import datetime
import functools
import os
import re
import threading
import time
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

from airflow.providers.common.compat.sdk import BaseOperator

from airflow_provider_salesforce_bulk.client import InputError
from airflow_provider_salesforce_bulk.hooks.connection import ConnectionSettings
from airflow_provider_salesforce_bulk.hooks.salesforce_bulk import SalesforceBulkHook, resolve_conn_id
from airflow_provider_salesforce_bulk.hooks.try_loop import one_loop_per_try
from airflow_provider_salesforce_bulk.operators.deferral import defer_or_wait
from airflow_provider_salesforce_bulk.operators.templating import holds_markup
from airflow_provider_salesforce_bulk.triggers.abort import abort_jobs_now
from airflow_provider_salesforce_bulk.triggers.events import JobsEvent
from airflow_provider_salesforce_bulk.triggers.salesforce_bulk import (
    SalesforceBulkJobTrigger,
    check_positive_number,
)
from airflow_provider_salesforce_bulk.triggers.task_state import try_is_over

__all__ = ["SalesforceBulkBaseOperator", "one_loop", "output_folder"]

R = TypeVar("R")

_UNSAFE = re.compile(r"[^A-Za-z0-9._=+-]")


def task_path_parts(ti: Any) -> list[str]:
    """``dag_id``, ``run_id``, ``task_id`` (and the map index of a mapped task) of ``ti``, each with
    the characters unsafe in a file name replaced by ``_``: the folders of a task instance's files."""
    parts = [ti.dag_id, ti.run_id, ti.task_id]
    if getattr(ti, "map_index", -1) not in (None, -1):
        parts.append(str(ti.map_index))
    return [_UNSAFE.sub("_", part) for part in parts]


def output_folder(path: Any, ti: Any, default_folder: str) -> Any:
    """Where an operator writes: ``path`` as an ``ObjectStoragePath``, or its default under ``$AIRFLOW_HOME``.

    One rule for both operators' folders: an ``ObjectStoragePath`` or a URL (``s3://...``,
    ``file://...``) is taken as it is; a plain local path is made absolute against the worker's
    current directory when the task runs (the summary names it as that absolute path), so every
    step of a try, and a resumed try, writes to the same folder. With no
    ``path``: ``$AIRFLOW_HOME/<default_folder>/<dag_id>/<run_id>/<task_id>[/<map_index>]``, each part
    with characters unsafe in a file name replaced by ``_``.
    """
    from airflow.providers.common.compat.sdk import ObjectStoragePath

    if path:
        if isinstance(path, ObjectStoragePath):
            return path
        text = os.fspath(path) if isinstance(path, os.PathLike) else str(path)
        return ObjectStoragePath(text if "://" in text else os.path.abspath(text))
    home = os.environ.get("AIRFLOW_HOME") or os.path.expanduser("~/airflow")
    local = os.path.join(home, _UNSAFE.sub("_", default_folder), *task_path_parts(ti))
    return ObjectStoragePath(f"file://{os.path.abspath(local)}")


def one_loop(method: Callable[..., R]) -> Callable[..., R]:
    """Run an operator method (``execute``, a resumed method) on one event loop for the whole try.

    Every ``run_sync`` inside it shares the loop, so a ``deferrable=False`` try logs in once and
    opens one HTTP pool; the loop and the pool are closed when the method returns or fails.
    """

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> R:
        with one_loop_per_try():
            return method(*args, **kwargs)

    return wrapper


class SalesforceBulkBaseOperator(BaseOperator):
    """Base of the operators: connection, deferral, polling, timeout, output folder and kill handling.

    Parameters
    ----------
    poll_interval : float
        Longest wait between two polls of the jobs, in seconds.
    timeout : float or timedelta
        Deadline for the jobs to finish after they are submitted; they are aborted when it passes.
        Checked when the task runs (:meth:`_check_wait_settings`), not when the DAG file is parsed.
    salesforce_bulk_conn_id : str, optional
        A ``salesforce_bulk`` (or ``salesforce``) connection, as the hook names it.
    conn_id : str, optional
        The name of the first releases for ``salesforce_bulk_conn_id``, still accepted.
    deferrable : bool
        Wait in the triggerer; otherwise poll in the worker, on one event loop for the try.
    """

    job_kind: ClassVar[str] = "ingest"
    """The kind of the operator's jobs (``ingest`` or ``query``): which endpoints poll and abort them."""

    def __init__(
        self,
        *,
        poll_interval: float,
        timeout: float | datetime.timedelta,
        salesforce_bulk_conn_id: str | None,
        conn_id: str | None,
        deferrable: bool,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.poll_interval = poll_interval
        self.timeout: Any = timeout.total_seconds() if isinstance(timeout, datetime.timedelta) else timeout
        self.conn_id = resolve_conn_id(salesforce_bulk_conn_id, conn_id)
        self.deferrable = deferrable

    def render_template(
        self,
        content: Any,
        context: Any,
        jinja_env: Any = None,
        seen_oids: set[int] | None = None,
    ) -> Any:
        """Strings without Jinja markup are kept as they are (:mod:`.templating`): not compiled, not
        changed (a trailing newline, a native environment's ``"123"`` to ``123``)."""
        if (
            isinstance(content, str)
            and jinja_env is not None
            and not content.endswith(tuple(self.template_ext))
            and not holds_markup(content, jinja_env)
        ):
            return content
        return super().render_template(content, context, jinja_env, seen_oids)

    def resume_execution(self, next_method: str, next_kwargs: dict[str, Any] | None, context: Any) -> Any:
        """A resumed method (after the triggerer) runs on one event loop too."""
        with one_loop_per_try():
            return super().resume_execution(next_method, next_kwargs, context)

    # -- settings -------------------------------------------------------------------------------

    def _hook(self) -> SalesforceBulkHook:
        return SalesforceBulkHook(salesforce_bulk_conn_id=self.conn_id)

    def _check_wait_settings(self) -> None:
        """``poll_interval`` and ``timeout``: positive numbers, or an ``InputError`` naming which."""
        for name in ("poll_interval", "timeout"):
            try:
                check_positive_number(name, getattr(self, name))
            except ValueError as exc:
                raise InputError(str(exc), field=name) from None

    def _output_folder(self, path: Any, context: Any, default_folder: str) -> Any:
        """:func:`output_folder` for this task instance."""
        return output_folder(path, context.get("ti") if hasattr(context, "get") else None, default_folder)

    # -- waiting --------------------------------------------------------------------------------

    def _trigger(self, job_ids: list[str], **kwargs: Any) -> SalesforceBulkJobTrigger:
        """The trigger that waits for ``job_ids``, its deadline ``timeout`` from now."""
        return SalesforceBulkJobTrigger(
            conn_id=self.conn_id,
            job_ids=job_ids,
            deadline=time.time() + float(self.timeout),
            poll_interval=float(self.poll_interval),
            job_kind=self.job_kind,
            **kwargs,
        )

    def _wait_for(self, trigger: SalesforceBulkJobTrigger, kwargs: dict[str, Any] | None = None) -> JobsEvent:
        """Defer to ``trigger`` (resuming in ``execute_complete``), or poll in the worker."""
        return defer_or_wait(
            self, trigger, timeout=float(self.timeout), poll_interval=float(self.poll_interval), kwargs=kwargs
        )

    # -- stopping -------------------------------------------------------------------------------

    def _stop_event(self) -> threading.Event:
        """Set by ``on_kill``: the try stops at its next boundary and writes or sends nothing more.
        Made on first use: an Event in ``__init__`` would break Airflow's deepcopy of the operator."""
        stop: threading.Event | None = getattr(self, "_stop", None)
        if stop is None:
            stop = self._stop = threading.Event()
        return stop

    def _abort_targets(self) -> tuple[list[str], Any]:
        """The jobs ``on_kill`` may abort, and the plan store that names the try (subclasses)."""
        return [], None

    def _settled_targets(self, job_ids: list[str]) -> list[str]:
        """The jobs to abort once the try is known to be over (a subclass may wait for more)."""
        return job_ids

    def _describe_jobs(self, job_ids: list[str]) -> str:
        return f"jobs {', '.join(job_ids)}"

    def on_kill(self) -> None:
        """Stop this try at the next boundary; abort its jobs only if a user ended it.

        A worker shut down or evicted also lands here: the task is still running then, and its jobs
        go on; a retry reattaches to them. So does a try that froze past the heartbeat timeout and
        woke up after Airflow started its retry: the plan store names the newer try, and nothing is
        aborted (:func:`~airflow_provider_salesforce_bulk.triggers.task_state.try_is_over`). Airflow
        calls this from a signal handler, which may have interrupted the task while it held a lock
        (a pool, a token cache, a log handler): the abort runs in a thread of its own with its own
        session and loop, and this returns at once so the task releases those locks. The thread is
        not a daemon: a task that ends normally waits for it; Airflow's SIGKILL, 5 s after the
        SIGTERM, bounds it.
        """
        self._stop_event().set()
        job_ids, store = self._abort_targets()
        settings: ConnectionSettings | None = getattr(self, "_settings", None)
        if not job_ids or settings is None:
            return
        worker = threading.Thread(
            target=self.abort_if_try_over,
            args=(getattr(self, "_ti", None), store, settings, job_ids),
            name=f"salesforce-bulk-{self.job_kind}-on-kill",
            daemon=False,
        )
        worker.start()
        self._kill_thread = worker

    def abort_if_try_over(
        self, ti: Any, store: Any, settings: ConnectionSettings, job_ids: list[str]
    ) -> None:
        """Abort ``job_ids`` if Airflow says the try ``ti`` is over (a user's decision); never raises."""
        if try_is_over(ti, store) is not True:
            return
        job_ids = self._settled_targets(job_ids)
        self.log.warning("The task was ended by a user: aborting %s", self._describe_jobs(job_ids))
        try:
            abort_jobs_now(settings, job_ids, job_kind=self.job_kind, log=self.log)
        except Exception as exc:
            self.log.warning(
                "Could not abort %s: %s: %s", self._describe_jobs(job_ids), type(exc).__name__, exc
            )
