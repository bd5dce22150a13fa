"""Airflow as a CeleryExecutor deployment runs it, every component a process of its own.

The scheduler, dag-processor, api-server and two triggerers share one ``AIRFLOW_HOME`` (the "control
plane"); each Celery worker has its own home and temporary folder, as a worker on another machine
would. Everything shares the PostgreSQL metadata database, the Redis broker, the DAG folder and the
connections (``AIRFLOW_CONN_*``: the org in the emulator, ``aws_default`` at moto's S3 server).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.stack.servers import Emulator, MotoS3, Redis, free_port, start, stop, tail

#: ``task_instance_heartbeat_timeout``: a try whose supervisor is silent this long is failed and retried.
HEARTBEAT_TIMEOUT = 30
_PROBLEM = re.compile(r"\[(warning|error|critical)\s*\]|\b(WARNING|ERROR|CRITICAL)\b|Traceback")
_WORKERS = ("worker-a", "worker-b")
_TRIGGERERS = ("triggerer-a", "triggerer-b")


def _children_map() -> dict[int, list[int]]:
    found: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            found.setdefault(ppid, []).append(int(entry.name))
    return found


def children(pid: int) -> list[int]:
    return _children_map().get(pid, [])


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (from /proc), parents first."""
    tree = _children_map()
    found, queue = [], [pid]
    while queue:
        current = queue.pop(0)
        found.append(current)
        queue.extend(tree.get(current, []))
    return found


def signal_tree(pid: int, signum: int) -> list[int]:
    """Send ``signum`` to ``pid`` and all its descendants; returns the pids signalled."""
    pids = descendants(pid)
    for each in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(each, signum)
    return pids


class AirflowStack:
    """Start, signal and inspect the Airflow processes of one stack."""

    def __init__(
        self, root: Path, pg_url: str, redis: Redis, s3: MotoS3, emulator: Emulator, concurrency: int
    ) -> None:
        from cryptography.fernet import Fernet

        self.root = root
        self.home = root / "home"
        self.dags = root / "dags"
        self.logs = root / "logs"
        for folder in (self.home, self.dags, self.logs):
            folder.mkdir(parents=True, exist_ok=True)
        self.pg_url = pg_url
        self.redis = redis
        self.concurrency = concurrency
        self.api_port = free_port()
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.triggerer_jobs: dict[str, int] = {}
        #: Components the test killed on purpose (until it starts them again).
        self.down: set[str] = set()
        self.worker_homes = {name: root / name / "home" for name in _WORKERS}
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")},
            "PYTHONUNBUFFERED": "1",
            "AIRFLOW_HOME": str(self.home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(self.dags),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            "AIRFLOW__CORE__PARALLELISM": "32",
            "AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT": "300",
            "AIRFLOW__CORE__FERNET_KEY": Fernet.generate_key().decode(),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": pg_url,
            "AIRFLOW__CELERY__BROKER_URL": redis.url,
            "AIRFLOW__CELERY__RESULT_BACKEND": f"db+{pg_url}",
            # Sending a task to Redis waits 1 s by default: too short on a busy machine.
            "AIRFLOW__CELERY__OPERATION_TIMEOUT": "30",
            "AIRFLOW__API__PORT": str(self.api_port),
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__API_AUTH__JWT_SECRET": "stack-test-jwt-secret-" + Fernet.generate_key().decode(),
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{self.api_port}/execution/",
            "AIRFLOW__WORKERS__EXECUTION_API_TIMEOUT": "60",
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
            "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_THRESHOLD": "120",
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": str(HEARTBEAT_TIMEOUT),
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "5",
            # A message lost with the broker comes back as a queued try after this long.
            "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT": "180",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "30",
            "AIRFLOW__DAG_PROCESSOR__DAG_FILE_PROCESSOR_TIMEOUT": "300",
            "AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC": "1",
            # A killed triggerer's triggers move to the other one after this many seconds of silence.
            "AIRFLOW__TRIGGERER__TRIGGERER_HEALTH_CHECK_THRESHOLD": "30",
            "AIRFLOW_CONN_SF_STACK": emulator.airflow_connection(),
            "AIRFLOW_CONN_AWS_DEFAULT": s3.airflow_connection(),
        }

    # ---- processes -------------------------------------------------------------------------------

    def airflow(self, *args: str, env: dict[str, str] | None = None, timeout: float = 600) -> str:
        airflow = str(Path(sys.executable).with_name("airflow"))
        done = subprocess.run(  # noqa: S603
            [airflow, *args], env=env or self.env, capture_output=True, text=True, timeout=timeout
        )
        if done.returncode != 0:
            raise RuntimeError(f"airflow {' '.join(args)} exited {done.returncode}: {done.stderr[-4000:]}")
        return done.stdout

    def _spawn(self, name: str, args: list[str], env: dict[str, str]) -> None:
        self.down.discard(name)
        airflow = str(Path(sys.executable).with_name("airflow"))
        self.procs[name] = start([airflow, *args], self.logs / f"{name}.log", env)

    def worker_env(self, name: str) -> dict[str, str]:
        home = self.worker_homes[name]
        tmp = home.parent / "tmp"
        home.mkdir(parents=True, exist_ok=True)
        tmp.mkdir(parents=True, exist_ok=True)
        port = free_port()
        return {
            **self.env,
            "AIRFLOW_HOME": str(home),
            "TMPDIR": str(tmp),
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(port),
        }

    def start_worker(self, name: str) -> None:
        args = ["celery", "worker", "--concurrency", str(self.concurrency)]
        args += ["--celery-hostname", f"{name}@stack"]
        self._spawn(name, args, self.worker_env(name))

    def start(self) -> None:
        self.airflow("db", "migrate")
        self._spawn("api-server", ["api-server"], self.env)
        self._spawn("scheduler", ["scheduler"], self.env)
        self._spawn("dag-processor", ["dag-processor"], self.env)
        for name in _TRIGGERERS:
            self.restart_triggerer(name)
        for name in _WORKERS:
            self.start_worker(name)

    def close(self) -> None:
        """SIGTERM every component at once, then stop each (SIGKILL after a shared grace)."""
        for proc in self.procs.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGCONT)  # a frozen one would never read its SIGTERM
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for proc in self.procs.values():
            stop(proc, grace=max(0.1, deadline - time.monotonic()))

    def exited(self) -> list[str]:
        """Names of the processes that exited (empty when all run)."""
        return [name for name, proc in self.procs.items() if proc.poll() is not None]

    def expected_down(self, name: str) -> bool:
        return name in self.down

    def kill(self, name: str) -> list[int]:
        """SIGKILL the component and everything it started (a machine lost)."""
        self.down.add(name)
        pids = signal_tree(self.procs[name].pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.procs[name].wait(30)
        return pids

    def restart_triggerer(self, name: str) -> None:
        """Start triggerer ``name`` and wait for its job row: ``triggerer_jobs[name]`` is its id."""
        before = self._triggerer_job_ids()
        env = {**self.env, "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port())}
        self._spawn(name, ["triggerer"], env)
        deadline = time.monotonic() + 300
        while not (new := self._triggerer_job_ids() - before):
            assert self.procs[name].poll() is None, f"{name} exited: {tail(self.logs / f'{name}.log')}"
            assert time.monotonic() < deadline, f"{name} made no TriggererJob in 300 s"
            time.sleep(1)
        self.triggerer_jobs[name] = max(new)

    def _triggerer_job_ids(self) -> set[int]:
        return {int(r[0]) for r in self.query("SELECT id FROM job WHERE job_type = 'TriggererJob'")}

    # ---- Celery control: which queue a worker consumes --------------------------------------------

    def _control(self) -> Any:
        from celery import Celery

        return Celery(broker=self.redis.url).control

    def consume(self, worker: str, on: bool) -> None:
        """Start or stop ``worker`` taking tasks from Airflow's ``default`` queue."""
        control = self._control()
        method = control.add_consumer if on else control.cancel_consumer
        deadline = time.monotonic() + 120
        while True:
            replies = method("default", destination=[f"{worker}@stack"], reply=True, timeout=10)
            if replies:
                return
            assert time.monotonic() < deadline, f"{worker} did not answer the {method.__name__} request"

    # ---- the metadata database ---------------------------------------------------------------------

    def query(self, sql: str, *args: object) -> list[tuple[Any, ...]]:
        import psycopg

        url = self.pg_url.replace("postgresql+psycopg://", "postgresql://")
        with psycopg.connect(url, connect_timeout=30) as conn:
            return list(conn.execute(sql, args).fetchall())

    def wait_parsed(self, dag_ids: list[str], seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while True:
            found = {row[0] for row in self.query("SELECT dag_id FROM serialized_dag")}
            if set(dag_ids) <= found:
                return
            assert not self.exited(), f"processes exited: {self.exited()}"
            missing = sorted(set(dag_ids) - found)
            assert time.monotonic() < deadline, f"DAGs {missing} not parsed in {seconds} s"
            time.sleep(2)

    def trigger(self, dag_id: str, run_id: str) -> None:
        self.airflow("dags", "unpause", dag_id)
        self.airflow("dags", "trigger", dag_id, "--run-id", run_id)

    def tis(self, dag_id: str, run_id: str) -> dict[str, tuple[str, int]]:
        """task_id to (state, try_number)."""
        rows = self.query(
            "SELECT task_id, state, try_number FROM task_instance WHERE dag_id = %s AND run_id = %s",
            dag_id,
            run_id,
        )
        return {str(t): (str(s), int(n)) for t, s, n in rows}

    def xcom(self, dag_id: str, run_id: str, task_id: str) -> dict[str, Any] | None:
        rows = self.query(
            "SELECT value FROM xcom WHERE dag_id = %s AND run_id = %s AND task_id = %s "
            "AND key = 'return_value'",
            dag_id,
            run_id,
            task_id,
        )
        if not rows:
            return None
        value: Any = rows[0][0]
        while isinstance(value, (str, bytes)):
            value = json.loads(value)
        return dict(value)

    # ---- task logs: which worker ran a try, and how far it got -----------------------------------

    def task_log(self, dag_id: str, run_id: str, task_id: str, try_number: int) -> tuple[str, str] | None:
        """(worker name, log text) of a try, from the worker home that holds its log file."""
        for worker, home in self.worker_homes.items():
            path = (
                home / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}" / f"task_id={task_id}"
                / f"attempt={try_number}.log"
            )  # fmt: skip
            if path.exists():
                return worker, path.read_text(errors="replace")
        return None

    def task_pids(self, worker: str) -> list[int]:
        """The worker's processes (main, pool, supervisors, task processes)."""
        return descendants(self.procs[worker].pid)

    # ---- what explains a failure ---------------------------------------------------------------------

    def diagnose(self, dag_id: str, run_id: str) -> None:
        print(f"\n==== task instances of {dag_id}/{run_id}:")
        with contextlib.suppress(Exception):
            for row in self.query(
                "SELECT task_id, state, try_number, next_method, hostname, start_date, end_date "
                "FROM task_instance WHERE dag_id = %s AND run_id = %s ORDER BY task_id",
                dag_id,
                run_id,
            ):
                print("   ", row)
            print("==== audit log (log table):")
            for row in self.query(
                "SELECT dttm, event, task_id, try_number, extra FROM log WHERE dag_id = %s ORDER BY id",
                dag_id,
            ):
                print("   ", str(row)[:600])
        for home in [self.home, *self.worker_homes.values()]:
            for path in sorted((home / "logs").rglob("*.log")):
                if f"dag_id={dag_id}" in str(path) and f"run_id={run_id}" in str(path):
                    print(f"==== {path}:")
                    print(tail(path, 6000))
        for path in sorted(self.logs.glob("*.log")):
            text = path.read_text(errors="replace")
            problems = [line for line in text.splitlines() if _PROBLEM.search(line)]
            print(f"==== {path.name}: {len(problems)} warning/error lines; the last ones, then its tail")
            for line in problems[-60:]:
                print("   ", line[:1000])
            print(tail(path, 3000))
