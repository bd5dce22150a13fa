"""The CSV split fast path: record boundaries, limits, line endings and errors."""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from airflow_provider_salesforce_bulk.client import ChunkFormat, ChunkLimits, InputError
from airflow_provider_salesforce_bulk.client.csv_format import CsvChunk
from airflow_provider_salesforce_bulk.client.csv_split import iter_csv_stream_chunks, split_csv_stream


def chunks_of(data: bytes, *limits: int, block_size: int | None = None, **fmt: Any) -> list[CsvChunk]:
    """The chunks of ``data`` within ``limits`` (max_size_bytes, then max_records) in the format
    ``ChunkFormat(**fmt)``."""
    blocks = {} if block_size is None else {"block_size": block_size}
    return list(
        iter_csv_stream_chunks(
            io.BytesIO(data),
            ChunkLimits(**dict(zip(("max_size_bytes", "max_records"), limits, strict=False))),
            ChunkFormat(**fmt),
            **blocks,
        )
    )


def test_quoted_line_endings_stay_inside_their_record() -> None:
    data = b'Id,Note\n1,"two\nlines"\n2,"a ""quoted""\r\nvalue"\n3,plain\n'
    assert chunks_of(data, 100, 2, block_size=3) == [
        CsvChunk(
            data=b'Id,Note\n1,"two\nlines"\n2,"a ""quoted""\r\nvalue"\n', first_record_index=0, record_count=2
        ),
        CsvChunk(data=b"Id,Note\n3,plain\n", first_record_index=2, record_count=1),
    ]


def test_size_limit_repeats_the_header() -> None:
    data = b"Id\n" + b"".join(b"%d\n" % i for i in range(10))
    chunks = list(split_csv_stream(io.BytesIO(data), max_size_bytes=9))
    assert chunks == [b"Id\n0\n1\n2\n", b"Id\n3\n4\n5\n", b"Id\n6\n7\n8\n", b"Id\n9\n"]


def test_crlf_input_for_a_crlf_job() -> None:
    data = b'Id,Note\r\n1,"x\r\ny"\r\n2,z\r\n'
    assert chunks_of(data, 100, 1, line_ending="CRLF") == [
        CsvChunk(data=b'Id,Note\r\n1,"x\r\ny"\r\n', first_record_index=0, record_count=1),
        CsvChunk(data=b"Id,Note\r\n2,z\r\n", first_record_index=1, record_count=1),
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
    assert chunks_of(b"\xef\xbb\xbfId\n1\n2", 100) == [
        CsvChunk(data=b"Id\n1\n2\n", first_record_index=0, record_count=2)
    ]
    assert chunks_of(b"Id\r\n1\r\n2", 100, line_ending="CRLF") == [
        CsvChunk(data=b"Id\r\n1\r\n2\r\n", first_record_index=0, record_count=2)
    ]


def test_blank_lines_are_not_records() -> None:
    assert chunks_of(b"\nId\n\n1\n\n\n2\n\n", 100) == [
        CsvChunk(data=b"Id\n1\n2\n", first_record_index=0, record_count=2)
    ]


def test_empty_or_header_only_input_yields_nothing() -> None:
    assert chunks_of(b"", 100) == []
    assert chunks_of(b"Id,Name\n", 100) == []


def test_record_too_large_names_its_index() -> None:
    data = b"Id\n1\n" + b"x" * 50 + b"\n2\n"
    with pytest.raises(InputError, match=r"record 1 \(from line 3\) is 51 bytes.*max_size_bytes=20") as info:
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
    with pytest.raises(InputError, match=r"record 0 \(from line 2\) is at least") as info:
        list(
            iter_csv_stream_chunks(
                io.BufferedReader(stream), ChunkLimits(max_size_bytes=1_000), block_size=64
            )
        )
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
        split_csv_stream(io.BytesIO(b""), **kwargs)  # type: ignore[arg-type]
    assert info.value.field == field


def test_reads_a_file_path(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_bytes(b"Id\n1\n2\n3\n")
    assert list(split_csv_stream(path, max_records=2)) == [b"Id\n1\n2\n", b"Id\n3\n"]
    assert list(split_csv_stream(str(path), max_records=5)) == [b"Id\n1\n2\n3\n"]


def test_stream_is_read_lazily() -> None:
    data = b"Id\n" + b"".join(b"%05d\n" % i for i in range(10_000))
    stream = io.BytesIO(data)
    chunks = iter_csv_stream_chunks(
        stream, ChunkLimits(max_size_bytes=100_000, max_records=10), block_size=256
    )
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
            list(
                iter_csv_stream_chunks(
                    source,
                    ChunkLimits(max_size_bytes=max_size, max_records=max_records),
                    block_size=block_size,
                )
            )
        return
    chunks = list(
        iter_csv_stream_chunks(
            source, ChunkLimits(max_size_bytes=max_size, max_records=max_records), block_size=block_size
        )
    )
    position = 0
    for chunk in chunks:
        assert chunk.first_record_index == position
        assert 1 <= chunk.record_count <= max_records
        assert len(chunk.data) <= max_size
        expected = header + b"".join(records[position : position + chunk.record_count])
        assert chunk.data == expected
        position += chunk.record_count
    assert position == len(records)


# -- counting as Salesforce does: malformed quoting, NUL and encoding are errors naming the line ---------


def test_stray_quotes_in_unquoted_values_are_an_error_not_a_miscount() -> None:
    # Salesforce reads three records here; pairing the stray quotes would make it two.
    with pytest.raises(InputError, match=r"^line 2 \(record 0\): malformed quoting: a double quote") as info:
        chunks_of(b'Name,Size\nTV,5" screen\nMonitor,27" wide\nCable,1m\n', 1000)
    assert info.value.record_index == 0


def test_text_after_a_closing_quote_is_an_error() -> None:
    data = b'Id,Note\n1,ok\n2,"multi\nline"\n3,"ab"c\n'
    with pytest.raises(
        InputError, match=r"^line 5 \(record 2\): malformed quoting: characters after"
    ) as info:
        chunks_of(data, 1000)
    assert info.value.record_index == 2


def test_quote_that_ends_the_input_unclosed_names_where_its_record_began() -> None:
    with pytest.raises(InputError, match=r"^record 1 \(from line 3, 9 bytes\) ends inside a quoted value"):
        chunks_of(b'Id\n1\n"open\n2\n', 1000)


def test_malformed_quoting_is_found_before_a_record_grows_too_large() -> None:
    with pytest.raises(InputError, match=r"^line 2 \(record 0\): malformed quoting: a double quote"):
        chunks_of(b'Id,Note\n1,5" screen\n' + b"x\n" * 100, 50, block_size=8)


def test_malformed_header_quoting_names_the_header() -> None:
    with pytest.raises(InputError, match=r"^line 1 \(the header\): malformed quoting") as info:
        chunks_of(b'Id,"Na"me\n1,a\n', 1000)
    assert info.value.record_index is None


@pytest.mark.parametrize(
    ("data", "line", "index", "what"),
    [
        (b"Id,Name\n1,a\n2,b\x00c\n", 3, 1, "a NUL byte"),
        (b'Id,Name\n1,"a\nb\x00"\n', 3, 0, "a NUL byte"),
        (b"Id,Name\n1,caf\xe9\n", 2, 0, "not UTF-8"),
        (b"Id,Name\n1,a\n2,\xe2\x82", 3, 1, "not UTF-8"),  # cut inside a character at the end
        (b"Id,N\xffame\n1,a\n", 1, None, "not UTF-8"),
    ],
)
def test_nul_and_invalid_utf8_name_line_and_record(
    data: bytes, line: int, index: int | None, what: str
) -> None:
    for block_size in (1, 3, 1 << 20):
        with pytest.raises(
            InputError, match=rf"^line {line} \((record {index}|the header)\): .*{what}"
        ) as info:
            chunks_of(data, 1000, block_size=block_size)
        assert info.value.record_index == index


def test_multibyte_characters_cut_by_blocks_are_fine() -> None:
    data = "Id,Name\n1,Ünïcödé €\n2,日本語\n".encode()
    for block_size in range(1, 8):
        assert chunks_of(data, 1000, block_size=block_size) == [
            CsvChunk(data=data, first_record_index=0, record_count=2)
        ]


def test_header_that_is_not_utf8_is_an_input_error_in_fieldnames() -> None:
    with pytest.raises(InputError, match="header row is not UTF-8"):
        CsvChunk(data=b"Id,N\xffame\n1,a\n", first_record_index=0, record_count=1).fieldnames()


def test_quoting_is_checked_with_the_jobs_delimiter() -> None:
    data = b'Id\tNote\n1\t"a\tb"\n'
    assert chunks_of(data, 1000, column_delimiter="TAB") == [
        CsvChunk(data=data, first_record_index=0, record_count=1)
    ]
    with pytest.raises(InputError, match="malformed quoting: a double quote inside an unquoted value"):
        chunks_of(data, 1000)  # read as COMMA, the whole line is one value with quotes inside


def test_no_chunk_holding_a_bad_record_is_yielded() -> None:
    data = b"Id\n" + b"".join(b"%d\n" % i for i in range(50)) + b'5" screen\n'
    chunks = iter_csv_stream_chunks(
        io.BytesIO(data), ChunkLimits(max_size_bytes=1000, max_records=10), block_size=16
    )
    seen = [next(chunks).record_count for _ in range(5)]
    with pytest.raises(InputError, match=r"line 52 \(record 50\)"):
        next(chunks)
    assert seen == [10] * 5


def test_unreadable_path_is_an_input_error(tmp_path: Path) -> None:
    for path in (tmp_path / "missing.csv", tmp_path):
        with pytest.raises(InputError, match="cannot read the CSV file") as info:
            list(split_csv_stream(path))
        assert info.value.field == "source"


def test_unknown_delimiter_is_refused_at_call_time() -> None:
    with pytest.raises(InputError) as info:
        split_csv_stream(io.BytesIO(b""), column_delimiter="SPACE")  # type: ignore[arg-type]
    assert info.value.field == "column_delimiter"


_DELIMITERS = {"COMMA": ",", "TAB": "\t", "SEMICOLON": ";", "PIPE": "|", "CARET": "^", "BACKQUOTE": "`"}


def _quote(value: str, delimiter: str = ",", *, always: bool = False) -> str:
    if always or any(c in value for c in (delimiter, '"', "\r", "\n")):
        return '"' + value.replace('"', '""') + '"'
    return value


def _csv_text(rows: list[list[str]], delimiter: str = ",", eol: str = "\n") -> str:
    return "".join(delimiter.join(_quote(v, delimiter) for v in row) + eol for row in rows)


@settings(max_examples=300, deadline=None)
@given(
    rows=st.lists(st.lists(st.text(st.sampled_from('aé ,;\t"\r\n|^`'), max_size=5), min_size=2, max_size=2)),
    delimiter=st.sampled_from(sorted(_DELIMITERS)),
    crlf=st.booleans(),
    block_size=st.integers(1, 64),
)
def test_valid_csv_splits_into_the_records_pythons_csv_reads(
    rows: list[list[str]], delimiter: str, crlf: bool, block_size: int
) -> None:
    # Every value non-empty in some column so that no row is a blank line.
    rows = [[row[0] or "x", row[1]] for row in rows]
    d, eol = _DELIMITERS[delimiter], "\r\n" if crlf else "\n"
    data = _csv_text([["A", "B"], *rows], d, eol).encode()
    chunks = list(
        iter_csv_stream_chunks(
            io.BytesIO(data),
            ChunkLimits(max_size_bytes=1000, max_records=3),
            ChunkFormat(column_delimiter=delimiter, line_ending="CRLF" if crlf else "LF"),  # type: ignore[arg-type]
            block_size=block_size,
        )
    )
    assert sum(chunk.record_count for chunk in chunks) == len(rows)
    parsed = [
        row
        for chunk in chunks
        for row in list(csv.reader(io.StringIO(chunk.data.decode(), newline=""), delimiter=d, strict=True))[
            1:
        ]
    ]
    assert parsed == rows


@settings(max_examples=300, deadline=None)
@given(
    rows=st.lists(
        st.lists(st.text(st.sampled_from('ab ,"\n'), max_size=4), min_size=2, max_size=2), min_size=1
    ),
    target=st.integers(0),
    kind=st.sampled_from(["stray", "after_close"]),
    block_size=st.integers(1, 64),
)
def test_malformed_quoting_is_refused_at_its_line(
    rows: list[list[str]], target: int, kind: str, block_size: int
) -> None:
    rows = [[row[0] or "x", row[1]] for row in rows]
    target %= len(rows)
    lines = [_csv_text([row]) for row in rows]
    first, second = rows[target]
    if kind == "stray":
        # A quote after the first character of an unquoted value.
        value = first.replace('"', "").replace(",", "").replace("\n", "") or "x"
        record = f'{value[0]}"{value[1:]},{_quote(second)}\n'
        at = 1
    else:
        # Text right after the closing quote of a quoted value.
        quoted = _quote(first, always=True)
        record = f"{quoted}z,{_quote(second)}\n"
        at = len(quoted)
    lines[target] = record
    data = ("A,B\n" + "".join(lines)).encode()
    line = 2 + sum(text.count("\n") for text in lines[:target]) + record.count("\n", 0, at)
    what = "a double quote inside" if kind == "stray" else "characters after the closing quote"
    with pytest.raises(
        InputError, match=rf"^line {line} \(record {target}\): malformed quoting: {what}"
    ) as info:
        list(
            iter_csv_stream_chunks(
                io.BytesIO(data), ChunkLimits(max_size_bytes=10_000), block_size=block_size
            )
        )
    assert info.value.record_index == target


@settings(max_examples=500, deadline=None)
@given(text=st.text(st.sampled_from('a,"\n'), max_size=30), block_size=st.integers(1, 16))
def test_any_input_is_split_as_pythons_strict_csv_reads_it_or_refused_with_a_line(
    text: str, block_size: int
) -> None:
    data = ("A,B\n" + text).encode()
    try:
        chunks = list(
            iter_csv_stream_chunks(
                io.BytesIO(data), ChunkLimits(max_size_bytes=1000, max_records=2), block_size=block_size
            )
        )
    except InputError as exc:
        error = str(exc)
    else:
        error = ""
    if error:
        # Refused input is named by line (the scanner and the error path agree on what is wrong).
        assert re.match(r"^(line \d+ \(|record \d+ \(from line \d+)", error), error
        return
    # Accepted input is plain CSV: Python's strict reader reads the same records from it.
    expected = [row for row in csv.reader(io.StringIO(data.decode(), newline=""), strict=True) if row]
    got = [
        row
        for chunk in chunks
        for row in list(csv.reader(io.StringIO(chunk.data.decode(), newline=""), strict=True))[1:]
    ]
    assert [expected[0], *got] == expected
