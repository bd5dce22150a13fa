"""What a load is made of, each checked once where it is built: the job (:class:`JobSpec`), the chunk
limits (:class:`ChunkLimits`), how records are written as CSV (:class:`ChunkFormat`) and how often a
job is polled (:class:`PollPolicy`).

Like httpx's ``Timeout`` and ``Limits``, these are small frozen values: a function taking one knows it
is valid, so the options are never checked again on their way from the caller to the request.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Collection, Iterable
from typing import TYPE_CHECKING, TypedDict, get_args

from airflow_provider_salesforce_bulk.client.csv_format import (
    COLUMN_DELIMITERS,
    LINE_ENDINGS,
    MAX_RECORDS,
    MAX_SIZE_BYTES,
    check_column_delimiter,
    check_line_ending,
)
from airflow_provider_salesforce_bulk.client.errors import InputError
from airflow_provider_salesforce_bulk.client.models import (
    OPERATIONS,
    ColumnDelimiter,
    LineEnding,
    NoneAs,
    OperationType,
)
from airflow_provider_salesforce_bulk.client.retry import check_seconds

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = [
    "DEFAULT_FORMAT",
    "DEFAULT_LIMITS",
    "DEFAULT_OPERATION_TIMEOUT",
    "ChunkFormat",
    "ChunkFormatOptions",
    "ChunkLimits",
    "JobSpec",
    "PollPolicy",
    "validate_operation_fields",
]

DEFAULT_OPERATION_TIMEOUT = 24 * 3600.0
"""Default bound of a whole wait or operation: Salesforce itself gives up on a job after 24 hours."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class JobSpec:
    """What every job of a load is created with, checked once when built.

    Parameters
    ----------
    operation : {"insert", "delete", "hardDelete", "update", "upsert"}
    object : str
        The Salesforce object (``sobject`` in the reference client's signatures).
    external_id_field : str, optional
        External ID field; required for ``upsert``, refused otherwise.
    assignment_rule_id : str, optional
        Assignment rule to run for a Case or a Lead.
    column_delimiter : {"COMMA", "BACKQUOTE", "CARET", "PIPE", "SEMICOLON", "TAB"}
    line_ending : {"LF", "CRLF"}

    Raises
    ------
    InputError
        An option Salesforce would refuse (``field`` names it: ``operation``, ``external_id_field``,
        ``sobject``, ``column_delimiter``, ``line_ending``), before any request.
    """

    operation: OperationType
    object: str
    external_id_field: str | None = None
    assignment_rule_id: str | None = None
    column_delimiter: ColumnDelimiter = "COMMA"
    line_ending: LineEnding = "LF"

    def __post_init__(self) -> None:
        _check_operation(self.operation, self.external_id_field)
        if not self.object or not isinstance(self.object, str):
            raise InputError("sobject (the Salesforce object name) is required", field="sobject")
        check_column_delimiter(self.column_delimiter)
        check_line_ending(self.line_ending)

    def check_fieldnames(self, fieldnames: Collection[str]) -> None:
        """Check the CSV columns against the operation (the options themselves are valid already).

        Raises
        ------
        InputError
            As :func:`validate_operation_fields` with these columns.
        """
        _check_columns(self.operation, fieldnames, self.external_id_field)

    def chunk_format(self, none_as: NoneAs = "empty", allow_na_marker: bool = False) -> ChunkFormat:
        """The format of this job's CSV: its delimiter and line ending, with how records write
        ``None`` and ``#N/A`` (checked as :class:`ChunkFormat` checks them)."""
        return ChunkFormat(self.column_delimiter, self.line_ending, none_as, allow_na_marker)

    def create_body(self) -> dict[str, str]:
        """The JSON body of ``POST /jobs/ingest`` for this job."""
        body = {
            "object": self.object,
            "operation": self.operation,
            "contentType": "CSV",
            "columnDelimiter": self.column_delimiter,
            "lineEnding": self.line_ending,
        }
        if self.external_id_field is not None:
            body["externalIdFieldName"] = self.external_id_field
        if self.assignment_rule_id is not None:
            body["assignmentRuleId"] = self.assignment_rule_id
        return body


@dataclasses.dataclass(frozen=True, kw_only=True)
class ChunkLimits:
    """How large one job's CSV may be.

    Parameters
    ----------
    max_size_bytes : int
        Largest chunk in bytes, header and line endings included; 1 to 100,000,000.
    max_records : int
        Most records per chunk (the header is not counted); at least 1.

    Raises
    ------
    InputError
        Either limit is not an int in range (a bool is refused: ``True`` as a limit is a mistake).
    """

    max_size_bytes: int = MAX_SIZE_BYTES
    max_records: int = MAX_RECORDS

    def __post_init__(self) -> None:
        max_size_bytes, max_records = self.max_size_bytes, self.max_records
        if isinstance(max_size_bytes, bool) or not isinstance(max_size_bytes, int):
            raise InputError(
                f"max_size_bytes must be an int, got {type(max_size_bytes).__name__}", field="max_size_bytes"
            )
        if not 0 < max_size_bytes <= MAX_SIZE_BYTES:
            raise InputError(
                f"max_size_bytes must be between 1 and {MAX_SIZE_BYTES:_} (Salesforce's limit per job), "
                f"got {max_size_bytes:_}",
                field="max_size_bytes",
            )
        if isinstance(max_records, bool) or not isinstance(max_records, int):
            raise InputError(
                f"max_records must be an int, got {type(max_records).__name__}", field="max_records"
            )
        if max_records < 1:
            raise InputError(f"max_records must be at least 1, got {max_records}", field="max_records")


class ChunkFormatOptions(TypedDict, total=False):
    """The keyword options of :class:`ChunkFormat`, for the public functions that take them one by one
    (:func:`.serialize.serialize_ingest_data`, :func:`.arrow_chunks.iter_arrow_chunks`): typed so
    that mypy checks each keyword, written out once."""

    column_delimiter: ColumnDelimiter
    line_ending: LineEnding
    none_as: NoneAs
    allow_na_marker: bool


@dataclasses.dataclass(frozen=True)
class ChunkFormat:
    """How records are written as a job's CSV.

    Parameters
    ----------
    column_delimiter : {"COMMA", "BACKQUOTE", "CARET", "PIPE", "SEMICOLON", "TAB"}
        The job's ``columnDelimiter`` (``COMMA``).
    line_ending : {"LF", "CRLF"}
        The job's ``lineEnding`` (``LF``).
    none_as : {"empty", "null"}
        ``None`` written as an empty value, which leaves the field as it is (``empty``), or as
        ``#N/A``, which sets it to null.
    allow_na_marker : bool
        Let a value that is the text ``#N/A`` through (Salesforce then sets the field to null); by
        default it is refused as bad input (False).

    Raises
    ------
    InputError
        An option out of its choices (``field`` names it: ``column_delimiter``, ``line_ending``,
        ``none_as``, ``allow_na_marker``).
    """

    column_delimiter: ColumnDelimiter = "COMMA"
    line_ending: LineEnding = "LF"
    none_as: NoneAs = "empty"
    allow_na_marker: bool = False

    def __post_init__(self) -> None:
        check_column_delimiter(self.column_delimiter)
        check_line_ending(self.line_ending)
        if self.none_as not in get_args(NoneAs):
            raise InputError(f"none_as must be 'empty' or 'null', got {self.none_as!r}", field="none_as")
        if not isinstance(self.allow_na_marker, bool):
            raise InputError(
                f"allow_na_marker must be True or False, got {self.allow_na_marker!r}",
                field="allow_na_marker",
            )

    @classmethod
    def of(cls, **options: Unpack[ChunkFormatOptions]) -> ChunkFormat:
        """The format the keyword options of a public function name (the defaults for those not given)."""
        return cls(**options)

    @property
    def delimiter(self) -> str:
        """The column delimiter's character."""
        return COLUMN_DELIMITERS[self.column_delimiter]

    @property
    def eol(self) -> str:
        """The line ending's characters."""
        return LINE_ENDINGS[self.line_ending]


#: Salesforce's limits and the default format: the defaults of the functions taking these objects
#: (frozen, so one instance serves every call).
DEFAULT_LIMITS = ChunkLimits()
DEFAULT_FORMAT = ChunkFormat()


@dataclasses.dataclass(frozen=True, kw_only=True)
class PollPolicy:
    """How often to ask for a job's state: starting fast, backing off to a ceiling.

    Parameters
    ----------
    initial : float
        First wait in seconds.
    maximum : float
        Longest wait in seconds.
    factor : float
        Growth of the wait after each poll.
    jitter : float
        Each wait is multiplied by a random factor in ``[1 - jitter, 1 + jitter]``.

    Raises
    ------
    InputError
        A wait that is not a finite number above 0, a ``factor`` below 1 or a ``jitter`` outside
        ``[0, 1)``.
    """

    initial: float = 0.5
    maximum: float = 5.0
    factor: float = 1.5
    jitter: float = 0.1

    def __post_init__(self) -> None:
        check_seconds("PollPolicy.initial", self.initial)
        check_seconds("PollPolicy.maximum", self.maximum)
        if check_seconds("PollPolicy.factor", self.factor) < 1:
            raise InputError(
                f"PollPolicy.factor must be at least 1, got {self.factor!r}", field="PollPolicy.factor"
            )
        if check_seconds("PollPolicy.jitter", self.jitter, allow_zero=True) >= 1:
            raise InputError(
                f"PollPolicy.jitter must be in [0, 1), got {self.jitter!r}", field="PollPolicy.jitter"
            )

    @classmethod
    def up_to(cls, interval: float) -> PollPolicy:
        """Polls starting at half a second (or ``interval`` if shorter) and backing off to ``interval``:
        what a ``polling_interval`` means."""
        check_seconds("polling_interval", interval)
        return cls(initial=min(0.5, interval), maximum=interval)

    def intervals(self) -> Iterable[float]:
        """Endless waits; each is spread by +/- ``jitter`` (a share of it) so that many pollers
        started together do not all wake in the same instant."""
        wait = min(self.initial, self.maximum)
        while True:
            yield wait * random.uniform(1 - self.jitter, 1 + self.jitter) if self.jitter else wait
            wait = min(wait * self.factor, self.maximum)


def validate_operation_fields(
    operation: str, fieldnames: Collection[str] | None, external_id_field: str | None = None
) -> None:
    """Check an operation against the CSV columns before any job is created.

    Parameters
    ----------
    operation : str
        One of ``insert``, ``update``, ``upsert``, ``delete``, ``hardDelete``.
    fieldnames : Collection[str] or None
        The CSV columns; ``None`` checks the operation and the external ID field only.
    external_id_field : str, optional
        The external ID field; required for ``upsert`` and refused for the other operations.

    Raises
    ------
    InputError
        With ``field`` set: an unknown operation (``field="operation"``); upsert without an external
        ID field or with one missing from the columns; an external ID field for another operation;
        delete or hardDelete with a column other than ``Id`` or without ``Id``; update without ``Id``.
        Column names are compared case-insensitively, as Salesforce does.
    """
    _check_operation(operation, external_id_field)
    if fieldnames is not None:
        _check_columns(operation, fieldnames, external_id_field)


def _check_operation(operation: str, external_id_field: str | None) -> None:
    if operation not in OPERATIONS:
        raise InputError(
            f"unknown operation {operation!r}; Bulk API 2.0 ingest offers {', '.join(OPERATIONS)}",
            field="operation",
        )
    if operation == "upsert":
        if not external_id_field:
            raise InputError(
                "upsert needs external_id_field, the field that matches records to existing ones",
                field="external_id_field",
            )
    elif external_id_field is not None:
        raise InputError(
            f"external_id_field={external_id_field!r} is for upsert only, not for {operation}",
            field="external_id_field",
        )


def _check_columns(operation: str, fieldnames: Collection[str], external_id_field: str | None) -> None:
    lowered = {name.lower(): name for name in fieldnames}
    if operation == "upsert" and external_id_field is not None and external_id_field.lower() not in lowered:
        raise InputError(
            f"upsert on external ID field {external_id_field!r}, but the columns {list(fieldnames)!r} "
            "do not include it",
            field=external_id_field,
        )
    if operation in ("delete", "hardDelete"):
        for name in fieldnames:
            if name.lower() != "id":
                raise InputError(
                    f"{operation} takes only the Id column, but the columns include {name!r}", field=name
                )
    if operation in ("update", "delete", "hardDelete") and "id" not in lowered:
        raise InputError(
            f"{operation} needs an Id column to say which records to change; the columns are "
            f"{list(fieldnames)!r}",
            field="Id",
        )
