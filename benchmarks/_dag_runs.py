"""Run a DAG file with ``dag.test()`` in a child process and read its outcome (its peak RSS included);
the emulator's admin calls.

The fault bench's runs share this: each DAG runs in a process of its own (Airflow's retries included),
so one run's state and memory never leak into the next.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from benchmarks._support import peak_rss_mb

MARK = "BENCH_DAG_OUTCOME "


def admin(base_url: str, path: str, payload: Any = None) -> Any:
    """Call the emulator's ``/__emulator__/<path>`` (GET, or POST with a JSON ``payload``)."""
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(  # noqa: S310 - loopback emulator
        f"{base_url}/__emulator__/{path}",
        data=data,
        method="GET" if data is None else "POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=120) as response:  # noqa: S310
        body = response.read()
    return json.loads(body) if body else None


def airflow_env(work: Path) -> dict[str, str]:
    """An environment with an Airflow home of its own under ``work``, its database migrated."""
    (work / "dags").mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env["AIRFLOW_HOME"] = str(work / "airflow_home")
    env["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
    env["AIRFLOW__CORE__DAGS_FOLDER"] = str(work / "dags")
    env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{work / 'airflow.db'}"
    env["AIRFLOW__LOGGING__LOGGING_LEVEL"] = "INFO"
    subprocess.run(  # noqa: S603
        [str(Path(sys.executable).with_name("airflow")), "db", "migrate"],
        check=True,
        capture_output=True,
        env=env,
    )
    return env


def run_dag(
    env: dict[str, str], dag_file: Path, dag_id: str, log: Path, timeout: float = 1800
) -> dict[str, Any]:
    """``dag.test()`` of ``dag_file`` in a child (at most ``timeout`` seconds); its state, tries,
    summary (XCom), seconds and peak RSS."""
    with log.open("w") as output:
        out = subprocess.run(  # noqa: S603 - this module, in a child
            [sys.executable, "-m", "benchmarks._dag_runs", str(dag_file), dag_id],
            check=False,
            stdout=output,
            stderr=subprocess.STDOUT,
            env=env,
            timeout=timeout,
        )
    lines = [line[len(MARK) :] for line in log.read_text().splitlines() if line.startswith(MARK)]
    if out.returncode != 0 or not lines:
        tail = log.read_text()[-4000:]
        raise RuntimeError(f"{dag_id}: the child failed ({out.returncode}):\n{tail}")
    return dict(json.loads(lines[-1]))


def child(dag_file: str, dag_id: str) -> None:
    """Run one DAG with dag.test() and print its outcome as one JSON line."""
    import importlib.util

    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    spec = importlib.util.spec_from_file_location(f"bench_dag_{dag_id}", dag_file)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    started = time.perf_counter()
    dr = module.dag.test()
    seconds = time.perf_counter() - started
    ti = dr.get_task_instance("load")
    with create_session() as session:
        raw = session.scalars(
            select(XComModel.value).where(
                XComModel.dag_id == dag_id, XComModel.task_id == "load", XComModel.key == "return_value"
            )
        ).first()
    summary = json.loads(raw) if isinstance(raw, str) else raw
    outcome = {
        "state": str(dr.state),
        "tries": ti.try_number,
        "summary": summary,
        "seconds": seconds,
        # The whole process's peak: Airflow, the operator's two halves and the trigger it ran inline.
        "peak_rss_mb": peak_rss_mb(),
    }
    print(MARK + json.dumps(outcome, default=str), flush=True)


if __name__ == "__main__":
    child(sys.argv[1], sys.argv[2])
