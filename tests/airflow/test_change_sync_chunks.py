"""The change-only sync reads the operator's chunks back with Arrow's CSV reader: the lines it digests
are byte for byte those of the records' texts as dicts (what states written before were made of), in
every delimiter and line ending, records longer than a parse block included."""

from __future__ import annotations

import pathlib
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from airflow_provider_salesforce_bulk.client import ChunkFormat, ChunkLimits
from airflow_provider_salesforce_bulk.client.csv_format import COLUMN_DELIMITERS
from airflow_provider_salesforce_bulk.client.serialize import iter_record_chunks
from airflow_provider_salesforce_bulk.operators import change_sync
from airflow_provider_salesforce_bulk.sync import RowFormatter

FIELDS = ["Ext__c", "Name", "Notes__c"]
texts = st.one_of(
    st.sampled_from(["", "#N/A", " padded ", '"quoted"', "a\r\nb"]),
    st.text(
        st.characters(exclude_categories=("Cs", "Cc")) | st.sampled_from(",;|^`\t\"'\n\r #"), max_size=12
    ),
)
records = st.lists(
    st.fixed_dictionaries(
        {"Ext__c": st.text(st.characters(categories=("L", "N")), min_size=1, max_size=6), "Name": texts}
    ).flatmap(lambda r: st.fixed_dictionaries({**{k: st.just(v) for k, v in r.items()}, "Notes__c": texts})),
    min_size=1,
    max_size=30,
)


def _read_back(rows: list[dict[str, Any]], fmt: ChunkFormat, folder: pathlib.Path) -> list[pa.RecordBatch]:
    """The records written as the operator's chunk files, read back as the sync reads them."""
    batches: list[pa.RecordBatch] = []
    limits = ChunkLimits(max_records=7)  # several chunks
    for number, chunk in enumerate(iter_record_chunks(rows, FIELDS, limits, fmt)):
        path = folder / f"chunk-{number}.csv"
        path.write_bytes(chunk.data)
        batches.extend(change_sync._chunk_batches(str(path), COLUMN_DELIMITERS[fmt.column_delimiter]))
    return batches


def _lines(formatter: RowFormatter, batches: list[Any]) -> list[bytes]:
    out: list[bytes] = []
    base = 0
    for batch in batches:
        table = formatter.lines(batch, base)
        out += [line.encode() for line in table.column("line").to_pylist()]
        base += table.num_rows
    return out


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rows=records,
    delimiter=st.sampled_from(sorted(COLUMN_DELIMITERS)),
    line_ending=st.sampled_from(["LF", "CRLF"]),
    block=st.sampled_from([16, 1 << 20]),
)
def test_chunks_read_back_digest_as_the_records_texts(
    rows: list[dict[str, Any]], delimiter: Any, line_ending: Any, block: int, tmp_path: pathlib.Path
) -> None:
    fmt = ChunkFormat(delimiter, line_ending, allow_na_marker=True)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(change_sync, "_CSV_BLOCK", block)  # 16 bytes: most records straddle a block
        batches = _read_back(rows, fmt, tmp_path)
    assert all(batch.schema.names == FIELDS for batch in batches)
    assert sum(batch.num_rows for batch in batches) == len(rows)
    formatter = RowFormatter(FIELDS, "Ext__c", allow_na_marker=True)
    # Arrow batches of the read-back texts and the records as dicts: the same lines, so the same digests.
    assert _lines(formatter, batches) == _lines(RowFormatter(FIELDS, "Ext__c", allow_na_marker=True), [rows])
