"""ChunkFormat: how records are written, checked once when built, as JobSpec and ChunkLimits are."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from airflow_provider_salesforce_bulk.client import (
    ChunkFormat,
    ChunkLimits,
    InputError,
    JobSpec,
    serialize_ingest_data,
)
from airflow_provider_salesforce_bulk.client.serialize import iter_record_chunks


@pytest.mark.parametrize(
    ("options", "field", "message"),
    [
        ({"column_delimiter": "COLON"}, "column_delimiter", "column_delimiter must be one of"),
        ({"line_ending": "CR"}, "line_ending", "line_ending must be one of LF, CRLF, got 'CR'"),
        ({"none_as": "NULL"}, "none_as", "none_as must be 'empty' or 'null', got 'NULL'"),
        ({"allow_na_marker": "yes"}, "allow_na_marker", "allow_na_marker must be True or False, got 'yes'"),
        ({"allow_na_marker": 1}, "allow_na_marker", "allow_na_marker must be True or False, got 1"),
    ],
)
def test_a_bad_option_is_refused_when_built_and_through_the_serializer(
    options: dict[str, Any], field: str, message: str
) -> None:
    with pytest.raises(InputError, match=message) as built:
        ChunkFormat(**options)
    assert built.value.field == field
    # The public function's keywords build the same object: the same error, before any record.
    with pytest.raises(InputError) as called:
        serialize_ingest_data(iter([{"A": 1}]), ["A"], **options)
    assert (str(called.value), called.value.field) == (str(built.value), field)


def test_the_format_is_frozen_and_names_its_characters() -> None:
    chunk_format = ChunkFormat(column_delimiter="TAB", line_ending="CRLF", none_as="null")
    assert (chunk_format.delimiter, chunk_format.eol) == ("\t", "\r\n")
    assert ChunkFormat.of(column_delimiter="TAB", line_ending="CRLF", none_as="null") == chunk_format
    with pytest.raises(dataclasses.FrozenInstanceError):
        chunk_format.none_as = "empty"  # type: ignore[misc]


def test_a_jobs_format_has_its_dialect_and_writes_as_it_says() -> None:
    spec = JobSpec(
        operation="upsert",
        object="Contact",
        external_id_field="Ext__c",
        column_delimiter="PIPE",
        line_ending="CRLF",
    )
    chunk_format = spec.chunk_format(none_as="null")
    assert chunk_format == ChunkFormat("PIPE", "CRLF", "null", allow_na_marker=False)
    (chunk,) = iter_record_chunks(
        [{"Ext__c": "a|b", "Name": None}], ["Ext__c", "Name"], ChunkLimits(), chunk_format
    )
    assert chunk.data == b'Ext__c|Name\r\n"a|b"|#N/A\r\n'
    assert chunk.fieldnames(spec.column_delimiter) == ["Ext__c", "Name"]
