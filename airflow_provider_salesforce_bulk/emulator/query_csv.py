"""Query results as Salesforce writes them: every value double-quoted, in the job's delimiter and line ending.

Values keep Salesforce's text forms: ``true``/``false``, datetimes ``2024-01-02T03:04:05.000Z``,
dates ``2024-01-02``, whole numbers as they are, doubles/currency/percent as Java prints a double
(``1000.0``, ``9.12260031E8``), and null as an empty value.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from .csv_values import java_double, quoted
from .field_types import DOUBLE_TYPES
from .soql_compile import Column

Formatter = Callable[[Any], str]


def _boolean(value: Any) -> str:
    return "true" if value else "false"


def _integer(value: Any) -> str:
    return str(int(value))


def _double(value: Any) -> str:
    number = float(value)
    if 1e-3 <= abs(number) < 1e7:
        return repr(number)  # always holds a "." in this range, as Java prints it
    return java_double(number)


def _datetime(value: Any) -> str:
    # Stored as 2024-01-02T03:04:05.000+0000 (always UTC).
    return str(value)[:23] + "Z"


def formatter(column_type: str) -> Formatter | None:
    """The function writing a stored value of a column of ``column_type`` (never called with None).

    None when the stored text is already what Salesforce writes (text, ids, dates).
    """
    if column_type == "boolean":
        return _boolean
    if column_type == "int":
        return _integer
    if column_type in DOUBLE_TYPES:
        return _double
    if column_type == "datetime":
        return _datetime
    return None


def header_line(columns: Sequence[Column], delimiter: str, eol: str) -> str:
    """The header row: the SELECT list as written."""
    return delimiter.join(quoted(c.header) for c in columns) + eol


def line_writer(columns: Sequence[Column], delimiter: str, eol: str) -> Callable[[Sequence[Any]], str]:
    """A function turning one result row (stored values) into one CSV line."""
    formatters = [formatter(c.type) for c in columns]
    separator = '"' + delimiter + '"'

    def line(row: Sequence[Any]) -> str:
        values = []
        for write, value in zip(formatters, row, strict=True):
            if value is None:
                values.append("")
                continue
            text = value if write is None else write(value)
            if '"' in text:
                text = text.replace('"', '""')
            values.append(text)
        return '"' + separator.join(values) + '"' + eol

    return line
