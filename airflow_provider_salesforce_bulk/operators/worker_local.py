"""A warning when files go to the worker's own disk while tasks run on many machines.

The default ``results_path`` / ``output_path`` is a folder under ``$AIRFLOW_HOME`` on the worker
that runs the try. With one machine (the local executors) that is where a user looks; with Celery,
Kubernetes or any remote executor, a retry runs on another worker and writes there, the summary
names a path that exists on one machine only, and what a killed try left stays on its worker.
"""

from __future__ import annotations

from collections.abc import Callable

from airflow.providers.common.compat.sdk import conf

__all__ = ["LOCAL_EXECUTORS", "remote_executors", "warn_if_worker_local"]

LOCAL_EXECUTORS = frozenset({"LocalExecutor", "SequentialExecutor", "DebugExecutor"})
"""Executors that run every task on the machine of the scheduler (or of ``dag.test``)."""


def remote_executors(configured: str | None = None) -> list[str]:
    """The configured executors (``[core] executor``, a comma-separated list, each a name, a class
    path or ``alias:path``) that may run a task on another machine."""
    value = conf.get("core", "executor", fallback="") if configured is None else configured
    names = [entry.strip().rsplit(":", 1)[-1].rsplit(".", 1)[-1] for entry in str(value).split(",")]
    return [name for name in names if name and name not in LOCAL_EXECUTORS]


def warn_if_worker_local(setting: str, where: str, warn: Callable[..., object]) -> None:
    """``warn`` once per call when ``setting`` was left at its worker-local default, ``where``."""
    remote = remote_executors()
    if remote:
        warn(
            "%s is not set: files go to %s on the disk of the worker that runs each try, but the executor "
            "is %s, which runs tries on other machines. A retry on another worker writes there and "
            "cannot see or clean what a killed try left behind (partial files, under names that never "
            "look complete); set %s to shared storage (e.g. s3://bucket/prefix)",
            setting,
            where,
            ", ".join(remote),
            setting,
        )
