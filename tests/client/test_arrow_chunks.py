"""The Arrow serializer: byte-identical to the dict path on the same rows, chunk accounting, bad input."""

from __future__ import annotations

import csv
import datetime
import io
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from airflow_provider_salesforce_bulk.client import ChunkFormat, ChunkLimits, iter_arrow_chunks
from airflow_provider_salesforce_bulk.client.csv_format import COLUMN_DELIMITERS, CsvChunk
from airflow_provider_salesforce_bulk.client.errors import InputError
from airflow_provider_salesforce_bulk.client.serialize import iter_record_chunks

UTC = datetime.timezone.utc


def arrow_chunks(source: Any, **kwargs: Any) -> list[CsvChunk]:
    return list(iter_arrow_chunks(source, **kwargs))


def dict_chunks(table: pa.Table, fieldnames: list[str] | None = None, **kwargs: Any) -> list[CsvChunk]:
    """The dict path given the same keywords as :func:`iter_arrow_chunks`."""
    sizes = {name: kwargs.pop(name) for name in ("max_size_bytes", "max_records") if name in kwargs}
    limits = ChunkLimits(**sizes)
    return list(iter_record_chunks(table.to_pylist(), fieldnames, limits, ChunkFormat(**kwargs)))


def outcome(produce: Any) -> list[CsvChunk] | tuple[str, int | None, str | None]:
    """The chunks, or the InputError's message, record index and field."""
    try:
        return list(produce())
    except InputError as exc:
        return (str(exc), exc.record_index, exc.field)


def parse(data: bytes, column_delimiter: str = "COMMA") -> list[list[str]]:
    text = data.decode("utf-8")
    return list(
        csv.reader(io.StringIO(text, newline=""), delimiter=COLUMN_DELIMITERS[column_delimiter], strict=True)
    )


# -- byte identity with the dict path ---------------------------------------------------------------

_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")
    | st.sampled_from([",", '"', "\n", "\r", "|", "\t", ";", "^", "`", " ", "é", "漢"]),
    max_size=12,
)
_utc_datetimes = st.datetimes(
    min_value=datetime.datetime(1, 1, 1), max_value=datetime.datetime(9999, 12, 31, 23, 59, 59)
)


# Each column kind: its Arrow type and a strategy for one value (None is added for every kind).
_KINDS: dict[str, tuple[pa.DataType, st.SearchStrategy[Any]]] = {
    "string": (pa.string(), _text),
    "large_string": (pa.large_string(), _text),
    "string_view": (pa.string_view(), _text),
    "int64": (pa.int64(), st.integers(-(2**63), 2**63 - 1)),
    "int8": (pa.int8(), st.integers(-128, 127)),
    "uint64": (pa.uint64(), st.integers(0, 2**64 - 1)),
    "float64": (pa.float64(), st.floats(allow_nan=False, allow_infinity=False)),
    "float32": (pa.float32(), st.floats(width=32, allow_nan=False, allow_infinity=False)),
    "bool": (pa.bool_(), st.booleans()),
    "decimal": (
        pa.decimal128(12, 4),
        st.integers(-(10**12) + 1, 10**12 - 1).map(lambda i: Decimal(i).scaleb(-4)),
    ),
    "decimal_tiny": (pa.decimal128(20, 12), st.integers(-99, 99).map(lambda i: Decimal(i).scaleb(-12))),
    "decimal_negative_scale": (
        pa.decimal128(5, -3),
        st.integers(-99_999, 99_999).map(lambda i: Decimal(i).scaleb(3)),
    ),
    "date32": (pa.date32(), st.dates()),
    "date64": (pa.date64(), st.dates()),
    "timestamp_us": (pa.timestamp("us"), _utc_datetimes),
    "timestamp_ms_utc": (
        pa.timestamp("ms", tz="UTC"),
        _utc_datetimes.map(lambda d: d.replace(microsecond=d.microsecond // 1000 * 1000, tzinfo=UTC)),
    ),
    "timestamp_s": (pa.timestamp("s"), _utc_datetimes.map(lambda d: d.replace(microsecond=0))),
    "timestamp_ns": (
        pa.timestamp("ns"),
        st.datetimes(min_value=datetime.datetime(1700, 1, 1), max_value=datetime.datetime(2250, 1, 1)),
    ),
    "dictionary": (pa.dictionary(pa.int32(), pa.string()), _text),
    "null": (pa.null(), st.none()),
}


@st.composite
def tables(draw: st.DrawFn) -> pa.Table:
    kinds = draw(st.lists(st.sampled_from(sorted(_KINDS)), min_size=1, max_size=6))
    rows = draw(st.integers(0, 25))
    columns = {}
    for position, kind in enumerate(kinds):
        arrow_type, values = _KINDS[kind]
        column = draw(st.lists(st.none() | values, min_size=rows, max_size=rows))
        name = f"F{position}_{kind}"
        if arrow_type == pa.dictionary(pa.int32(), pa.string()):
            columns[name] = pa.array(column, pa.string()).dictionary_encode()
        else:
            columns[name] = pa.array(column, arrow_type)
    return pa.table(columns)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    table=tables(),
    column_delimiter=st.sampled_from(sorted(COLUMN_DELIMITERS)),
    line_ending=st.sampled_from(["LF", "CRLF"]),
    none_as=st.sampled_from(["empty", "null"]),
    max_records=st.integers(1, 30),
    extra_bytes=st.integers(1, 400),
    batch_rows=st.integers(1, 30),
)
def test_same_bytes_as_the_dict_path(
    table: pa.Table,
    column_delimiter: str,
    line_ending: str,
    none_as: str,
    max_records: int,
    extra_bytes: int,
    batch_rows: int,
) -> None:
    header = len(",".join(table.column_names)) + 2
    kwargs: dict[str, Any] = {
        "column_delimiter": column_delimiter,
        "line_ending": line_ending,
        "none_as": none_as,
        "max_records": max_records,
        # Small byte limits cut chunks inside record batches and make rows too large.
        "max_size_bytes": header + extra_bytes,
    }
    expected = outcome(lambda: dict_chunks(table, **kwargs))
    assert outcome(lambda: arrow_chunks(table, **kwargs)) == expected
    # Cut into record batches of another size, the same chunks.
    batches = table.to_batches(max_chunksize=batch_rows)
    assert outcome(lambda: arrow_chunks(iter(batches), **kwargs)) == expected


def test_values_written_as_salesforce_reads_them() -> None:
    table = pa.table(
        {
            "Name": ["plain", "a,b", 'say "hi"', "two\nlines", None, ""],
            "Count": pa.array([1, None, -3, 0, 2**40, 7], pa.int64()),
            "Ratio": [1.0, -0.0, 1e16, 1.5e-5, 1e-7, 0.1],
            "Flag": [True, False, None, True, False, True],
            "Day": pa.array([datetime.date(2024, 2, 29), None, datetime.date(1, 1, 1)] * 2, pa.date32()),
            "At": pa.array(
                [datetime.datetime(2024, 1, 2, 3, 4, 5, 678_901)] * 5 + [None], pa.timestamp("us")
            ),
            "Amount": pa.array(
                [Decimal("1.50"), Decimal("0.00"), None, Decimal("-2.25"), Decimal("10.00"), Decimal("3.10")],
                pa.decimal128(10, 2),
            ),
        }
    )
    (chunk,) = arrow_chunks(table, none_as="null")
    assert chunk.data.decode().split("\n", 2)[:2] == [
        "Name,Count,Ratio,Flag,Day,At,Amount",
        "plain,1,1.0,true,2024-02-29,2024-01-02T03:04:05.678+00:00,1.50",
    ]
    rows = parse(chunk.data)
    assert [row[0] for row in rows[1:]] == ["plain", "a,b", 'say "hi"', "two\nlines", "#N/A", ""]
    assert [row[2] for row in rows[1:]] == [
        "1.0",
        "-0.0",
        "10000000000000000",
        "0.000015",
        "0.0000001",
        "0.1",
    ]
    assert chunk.data == b"".join(c.data for c in dict_chunks(table, none_as="null"))


def test_timestamps_with_a_zone_are_the_same_instant_in_utc() -> None:
    instants = [datetime.datetime(2024, 7, 1, 12, 30, 15, 250_000, tzinfo=UTC), None]
    table = pa.table({"At": pa.array(instants, pa.timestamp("us", tz="Europe/Paris"))})
    (chunk,) = arrow_chunks(table)
    assert parse(chunk.data)[1:] == [["2024-07-01T12:30:15.250+00:00"], [""]]
    # The dict path writes local time with the offset: another text, the same instant.
    (expected,) = dict_chunks(table)
    assert parse(expected.data)[1] == ["2024-07-01T14:30:15.250+02:00"]
    assert datetime.datetime.fromisoformat(parse(expected.data)[1][0]) == instants[0]


def test_nanoseconds_and_times_before_1970_truncate_to_the_millisecond() -> None:
    # 1969-12-31T23:59:59.999999999: truncating toward zero would give .000 of the wrong second.
    table = pa.table({"At": pa.array([-1, 1_000_000_999_999], pa.timestamp("ns"))})
    assert parse(arrow_chunks(table)[0].data)[1:] == [
        ["1969-12-31T23:59:59.999+00:00"],
        ["1970-01-01T00:16:40.000+00:00"],
    ]


def test_header_of_fieldnames_and_columns_not_in_the_source_are_empty() -> None:
    table = pa.table({"B": [1, 2], "A": ["x", "y"]})
    kwargs: dict[str, Any] = {"fieldnames": ["A", "Missing", "B"], "none_as": "null"}
    chunks = arrow_chunks(table, **kwargs)
    assert parse(chunks[0].data) == [["A", "Missing", "B"], ["x", "", "1"], ["y", "", "2"]]
    assert chunks == dict_chunks(table, **kwargs)


def test_single_column_empty_values_are_quoted_not_blank_lines() -> None:
    table = pa.table({"Name": ["", None, "x"]})
    assert arrow_chunks(table)[0].data == b'Name\n""\n""\nx\n'
    assert arrow_chunks(table) == dict_chunks(table)


# -- sources -------------------------------------------------------------------------------------------


class CStream:
    """A DataFrame stand-in: only the Arrow PyCapsule stream protocol, as pandas and polars offer."""

    def __init__(self, table: pa.Table) -> None:
        self.table = table

    def __arrow_c_stream__(self, requested_schema: Any = None) -> Any:
        return self.table.__arrow_c_stream__(requested_schema)


def _table(rows: int) -> pa.Table:
    return pa.table({"Name": [f"n{i}" for i in range(rows)], "Value": list(range(rows))})


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda t: t, id="table"),
        pytest.param(lambda t: t.combine_chunks().to_batches()[0], id="record-batch"),
        pytest.param(lambda t: pa.RecordBatchReader.from_batches(t.schema, t.to_batches(7)), id="reader"),
        pytest.param(lambda t: t.to_batches(7), id="list-of-batches"),
        pytest.param(lambda t: iter(t.to_batches(7)), id="iterator-of-batches"),
        pytest.param(CStream, id="arrow-c-stream"),
    ],
)
def test_every_source_kind_gives_the_same_chunks(make: Any) -> None:
    table = _table(50)
    chunks = arrow_chunks(make(table), max_records=12)
    assert [(c.first_record_index, c.record_count) for c in chunks] == [
        (0, 12),
        (12, 12),
        (24, 12),
        (36, 12),
        (48, 2),
    ]
    assert chunks == dict_chunks(table, max_records=12)


def test_empty_sources_yield_no_chunk() -> None:
    assert arrow_chunks(_table(0)) == []
    assert arrow_chunks(iter([])) == []


def test_batches_are_read_as_chunks_are_taken() -> None:
    read = []

    def batches() -> Iterator[pa.RecordBatch]:
        for number in range(1_000):
            read.append(number)
            yield _table(100).to_batches()[0]

    chunks = iter_arrow_chunks(batches(), max_records=150)
    first = next(chunks)
    assert (first.first_record_index, first.record_count) == (0, 150)
    assert len(read) == 2


def test_chunks_cut_at_the_byte_limit_hold_every_row_once() -> None:
    table = pa.table({"Text": [f"value {i}" * (i % 13) for i in range(3_000)]})
    chunks = arrow_chunks(table.to_batches(max_chunksize=333), max_size_bytes=5_000)
    assert all(len(c.data) <= 5_000 for c in chunks)
    assert sum(c.record_count for c in chunks) == 3_000
    rows = [row for c in chunks for row in parse(c.data)[1:]]
    assert rows == [[value] for value in table.column("Text").to_pylist()]
    assert chunks == dict_chunks(table, max_size_bytes=5_000)


# -- bad input -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arrow_type", "value"),
    [
        (pa.binary(), b"x"),
        (pa.list_(pa.int64()), [1]),
        (pa.struct([("Ext__c", pa.string())]), {"Ext__c": "x"}),
        (pa.time64("us"), datetime.time(1, 2)),
        (pa.duration("s"), datetime.timedelta(seconds=1)),
    ],
)
def test_unsupported_types_are_refused_before_any_chunk(arrow_type: pa.DataType, value: Any) -> None:
    table = pa.table({"Name": ["a"], "Bad": pa.array([value], arrow_type)})
    with pytest.raises(InputError, match=r"column 'Bad' has the Arrow type") as info:
        iter_arrow_chunks(table)  # raised by the call itself: no generator step needed
    assert info.value.field == "Bad"
    with pytest.raises(InputError, match=r"column 'Bad'"):
        next(iter_arrow_chunks(iter(table.to_batches())))


def test_a_column_not_in_fieldnames_is_refused() -> None:
    with pytest.raises(
        InputError, match=r"the source has the column 'B', which is not in fieldnames"
    ) as info:
        iter_arrow_chunks(pa.table({"A": [1], "B": [2]}), fieldnames=["A"])
    assert info.value.field == "B"


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_nan_and_infinities_name_the_record_as_the_dict_path_does(value: float) -> None:
    table = pa.table({"X": [1.0] * 70_000 + [value]})
    with pytest.raises(InputError) as arrow_error:
        arrow_chunks(table)
    with pytest.raises(InputError) as dict_error:
        dict_chunks(table)
    assert str(arrow_error.value) == str(dict_error.value)
    assert (arrow_error.value.record_index, arrow_error.value.field) == (70_000, "X")


def test_nul_characters_name_the_record() -> None:
    table = pa.table({"A": ["ok", "ok"], "B": ["fine", "bad\x00"]})
    with pytest.raises(InputError, match="NUL") as info:
        arrow_chunks(table)
    assert (info.value.record_index, info.value.field) == (1, "B")


def test_a_timestamp_past_year_9999_is_refused() -> None:
    too_late = (datetime.datetime(9999, 12, 31, tzinfo=UTC).timestamp() + 86_400) * 1_000
    table = pa.table({"At": pa.array([0, int(too_late)], pa.timestamp("ms"))})
    with pytest.raises(InputError, match="outside the years 1 to 9999") as info:
        arrow_chunks(table)
    assert (info.value.record_index, info.value.field) == (1, "At")


def test_a_row_too_large_is_refused_as_the_dict_path_does() -> None:
    table = pa.table({"A": ["short", "x" * 500]})
    with pytest.raises(InputError) as arrow_error:
        arrow_chunks(table, max_size_bytes=100)
    with pytest.raises(InputError) as dict_error:
        dict_chunks(table, max_size_bytes=100)
    assert str(arrow_error.value) == str(dict_error.value)
    assert arrow_error.value.record_index == 1


def test_batches_of_other_types_are_written_by_their_own_types() -> None:
    # A column all null in one batch (type null) and text in the next: both written.
    batches = [
        pa.record_batch({"A": pa.nulls(2), "B": [1, 2]}),
        pa.record_batch({"A": ["x", "y,z"], "B": [1.5, 2.0]}),
    ]
    (chunk,) = arrow_chunks(batches, none_as="null")
    assert parse(chunk.data) == [["A", "B"], ["#N/A", "1"], ["#N/A", "2"], ["x", "1.5"], ["y,z", "2.0"]]


def test_batches_with_other_columns_are_refused() -> None:
    batches = [_table(3).to_batches()[0], pa.record_batch({"Other": [1]})]
    with pytest.raises(InputError, match=r"from record 3 on has the columns \['Other'\]"):
        arrow_chunks(batches)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"none_as": "nothing"}, "none_as"),
        ({"column_delimiter": "SPACE"}, "column_delimiter"),
        ({"max_records": 0}, "max_records"),
        ({"fieldnames": ["A", "a"]}, "a"),
    ],
)
def test_bad_arguments_are_refused_at_once(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(InputError) as info:
        iter_arrow_chunks(_table(1), **kwargs)
    assert info.value.field == field


def test_a_source_column_given_twice_is_refused() -> None:
    table = pa.Table.from_arrays([pa.array([1]), pa.array([2])], names=["A", "A"])
    with pytest.raises(InputError, match="column 'A' twice"):
        iter_arrow_chunks(table, fieldnames=["A"])


def test_not_arrow_data_is_refused() -> None:
    with pytest.raises(InputError, match="must be a pyarrow Table"):
        iter_arrow_chunks(42)
    with pytest.raises(InputError, match="yielded a dict"):
        arrow_chunks([{"A": 1}])


def test_importing_the_client_does_not_import_pyarrow() -> None:
    code = (
        "import sys, airflow_provider_salesforce_bulk.client as c; "
        "assert 'pyarrow' not in sys.modules; c.iter_arrow_chunks; assert 'pyarrow' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)  # noqa: S603


@pytest.mark.parametrize("kind", [pa.string(), pa.large_string(), pa.dictionary(pa.int32(), pa.string())])
def test_null_marker_text_refused_unless_allowed(kind: pa.DataType) -> None:
    table = pa.table({"Name": pa.array(["a", "#N/A x", "#N/A"], pa.string()).cast(kind)})
    with pytest.raises(InputError, match="#N/A") as caught:
        arrow_chunks(table)
    assert (caught.value.record_index, caught.value.field) == (2, "Name")
    # The same refusal as the dict path, word for word.
    with pytest.raises(InputError) as from_dicts:
        list(iter_record_chunks(table.to_pylist(), ["Name"]))
    assert str(caught.value) == str(from_dicts.value)
    (chunk,) = arrow_chunks(table, allow_na_marker=True)
    assert chunk.data == b"Name\na\n#N/A x\n#N/A\n"


def test_the_first_bad_record_is_reported_whichever_column_is_formatted_first() -> None:
    """A dictionary column holding '#N/A' on record 9 and record 0 too large to send: both paths name
    record 0 (found by hypothesis; the Arrow path formats a column at a time and named record 9)."""
    table = pa.table(
        {
            "F0_bool": pa.array([None] * 10, pa.bool_()),
            "F1_bool": pa.array([None] * 10, pa.bool_()),
            "F2_dictionary": pa.DictionaryArray.from_arrays(
                pa.array([None] * 9 + [0], pa.int32()), pa.array(["#N/A"])
            ),
        }
    )
    header = len(",".join(table.column_names)) + 2
    kwargs: dict[str, Any] = {
        "column_delimiter": "BACKQUOTE",
        "line_ending": "LF",
        "none_as": "empty",
        "max_records": 1,
        "max_size_bytes": header + 1,
    }
    expected = outcome(lambda: dict_chunks(table, **kwargs))
    assert expected[1:] == (0, None)
    assert outcome(lambda: arrow_chunks(table, **kwargs)) == expected
    # And with the size fitting, both name the '#N/A' of record 9.
    kwargs["max_size_bytes"] = 10_000
    expected = outcome(lambda: dict_chunks(table, **kwargs))
    assert expected[1:] == (9, "F2_dictionary")
    assert outcome(lambda: arrow_chunks(table, **kwargs)) == expected
