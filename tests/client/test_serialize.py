"""The record serializer: value conversions, chunking invariants, laziness and input errors."""

from __future__ import annotations

import csv
import datetime
import enum
import fractions
import io
import warnings
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from airflow_provider_salesforce_bulk.client import (
    ChunkFormat,
    ChunkLimits,
    InputError,
    serialize_ingest_data,
)
from airflow_provider_salesforce_bulk.client.csv_format import COLUMN_DELIMITERS, LINE_ENDINGS, CsvChunk
from airflow_provider_salesforce_bulk.client.csv_split import iter_csv_stream_chunks
from airflow_provider_salesforce_bulk.client.job_spec import validate_operation_fields
from airflow_provider_salesforce_bulk.client.serialize import iter_record_chunks


def parse(data: bytes, column_delimiter: str = "COMMA") -> list[list[str]]:
    """Rows of a CSV payload, parsed strictly (a malformed payload raises)."""
    text = data.decode("utf-8")
    return list(
        csv.reader(io.StringIO(text, newline=""), delimiter=COLUMN_DELIMITERS[column_delimiter], strict=True)
    )


def one_chunk(records: list[dict[str, Any]], **kwargs: Any) -> bytes:
    chunks = list(serialize_ingest_data(records, **kwargs))
    assert len(chunks) == 1
    return chunks[0]


def value_text(value: Any, **kwargs: Any) -> str:
    """How a single value is written (parsed back from its CSV)."""
    return parse(one_chunk([{"F": value}], fieldnames=["F"], **kwargs))[1][0]


# -- values ---------------------------------------------------------------------------------------


class Color(str, enum.Enum):
    RED = "red"


class Level(enum.IntEnum):
    HIGH = 3


class MyIndex:
    """An integer type that is not an int (as numpy's are), known only by __index__."""

    def __index__(self) -> int:
        return 42


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (True, "true"),
        (False, "false"),
        (0, "0"),
        (-12345678901234567890, "-12345678901234567890"),
        (Level.HIGH, "3"),
        (MyIndex(), "42"),
        ("plain", "plain"),
        ("  spaced  ", "  spaced  "),
        (Color.RED, "red"),
        (1.5, "1.5"),
        (0.1, "0.1"),
        (1e-7, "0.0000001"),
        (1.5e-7, "0.00000015"),
        (1e20, "100000000000000000000"),
        (1.2345678901234568e16, "12345678901234568"),
        (-0.0, "-0.0"),
        (Decimal("1E+3"), "1000"),
        (Decimal("1.50"), "1.50"),
        (Decimal("-1E-10"), "-0.0000000001"),
        (datetime.date(2024, 2, 29), "2024-02-29"),
        (datetime.date(999, 1, 2), "0999-01-02"),
        (datetime.datetime(2024, 1, 2, 3, 4, 5, 678901), "2024-01-02T03:04:05.678+00:00"),
        (
            datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.timezone(datetime.timedelta(hours=-5))),
            "2024-01-02T03:04:05.000-05:00",
        ),
        (
            datetime.datetime(
                2024,
                1,
                2,
                3,
                4,
                5,
                tzinfo=datetime.timezone(datetime.timedelta(hours=5, minutes=30, seconds=7)),
            ),
            "2024-01-01T21:33:58.000+00:00",
        ),
        (None, ""),
    ],
)
def test_value_conversion(value: Any, expected: str) -> None:
    assert value_text(value) == expected


def test_value_conversion_in_mixed_columns_matches_homogeneous_ones() -> None:
    values: list[Any] = [True, 1, 1.0, 1e-7, "x", None, Decimal("2"), datetime.date(2020, 1, 1)]
    data = one_chunk([{"F": v} for v in values], fieldnames=["F"])
    assert [row[0] for row in parse(data)[1:]] == [value_text(v) for v in values]


def test_none_as_null_writes_na_but_missing_fields_stay_empty() -> None:
    data = one_chunk([{"A": None}], fieldnames=["A", "B"], none_as="null")
    assert data == b"A,B\n#N/A,\n"
    assert value_text(None, none_as="empty") == ""


@pytest.mark.parametrize(
    "records",
    [
        [{"A": "x"}, {"A": "#N/A"}],  # a column of strings
        [{"A": 1}, {"A": "#N/A"}],  # a mixed column
        [{"A": "x"}, {"Account": {"Ext__c": "#N/A"}}],  # a relationship value
    ],
)
def test_na_marker_text_is_refused_unless_asked_for(records: list[dict[str, Any]]) -> None:
    field = next(iter(records[1]))
    fieldnames = ["A", "Account.Ext__c"]
    with pytest.raises(InputError, match=r"record 1, field '.*': the value is the text '#N/A'") as info:
        list(serialize_ingest_data(records, fieldnames))
    assert info.value.record_index == 1
    assert info.value.field == ("A" if field == "A" else "Account.Ext__c")
    data = b"".join(serialize_ingest_data(records, fieldnames, allow_na_marker=True))
    assert b"\n#N/A," in data or b",#N/A\n" in data


def test_na_marker_only_as_a_whole_value_and_none_as_null_still_writes_it() -> None:
    records: list[dict[str, Any]] = [{"A": "x #N/A", "B": None}, {"A": "#N/A ", "B": "#n/a"}]
    assert one_chunk(records, fieldnames=["A", "B"], none_as="null") == b"A,B\nx #N/A,#N/A\n#N/A ,#n/a\n"


def test_allow_na_marker_must_be_a_bool() -> None:
    with pytest.raises(InputError) as info:
        serialize_ingest_data([], ["A"], allow_na_marker="yes")  # type: ignore[arg-type]
    assert info.value.field == "allow_na_marker"


@settings(max_examples=200, deadline=None)
@given(values=st.lists(st.sampled_from(["#N/A", "a", "#N/A ", None, 1, 2.5, "x,y"]), min_size=1, max_size=40))
def test_na_marker_is_found_at_its_first_record(values: list[Any]) -> None:
    records = [{"A": v} for v in values]
    first = next((i for i, v in enumerate(values) if v == "#N/A"), None)
    if first is None:
        assert len(list(serialize_ingest_data(records, ["A"], max_records=3))) >= 1
        return
    with pytest.raises(InputError, match="#N/A") as info:
        list(serialize_ingest_data(records, ["A"], max_records=3))
    assert (info.value.record_index, info.value.field) == (first, "A")


def test_relationship_columns() -> None:
    records: list[dict[str, Any]] = [{"Account": {"External_Id__c": "A1"}, "Name": "x"}, {"Name": "y"}]
    data = one_chunk(records, fieldnames=["Name", "Account.External_Id__c"])
    assert data == b"Name,Account.External_Id__c\nx,A1\ny,\n"


def test_custom_relationship_key_is_corrected_with_a_warning() -> None:
    with pytest.warns(UserWarning, match="Parent__r"):
        data = one_chunk([{"Parent__c": {"Ext__c": "P1"}}], fieldnames=["Parent__r.Ext__c"])
    assert data == b"Parent__r.Ext__c\nP1\n"


@pytest.mark.parametrize("name", list(COLUMN_DELIMITERS))
def test_quoting_for_every_delimiter(name: str) -> None:
    delimiter = COLUMN_DELIMITERS[name]
    values = [f"a{delimiter}b", 'say "hi"', "line\nbreak", "cr\ronly", "crlf\r\nx", "plain", ""]
    data = one_chunk([{"A": v, "B": "z"} for v in values], fieldnames=["A", "B"], column_delimiter=name)
    lines = data.decode()
    assert f'"a{delimiter}b"' in lines
    assert '"say ""hi"""' in lines
    assert '"cr\ronly"' in lines
    assert "\nplain" + delimiter in lines  # no quotes where none are needed
    assert [row[0] for row in parse(data, name)[1:]] == values


def test_single_column_empty_value_is_not_a_blank_line() -> None:
    data = one_chunk([{"A": ""}, {"A": None}, {}], fieldnames=["A"])
    assert data == b'A\n""\n""\n""\n'


# -- chunking -------------------------------------------------------------------------------------


def test_empty_input_yields_nothing() -> None:
    assert list(serialize_ingest_data([], ["Id"])) == []
    assert list(serialize_ingest_data(iter([]), ["Id"])) == []
    assert list(serialize_ingest_data([])) == []


def test_record_limit_and_accounting() -> None:
    chunks = list(iter_record_chunks([{"Id": str(i)} for i in range(5)], ["Id"], ChunkLimits(max_records=2)))
    assert chunks == [
        CsvChunk(data=b"Id\n0\n1\n", first_record_index=0, record_count=2),
        CsvChunk(data=b"Id\n2\n3\n", first_record_index=2, record_count=2),
        CsvChunk(data=b"Id\n4\n", first_record_index=4, record_count=1),
    ]


def test_size_limit_counts_header_line_endings_and_utf8_bytes() -> None:
    # "Id\r\n" is 4 bytes, each "é\r\n" row 4 bytes: 12 bytes hold the header and two rows.
    chunks = list(serialize_ingest_data([{"Id": "é"}] * 5, ["Id"], max_size_bytes=12, line_ending="CRLF"))
    assert chunks == ["Id\r\né\r\né\r\n".encode()] * 2 + ["Id\r\né\r\n".encode()]
    assert all(len(c) <= 12 for c in chunks)


def test_record_exactly_filling_a_chunk() -> None:
    chunks = list(serialize_ingest_data([{"Id": "abc"}, {"Id": "d"}], ["Id"], max_size_bytes=7))
    assert chunks == [b"Id\nabc\n", b"Id\nd\n"]


def test_record_too_large_names_its_index() -> None:
    records = [{"Id": "a"}, {"Id": "a" * 50}, {"Id": "b"}]
    with pytest.raises(InputError, match=r"record 1 is 51 bytes.*max_size_bytes=20") as info:
        list(serialize_ingest_data(records, ["Id"], max_size_bytes=20))
    assert info.value.record_index == 1


def test_generator_is_read_lazily() -> None:
    read: list[int] = []

    def records() -> Iterator[dict[str, str]]:
        for i in range(100):
            if i >= 12:
                raise AssertionError("read past the second chunk")
            read.append(i)
            yield {"Id": str(i)}

    chunks = serialize_ingest_data(records(), ["Id"], max_records=5)
    assert next(chunks) == b"Id\n0\n1\n2\n3\n4\n"
    assert read == [0, 1, 2, 3, 4]  # the record limit is reached: nothing more is read
    # With a size limit the next record must be read to know it does not fit, and no more than that.
    read.clear()
    sized = serialize_ingest_data(records(), ["Id"], max_size_bytes=len(b"Id\n0\n1\n2\n"))
    assert next(sized) == b"Id\n0\n1\n2\n"
    assert read == [0, 1, 2, 3]


def test_lazy_chunks_hold_one_chunk_of_many() -> None:
    many = ({"Id": str(i), "Name": "n" * 10} for i in range(50_000))
    chunks = iter_record_chunks(many, ["Id", "Name"], ChunkLimits(max_records=1_000))
    first = next(chunks)
    assert first.record_count == 1_000
    rest = list(chunks)
    assert sum(c.record_count for c in rest) == 49_000
    assert rest[-1].first_record_index == 49_000


def test_inferred_fieldnames_keep_first_seen_order_and_warn_for_generators() -> None:
    records: list[dict[str, Any]] = [{"B": 1, "A": 2}, {"C": {"Ext": "x"}, "A": 3}, {"D": True}]
    assert one_chunk(records) == b"B,A,C.Ext,D\n1,2,,\n,3,x,\n,,,true\n"
    with pytest.warns(UserWarning, match="infer fieldnames"):
        chunks = list(serialize_ingest_data(iter(records)))
    assert chunks == [one_chunk(records)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        list(serialize_ingest_data(records))  # a list needs no warning


# -- input errors ---------------------------------------------------------------------------------


def test_key_not_in_fieldnames() -> None:
    with pytest.raises(InputError, match=r"record 1 has the field 'Phone'.*not in fieldnames") as info:
        list(serialize_ingest_data([{"Name": "a"}, {"Name": "b", "Phone": "1"}], ["Name"]))
    assert (info.value.record_index, info.value.field) == (1, "Phone")


def test_relationship_not_in_fieldnames_names_the_column() -> None:
    with pytest.raises(InputError, match=r"'Account.Ext'.*nested dict under 'Account'") as info:
        list(serialize_ingest_data([{"Account": {"Ext": "1"}}], ["Account"]))
    assert (info.value.record_index, info.value.field) == (0, "Account.Ext")


def test_relationship_with_two_keys() -> None:
    with pytest.raises(InputError, match="exactly one key") as info:
        list(serialize_ingest_data([{"Account": {"A": 1, "B": 2}}], ["Account.A"]))
    assert (info.value.record_index, info.value.field) == (0, "Account")


def test_same_column_flat_and_nested() -> None:
    with pytest.raises(InputError, match="twice") as info:
        list(serialize_ingest_data([{"Account.A": 1, "Account": {"A": 2}}], ["Account.A"]))
    assert info.value.field == "Account.A"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (b"bytes", "unsupported value type 'bytes'"),
        ([1, 2], "unsupported value type 'list'"),
        (datetime.time(12, 0), "unsupported value type 'time'"),
        (fractions.Fraction(1, 3), "no exact decimal form"),
        (float("nan"), "NaN and infinities are rejected"),
        (float("inf"), "NaN and infinities are rejected"),
        (-float("inf"), "NaN and infinities are rejected"),
        (Decimal("NaN"), "NaN and infinities are rejected"),
        (Decimal("-Infinity"), "NaN and infinities are rejected"),
        ("a\x00b", "NUL"),
        ("a\ud800b", "lone surrogate"),
    ],
)
def test_unwritable_values_name_record_and_field(value: Any, message: str) -> None:
    records = [{"Id": "1", "F": 1.5 if isinstance(value, float) else "ok"}, {"Id": "2", "F": value}]
    with pytest.raises(InputError, match=message) as info:
        list(serialize_ingest_data(records, ["Id", "F"]))
    assert (info.value.record_index, info.value.field) == (1, "F")
    assert "record 1, field 'F'" in str(info.value)


def test_record_that_is_not_a_mapping() -> None:
    with pytest.raises(InputError, match="record 0 is a tuple") as info:
        list(serialize_ingest_data([("a",)], ["Id"]))  # type: ignore[list-item]
    assert info.value.record_index == 0


@pytest.mark.parametrize(
    ("kwargs", "field", "message"),
    [
        ({"column_delimiter": "COLON"}, "column_delimiter", "column_delimiter must be one of BACKQUOTE"),
        ({"line_ending": "CR"}, "line_ending", "line_ending must be one of LF, CRLF"),
        ({"none_as": "nil"}, "none_as", "none_as must be 'empty' or 'null'"),
        ({"max_size_bytes": 100_000_001}, "max_size_bytes", "between 1 and 100_000_000"),
        ({"max_size_bytes": 0}, "max_size_bytes", "between 1 and"),
        ({"max_size_bytes": 3}, "max_size_bytes", "the header row alone is 3 bytes"),
        ({"max_size_bytes": 10.5}, "max_size_bytes", "must be an int"),
        ({"max_records": 0}, "max_records", "at least 1"),
        ({"max_records": True}, "max_records", "must be an int"),
        ({"fieldnames": []}, "fieldnames", "fieldnames is empty"),
        ({"fieldnames": "Id"}, "fieldnames", "collection of field names"),
        ({"fieldnames": ["Id", ""]}, "fieldnames", "non-empty strings"),
        ({"fieldnames": ["Name", "name"]}, "name", "twice"),
        ({"fieldnames": [f"F{i}" for i in range(5_001)]}, "fieldnames", "at most 5,000|at most 5_000"),
    ],
)
def test_bad_arguments_are_raised_at_call_time(kwargs: dict[str, Any], field: str, message: str) -> None:
    arguments: dict[str, Any] = {"fieldnames": ["Id"], **kwargs}
    with pytest.raises(InputError, match=message) as info:
        serialize_ingest_data(iter([]), **arguments)  # no next(): checked before iterating
    assert info.value.field == field
    assert info.value.record_index is None


def test_records_without_fields() -> None:
    with pytest.raises(InputError, match="hold no fields"):
        list(serialize_ingest_data([{}, {}]))


# -- operations -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("operation", "fieldnames", "external_id", "field", "message"),
    [
        (
            "merge",
            ["Id"],
            None,
            "operation",
            "unknown operation 'merge'.*insert, update, upsert, delete, hardDelete",
        ),
        ("harddelete", ["Id"], None, "operation", "unknown operation"),
        ("upsert", ["Ext__c", "Name"], None, "external_id_field", "upsert needs external_id_field"),
        ("upsert", ["Name"], "Ext__c", "Ext__c", "do not include it"),
        ("insert", ["Name"], "Ext__c", "external_id_field", "for upsert only"),
        ("delete", ["Id", "Name"], None, "Name", "delete takes only the Id column.*'Name'"),
        ("hardDelete", ["Name"], None, "Name", "hardDelete takes only the Id column"),
        ("update", ["Name"], None, "Id", "update needs an Id column"),
    ],
)
def test_validate_operation_fields_errors(
    operation: str, fieldnames: list[str], external_id: str | None, field: str, message: str
) -> None:
    with pytest.raises(InputError, match=message) as info:
        validate_operation_fields(operation, fieldnames, external_id)
    assert info.value.field == field


@pytest.mark.parametrize(
    ("operation", "fieldnames", "external_id"),
    [
        ("insert", ["Name"], None),
        ("update", ["id", "Name"], None),
        ("upsert", ["ext__c", "Name"], "Ext__c"),
        ("delete", ["Id"], None),
        ("hardDelete", ["ID"], None),
        ("upsert", None, "Ext__c"),
    ],
)
def test_validate_operation_fields_accepts(
    operation: str, fieldnames: list[str] | None, external_id: str | None
) -> None:
    validate_operation_fields(operation, fieldnames, external_id)


# -- properties -----------------------------------------------------------------------------------

# All of Unicode that UTF-8 can carry and Salesforce takes: no surrogates (Cs), no NUL.
_TEXT = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=12)
_FIELDS = ["Id", "Name", "Note", "Amount"]
_RECORDS = st.lists(
    st.dictionaries(st.sampled_from(_FIELDS), _TEXT | st.none() | st.booleans() | st.integers(), max_size=4),
    max_size=25,
)
_DIALECT = st.tuples(st.sampled_from(list(COLUMN_DELIMITERS)), st.sampled_from(list(LINE_ENDINGS)))


def _expected_row(record: dict[str, Any], fieldnames: list[str]) -> list[str]:
    def text(value: Any) -> str:
        if value is None:
            return ""
        if isinstance(value, bool):
            return "true" if value else "false"
        return str(value)

    return [text(record[name]) if name in record else "" for name in fieldnames]


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    records=_RECORDS,
    width=st.integers(1, len(_FIELDS)),
    dialect=_DIALECT,
    extra_bytes=st.integers(1, 120),
    max_records=st.integers(1, 6),
)
def test_round_trip_and_chunk_invariants(
    records: list[dict[str, Any]], width: int, dialect: tuple[str, str], extra_bytes: int, max_records: int
) -> None:
    fieldnames = _FIELDS[:width]
    records = [{k: v for k, v in r.items() if k in fieldnames} for r in records]
    delimiter, line_ending = dialect
    eol = LINE_ENDINGS[line_ending].encode()
    header = (COLUMN_DELIMITERS[delimiter].join(fieldnames)).encode() + eol
    max_size_bytes = len(header) + extra_bytes
    options: dict[str, Any] = {"column_delimiter": delimiter, "line_ending": line_ending}
    limits, chunk_format = (
        ChunkLimits(max_size_bytes=max_size_bytes, max_records=max_records),
        ChunkFormat(**options),
    )
    # A record too large for any chunk on its own stops the run, with its index, and only that.
    sizes = [len(next(serialize_ingest_data([r], fieldnames, **options))) for r in records]
    too_large = next((i for i, size in enumerate(sizes) if size > max_size_bytes), None)
    if too_large is not None:
        with pytest.raises(InputError, match="does not fit") as info:
            list(iter_record_chunks(records, fieldnames, limits, chunk_format))
        assert info.value.record_index == too_large
        return
    chunks = list(iter_record_chunks(records, fieldnames, limits, chunk_format))
    rows: list[list[str]] = []
    expected_first = 0
    for chunk in chunks:
        assert chunk.data.startswith(header)
        assert chunk.data.endswith(eol)
        assert len(chunk.data) <= max_size_bytes
        assert 1 <= chunk.record_count <= max_records
        assert chunk.first_record_index == expected_first
        expected_first += chunk.record_count
        parsed = parse(chunk.data, delimiter)
        assert parsed[0] == fieldnames
        assert len(parsed) - 1 == chunk.record_count
        rows.extend(parsed[1:])
    assert rows == [_expected_row(r, fieldnames) for r in records]
    # The split fast path over the same CSV in one piece cuts exactly the same chunks; it also checks
    # that every record ends with the job's line ending (it rejects any other outside quotes) and that
    # the quoting is well formed in the job's dialect.
    if chunks:
        whole = b"".join(serialize_ingest_data(records, fieldnames, **options))
        split = list(iter_csv_stream_chunks(io.BytesIO(whole), limits, chunk_format, block_size=7))
        assert split == chunks


@settings(max_examples=100, deadline=None)
@given(values=st.lists(st.floats(allow_nan=False, allow_infinity=False), min_size=1, max_size=20))
def test_floats_round_trip_exactly_without_exponent(values: list[float]) -> None:
    data = one_chunk([{"F": v} for v in values], fieldnames=["F"])
    texts = [row[0] for row in parse(data)[1:]]
    assert not any("e" in t or "E" in t for t in texts)
    assert [float(t) for t in texts] == values


@settings(max_examples=50, deadline=None)
@given(values=st.lists(st.decimals(allow_nan=False, allow_infinity=False), min_size=1, max_size=10))
def test_decimals_round_trip_exactly_without_exponent(values: list[Decimal]) -> None:
    data = one_chunk([{"F": v} for v in values], fieldnames=["F"])
    texts = [row[0] for row in parse(data)[1:]]
    assert not any("E" in t for t in texts)
    assert [Decimal(t) for t in texts] == values
