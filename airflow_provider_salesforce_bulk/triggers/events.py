"""The trigger's event: built by :func:`jobs_event`, checked by :func:`validate_event`, typed.

The event is what ``execute_complete`` gets back from the triggerer (or from the poll loop run in
the worker). Airflow stores it as JSON between the two, so it holds plain JSON types only: how the
wait ended and the last known state of every job (and the org's URL, for the query operator). The
ingest operator's working state (records per job, earlier tries' settled jobs, the resubmission
state) is in its plan store; only a trigger serialized by an earlier release still carries it in
``record_counts``, ``history`` and ``resubmit``, echoed here so its task finishes after an upgrade.

A job's summary keeps Salesforce's JobInfo field names (``numberRecordsProcessed``...): the same
dicts are stored in plan stores and in the trigger kwargs of tasks deferred by earlier releases,
which must still resume, so the names are part of the stored format.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, TypedDict

from airflow.providers.common.compat.sdk import AirflowException, AirflowFailException

from airflow_provider_salesforce_bulk.client import InputError, JobInfo, jobs_common

__all__ = [
    "EVENT_STATUSES",
    "EventStatus",
    "HistoryEntry",
    "JobSummary",
    "JobsEvent",
    "ResubmitState",
    "check_history",
    "check_job_id",
    "check_resubmit_state",
    "job_summary",
    "jobs_event",
    "validate_event",
]

EventStatus = Literal["success", "timeout", "error"]
EVENT_STATUSES: tuple[EventStatus, ...] = ("success", "timeout", "error")

_SHOWN = 300  # characters of a malformed value quoted in an error


class JobSummary(TypedDict):
    """The JSON-able part of a job the operators need (no secret, a few hundred bytes)."""

    id: str
    state: str | None
    object: str | None
    operation: str | None
    numberRecordsProcessed: int
    numberRecordsFailed: int
    errorMessage: str | None
    columnDelimiter: str | None


class HistoryEntry(TypedDict):
    """A job of an earlier try that was settled: ``replaced`` or ``resent`` to job ``next``."""

    id: str
    chunk: int
    count: int
    outcome: str
    next: str | None
    info: JobSummary


class ResubmitState(TypedDict):
    """The ingest operator's resubmission rounds so far (round 2 and later)."""

    round: int
    ledger: dict[str, Any]
    entries: dict[str, dict[str, Any]]
    by_code: dict[str, int]
    samples: dict[str, str]
    input_records: int | None


class JobsEvent(TypedDict):
    """The one event a trigger fires: how the wait ended and the last known state of every job."""

    status: EventStatus
    jobs: dict[str, JobSummary]
    message: str | None
    instance_url: str | None
    record_counts: dict[str, int]
    history: list[HistoryEntry]
    resubmit: ResubmitState | None
    credentials_refused: bool
    """``status`` is ``error`` because Salesforce refused the connection's credentials: the task
    fails without retries (retrying a wrong password locks the user)."""


def job_summary(job: JobInfo) -> JobSummary:
    """The summary of ``job`` that travels in events and plans."""
    return {
        "id": job.id,
        # A state this client does not know (a newer API's) is kept in extra: it travels as received.
        "state": job.state if job.state is not None else job.extra.get("state"),
        "object": job.object,
        "operation": job.operation,
        "numberRecordsProcessed": job.number_records_processed,
        "numberRecordsFailed": job.number_records_failed,
        "errorMessage": job.error_message,
        "columnDelimiter": job.column_delimiter,
    }


def jobs_event(
    status: EventStatus,
    jobs: Mapping[str, JobSummary],
    *,
    message: str | None = None,
    instance_url: str | None = None,
    record_counts: Mapping[str, int] | None = None,
    history: list[HistoryEntry] | None = None,
    resubmit: ResubmitState | None = None,
    credentials_refused: bool = False,
) -> JobsEvent:
    """The event, with copies of the mutable parts (the trigger keeps its own)."""
    return {
        "credentials_refused": credentials_refused,
        "status": status,
        "jobs": dict(jobs),
        "message": message,
        "instance_url": instance_url,
        "record_counts": dict(record_counts or {}),
        "history": list(history or []),
        "resubmit": resubmit,
    }


def check_job_id(job_id: object) -> str:
    """Refuse anything but a Salesforce job id before it becomes part of a path or a URL."""
    try:
        return jobs_common.check_job_id(job_id)  # the client's check; bad input fails the task, no retry
    except InputError:
        raise AirflowFailException(f"not a Salesforce Bulk API job id: {str(job_id)[:100]!r}") from None


def _malformed(what: str) -> AirflowException:
    return AirflowException(f"malformed trigger event: {what}")


def _shown(value: object) -> str:
    return repr(value)[:_SHOWN]


def _optional_str(value: object, what: str) -> str | None:
    if value is not None and not isinstance(value, str):
        raise _malformed(f"{what} must be a string or null, not {_shown(value)}")
    return value


def _count(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _malformed(f"{what} must be a whole number >= 0, not {_shown(value)}")
    return value


def _mapping(value: object, what: str) -> Mapping[Any, Any]:
    if not isinstance(value, Mapping):
        raise _malformed(f"{what} must be an object, not {type(value).__name__}: {_shown(value)}")
    return value


def _job(raw: object, job_id: str, where: str) -> JobSummary:
    """A job summary with every key: counters Salesforce left out are 0, other fields null."""
    job = _mapping(raw, f"{where} {job_id}")
    if job.get("id") != job_id:
        raise _malformed(f"{where} {job_id}: its id is {_shown(job.get('id'))}: {_shown(job)}")
    what = f"{where} {job_id}"
    return {
        "id": job_id,
        "state": _optional_str(job.get("state"), f"{what}: state"),
        "object": _optional_str(job.get("object"), f"{what}: object"),
        "operation": _optional_str(job.get("operation"), f"{what}: operation"),
        "numberRecordsProcessed": _count(
            job.get("numberRecordsProcessed") or 0, f"{what}: numberRecordsProcessed"
        ),
        "numberRecordsFailed": _count(job.get("numberRecordsFailed") or 0, f"{what}: numberRecordsFailed"),
        "errorMessage": _optional_str(job.get("errorMessage"), f"{what}: errorMessage"),
        "columnDelimiter": _optional_str(job.get("columnDelimiter"), f"{what}: columnDelimiter"),
    }


def check_history(raw: object) -> list[HistoryEntry]:
    """Earlier tries' settled jobs, complete, or an ``AirflowException`` naming what is wrong."""
    if not isinstance(raw, list):
        raise _malformed(f"history must be a list, not {type(raw).__name__}: {_shown(raw)}")
    out: list[HistoryEntry] = []
    for index, item in enumerate(raw):
        entry = _mapping(item, f"history[{index}]")
        missing = sorted({"id", "chunk", "count", "outcome", "info"} - set(entry))
        if missing:
            raise _malformed(f"history[{index}] has no {', '.join(missing)}: {_shown(entry)}")
        job_id = check_job_id(entry["id"])
        following = entry.get("next")
        outcome = entry["outcome"]
        if not isinstance(outcome, str):
            raise _malformed(f"history[{index}]: outcome must be a string, not {_shown(outcome)}")
        out.append(
            {
                "id": job_id,
                "chunk": _count(entry["chunk"], f"history[{index}]: chunk"),
                "count": _count(entry["count"], f"history[{index}]: count"),
                "outcome": outcome,
                "next": None if following is None else check_job_id(following),
                "info": _job(entry["info"], job_id, f"history[{index}]: job"),
            }
        )
    return out


def check_resubmit_state(raw: object, *, first_round: int = 2) -> ResubmitState:
    """The resubmission state of round ``first_round`` (2: the round being waited for) or later, or an
    ``AirflowException`` naming what is wrong. Between two rounds the state is of the round that ended
    (``first_round=1``)."""
    state = _mapping(raw, "resubmit")
    missing = sorted(ResubmitState.__required_keys__ - set(state))
    if missing:
        raise _malformed(f"resubmit has no {', '.join(missing)}")
    number = _count(state["round"], "resubmit: round")
    if number < first_round:
        raise _malformed(f"resubmit: round must be {first_round} or more, not {number}")
    entries = _mapping(state["entries"], "resubmit: entries")
    by_code = _mapping(state["by_code"], "resubmit: by_code")
    samples = _mapping(state["samples"], "resubmit: samples")
    records = state["input_records"]
    return {
        "round": number,
        "ledger": dict(_mapping(state["ledger"], "resubmit: ledger")),
        "entries": {check_job_id(j): dict(_mapping(e, f"resubmit: entry {j}")) for j, e in entries.items()},
        "by_code": {str(c): _count(n, f"resubmit: by_code {c}") for c, n in by_code.items()},
        "samples": {str(c): str(t) for c, t in samples.items()},
        "input_records": None if records is None else _count(records, "resubmit: input_records"),
    }


def validate_event(event: object) -> JobsEvent:
    """The event ``execute_complete`` was given, checked and complete, or a clear ``AirflowException``.

    Keys an older release's event may lack (``message``, ``history``...) get their empty value;
    ``status`` and ``jobs`` are required. A job id that is not one fails the task for good
    (:class:`AirflowFailException`): it would become part of a path.
    """
    if not isinstance(event, Mapping):
        raise AirflowException(
            f"execute_complete got no trigger event ({type(event).__name__}); the outcome of the jobs "
            "is unknown here: a retry reattaches to them"
        )
    missing = [key for key in ("status", "jobs") if key not in event]
    if missing:
        raise _malformed(f"no {' or '.join(repr(k) for k in missing)} in {_shown(event)}")
    status = event["status"]
    if status not in EVENT_STATUSES:
        raise _malformed(f"status {status!r} is not one of {', '.join(EVENT_STATUSES)}")
    jobs = {check_job_id(j): job for j, job in _mapping(event["jobs"], "jobs").items()}
    counts = _mapping(event.get("record_counts") or {}, "record_counts")
    resubmit = event.get("resubmit") or None  # an empty one is round 1's, as before
    return {
        "status": status,
        "jobs": {job_id: _job(job, job_id, "job") for job_id, job in jobs.items()},
        "message": _optional_str(event.get("message"), "message"),
        "instance_url": _optional_str(event.get("instance_url"), "instance_url"),
        "record_counts": {str(j): _count(n, f"record_counts[{j}]") for j, n in counts.items()},
        "history": check_history(event.get("history") or []),
        "resubmit": None if resubmit is None else check_resubmit_state(resubmit),
        "credentials_refused": event.get("credentials_refused") is True,
    }
