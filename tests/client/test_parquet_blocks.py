"""Blocks of whole records for the Parquet path: cut only where a record ends (never inside a quoted
value holding line feeds), every byte in exactly one block, and a record longer than a block kept whole."""

from __future__ import annotations

import csv
import io

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

from airflow_provider_salesforce_bulk.client import (  # noqa: E402
    UnexpectedResponseError,
    arrow_schema,
    csv_to_parquet,
    parquet_blocks,
)
from airflow_provider_salesforce_bulk.client.parquet_blocks import cut_blocks, last_record_end  # noqa: E402

VALUES = st.text(st.sampled_from('ab,"\n\r'), max_size=12)


def _csv(rows: list[list[str]], eol: str = "\n") -> bytes:
    out = io.StringIO()
    csv.writer(out, lineterminator=eol, quoting=csv.QUOTE_ALL).writerows(rows)
    return out.getvalue().encode()


def _records(data: bytes) -> list[list[str]]:
    return list(csv.reader(io.StringIO(data.decode(), newline="")))


@settings(max_examples=200, deadline=None)
@given(
    rows=st.lists(st.lists(VALUES, min_size=2, max_size=2), max_size=12),
    piece=st.integers(1, 40),
    block=st.integers(1, 80),
)
def test_blocks_hold_whole_records_and_every_byte_once(rows, piece, block):
    data = _csv(rows)
    pieces = [data[i : i + piece] for i in range(0, len(data), piece)]
    blocks = [bytes(b) for b in cut_blocks(pieces, block, "test")]
    assert b"".join(blocks) == data
    assert all(blocks)
    # Each block parses on its own into whole records: together they are the records written.
    assert [r for b in blocks for r in _records(b)] == rows


def test_the_cut_is_after_the_last_line_feed_outside_quotes():
    assert last_record_end(b'"a","b"\n"c","d\ne"') == 8
    assert last_record_end(b'"a","b\n') == 0
    assert last_record_end(b'"a",""""\n"x') == 9
    assert last_record_end(b"no line feed") == 0
    assert last_record_end(b'"a\n""\n"\n') == 8


def test_a_record_longer_than_a_block_is_kept_whole_and_converted(tmp_path):
    long = "line\n" * 5_000  # 25 kB in one quoted value: many line feeds, none a record end
    data = _csv([["Name", "Note"], ["a", long], ["b", "short"]])
    sink = io.BytesIO()
    rows, _ = csv_to_parquet(io.BytesIO(data), sink, arrow_schema(["Name", "Note"], {}), block_size=1024)
    assert rows == 2
    assert pq.read_table(io.BytesIO(sink.getvalue())).column("Note").to_pylist() == [long, "short"]


def test_a_quote_that_never_closes_is_refused_before_the_page_is_held_whole(monkeypatch):
    monkeypatch.setattr(parquet_blocks, "MAX_RECORD_BYTES", 10_000)
    data = b'"Name"\n"open\n' + b"x\n" * 20_000
    with pytest.raises(UnexpectedResponseError, match="no record ends"):
        csv_to_parquet(io.BytesIO(data), io.BytesIO(), arrow_schema(["Name"], {}), block_size=1024)


def test_an_empty_source_has_no_header_and_is_refused():
    with pytest.raises(UnexpectedResponseError, match="no header row"):
        csv_to_parquet(io.BytesIO(b""), io.BytesIO(), arrow_schema(["Name"], {}))


def test_each_block_is_one_row_group_of_every_record():
    data = b"Name,Amount__c\n" + b"".join(b'"name %d",%d.5\n' % (i, i) for i in range(5_000))
    sink = io.BytesIO()
    rows, _ = csv_to_parquet(io.BytesIO(data), sink, arrow_schema(["Name", "Amount__c"], {}), block_size=8192)
    file = pq.ParquetFile(io.BytesIO(sink.getvalue()))
    sizes = [file.metadata.row_group(i).num_rows for i in range(file.num_row_groups)]
    assert rows == sum(sizes) == 5_000
    assert len(sizes) > 5  # blocks of about 8 kB: many groups, never one whole table
