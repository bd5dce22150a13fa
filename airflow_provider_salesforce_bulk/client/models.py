"""Typed views of what the Bulk API 2.0 returns: job information and the outcome of a job."""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Mapping
from typing import Any, Literal, get_args

import orjson

__all__ = [
    "CLOSED_STATES",
    "FAILED_STATES",
    "OPERATIONS",
    "TERMINAL_STATES",
    "ColumnDelimiter",
    "JobInfo",
    "JobState",
    "LineEnding",
    "NoneAs",
    "OperationType",
    "RecordCounts",
    "ResultKind",
    "parse_salesforce_datetime",
]

OperationType = Literal["insert", "delete", "hardDelete", "update", "upsert"]
JobState = Literal["Open", "UploadComplete", "InProgress", "JobComplete", "Aborted", "Failed"]
ColumnDelimiter = Literal["BACKQUOTE", "CARET", "COMMA", "PIPE", "SEMICOLON", "TAB"]
LineEnding = Literal["LF", "CRLF"]
#: How ``None`` is written: an empty value (the field is left as it is) or ``#N/A`` (set to null).
NoneAs = Literal["empty", "null"]
ResultKind = Literal["successfulResults", "failedResults", "unprocessedrecords"]

#: The ingest operations of Bulk API 2.0, in the order error messages list them.
OPERATIONS: tuple[str, ...] = ("insert", "update", "upsert", "delete", "hardDelete")
# The job-state sets, defined once for the client and the Airflow layer.
#: Ended without completing: the records not processed were not loaded (unprocessedrecords).
FAILED_STATES: frozenset[JobState] = frozenset({"Aborted", "Failed"})
#: Salesforce will do nothing more with the job: its counters and result files are final.
TERMINAL_STATES: frozenset[JobState] = FAILED_STATES | {"JobComplete"}
#: The job's upload was closed (UploadComplete accepted) and the job was not aborted: Salesforce took
#: its data, so it must never be sent to that job again.
CLOSED_STATES: frozenset[JobState] = frozenset({"UploadComplete", "InProgress", "JobComplete", "Failed"})

# JSON name -> attribute name, for every documented field. Anything else lands in JobInfo.extra.
_FIELDS: dict[str, str] = {
    "id": "id",
    "operation": "operation",
    "object": "object",
    "state": "state",
    "createdById": "created_by_id",
    "createdDate": "created_date",
    "systemModstamp": "system_modstamp",
    "externalIdFieldName": "external_id_field_name",
    "assignmentRuleId": "assignment_rule_id",
    "concurrencyMode": "concurrency_mode",
    "contentType": "content_type",
    "apiVersion": "api_version",
    "jobType": "job_type",
    "contentUrl": "content_url",
    "lineEnding": "line_ending",
    "columnDelimiter": "column_delimiter",
    "numberRecordsProcessed": "number_records_processed",
    "numberRecordsFailed": "number_records_failed",
    "retries": "retries",
    "totalProcessingTime": "total_processing_time",
    "apiActiveProcessingTime": "api_active_processing_time",
    "apexProcessingTime": "apex_processing_time",
    "errorMessage": "error_message",
}
# Fields typed with a Literal: a value outside it (a state a newer API adds) is kept in JobInfo.extra
# instead, so the typed field never holds what its type does not name.
_LITERALS: dict[str, tuple[str, ...]] = {
    "state": get_args(JobState),
    "column_delimiter": get_args(ColumnDelimiter),
    "line_ending": get_args(LineEnding),
}
_DATETIMES = ("created_date", "system_modstamp")
_INTS = (
    "number_records_processed",
    "number_records_failed",
    "retries",
    "total_processing_time",
    "api_active_processing_time",
    "apex_processing_time",
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class RecordCounts:
    """Where the ``records`` given to one job went, from Salesforce's counters.

    Built with :meth:`of`, which keeps the counters within the records the job was given: a
    counter above them (a job read while its counters catch up, a server that counts otherwise)
    never makes records appear twice. ``succeeded + failed + unprocessed == records`` always.
    """

    records: int
    processed: int
    failed: int

    @classmethod
    def of(cls, records: int, processed: int, failed: int) -> RecordCounts:
        processed = min(processed, records)
        return cls(records=records, processed=processed, failed=min(failed, processed))

    @property
    def succeeded(self) -> int:
        return self.processed - self.failed

    @property
    def unprocessed(self) -> int:
        """Records the job never processed (a Failed or Aborted job's ``unprocessedrecords``)."""
        return self.records - self.processed


def parse_salesforce_datetime(value: str) -> datetime.datetime:
    """Parse ``2024-09-09T19:25:27.000+0000`` (and the ``+00:00`` / ``Z`` forms) to an aware datetime."""
    text = value.strip()
    if text.endswith("Z"):
        text = text[:-1] + "+0000"
    for fmt in ("%Y-%m-%dT%H:%M:%S.%f%z", "%Y-%m-%dT%H:%M:%S%z"):
        try:
            return datetime.datetime.strptime(text, fmt)
        except ValueError:
            continue
    parsed = datetime.datetime.fromisoformat(value)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=datetime.timezone.utc)


@dataclasses.dataclass(frozen=True, kw_only=True)
class JobInfo:
    """Bulk API 2.0 ingest job information, with every documented field.

    Counters default to 0 where Salesforce leaves them out (the create and close answers), fields a
    newer API version adds are kept in :attr:`extra`, and ``api_version`` is a number. A ``state``,
    ``columnDelimiter`` or ``lineEnding`` value this client does not know is kept in :attr:`extra`
    under the field's name (the typed field is then None), as an unreadable date is: it never fails
    the parse, and :meth:`to_dict` still reports it.
    """

    id: str
    operation: str | None = None
    object: str | None = None
    state: JobState | None = None
    created_by_id: str | None = None
    created_date: datetime.datetime | None = None
    system_modstamp: datetime.datetime | None = None
    external_id_field_name: str | None = None
    assignment_rule_id: str | None = None
    concurrency_mode: str | None = None
    content_type: str | None = None
    api_version: float | None = None
    job_type: str | None = None
    content_url: str | None = None
    line_ending: LineEnding | None = None
    column_delimiter: ColumnDelimiter | None = None
    number_records_processed: int = 0
    number_records_failed: int = 0
    retries: int = 0
    total_processing_time: int = 0
    api_active_processing_time: int = 0
    apex_processing_time: int = 0
    error_message: str | None = None
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_json(cls, data: bytes | str | Mapping[str, Any]) -> JobInfo:
        """Build from a job body (raw JSON or already decoded)."""
        raw: Mapping[str, Any] = orjson.loads(data) if isinstance(data, (bytes, str)) else data
        if not isinstance(raw, Mapping) or not raw.get("id"):
            raise ValueError(f"not a Bulk API job body: {str(raw)[:200]!r}")
        values: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        for key, value in raw.items():
            name = _FIELDS.get(key)
            if name is None:
                extra[key] = value
            else:
                values[name] = value
        for name, known in _LITERALS.items():
            if name in values and values[name] is not None and values[name] not in known:
                extra[name] = values.pop(name)
        for name in _DATETIMES:
            if isinstance(values.get(name), str):
                try:
                    values[name] = parse_salesforce_datetime(values[name])
                except ValueError:
                    # Keep going on an odd timestamp: the job's state matters more than its date.
                    extra[name] = values.pop(name)
        for name in _INTS:
            if name in values:
                values[name] = int(values[name] or 0)
        if values.get("api_version") is not None:
            values["api_version"] = float(values["api_version"])
        return cls(**values, extra=extra)

    @property
    def is_terminal(self) -> bool:
        """JobComplete, Failed or Aborted: Salesforce will do nothing more with the job."""
        return self.state in TERMINAL_STATES

    @property
    def number_records_succeeded(self) -> int:
        """Processed records minus failed ones (``numberRecordsProcessed`` includes failures)."""
        return max(self.number_records_processed - self.number_records_failed, 0)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable summary in Salesforce's field names (an unknown state included)."""
        out: dict[str, Any] = {}
        for key, name in _FIELDS.items():
            value = getattr(self, name)
            if value is None and name in _LITERALS:
                value = self.extra.get(name)
            if isinstance(value, datetime.datetime):
                value = value.isoformat()
            if value is not None:
                out[key] = value
        return out
