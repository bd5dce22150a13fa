"""Salesforce's JSON datetime text, and the current time in it.

Job bodies (``createdDate``, ``systemModstamp``), record system fields and datetime field values
all use this one form; the ingest and query routes and both workers stamp with :func:`now_text`,
so it lives apart from any of them.
"""

from __future__ import annotations

import datetime


def format_datetime(value: datetime.datetime) -> str:
    """Format a datetime as Salesforce does in JSON: milliseconds and an offset without colon."""
    value = value.astimezone(datetime.timezone.utc)
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}+0000"


def now_text() -> str:
    """The current time in Salesforce's JSON datetime format."""
    return format_datetime(datetime.datetime.now(datetime.timezone.utc))
