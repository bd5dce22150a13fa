"""Per-field value checks and conversions, failing with Salesforce's ``sf__Error`` texts.

One converter per column is built once per job (:func:`converter_for`) so the per-record loop of
:mod:`.slice_processing` only calls it; the error texts are Salesforce's, so failed results read as
a real org's.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Callable
from typing import Any

from .ids import normalize_id
from .schema import Field
from .timestamps import format_datetime

#: A number's text as Salesforce reads it in a CSV value.
NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_DATETIME = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(Z|[+-]\d{2}:?\d{2})?"
)
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
_BOOLEANS = {"true": True, "false": False, "1": True, "0": False}
_XSD = {
    "number": "double",
    "currency": "double",
    "percent": "double",
    "date": "date",
    "datetime": "dateTime",
    "boolean": "boolean",
}

#: The value that sets a field to null.
NULL_VALUE = "#N/A"

#: Total digits of a number field (Salesforce's largest, and the describe's ``precision``): a value
#: with more digits before the point than ``precision - scale`` is outside the field's range.
PRECISION = 18

Converter = Callable[[str], Any]


class RecordError(Exception):
    """A record fails; ``str(error)`` is its ``sf__Error`` text (``CODE:message:fields --``)."""


def error_text(code: str, message: str, fields: str = "") -> str:
    """Format an ``sf__Error`` value the way Salesforce does (``...:--`` when no field is named)."""
    return f"{code}:{message}:{fields} --" if fields else f"{code}:{message}:--"


def required_missing(names: list[str]) -> str:
    """The REQUIRED_FIELD_MISSING text for ``names``."""
    return error_text(
        "REQUIRED_FIELD_MISSING", f"Required fields are missing: [{', '.join(names)}]", ",".join(names)
    )


def converter_for(field: Field, column: int) -> Converter:
    """Build the function turning a CSV value of ``field`` (at 0-based ``column``) into what is stored.

    The function raises :class:`RecordError` when Salesforce would refuse the value.
    """
    name = field.name

    def not_valid(value: str) -> RecordError:
        return RecordError(
            error_text(
                "INVALID_FIELD",
                f"Failed to deserialize field at col {column}. Due to, '{value}' is not a valid value "
                f"for the type xsd:{_XSD[field.type]}",
                name,
            )
        )

    if field.type in {"number", "currency", "percent"}:
        integral = field.scale == 0
        match_number = NUMBER.fullmatch
        # Salesforce refuses a value with more integer digits than the field holds; without this an
        # integer beyond 64 bits reached the database and failed the whole job's worker.
        bound = 10 ** (PRECISION - (field.scale or 0))

        def out_of_range(value: str) -> RecordError:
            return RecordError(
                error_text(
                    "NUMBER_OUTSIDE_VALID_RANGE",
                    f"{name}: value outside of valid range on numeric field: {value}",
                    name,
                )
            )

        def to_number(value: str) -> Any:
            if value.isdigit() and value.isascii():
                whole = int(value)
                if whole >= bound:
                    raise out_of_range(value)
                return whole if integral else float(value)
            if match_number(value) is None:
                raise not_valid(value)
            number = float(value)
            if not abs(number) < bound:  # also inf, from an exponent beyond a double's range
                raise out_of_range(value)
            if integral:
                return round(number)
            return number

        return to_number

    if field.type == "boolean":

        def to_boolean(value: str) -> Any:
            found = _BOOLEANS.get(value.lower())
            if found is None:
                raise not_valid(value)
            return int(found)

        return to_boolean

    if field.type == "date":

        def to_date(value: str) -> Any:
            text = value[:10] if _DATETIME.fullmatch(value) else value
            if _DATE.fullmatch(text) is None:
                raise not_valid(value)
            try:
                return datetime.date.fromisoformat(text).isoformat()
            except ValueError:
                raise not_valid(value) from None

        return to_date

    if field.type == "datetime":

        def to_datetime(value: str) -> Any:
            match = _DATETIME.fullmatch(value)
            if match is None:
                raise not_valid(value)
            year, month, day, hour, minute, second, fraction, offset = match.groups()
            try:
                tz = datetime.timezone.utc
                if offset and offset != "Z":
                    sign = -1 if offset[0] == "-" else 1
                    digits = offset[1:].replace(":", "")
                    tz = datetime.timezone(
                        sign * datetime.timedelta(hours=int(digits[:2]), minutes=int(digits[2:]))
                    )
                parsed = datetime.datetime(
                    int(year),
                    int(month),
                    int(day),
                    int(hour),
                    int(minute),
                    int(second),
                    int((fraction or "0")[:6].ljust(6, "0")),
                    tzinfo=tz,
                )
            except ValueError:
                raise not_valid(value) from None
            return format_datetime(parsed)

        return to_datetime

    if field.type == "reference":

        def to_reference(value: str) -> Any:
            normalized = normalize_id(value)
            if normalized is None:
                raise RecordError(
                    error_text("MALFORMED_ID", f"{name}: id value of incorrect type: {value}", name)
                )
            return normalized

        return to_reference

    too_long = field.length
    is_email = field.type == "email"
    restricted = frozenset(field.values) if field.type == "picklist" and field.restricted else None

    def to_text(value: str) -> Any:
        if len(value) > too_long:
            raise RecordError(
                error_text(
                    "STRING_TOO_LONG",
                    f"{name}: data value too large: {value} (max length={too_long})",
                    name,
                )
            )
        if restricted is not None and value not in restricted:
            raise RecordError(
                error_text(
                    "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
                    f"{name}: bad value for restricted picklist field: {value}",
                    name,
                )
            )
        if is_email and _EMAIL.fullmatch(value) is None:
            raise RecordError(
                error_text("INVALID_EMAIL_ADDRESS", f"{name}: invalid email address: {value}", name)
            )
        return value

    return to_text
