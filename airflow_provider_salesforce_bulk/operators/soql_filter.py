"""Adding an incremental filter to a SOQL query: just enough parsing to do it safely, and a clear
refusal of what cannot be rewritten safely.

String literals and parenthesised parts (subqueries, grouped conditions, ``FIELDS(...)``) are
masked first, so a keyword inside them is never taken for a clause of the outer query.
"""

from __future__ import annotations

import datetime
import re

from airflow_provider_salesforce_bulk.client import InputError

__all__ = ["add_condition", "check_incremental_soql", "select_columns", "soql_datetime"]

_FIELD = re.compile(r"^[A-Za-z][A-Za-z0-9_]*(\.[A-Za-z][A-Za-z0-9_]*)*$")
_CLAUSE = re.compile(
    r"\b(FROM|WHERE|GROUP\s+BY|HAVING|ORDER\s+BY|LIMIT|OFFSET|FOR|WITH|USING\s+SCOPE|TYPEOF)\b", re.IGNORECASE
)
# Clauses after which a filter cannot be added without changing what the query means: a LIMIT (or
# OFFSET) cuts the changed records at an arbitrary point, so the mark would skip the rest; aggregates
# have no per-record mark; the others are refused to keep the rewrite simple and sure.
_REFUSED = ("GROUP BY", "HAVING", "LIMIT", "OFFSET", "FOR", "WITH", "USING SCOPE", "TYPEOF")


def _mask(soql: str) -> str:
    """``soql`` with every string literal's content and every parenthesised part blanked out
    (same length, so offsets carry over)."""
    out = list(soql)
    depth = 0
    quoted = False
    escaped = False
    for i, char in enumerate(soql):
        if quoted:
            out[i] = " "
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == "'":
                quoted = False
            continue
        if char == "'":
            quoted = True
            out[i] = " "
        elif char == "(":
            depth += 1
            out[i] = " "
        elif char == ")":
            depth -= 1
            out[i] = " "
            if depth < 0:
                raise InputError("soql has an unbalanced ')'", field="soql")
        elif depth:
            out[i] = " "
    if quoted or depth:
        raise InputError("soql has an unclosed string literal or '('", field="soql")
    return "".join(out)


def _clauses(soql: str) -> list[tuple[str, int, int]]:
    """The outer query's clause keywords: (normalised name, start, end) in order."""
    return [(" ".join(m.group(1).upper().split()), m.start(), m.end()) for m in _CLAUSE.finditer(_mask(soql))]


def check_incremental_soql(soql: str, field: str) -> None:
    """Refuse, before any job, a query the incremental filter cannot be added to safely, or one that
    does not select ``Id`` and ``field`` (the mark and the overlap's Ids are read from them)."""
    if not isinstance(field, str) or not _FIELD.match(field):
        raise InputError(
            f"incremental_field must be a field name such as 'SystemModstamp', got {field!r}",
            field="incremental_field",
        )
    clauses = _clauses(soql)
    names = [name for name, _, _ in clauses]
    if "FROM" not in names or not soql.lstrip().upper().startswith("SELECT"):
        raise InputError("soql must be a SELECT ... FROM ... query to be made incremental", field="soql")
    refused = [name for name in names if name in _REFUSED]
    if refused:
        raise InputError(
            f"soql with {refused[0]} cannot be made incremental safely (incremental_field={field!r}): "
            f"remove the {refused[0]} clause, or drop incremental_field and filter yourself",
            field="soql",
        )
    if names.count("WHERE") > 1 or names.count("FROM") > 1 or names.count("ORDER BY") > 1:
        raise InputError("soql has a clause twice outside parentheses; cannot add a filter", field="soql")
    _, from_start, _ = clauses[names.index("FROM")]
    select_list = soql[len("SELECT") + soql.upper().index("SELECT") : from_start]
    if "FIELDS(" in re.sub(r"\s+", "", select_list.upper()):
        return  # FIELDS(ALL|STANDARD) selects Id and the system fields; the header is checked later
    selected = {item.strip().lower() for item in _mask(select_list).split(",")}
    missing = [name for name in ("Id", field) if name.lower() not in selected]
    if missing:
        raise InputError(
            f"an incremental query must select {' and '.join(missing)} "  # noqa: S608 - a message
            f"(incremental_field={field!r}): "
            "the mark and the overlap's Ids are read from those columns",
            field="soql",
        )


def add_condition(soql: str, condition: str) -> str:
    """``soql`` with ``condition`` ANDed to its WHERE (added before ORDER BY when it has none).

    The query must have passed :func:`check_incremental_soql`.
    """
    clauses = _clauses(soql)
    where = next(((start, end) for name, start, end in clauses if name == "WHERE"), None)
    order = next((start for name, start, _ in clauses if name == "ORDER BY"), None)
    if where is not None:
        _, end = where
        stop = order if order is not None and order > end else len(soql)
        existing = soql[end:stop].strip()
        tail = soql[stop:].strip()
        head = soql[:end].rstrip()
        rewritten = f"{head} ({existing}) AND ({condition})"
        return f"{rewritten} {tail}" if tail else rewritten
    stop = order if order is not None else len(soql)
    head = soql[:stop].rstrip()
    tail = soql[stop:].strip()
    rewritten = f"{head} WHERE {condition}"
    return f"{rewritten} {tail}" if tail else rewritten


def soql_datetime(moment: datetime.datetime, *, round_up: bool = False) -> str:
    """A SOQL datetime literal in UTC, in whole seconds (rounded down, or up with ``round_up``)."""
    utc = moment.astimezone(datetime.timezone.utc)
    if round_up and utc.microsecond:
        utc = utc.replace(microsecond=0) + datetime.timedelta(seconds=1)
    else:
        utc = utc.replace(microsecond=0)
    return utc.strftime("%Y-%m-%dT%H:%M:%SZ")


def select_columns(soql: str) -> list[str] | None:
    """The column names of the SELECT list as written (``Owner.Name`` stays dotted), or None when the
    list holds anything but plain field paths (functions, ``FIELDS(...)``, subqueries)."""
    try:
        clauses = _clauses(soql)
    except InputError:
        return None
    starts = [start for name, start, _ in clauses if name == "FROM"]
    head = soql.lstrip()
    if not starts or not head.upper().startswith("SELECT"):
        return None
    begin = soql.upper().index("SELECT") + len("SELECT")
    items = [item.strip() for item in soql[begin : starts[0]].split(",")]
    if not items or not all(_FIELD.match(item) for item in items):
        return None
    return items
