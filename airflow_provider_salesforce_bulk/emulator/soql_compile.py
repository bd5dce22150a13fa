"""A parsed SOQL query resolved against the org and turned into one SQLite statement.

SOQL's semantics are kept where they differ from SQL: text compares and sorts case-insensitively,
``!=`` matches nulls but ``NOT IN`` does not (every condition is true or false, never unknown), ORDER BY puts
nulls first in either direction unless told otherwise, and date literals (``TODAY``,
``LAST_N_DAYS:30``...) are day ranges in the user's time zone (UTC for the emulator's user).
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Callable
from typing import Any

from .field_types import NUMBER_TYPES, TEXT_TYPES, FieldInfo, field_info, fields_of
from .ids import normalize_id
from .schema import Schema, SObject
from .soql import (
    BoolOp,
    Compare,
    Condition,
    InList,
    Like,
    Literal,
    Not,
    Path,
    Query,
    SoqlError,
    compound_refused,
    located,
    parse,
)
from .store import quote, record_table


@dataclasses.dataclass(frozen=True)
class Column:
    """One result column: its header (the path as written) and its describe type."""

    header: str
    type: str


@dataclasses.dataclass(frozen=True)
class CompiledQuery:
    """What a query job runs: the root object, the statement and its parameters, the columns."""

    object: SObject
    sql: str
    params: tuple[Any, ...]
    columns: tuple[Column, ...]


# -- date literals ------------------------------------------------------------------------------


def _add_months(day: datetime.date, months: int) -> datetime.date:
    index = day.year * 12 + day.month - 1 + months
    return datetime.date(index // 12, index % 12 + 1, 1)


def date_range(name: str, n: int | None, today: datetime.date) -> tuple[datetime.date, datetime.date]:
    """The days ``[start, end)`` a date literal covers; weeks start on Sunday (en_US)."""
    day = datetime.timedelta(days=1)
    count = n or 0
    week = today - datetime.timedelta(days=(today.weekday() + 1) % 7)
    month = today.replace(day=1)
    quarter = datetime.date(today.year, (today.month - 1) // 3 * 3 + 1, 1)
    year = datetime.date(today.year, 1, 1)
    ranges: dict[str, Callable[[], tuple[datetime.date, datetime.date]]] = {
        "TODAY": lambda: (today, today + day),
        "YESTERDAY": lambda: (today - day, today),
        "TOMORROW": lambda: (today + day, today + 2 * day),
        "LAST_WEEK": lambda: (week - 7 * day, week),
        "THIS_WEEK": lambda: (week, week + 7 * day),
        "NEXT_WEEK": lambda: (week + 7 * day, week + 14 * day),
        "LAST_MONTH": lambda: (_add_months(month, -1), month),
        "THIS_MONTH": lambda: (month, _add_months(month, 1)),
        "NEXT_MONTH": lambda: (_add_months(month, 1), _add_months(month, 2)),
        "LAST_90_DAYS": lambda: (today - 90 * day, today + day),
        "NEXT_90_DAYS": lambda: (today + day, today + 91 * day),
        "LAST_QUARTER": lambda: (_add_months(quarter, -3), quarter),
        "THIS_QUARTER": lambda: (quarter, _add_months(quarter, 3)),
        "NEXT_QUARTER": lambda: (_add_months(quarter, 3), _add_months(quarter, 6)),
        "LAST_YEAR": lambda: (_add_months(year, -12), year),
        "THIS_YEAR": lambda: (year, _add_months(year, 12)),
        "NEXT_YEAR": lambda: (_add_months(year, 12), _add_months(year, 24)),
        "LAST_N_DAYS": lambda: (today - count * day, today + day),
        "NEXT_N_DAYS": lambda: (today + day, today + (count + 1) * day),
        "N_DAYS_AGO": lambda: (today - count * day, today - (count - 1) * day),
        "LAST_N_WEEKS": lambda: (week - 7 * count * day, week),
        "NEXT_N_WEEKS": lambda: (week + 7 * day, week + 7 * (count + 1) * day),
        "LAST_N_MONTHS": lambda: (_add_months(month, -count), month),
        "NEXT_N_MONTHS": lambda: (_add_months(month, 1), _add_months(month, count + 1)),
        "LAST_N_YEARS": lambda: (_add_months(year, -12 * count), year),
        "NEXT_N_YEARS": lambda: (_add_months(year, 12), _add_months(year, 12 * (count + 1))),
    }
    return ranges[name]()


# -- values as stored ---------------------------------------------------------------------------


def stored_datetime(value: datetime.datetime) -> str:
    """A datetime as the store keeps it (UTC, milliseconds, ``+0000``): text order is time order."""
    value = value.astimezone(datetime.timezone.utc)
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}+0000"


def _parse_datetime(text: str) -> datetime.datetime:
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    main, offset = text[:-6], text[-6:]
    if "." in main:  # Python 3.10 reads only 3 or 6 fraction digits
        main, fraction = main.split(".")
        main += "." + fraction.ljust(3, "0")
    return datetime.datetime.fromisoformat(main + offset)


def _date_function(name: str, expr: str) -> str:
    """SQL for a date function over a stored date (``2024-05-15``) or datetime (UTC, same prefix)."""
    day = f"substr({expr}, 1, 10)"
    month = f"CAST(substr({expr}, 6, 2) AS INTEGER)"
    day_of_year = f"CAST(strftime('%j', {day}) AS INTEGER)"
    day_of_month = f"CAST(substr({expr}, 9, 2) AS INTEGER)"
    sql = {
        "CALENDAR_YEAR": f"CAST(substr({expr}, 1, 4) AS INTEGER)",
        "CALENDAR_MONTH": month,
        "CALENDAR_QUARTER": f"(({month} + 2) / 3)",
        "DAY_IN_MONTH": day_of_month,
        "DAY_IN_WEEK": f"(CAST(strftime('%w', {day}) AS INTEGER) + 1)",
        "DAY_IN_YEAR": day_of_year,
        "DAY_ONLY": day,
        "HOUR_IN_DAY": f"CAST(substr({expr}, 12, 2) AS INTEGER)",
        "WEEK_IN_MONTH": f"(({day_of_month} - 1) / 7 + 1)",
        "WEEK_IN_YEAR": f"(({day_of_year} - 1) / 7 + 1)",
    }
    fiscal = {
        "FISCAL_YEAR": "CALENDAR_YEAR",
        "FISCAL_QUARTER": "CALENDAR_QUARTER",
        "FISCAL_MONTH": "CALENDAR_MONTH",
    }
    found = sql[fiscal.get(name, name)]
    # A null date gives null, never a number compared as one.
    return f"(CASE WHEN {expr} IS NULL THEN NULL ELSE {found} END)"


def _family(info: FieldInfo) -> str:
    if info.type in TEXT_TYPES:
        return "text"
    if info.type in ("id", "reference"):
        return "id"
    if info.type in NUMBER_TYPES:
        return "number"
    return info.type  # boolean, date, datetime


#: The largest LIMIT of a query selecting FIELDS(ALL) or FIELDS(CUSTOM).
_FIELDS_MAX_LIMIT = 200

_NOT_FOUND_HINT = (
    "If you are attempting to use a custom {what}, be sure to append the '{suffix}' after the custom "
    "{what} name. Please reference your WSDL or the describe call for the appropriate names."
)


class _Compiler:
    def __init__(
        self,
        schema: Schema,
        soql: str,
        query: Query,
        include_deleted: bool,
        today: datetime.date,
        prefix: str = "t",
    ):
        self.prefix = prefix
        self.schema = schema
        self.soql = soql
        self.query = query
        self.include_deleted = include_deleted
        self.today = today
        root = schema.get(query.object)
        if root is None:
            raise SoqlError(
                "INVALID_TYPE",
                located(
                    soql,
                    query.object_pos,
                    f"sObject type '{query.object}' is not supported. "
                    "If you are attempting to use a custom object, be sure to append the '__c' after the "
                    "entity name. Please reference your WSDL or the describe call for the appropriate names.",
                ),
            )
        self.root = root
        self.aliases: dict[tuple[str, ...], str] = {(): f"{prefix}0"}
        self.joins: list[str] = []
        self.params: list[Any] = []

    def fail(self, code: str, pos: int, text: str) -> SoqlError:
        return SoqlError(code, located(self.soql, pos, text))

    def resolve(self, path: Path) -> tuple[str, FieldInfo]:
        """The SQL expression and field of a path (or of its date function), adding the joins it needs."""
        expr, info = self.resolve_field(path)
        if path.function is None:
            return expr, info
        if info.type not in ("date", "datetime") or (
            info.type == "date" and path.function in ("DAY_ONLY", "HOUR_IN_DAY")
        ):
            raise self.fail(
                "INVALID_FIELD",
                path.pos,
                f"{path.function} cannot be applied to field '{info.name}' of type {info.type}",
            )
        result = FieldInfo(
            f"{path.function}({info.name})", "", "date" if path.function == "DAY_ONLY" else "int"
        )
        return _date_function(path.function, expr), result

    def resolve_field(self, path: Path) -> tuple[str, FieldInfo]:
        expr, info, _ = self.walk(path)
        return expr, info

    def walk(self, path: Path) -> tuple[str, FieldInfo, str]:
        """The SQL expression, the field and the result header of a path, adding the joins it needs.

        The header spells every name as the org does (``select owner.name`` gives ``Owner.Name``),
        without the object name or alias a path may start with, as real orgs write it.
        """
        parts = list(path.parts)
        prefixes = {self.root.name.lower(), (self.query.alias or "").lower()}
        if len(parts) > 1 and parts[0].lower() in prefixes and self.root.relationship(parts[0]) is None:
            parts = parts[1:]  # Account.Name FROM Account, or c.Name FROM Contact c
        obj, alias = self.root, self.aliases[()]
        key: tuple[str, ...] = ()
        spelled: list[str] = []
        for part in parts[:-1]:
            ref = obj.relationship(part)
            target = self.schema.get(ref.reference_to) if ref and ref.reference_to else None
            if ref is None or target is None:
                hint = _NOT_FOUND_HINT.format(what="relationship", suffix="__r")
                raise self.fail(
                    "INVALID_FIELD",
                    path.pos,
                    f"Didn't understand relationship '{part}' in field path. {hint}",
                )
            spelled.append(ref.relationship_name or part)
            key = (*key, ref.name.lower())
            if key not in self.aliases:
                parent = f"{self.prefix}{len(self.aliases)}"
                condition = f"{parent}.Id = {alias}.{quote(ref.name)}"
                if not self.include_deleted:
                    condition += f" AND {parent}.IsDeleted = 0"
                self.joins.append(f"LEFT JOIN {record_table(target)} {parent} ON {condition}")
                self.aliases[key] = parent
            alias, obj = self.aliases[key], target
        info = field_info(obj, parts[-1])
        if info is None:
            hint = _NOT_FOUND_HINT.format(what="field", suffix="__c")
            raise self.fail(
                "INVALID_FIELD", path.pos, f"No such column '{parts[-1]}' on entity '{obj.name}'. {hint}"
            )
        if info.compound:
            raise compound_refused()
        header = ".".join([*spelled, info.name])
        if info.expr is not None:
            return info.expr.format(alias=alias), info, header
        return f"{alias}.{quote(info.column)}", info, header

    # conditions

    def type_error(self, path: Path, info: FieldInfo, quoted: bool) -> SoqlError:
        soap = {"text": "string", "id": "id", "number": "int" if info.type == "int" else "double"}
        family = _family(info)
        name = {"datetime": "dateTime"}.get(family, soap.get(family, family))
        quotes = "should be enclosed in quotes" if quoted else "should not be enclosed in quotes"
        return self.fail(
            "INVALID_FIELD",
            path.pos,
            f"value of filter criterion for field '{info.name}' must be of type {name} and {quotes}",
        )

    def stored(self, path: Path, info: FieldInfo, literal: Literal) -> Any:
        """A literal converted to the stored form of the field, or the error Salesforce gives."""
        family, kind, value = _family(info), literal.kind, literal.value
        if family == "text":
            if kind != "string":
                raise self.type_error(path, info, quoted=True)
            return value
        if family == "id":
            if kind != "string":
                raise self.type_error(path, info, quoted=True)
            normalized = normalize_id(value)
            if normalized is None:
                raise self.fail("INVALID_QUERY_FILTER_OPERATOR", literal.pos, f"invalid ID field: {value}")
            return normalized
        if family == "number" and kind == "number":
            return value
        if family == "boolean" and kind == "boolean":
            return int(value)
        try:
            if family == "date" and kind == "date":
                return datetime.date.fromisoformat(value).isoformat()
            if family == "datetime" and kind == "datetime":
                return stored_datetime(_parse_datetime(value))
        except ValueError:
            raise self.fail("MALFORMED_QUERY", literal.pos, f"invalid {family} literal: {value}") from None
        raise self.type_error(path, info, quoted=False)

    def day_bounds(self, info: FieldInfo, literal: Literal) -> tuple[str, str]:
        name, n = literal.value
        start, end = date_range(name, n, self.today)
        if info.type == "date":
            return start.isoformat(), end.isoformat()
        utc = datetime.timezone.utc
        return (
            stored_datetime(datetime.datetime(start.year, start.month, start.day, tzinfo=utc)),
            stored_datetime(datetime.datetime(end.year, end.month, end.day, tzinfo=utc)),
        )

    def compare(self, expr: str, info: FieldInfo, path: Path, op: str, literal: Literal) -> str:
        if literal.kind == "null":
            if op == "=":
                return f"{expr} IS NULL"
            if op == "!=":
                return f"{expr} IS NOT NULL"
            return "0"
        if literal.kind == "dateliteral":
            if info.type not in ("date", "datetime"):
                raise self.type_error(path, info, quoted=_family(info) in ("text", "id"))
            start, end = self.day_bounds(info, literal)
            if op in ("=", "!="):
                self.params += [start, end]
                inside = f"COALESCE({expr} >= ? AND {expr} < ?, 0)"
                return inside if op == "=" else f"NOT {inside}"
            bound, sql_op = {"<": (start, "<"), "<=": (end, "<"), ">": (end, ">="), ">=": (start, ">=")}[op]
            self.params.append(bound)
            return f"COALESCE({expr} {sql_op} ?, 0)"
        value = self.stored(path, info, literal)
        collate = " COLLATE NOCASE" if _family(info) == "text" else ""
        self.params.append(value)
        if op == "!=":
            return f"COALESCE({expr} <> ?{collate}, 1)"
        return f"COALESCE({expr} {op} ?{collate}, 0)"

    def condition(self, node: Condition) -> str:
        if isinstance(node, BoolOp):
            return "(" + f" {node.op} ".join(self.condition(item) for item in node.items) + ")"
        if isinstance(node, Not):
            return f"NOT ({self.condition(node.item)})"
        expr, info = self.resolve(node.path)
        if info.type == "textarea":
            raise self.fail(
                "INVALID_FIELD", node.path.pos, f"field '{info.name}' can not be filtered in query call"
            )
        if isinstance(node, Compare):
            return self.compare(expr, info, node.path, node.op, node.value)
        if isinstance(node, Like):
            if _family(info) != "text":
                raise self.fail(
                    "INVALID_FIELD", node.path.pos, f"invalid operator on field '{info.name}': LIKE"
                )
            self.params.append(node.pattern)
            return f"COALESCE({expr} LIKE ? ESCAPE '\\', 0)"
        assert isinstance(node, InList)
        if node.subquery is not None:
            return self.semi_join(expr, info, node)
        parts = []
        plain = [v for v in node.values if v.kind not in ("null", "dateliteral")]
        if plain:
            values = [self.stored(node.path, info, v) for v in plain]
            collate = " COLLATE NOCASE" if _family(info) == "text" else ""
            self.params += values
            parts.append(f"COALESCE({expr}{collate} IN ({', '.join('?' * len(values))}), 0)")
        for value in node.values:
            if value.kind in ("null", "dateliteral"):
                parts.append(self.compare(expr, info, node.path, "=", value))
        inside = "(" + " OR ".join(parts) + ")"
        # Unlike !=, NOT IN leaves out records whose value is null.
        return f"({expr} IS NOT NULL AND NOT {inside})" if node.negated else inside

    # the statement

    def body(self) -> tuple[list[str], list[Column], str]:
        """The selected expressions, the columns, and ``FROM ... [WHERE ...]``."""
        query = self.query
        root = self.aliases[()]
        selected = []
        columns = []
        seen: set[str] = set()
        for path in query.fields:
            for expr, info, header in self.select_item(path):
                if header.lower() in seen:
                    raise SoqlError("INVALID_FIELD", f"duplicate field selected: {header}")
                seen.add(header.lower())
                selected.append(expr)
                columns.append(Column(header, info.type))
        if not columns:
            raise SoqlError(
                "MALFORMED_QUERY",
                "'FIELDS(...)' expansion function must result in at least one field being selected.",
            )
        clauses = [] if self.include_deleted else [f"{root}.IsDeleted = 0"]
        if query.where is not None:
            clauses.append(self.condition(query.where))
        sql = f"FROM {record_table(self.root)} {root}"
        if self.joins:
            sql += " " + " ".join(self.joins)
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        return selected, columns, sql

    def select_item(self, path: Path) -> list[tuple[str, FieldInfo, str]]:
        """The columns one item of the SELECT list gives: one for a path, the group's for FIELDS(...).

        FIELDS(ALL) and FIELDS(CUSTOM) are unbounded, so need LIMIT 200 or less; addresses are left
        out of every group, as Bulk API 2.0 cannot select them.
        """
        if path.function != "FIELDS":
            return [self.walk(path)]
        group = path.parts[0]
        limit = self.query.limit
        if group != "STANDARD" and (limit is None or limit > _FIELDS_MAX_LIMIT):
            raise SoqlError("MALFORMED_QUERY", "The SOQL FIELDS function must have a LIMIT of at most 200")
        chosen = [
            info
            for info in fields_of(self.root)
            if not info.compound and (group == "ALL" or (group == "CUSTOM") == info.name.endswith("__c"))
        ]
        return [self.walk(Path((info.name,), path.pos)) for info in chosen]

    def semi_join(self, expr: str, info: FieldInfo, node: InList) -> str:
        """``expr [NOT] IN (SELECT ...)``: both sides must be ids or references."""
        inner = node.subquery
        assert inner is not None
        if _family(info) != "id":
            raise self.fail(
                "INVALID_FIELD", node.path.pos, f"semi join on field '{info.name}': not an Id or reference"
            )
        compiler = _Compiler(
            self.schema, self.soql, inner, self.include_deleted, self.today, prefix=self.prefix + "s"
        )
        selected, columns, sql = compiler.body()
        if columns[0].type not in ("id", "reference"):
            raise self.fail(
                "INVALID_FIELD",
                inner.fields[0].pos,
                f"semi join sub-select field '{columns[0].header}': not an Id or reference",
            )
        self.params += compiler.params
        inside = f"COALESCE({expr} IN (SELECT {selected[0]} {sql}), 0)"
        return f"({expr} IS NOT NULL AND NOT {inside})" if node.negated else inside

    def compile(self) -> CompiledQuery:
        query = self.query
        selected, columns, body = self.body()
        order = []
        for item in query.order:
            expr, info = self.resolve(item.path)
            if info.type == "textarea":
                raise self.fail(
                    "INVALID_FIELD", item.path.pos, f"field '{info.name}' can not be sorted in a query call"
                )
            collate = " COLLATE NOCASE" if _family(info) == "text" else ""
            nulls_first = True if item.nulls_first is None else item.nulls_first
            direction = "DESC" if item.descending else "ASC"
            order.append(f"{expr}{collate} {direction} NULLS {'FIRST' if nulls_first else 'LAST'}")
        order.append(f"{self.aliases[()]}.rowid")
        sql = f"SELECT {', '.join(selected)} {body} ORDER BY {', '.join(order)}"
        if query.limit is not None:
            sql += " LIMIT ?"
            self.params.append(query.limit)
        return CompiledQuery(self.root, sql, tuple(self.params), tuple(columns))


def compile_query(
    schema: Schema, soql: str, include_deleted: bool = False, today: datetime.date | None = None
) -> CompiledQuery:
    """Parse ``soql`` and resolve it against ``schema``.

    Parameters
    ----------
    include_deleted
        queryAll: soft-deleted records (``IsDeleted`` true) are returned too.
    today
        The day date literals are relative to; today in UTC by default.

    Raises
    ------
    SoqlError
        With Salesforce's code and message: MALFORMED_QUERY, INVALID_TYPE (unknown object),
        INVALID_FIELD (unknown field or relationship, a value of the wrong type),
        INVALID_QUERY_FILTER_OPERATOR (a malformed id) or API_ERROR (not supported by Bulk API 2.0).
    """
    query = parse(soql)
    day = today or datetime.datetime.now(datetime.timezone.utc).date()
    return _Compiler(schema, soql, query, include_deleted, day).compile()


def object_name(schema: Schema, soql: str) -> str:
    """The API name of the queried object as the org spells it (for the job's ``object``)."""
    query = parse(soql)
    obj = schema.get(query.object)
    return obj.name if obj else query.object
