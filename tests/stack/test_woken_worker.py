"""A worker frozen mid-load (a VM pause, a long GC) past ``task_instance_heartbeat_timeout``: Airflow
fails its try and the retry runs on the other worker; then the frozen worker wakes up (issue 20).

- Woken after its retry succeeded: the files the successful try's summary names are unchanged, byte
  for byte, no file is added or removed under its results path, no job is aborted and every record
  is in the org once.
- Woken while its retry is ``up_for_retry``: no job is aborted (the org holds the jobs UploadComplete
  until the check is done, so an abort would take); then the retry succeeds, every record once.

In both, the woken try's log must hold no decision to abort: the abort itself reaches the org only
when it beats the SIGKILL that follows the try's SIGTERM by 5 s, which it loses on a busy machine.

The whole worker is stopped (SIGSTOP to its main process, pool, supervisors and task processes) and
continued (SIGCONT). Before the freeze the worker stops consuming Airflow's queue (Celery's
``cancel_consumer``): a frozen worker blocked in its pop from Redis would be handed the retry's message
and hold it until it wakes, and the retry must run elsewhere meanwhile.

Every finding is collected and printed before the test asserts, so a failing run says all it saw.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.stack.airflow_stack import HEARTBEAT_TIMEOUT, AirflowStack, children, descendants, signal_tree
from tests.stack.checks import (
    aborted_jobs,
    contacts_by_name,
    load_counts,
    s3_key,
    summary_problems,
    wait_done,
)
from tests.stack.scenario_dags import (
    FROZEN_PER_JOB,
    FROZEN_RECORDS,
    FROZEN_SUCCESS,
    FROZEN_WAITING,
    results_prefix,
    source_csv,
    source_key,
)
from tests.stack.servers import Emulator, MotoS3

pytestmark = pytest.mark.stack

#: From the trigger until the first try is mid-upload.
UPLOAD_SECONDS = 600.0
#: From the freeze until the retry succeeded (or is up for retry): the heartbeat timeout and a run.
RETRY_SECONDS = 900.0
#: After SIGCONT: the woken try's supervisor learns its try is over, SIGTERMs and then SIGKILLs it.
WAKE_SECONDS = 120.0


@dataclass
class Frozen:
    worker: str
    try_pids: list[int]
    pids: list[int]
    uploaded: int


def _freeze_mid_upload(airflow: AirflowStack, dag_id: str, run_id: str) -> Frozen:
    """Wait until try 1 has uploaded a job and has more to upload, then freeze its whole worker."""
    jobs = FROZEN_RECORDS // FROZEN_PER_JOB
    deadline = time.monotonic() + UPLOAD_SECONDS
    while True:
        state, try_number = airflow.tis(dag_id, run_id).get("load", ("none", 0))
        found = airflow.task_log(dag_id, run_id, "load", 1)
        if state == "running" and try_number == 1 and found is not None:
            uploaded = found[1].count(" uploaded (")
            if 0 < uploaded < jobs:
                break
        assert time.monotonic() < deadline, f"try 1 not mid-upload within {UPLOAD_SECONDS:.0f} s: {state}"
        time.sleep(0.2)
    worker = found[0]
    # The try first (the processes below the worker's pool: the try's task process and whatever it
    # started; the worker runs nothing else), then the whole worker.
    main = airflow.procs[worker].pid
    pool = set(children(main))
    try_pids = [pid for pid in descendants(main) if pid != main and pid not in pool]
    for pid in try_pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGSTOP)
    airflow.consume(worker, on=False)
    pids = signal_tree(main, signal.SIGSTOP)
    uploaded = airflow.task_log(dag_id, run_id, "load", 1)[1].count(" uploaded (")  # type: ignore[index]
    return Frozen(worker, try_pids, pids, uploaded)


def _thaw(airflow: AirflowStack, frozen: Frozen, dag_id: str, run_id: str) -> float:
    """SIGCONT the worker; wait until the woken try's processes are gone and its log is quiet.

    Returns the seconds from the SIGCONT to the woken try's last log line.
    """
    woken_at = datetime.datetime.now(datetime.timezone.utc)
    began = time.monotonic()
    for pid in frozen.pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
    airflow.consume(frozen.worker, on=True)
    deadline = began + WAKE_SECONDS
    while any(_running(pid) for pid in frozen.try_pids):
        assert time.monotonic() < deadline, f"the woken try (pids {frozen.try_pids}) still runs"
        time.sleep(0.5)
    # Anything the woken try started (an abort thread, a write) has ended or shows by now.
    last, quiet_since = "", time.monotonic()
    while time.monotonic() - quiet_since < 10 and time.monotonic() < deadline:
        found = airflow.task_log(dag_id, run_id, "load", 1)
        text = found[1] if found else ""
        if text != last:
            last, quiet_since = text, time.monotonic()
        time.sleep(1)
    stamps = [_stamp(line) for line in last.splitlines()]
    latest = max((s for s in stamps if s is not None), default=woken_at)
    return max(0.0, (latest - woken_at).total_seconds())


def _stamp(line: str) -> datetime.datetime | None:
    with contextlib.suppress(ValueError, AttributeError, KeyError, TypeError):
        return datetime.datetime.fromisoformat(str(json.loads(line)["timestamp"]).replace("Z", "+00:00"))
    return None


def _abort_decisions(airflow: AirflowStack, dag_id: str, run_id: str) -> list[str]:
    """The woken try's own log lines deciding to abort jobs.

    The org shows an abort only when it wins the race with the process's end (Airflow SIGKILLs the
    try 5 s after its SIGTERM): on a busy machine it loses, so the decision itself is checked too.
    """
    found = airflow.task_log(dag_id, run_id, "load", 1)
    if found is None:
        return []
    decisions = []
    for line in found[1].splitlines():
        with contextlib.suppress(ValueError, AttributeError):
            event = str(json.loads(line).get("event", ""))
            if "aborting jobs" in event.lower():
                decisions.append(event[:300])
    return decisions


def _running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _wait_state(airflow: AirflowStack, dag_id: str, run_id: str, wanted: set[str]) -> tuple[str, int]:
    deadline = time.monotonic() + RETRY_SECONDS
    while True:
        state, try_number = airflow.tis(dag_id, run_id).get("load", ("none", 0))
        if state in wanted:
            return state, try_number
        assert state not in ("failed", "success") or state in wanted, state
        assert time.monotonic() < deadline, f"not {wanted} within {RETRY_SECONDS:.0f} s: {state}"
        time.sleep(1)


def _files_named(summary: dict[str, Any] | None) -> set[str]:
    if summary is None:
        return set()
    return {s3_key(url) for job in summary["jobs"].values() for url in job["result_files"].values() if url}


def _report(title: str, findings: dict[str, Any], problems: list[str]) -> None:
    print(f"\n==== {title}")
    for key, value in findings.items():
        print(f"  {key}: {value}")
    print(f"  problems: {problems or 'none'}")


def _start(airflow: AirflowStack, s3: MotoS3, emulator: Emulator, dag_id: str, run_id: str) -> None:
    emulator.admin("POST", "settings", {"records_per_second": None})
    s3.put(source_key(dag_id, "load"), source_csv(dag_id, "load", FROZEN_RECORDS))
    airflow.trigger(dag_id, run_id)


def test_a_worker_woken_after_its_retry_succeeded_changes_nothing(
    stack: tuple[AirflowStack, MotoS3, Emulator],
) -> None:
    airflow, s3, emulator = stack
    dag_id, run_id = FROZEN_SUCCESS, "frozen_after_success_run"
    aborted_at_start = set(aborted_jobs(emulator))
    try:
        _start(airflow, s3, emulator, dag_id, run_id)
        frozen = _freeze_mid_upload(airflow, dag_id, run_id)
        state, try_number = _wait_state(airflow, dag_id, run_id, {"success"})
        retry = airflow.task_log(dag_id, run_id, "load", try_number)
        prefix = results_prefix(dag_id, run_id, "load")
        files_before = s3.objects(prefix)
        summary = airflow.xcom(dag_id, run_id, "load")
        # The retry itself aborts a job the frozen try opened and never closed (its records go to a
        # new job): that is its decision. Only what changes after the wake is the woken try's doing.
        aborted_before = set(aborted_jobs(emulator))
        lived = _thaw(airflow, frozen, dag_id, run_id)
        files_after = s3.objects(prefix)
        state_after = airflow.tis(dag_id, run_id)["load"]
        aborted = sorted(set(aborted_jobs(emulator)) - aborted_before)
        counts = load_counts(contacts_by_name(emulator), dag_id, "load", FROZEN_RECORDS)
        decisions = _abort_decisions(airflow, dag_id, run_id)
        named = _files_named(summary)
        both = files_before.keys() & files_after.keys()
        changed = sorted(k for k in both if files_before[k] != files_after[k])
        findings = {
            "frozen": f"{frozen.worker} with try 1 mid-upload ({frozen.uploaded} of "
            f"{FROZEN_RECORDS // FROZEN_PER_JOB} jobs uploaded), {len(frozen.pids)} processes stopped",
            "retry": f"try {try_number} {state} on {retry[0] if retry else '?'}",
            "woken try's last log line after SIGCONT (s)": round(lived, 1),
            "task after the wake": state_after,
            "result files (before/after)": f"{len(files_before)}/{len(files_after)}, changed {len(changed)}, "
            f"added {len(files_after.keys() - files_before.keys())}, "
            f"removed {len(files_before.keys() - files_after.keys())}",
            "files the summary names missing after": len(named - files_after.keys()),
            "jobs aborted by the retry (never closed by the frozen try)": len(
                aborted_before - aborted_at_start
            ),
            "jobs aborted after the wake": len(aborted),
            "abort decisions in the woken try's log": decisions,
            "records in the org": counts,
        }
        problems = summary_problems(summary, s3, counts["stored"], FROZEN_RECORDS)
        if retry is None or retry[0] == frozen.worker:
            problems.append("the retry did not run on the other worker")
        if changed or files_before.keys() != files_after.keys():
            problems.append(f"files changed by the woken try: {changed}")
        if named - files_after.keys() or not named <= files_before.keys():
            problems.append("a file the summary names is missing")
        if aborted:
            problems.append(f"jobs aborted: {aborted}")
        if decisions:
            problems.append("the woken try decided to abort its successor's jobs")
        if counts["duplicated"] or counts["missing"] or counts["unexpected"]:
            problems.append(f"records not exactly once: {counts}")
        if state_after[0] != "success":
            problems.append(f"the task is {state_after} after the wake")
        _report("frozen worker woken after its retry succeeded", findings, problems)
        assert problems == []
    except BaseException:
        airflow.diagnose(dag_id, run_id)
        raise


def test_a_worker_woken_while_its_retry_waits_aborts_nothing(
    stack: tuple[AirflowStack, MotoS3, Emulator],
) -> None:
    airflow, s3, emulator = stack
    dag_id, run_id = FROZEN_WAITING, "frozen_while_up_for_retry_run"
    try:
        _start(airflow, s3, emulator, dag_id, run_id)
        # Closed jobs wait UploadComplete: an abort by the woken try would take and show.
        emulator.hold(True)
        frozen = _freeze_mid_upload(airflow, dag_id, run_id)
        state, try_number = _wait_state(airflow, dag_id, run_id, {"up_for_retry"})
        aborted_before = set(aborted_jobs(emulator))
        lived = _thaw(airflow, frozen, dag_id, run_id)
        state_at_check = airflow.tis(dag_id, run_id)["load"]
        aborted = sorted(set(aborted_jobs(emulator)) - aborted_before)
        decisions = _abort_decisions(airflow, dag_id, run_id)
        emulator.hold(False)
        tis = wait_done(airflow, dag_id, run_id, RETRY_SECONDS)
        final, final_try = tis["load"]
        counts = load_counts(contacts_by_name(emulator), dag_id, "load", FROZEN_RECORDS)
        summary = airflow.xcom(dag_id, run_id, "load")
        findings = {
            "frozen": f"{frozen.worker} with try 1 mid-upload ({frozen.uploaded} of "
            f"{FROZEN_RECORDS // FROZEN_PER_JOB} jobs uploaded), {len(frozen.pids)} processes stopped",
            "woken while": f"{state} (try {try_number}); heartbeat timeout {HEARTBEAT_TIMEOUT} s",
            "woken try's last log line after SIGCONT (s)": round(lived, 1),
            "task when checked": state_at_check,
            "jobs aborted after the wake": len(aborted),
            "abort decisions in the woken try's log": decisions,
            "then": f"{final} on try {final_try}",
            "records in the org": counts,
        }
        problems = []
        if aborted:
            problems.append(f"jobs aborted by the woken try: {aborted}")
        if decisions:
            problems.append("the woken try decided to abort the jobs its retry reattaches to")
        if state_at_check[0] != "up_for_retry":
            problems.append(f"the retry did not wait until the check: {state_at_check}")
        if final != "success":
            problems.append(f"the retry ended {final}")
        if counts["duplicated"] or counts["missing"] or counts["unexpected"]:
            problems.append(f"records not exactly once: {counts}")
        problems += summary_problems(summary, s3, counts["stored"], FROZEN_RECORDS)
        _report("frozen worker woken while its retry is up_for_retry", findings, problems)
        assert problems == []
    except BaseException:
        emulator.hold(False)
        airflow.diagnose(dag_id, run_id)
        raise
