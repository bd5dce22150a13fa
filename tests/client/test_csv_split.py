"""The CSV split fast path: record boundaries, limits, line endings and errors."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from airflow_provider_salesforce_bulk.client.csv_split import (
    CsvChunk,
    iter_csv_stream_chunks,
    split_csv_stream,
)
from airflow_provider_salesforce_bulk.client.errors import InputError


def chunks_of(data: bytes, *args: int, **kwargs: object) -> list[CsvChunk]:
    return list(iter_csv_stream_chunks(io.BytesIO(data), *args, **kwargs))  # type: ignore[arg-type]


def test_quoted_line_endings_stay_inside_their_record() -> None:
    data = b'Id,Note\n1,"two\nlines"\n2,"a ""quoted""\r\nvalue"\n3,plain\n'
    assert chunks_of(data, 100, 2, block_size=3) == [
        CsvChunk(b'Id,Note\n1,"two\nlines"\n2,"a ""quoted""\r\nvalue"\n', 0, 2),
        CsvChunk(b"Id,Note\n3,plain\n", 2, 1),
    ]


def test_size_limit_repeats_the_header() -> None:
    data = b"Id\n" + b"".join(b"%d\n" % i for i in range(10))
    chunks = list(split_csv_stream(io.BytesIO(data), max_size_bytes=9))
    assert chunks == [b"Id\n0\n1\n2\n", b"Id\n3\n4\n5\n", b"Id\n6\n7\n8\n", b"Id\n9\n"]


def test_crlf_input_for_a_crlf_job() -> None:
    data = b'Id,Note\r\n1,"x\r\ny"\r\n2,z\r\n'
    assert chunks_of(data, 100, 1, line_ending="CRLF") == [
        CsvChunk(b'Id,Note\r\n1,"x\r\ny"\r\n', 0, 1),
        CsvChunk(b"Id,Note\r\n2,z\r\n", 1, 1),
    ]


def test_crlf_input_for_an_lf_job_is_an_error() -> None:
    with pytest.raises(InputError, match=r"record 1 ends with CRLF but line_ending='LF'") as info:
        chunks_of(b"Id\n1\n2\r\n3\n", 100)
    assert (info.value.record_index, info.value.field) == (1, "line_ending")


def test_lf_input_for_a_crlf_job_is_an_error() -> None:
    with pytest.raises(InputError, match=r"the header ends with LF but line_ending='CRLF'") as info:
        chunks_of(b"Id\n1\n", 100, line_ending="CRLF")
    assert (info.value.record_index, info.value.field) == (None, "line_ending")


def test_missing_final_line_ending_is_added_and_bom_dropped() -> None:
    assert chunks_of(b"\xef\xbb\xbfId\n1\n2", 100) == [CsvChunk(b"Id\n1\n2\n", 0, 2)]
    assert chunks_of(b"Id\r\n1\r\n2", 100, line_ending="CRLF") == [CsvChunk(b"Id\r\n1\r\n2\r\n", 0, 2)]


def test_blank_lines_are_not_records() -> None:
    assert chunks_of(b"\nId\n\n1\n\n\n2\n\n", 100) == [CsvChunk(b"Id\n1\n2\n", 0, 2)]


def test_empty_or_header_only_input_yields_nothing() -> None:
    assert chunks_of(b"", 100) == []
    assert chunks_of(b"Id,Name\n", 100) == []


def test_record_too_large_names_its_index() -> None:
    data = b"Id\n1\n" + b"x" * 50 + b"\n2\n"
    with pytest.raises(InputError, match=r"record 1 is 51 bytes.*max_size_bytes=20") as info:
        chunks_of(data, 20)
    assert info.value.record_index == 1


def test_record_too_large_is_found_without_reading_it_all() -> None:
    # An unterminated quoted value must not make the reader buffer the whole input.
    class Endless(io.RawIOBase):
        reads = 0

        def readable(self) -> bool:
            return True

        def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
            self.reads += 1
            data = b'Id\n"' if self.reads == 1 else b"x" * len(buffer)
            buffer[: len(data)] = data
            return len(data)

    stream = Endless()
    with pytest.raises(InputError, match="record 0 is at least") as info:
        list(iter_csv_stream_chunks(io.BufferedReader(stream), 1_000, block_size=64))
    assert info.value.record_index == 0
    assert stream.reads < 100


def test_unterminated_quote_at_end_of_input() -> None:
    with pytest.raises(InputError, match=r"record 1 .*ends inside a quoted value") as info:
        chunks_of(b'Id\n1\n"open\n2\n', 100)
    assert info.value.record_index == 1


def test_header_too_large() -> None:
    with pytest.raises(InputError, match="leaves no room for records") as info:
        chunks_of(b"Id,Name\n1,a\n", 8)
    assert info.value.field == "max_size_bytes"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"max_size_bytes": 0}, "max_size_bytes"),
        ({"max_size_bytes": 200_000_000}, "max_size_bytes"),
        ({"max_records": 0}, "max_records"),
        ({"line_ending": "CR"}, "line_ending"),
        ({"block_size": 0}, "block_size"),
    ],
)
def test_bad_arguments_are_raised_at_call_time(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(InputError) as info:
        iter_csv_stream_chunks(io.BytesIO(b""), **kwargs)  # type: ignore[arg-type]
    assert info.value.field == field


def test_reads_a_file_path(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_bytes(b"Id\n1\n2\n3\n")
    assert list(split_csv_stream(path, max_records=2)) == [b"Id\n1\n2\n", b"Id\n3\n"]
    assert list(split_csv_stream(str(path), max_records=5)) == [b"Id\n1\n2\n3\n"]


def test_stream_is_read_lazily() -> None:
    data = b"Id\n" + b"".join(b"%05d\n" % i for i in range(10_000))
    stream = io.BytesIO(data)
    chunks = iter_csv_stream_chunks(stream, 100_000, 10, block_size=256)
    assert next(chunks).record_count == 10
    assert stream.tell() <= 512


_FIELD = st.text(st.sampled_from('ab,"\r\n'), max_size=6)


@settings(max_examples=200, deadline=None)
@given(
    rows=st.lists(st.lists(_FIELD, min_size=2, max_size=2), max_size=15),
    max_records=st.integers(1, 5),
    extra=st.integers(1, 60),
    block_size=st.integers(1, 40),
)
def test_split_keeps_every_record_once_in_order(
    rows: list[list[str]], max_records: int, extra: int, block_size: int
) -> None:
    def quote(value: str) -> str:
        return '"' + value.replace('"', '""') + '"' if any(c in value for c in ',"\r\n') else value

    lines = [",".join(quote(v) for v in row) + "\n" for row in rows]
    header = b"A,B\n"
    records = [line.encode() for line in lines]
    max_size = len(header) + extra
    source = io.BytesIO(header + b"".join(records))
    if any(len(r) > extra for r in records):
        with pytest.raises(InputError, match="does not fit"):
            list(iter_csv_stream_chunks(source, max_size, max_records, block_size=block_size))
        return
    chunks = list(iter_csv_stream_chunks(source, max_size, max_records, block_size=block_size))
    position = 0
    for chunk in chunks:
        assert chunk.first_record_index == position
        assert 1 <= chunk.record_count <= max_records
        assert len(chunk.data) <= max_size
        expected = header + b"".join(records[position : position + chunk.record_count])
        assert chunk.data == expected
        position += chunk.record_count
    assert position == len(records)
