"""The SOQL engine alone: parser errors, date literals, value formats, random queries against an oracle."""

# ruff: noqa: S608 - SQL and SOQL built from this file's own constants

from __future__ import annotations

import datetime
import re
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from airflow_provider_salesforce_bulk.emulator.csv_values import java_double
from airflow_provider_salesforce_bulk.emulator.schema import Schema, SObject, parse_schema
from airflow_provider_salesforce_bulk.emulator.soql import SoqlError, parse
from airflow_provider_salesforce_bulk.emulator.soql_compile import compile_query, date_range
from airflow_provider_salesforce_bulk.emulator.store import Store, record_table

SCHEMA = parse_schema(
    {
        "objects": {
            "Item__c": {
                "keyPrefix": "a05",
                "fields": {
                    "Name": {"type": "string"},
                    "Qty__c": {"type": "number", "scale": 0},
                    "Flag__c": {"type": "boolean"},
                    "Day__c": {"type": "date"},
                    "At__c": {"type": "datetime"},
                    "Parent__c": {
                        "type": "reference",
                        "referenceTo": "Item__c",
                        "relationshipName": "Parent__r",
                    },
                },
            }
        }
    }
)


def _item() -> SObject:
    found = SCHEMA.get("Item__c")
    assert found is not None
    return found


ITEM = _item()
TODAY = datetime.date(2024, 5, 15)  # a Wednesday


@pytest.fixture
def store() -> Iterator[Store]:
    db = Store(":memory:", SCHEMA)
    yield db
    db.close()


def _insert(store: Store, records: list[dict[str, Any]]) -> list[str]:
    ids = []
    with store.transaction() as conn:
        for n, record in enumerate(records):
            record_id = f"a05000000000{n:03d}AAA"
            ids.append(record_id)
            row = {"Id": record_id, "IsDeleted": 0, "CreatedDate": "2024-01-01T00:00:00.000+0000", **record}
            names = ", ".join(f'"{k}"' for k in row)
            marks = ", ".join("?" for _ in row)
            conn.execute(f"INSERT INTO {record_table(ITEM)} ({names}) VALUES ({marks})", tuple(row.values()))
    return ids


def _run(store: Store, soql: str, schema: Schema = SCHEMA, **kw: Any) -> list[tuple[Any, ...]]:
    compiled = compile_query(schema, soql, today=TODAY, **kw)
    return [tuple(r) for r in store.query(compiled.sql, compiled.params)]


# -- the parser ---------------------------------------------------------------------------------


def test_error_positions_follow_rows_and_columns() -> None:
    with pytest.raises(SoqlError) as caught:
        parse("SELECT Id\nFROM Account\nWHERE Name = 'x' LIMT 5")
    assert caught.value.code == "MALFORMED_QUERY"
    assert caught.value.message == (
        "\nWHERE Name = 'x' LIMT 5\n                 ^\nERROR at Row:3:Column:18\nunexpected token: 'LIMT'"
    )


@pytest.mark.parametrize(
    ("soql", "message"),
    [
        ("SELECT Id FROM Account WHERE Name = 'unterminated", "mismatched character"),
        ("SELECT Id FROM Account WHERE Name = 'bad \\q escape'", "Illegal character sequence '\\q'"),
        ("SELECT Id FROM Account WHERE CreatedDate = LAST_N_DAYS", "unexpected token"),
        ("SELECT Id FROM Account LIMIT -1", "unexpected token: '-1'"),
        ("SELECT FROM Account", "unexpected token: 'Account'"),  # FROM is read as a field, as Salesforce does
        ("SELECT Id FROM Account WHERE Name # 'x'", "no viable alternative at character '#'"),
    ],
)
def test_malformed(soql: str, message: str) -> None:
    with pytest.raises(SoqlError) as caught:
        parse(soql)
    assert caught.value.code == "MALFORMED_QUERY"
    assert message in caught.value.message


@pytest.mark.parametrize(
    ("soql", "what"),
    [
        ("SELECT Id FROM Account GROUP BY Name", "Aggregate queries"),
        ("SELECT MAX(Amount) FROM Opportunity", "Aggregate queries"),
        ("SELECT TYPEOF What WHEN Account THEN Name END FROM Event", "TYPEOF"),
    ],
)
def test_unsupported_in_bulk(soql: str, what: str) -> None:
    with pytest.raises(SoqlError) as caught:
        parse(soql)
    assert caught.value.code == "API_ERROR"
    assert caught.value.message == f"{what} not supported in Bulk Query"


def test_string_escapes(store: Store) -> None:
    _insert(store, [{"Name": "it's 100% a_b\\c\n"}, {"Name": "it's 100x aXb\\c\n"}])
    exact = _run(store, r"SELECT Name FROM Item__c WHERE Name = 'it\'s 100% a_b\\c\n'")
    assert exact == [("it's 100% a_b\\c\n",)]
    escaped_like = _run(store, r"SELECT Name FROM Item__c WHERE Name LIKE '%100\% a\_b\\%'")
    assert escaped_like == [("it's 100% a_b\\c\n",)]
    wild = _run(store, r"SELECT Name FROM Item__c WHERE Name LIKE 'IT''S%'".replace("''", "\\'"))
    assert len(wild) == 2


# -- date literals --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("literal", "n", "start", "end"),
    [
        ("TODAY", None, "2024-05-15", "2024-05-16"),
        ("YESTERDAY", None, "2024-05-14", "2024-05-15"),
        ("TOMORROW", None, "2024-05-16", "2024-05-17"),
        ("THIS_WEEK", None, "2024-05-12", "2024-05-19"),
        ("LAST_WEEK", None, "2024-05-05", "2024-05-12"),
        ("THIS_MONTH", None, "2024-05-01", "2024-06-01"),
        ("LAST_MONTH", None, "2024-04-01", "2024-05-01"),
        ("NEXT_MONTH", None, "2024-06-01", "2024-07-01"),
        ("THIS_QUARTER", None, "2024-04-01", "2024-07-01"),
        ("LAST_QUARTER", None, "2024-01-01", "2024-04-01"),
        ("THIS_YEAR", None, "2024-01-01", "2025-01-01"),
        ("LAST_YEAR", None, "2023-01-01", "2024-01-01"),
        ("LAST_90_DAYS", None, "2024-02-15", "2024-05-16"),
        ("LAST_N_DAYS", 7, "2024-05-08", "2024-05-16"),
        ("NEXT_N_DAYS", 7, "2024-05-16", "2024-05-23"),
        ("N_DAYS_AGO", 3, "2024-05-12", "2024-05-13"),
        ("LAST_N_MONTHS", 2, "2024-03-01", "2024-05-01"),
        ("NEXT_N_MONTHS", 8, "2024-06-01", "2025-02-01"),
        ("LAST_N_YEARS", 2, "2022-01-01", "2024-01-01"),
    ],
)
def test_date_ranges(literal: str, n: int | None, start: str, end: str) -> None:
    assert date_range(literal, n, TODAY) == (
        datetime.date.fromisoformat(start),
        datetime.date.fromisoformat(end),
    )


def test_date_literals_on_date_and_datetime_fields(store: Store) -> None:
    _insert(
        store,
        [
            {"Name": "a", "Day__c": "2024-05-14", "At__c": "2024-05-14T23:59:59.999+0000"},
            {"Name": "b", "Day__c": "2024-05-15", "At__c": "2024-05-15T00:00:00.000+0000"},
            {"Name": "c", "Day__c": "2024-05-16", "At__c": "2024-05-16T10:00:00.000+0000"},
            {"Name": "d"},
        ],
    )

    def names(where: str) -> list[str]:
        return [r[0] for r in _run(store, f"SELECT Name FROM Item__c WHERE {where}")]

    assert names("Day__c = TODAY") == ["b"]
    assert names("At__c = TODAY") == ["b"]
    assert names("Day__c != TODAY") == ["a", "c", "d"]
    assert names("At__c < TODAY") == ["a"]
    assert names("At__c <= TODAY") == ["a", "b"]
    assert names("Day__c > TODAY") == ["c"]
    assert names("Day__c >= YESTERDAY") == ["a", "b", "c"]
    assert names("Day__c IN (YESTERDAY, TOMORROW)") == ["a", "c"]
    assert names("At__c = LAST_N_DAYS:1") == ["a", "b"]
    assert names("At__c > 2024-05-15T01:00:00+02:00") == ["a", "b", "c"]  # after 2024-05-14T23:00Z
    assert names("At__c > 2024-05-15T01:59:59.999+02:00") == ["b", "c"]
    assert names("At__c >= 2024-05-16T10:00:00.000Z") == ["c"]
    assert names("At__c >= 2024-05-16T09:59:59.9Z") == ["c"]
    with pytest.raises(SoqlError, match="invalid date literal: 2024-02-30"):
        names("Day__c = 2024-02-30")
    assert names("Day__c = 2024-05-16") == ["c"]
    with pytest.raises(SoqlError, match="must be of type date and"):
        names("Day__c = 2024-05-16T00:00:00Z")
    with pytest.raises(SoqlError, match="must be of type string"):
        names("Name = TODAY")


def test_date_functions(store: Store) -> None:
    _insert(
        store,
        [
            {"Name": "a", "Day__c": "2023-12-31", "At__c": "2024-02-29T23:10:00.000+0000"},
            {"Name": "b", "Day__c": "2024-05-15", "At__c": "2024-05-15T07:00:00.000+0000"},
            {"Name": "c"},
        ],
    )

    def names(where: str) -> list[str]:
        return [r[0] for r in _run(store, f"SELECT Name FROM Item__c WHERE {where}")]

    assert names("CALENDAR_YEAR(Day__c) = 2024") == ["b"]
    assert names("calendar_year(At__c) = 2024") == ["a", "b"]
    assert names("CALENDAR_MONTH(At__c) IN (2, 3)") == ["a"]
    assert names("CALENDAR_QUARTER(Day__c) = 4") == ["a"]
    assert names("FISCAL_QUARTER(Day__c) = 2") == ["b"]
    assert names("DAY_IN_MONTH(At__c) = 29") == ["a"]
    assert names("DAY_IN_WEEK(Day__c) = 4") == ["b"]  # 2024-05-15 is a Wednesday; Sunday is 1
    assert names("DAY_IN_YEAR(Day__c) = 365") == ["a"]
    assert names("WEEK_IN_YEAR(Day__c) = 20") == ["b"]
    assert names("HOUR_IN_DAY(At__c) < 12") == ["b"]
    assert names("DAY_ONLY(At__c) = 2024-02-29") == ["a"]
    assert names("CALENDAR_YEAR(Day__c) != 2024") == ["a", "c"]
    with pytest.raises(SoqlError, match="HOUR_IN_DAY cannot be applied to field 'Day__c' of type date"):
        names("HOUR_IN_DAY(Day__c) = 1")
    with pytest.raises(SoqlError, match="must be of type int"):
        names("CALENDAR_YEAR(Day__c) = '2024'")


def test_relationship_paths_and_order(store: Store) -> None:
    ids = _insert(store, [{"Name": "root"}, {"Name": "kid"}, {"Name": "grandkid"}])
    with store.transaction() as conn:
        conn.execute(f'UPDATE {record_table(ITEM)} SET "Parent__c" = ? WHERE Id = ?', (ids[0], ids[1]))
        conn.execute(f'UPDATE {record_table(ITEM)} SET "Parent__c" = ? WHERE Id = ?', (ids[1], ids[2]))
    rows = _run(
        store, "SELECT Name, Parent__r.Name, Parent__r.Parent__r.Name FROM Item__c ORDER BY Parent__r.Name"
    )
    assert rows == [("root", None, None), ("grandkid", "kid", "root"), ("kid", "root", None)]
    rows = _run(store, "SELECT Name FROM Item__c WHERE Parent__r.Name = 'ROOT'")
    assert rows == [("kid",)]
    rows = _run(store, f"SELECT Name FROM Item__c WHERE Parent__c = '{ids[0][:15]}'")  # 15-character id
    assert rows == [("kid",)]
    with pytest.raises(SoqlError, match="Didn't understand relationship 'Parent__c'"):
        _run(store, "SELECT Parent__c.Name FROM Item__c")


def test_semi_and_anti_joins(store: Store) -> None:
    ids = _insert(store, [{"Name": "p1"}, {"Name": "p2"}, {"Name": "k1"}, {"Name": "k2"}, {"Name": "orphan"}])
    with store.transaction() as conn:
        conn.execute(f'UPDATE {record_table(ITEM)} SET "Parent__c" = ? WHERE Id = ?', (ids[0], ids[2]))
        conn.execute(f'UPDATE {record_table(ITEM)} SET "Parent__c" = ? WHERE Id = ?', (ids[1], ids[3]))
    having_kids = "SELECT Name FROM Item__c WHERE Id IN (SELECT Parent__c FROM Item__c WHERE Name LIKE 'k%')"
    assert _run(store, having_kids) == [("p1",), ("p2",)]
    filtered = (
        "SELECT Name FROM Item__c WHERE Parent__c IN (SELECT Id FROM Item__c WHERE Name = 'p2') "
        "AND Name != 'x'"
    )
    assert _run(store, filtered) == [("k2",)]
    anti = "SELECT Name FROM Item__c WHERE Parent__c NOT IN (SELECT Id FROM Item__c WHERE Name = 'p2')"
    assert _run(store, anti) == [("k1",)]  # records without a parent are left out, as NOT IN does
    with pytest.raises(SoqlError, match="Nesting of semi join sub-selects is not supported"):
        _run(
            store,
            f"SELECT Name FROM Item__c WHERE Id IN "
            f"(SELECT Parent__c FROM Item__c WHERE Id IN ({having_kids}))",
        )
    with pytest.raises(SoqlError, match="not an Id or reference"):
        _run(store, "SELECT Name FROM Item__c WHERE Name IN (SELECT Id FROM Item__c)")
    with pytest.raises(SoqlError, match="one Id or reference field"):
        _run(store, "SELECT Name FROM Item__c WHERE Id IN (SELECT Id, Name FROM Item__c)")


def test_query_all_and_deleted_parents(store: Store) -> None:
    ids = _insert(store, [{"Name": "gone"}, {"Name": "kept"}])
    with store.transaction() as conn:
        conn.execute(f"UPDATE {record_table(ITEM)} SET IsDeleted = 1 WHERE Id = ?", (ids[0],))
        conn.execute(f'UPDATE {record_table(ITEM)} SET "Parent__c" = ? WHERE Id = ?', (ids[0], ids[1]))
    assert _run(store, "SELECT Name, Parent__r.Name FROM Item__c") == [("kept", None)]
    assert _run(store, "SELECT Name, Parent__r.Name FROM Item__c", include_deleted=True) == [
        ("gone", None),
        ("kept", "gone"),
    ]


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0.0, "0.0"),
        (1.5, "1.5"),
        (1000.0, "1000.0"),
        (9999999.0, "9999999.0"),
        (10000000.0, "1.0E7"),
        (912260031.0, "9.12260031E8"),
        (0.001, "0.001"),
        (0.0001, "1.0E-4"),
        (-123456789.25, "-1.2345678925E8"),
    ],
)
def test_java_double(value: float, text: str) -> None:
    assert java_double(value) == text


# -- random queries against a plain Python oracle ---------------------------------------------

_TEXT = st.text(alphabet="aAbB_%x' ", min_size=0, max_size=4)
_DAYS = [datetime.date(2024, 1, d).isoformat() for d in (1, 2, 3)]
_FIELDS = {"Name": "text", "Qty__c": "number", "Flag__c": "boolean", "Day__c": "date"}


def _records() -> st.SearchStrategy[list[dict[str, Any]]]:
    record = st.fixed_dictionaries(
        {
            "Name": st.none() | _TEXT,
            "Qty__c": st.none() | st.integers(-2, 2).map(float),
            "Flag__c": st.booleans().map(int),
            "Day__c": st.none() | st.sampled_from(_DAYS),
        }
    )
    return st.lists(record, max_size=12)


def _literal(kind: str) -> st.SearchStrategy[Any]:
    if kind == "text":
        return _TEXT
    if kind == "number":
        return st.sampled_from([-1, 0, 1, 1.5, 2])
    if kind == "boolean":
        return st.booleans()
    return st.sampled_from(_DAYS)


def _soql_value(kind: str, value: Any) -> str:
    if value is None:
        return "null"
    if kind == "text":
        return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"
    if kind == "boolean":
        return "true" if value else "false"
    return str(value)


@st.composite
def _leaf(draw: st.DrawFn) -> tuple[str, Any]:
    field = draw(st.sampled_from(sorted(_FIELDS)))
    kind = _FIELDS[field]
    shape = draw(st.sampled_from(["cmp", "null", "in", "like"] if kind == "text" else ["cmp", "null", "in"]))
    if shape == "null":
        op = draw(st.sampled_from(["=", "!="]))
        return f"{field} {op} null", ("null", field, op)
    if shape == "in":
        values = draw(st.lists(_literal(kind), min_size=1, max_size=3))
        negated = draw(st.booleans())
        text = ", ".join(_soql_value(kind, v) for v in values)
        return f"{field} {'NOT IN' if negated else 'IN'} ({text})", ("in", field, values, negated)
    if shape == "like":
        pattern = draw(st.text(alphabet="aA%_x", min_size=0, max_size=4))
        return f"{field} LIKE '{pattern}'", ("like", field, pattern)
    ops = ["=", "!="] if kind == "boolean" else ["=", "!=", "<", "<=", ">", ">="]
    op = draw(st.sampled_from(ops))
    value = draw(_literal(kind))
    return f"{field} {op} {_soql_value(kind, value)}", ("cmp", field, op, value)


def _conditions() -> st.SearchStrategy[tuple[str, Any]]:
    def extend(children: st.SearchStrategy[tuple[str, Any]]) -> st.SearchStrategy[tuple[str, Any]]:
        joined = st.tuples(st.sampled_from(["AND", "OR"]), st.lists(children, min_size=2, max_size=3)).map(
            lambda t: (f" {t[0]} ".join(f"({c[0]})" for c in t[1]), ("bool", t[0], [c[1] for c in t[1]]))
        )
        negated = children.map(lambda c: (f"NOT ({c[0]})", ("not", c[1])))
        return joined | negated

    return st.recursive(_leaf(), extend, max_leaves=6)


def _fold(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


def _holds(record: dict[str, Any], node: Any) -> bool:
    kind = node[0]
    if kind == "bool":
        results = [_holds(record, child) for child in node[2]]
        return bool(all(results) if node[1] == "AND" else any(results))
    if kind == "not":
        return not _holds(record, node[1])
    value = record[node[1]]
    if kind == "null":
        return bool((value is None) == (node[2] == "="))
    if kind == "in":
        found = value is not None and _fold(value) in {
            _fold(float(v) if isinstance(v, int) and not isinstance(v, bool) else v) for v in node[2]
        }
        if _FIELDS[node[1]] == "boolean":
            found = value is not None and bool(value) in {bool(v) for v in node[2]}
        if node[3]:
            return bool(value is not None and not found)  # NOT IN leaves nulls out
        return bool(found)
    if kind == "like":
        regex = "".join(".*" if c == "%" else "." if c == "_" else re.escape(c) for c in node[2])
        return value is not None and re.fullmatch(regex, value, re.IGNORECASE | re.DOTALL) is not None
    _, field, op, literal = node
    if value is None:
        return bool(op == "!=")
    left, right = _fold(value), _fold(literal)
    if _FIELDS[field] == "boolean":
        left, right = bool(left), bool(right)
    return bool(
        {
            "=": left == right,
            "!=": left != right,
            "<": left < right,
            "<=": left <= right,
            ">": left > right,
            ">=": left >= right,
        }[op]
    )


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    records=_records(),
    condition=st.none() | _conditions(),
    order=st.none()
    | st.tuples(st.sampled_from(sorted(_FIELDS)), st.booleans(), st.sampled_from([None, True, False])),
    limit=st.none() | st.integers(0, 5),
)
def test_random_queries_match_the_oracle(
    records: list[dict[str, Any]],
    condition: tuple[str, Any] | None,
    order: tuple[str, bool, bool | None] | None,
    limit: int | None,
) -> None:
    store = Store(":memory:", SCHEMA)
    try:
        ids = _insert(store, records)
        soql = "SELECT Id FROM Item__c"
        expected = [(record_id, r) for record_id, r in zip(ids, records, strict=True)]
        if condition is not None:
            soql += f" WHERE {condition[0]}"
            expected = [(i, r) for i, r in expected if _holds(r, condition[1])]
        if order is not None:
            field, descending, nulls_first = order
            soql += f" ORDER BY {field} {'DESC' if descending else 'ASC'}"
            if nulls_first is not None:
                soql += f" NULLS {'FIRST' if nulls_first else 'LAST'}"
            first = True if nulls_first is None else nulls_first  # SOQL: "null values are sorted first"
            nulls = [e for e in expected if e[1][field] is None]
            rest = sorted(
                (e for e in expected if e[1][field] is not None),
                key=lambda e: _fold(e[1][field]),
                reverse=descending,
            )
            expected = nulls + rest if first else rest + nulls
        if limit is not None:
            soql += f" LIMIT {limit}"
            expected = expected[:limit]
        got = [row[0] for row in _run(store, soql)]
        assert got == [e[0] for e in expected], soql
    finally:
        store.close()
