"""Result files are parsed as CSV while they stream: quoted newlines, CR, quotes and all Unicode survive."""

from __future__ import annotations

import csv
import io

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from airflow_provider_salesforce_bulk.client.results import iter_csv_records, iter_csv_rows, parse_results

# Result values can hold anything but NUL, which Salesforce does not store.
values = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=30)


def to_csv(rows: list[list[str]], delimiter: str, quote_all: bool) -> bytes:
    out = io.StringIO()
    csv.writer(
        out,
        delimiter=delimiter,
        lineterminator="\n",
        quoting=csv.QUOTE_ALL if quote_all else csv.QUOTE_MINIMAL,
    ).writerows(rows)
    return out.getvalue().encode("utf-8")


async def stream(data: bytes, cuts: list[int]):
    start = 0
    for cut in sorted(set(cuts)):
        yield data[start:cut]
        start = cut
    yield data[start:]


@settings(max_examples=200, deadline=None)
@given(
    rows=st.lists(st.lists(values, min_size=3, max_size=3), min_size=1, max_size=20),
    delimiter=st.sampled_from([",", "\t", "|", ";", "^", "`"]),
    quote_all=st.booleans(),
    data=st.data(),
)
async def test_streamed_rows_equal_a_whole_parse_for_any_split(rows, delimiter, quote_all, data):
    payload = to_csv([["sf__Id", "sf__Error", "Name"], *rows], delimiter, quote_all)
    cuts = data.draw(st.lists(st.integers(0, len(payload)), max_size=10))
    parsed = [row async for row in iter_csv_rows(stream(payload, cuts), delimiter=delimiter)]
    whole = list(csv.reader(io.StringIO(payload.decode("utf-8"), newline=""), delimiter=delimiter))
    assert parsed == whole
    if quote_all:  # as Salesforce writes results: every value quoted, so every value survives
        assert parsed == [["sf__Id", "sf__Error", "Name"], *rows]


async def test_records_with_crlf_quotes_and_multibyte_split_mid_character():
    payload = '"sf__Id","sf__Created",Name\n"001","true","a\r\nb ""q"" é😀"\n'.encode()
    cut = payload.index("😀".encode()) + 2  # inside the 4-byte character
    records = [r async for r in iter_csv_records(stream(payload, [cut, 5, 17]))]
    assert records == [{"sf__Id": "001", "sf__Created": "true", "Name": 'a\r\nb "q" é😀'}]


async def test_unicode_line_separators_do_not_split_records():
    payload = "Name,Other\nx\u2028y,z\u0085w\n".encode()
    assert [r async for r in iter_csv_records(stream(payload, []))] == [
        {"Name": "x\u2028y", "Other": "z\u0085w"}
    ]


async def test_truncated_file_is_an_error_not_a_short_record():
    payload = b'Name\n"unterminated\n'
    with pytest.raises(csv.Error):
        [r async for r in iter_csv_rows(stream(payload, [3]))]


async def test_ragged_rows_are_padded_or_keep_their_extras(caplog):
    payload = b"a,b\n1,2,3,4\n5\n6,7\n"
    records = [r async for r in iter_csv_records(stream(payload, [4, 9]))]
    assert records == [
        {"a": "1", "b": "2", "_extra_1": "3", "_extra_2": "4"},
        {"a": "5", "b": ""},
        {"a": "6", "b": "7"},
    ]
    assert parse_results(payload) == records
    assert [m for m in caplog.messages if "values for 2 columns" in m] == [
        "result row 1 has 4 values for 2 columns (and maybe more rows)"
    ]


@settings(max_examples=100, deadline=None)
@given(
    header=st.lists(
        st.from_regex(r"[A-Za-z][A-Za-z0-9_]{0,8}", fullmatch=True), min_size=1, max_size=5, unique=True
    ),
    rows=st.lists(st.lists(values, max_size=8), max_size=10),
)
async def test_any_row_width_is_read_without_losing_a_value(header, rows):
    rows = [row for row in rows if row and row != [""]]  # an empty line is no record
    payload = to_csv([header, *rows], ",", True)
    records = [r async for r in iter_csv_records(stream(payload, [7]))]
    assert len(records) == len(rows)
    for record, row in zip(records, rows, strict=True):
        assert [record[name] for name in header] == (row + [""] * len(header))[: len(header)]
        assert [record[f"_extra_{i}"] for i in range(1, len(row) - len(header) + 1)] == row[len(header) :]


async def test_empty_file_and_header_only():
    assert [r async for r in iter_csv_records(stream(b"", []))] == []
    assert [r async for r in iter_csv_records(stream(b'"sf__Id","sf__Error",Name\n', []))] == []


def test_parse_results_in_memory_with_a_delimiter():
    assert parse_results(b'a|b\n1|"x|y"\n', column_delimiter="PIPE") == [{"a": "1", "b": "x|y"}]
