"""SourceSpec: the ingest operator's input options as one frozen, keyword-only value checked once."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from airflow_provider_salesforce_bulk.client import ChunkFormat, ChunkLimits, InputError
from airflow_provider_salesforce_bulk.operators.grouping import GroupedSource
from airflow_provider_salesforce_bulk.operators.source_spec import SourceSpec
from airflow_provider_salesforce_bulk.operators.sources import make_source


def test_keyword_only_frozen_and_checked_again_when_replaced() -> None:
    with pytest.raises(TypeError):
        SourceSpec([{"Name": "a"}])  # type: ignore[misc]
    spec = SourceSpec(records=[{"Name": "a"}])
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.records = []  # type: ignore[misc]
    with pytest.raises(InputError, match="group_by_parent must be a field name"):
        dataclasses.replace(spec, group_by_parent=" ")


@pytest.mark.parametrize(
    ("options", "columnar", "file_format"),
    [
        ({"records": [{"Name": "a"}]}, False, None),
        ({"records": pa.table({"Name": ["a"]})}, True, None),
        ({"sql": "SELECT 1", "sql_conn_id": "db"}, True, None),
        ({"source": "in/data.csv"}, False, "csv"),
        ({"source": "in/data.jsonl"}, False, "ndjson"),
        ({"source": "in/data.PQ"}, True, "parquet"),
        ({"source": "in/data.arrows"}, True, "arrow"),
        ({"source": "in/data.bin", "source_format": "Parquet"}, True, "parquet"),
        ({"source": "in/data.parquet", "source_format": "csv"}, False, "csv"),
        ({"source": "in/data.bin"}, False, None),
    ],
)
def test_whether_the_input_is_columnar_is_decided_once(
    options: dict[str, Any], columnar: bool, file_format: str | None
) -> None:
    spec = SourceSpec(**options)
    assert (spec.columnar, spec.file_format) == (columnar, file_format)


def test_a_lazy_sequence_is_listed_a_table_is_not() -> None:
    spec = SourceSpec(records=({"Name": str(i)} for i in range(3)), fieldnames=["Name"])
    assert spec.records == [{"Name": "0"}, {"Name": "1"}, {"Name": "2"}]
    assert spec.fieldnames == ("Name",)
    table = pa.table({"Name": ["a"]})
    assert SourceSpec(records=table).records is table


@pytest.mark.parametrize(
    ("options", "message", "field"),
    [
        ({}, "exactly one of records and source or sql, got none", "records"),
        ({"records": [], "source": "a.csv"}, "got records, source", "source"),
        ({"records": "Name\na"}, "records must be a list of dicts, got str", "records"),
        (
            {"source": "a.csv", "source_format": "xlsx"},
            "source_format must be 'csv', 'ndjson'",
            "source_format",
        ),
        ({"source": "a.csv", "fieldnames": ["Id"]}, "fieldnames cannot be used with a CSV", "fieldnames"),
        ({"sql": " ", "sql_conn_id": "db"}, "sql must be a non-empty query", "sql"),
        ({"records": [], "parameters": [1]}, "parameters is only used with sql", "parameters"),
        (
            {"sql": "SELECT 1", "sql_conn_id": "db", "parameters": "x"},
            "parameters must be a dict",
            "parameters",
        ),
        ({"records": [], "field_mapping": {"a": "B"}}, "field_mapping applies to sql", "field_mapping"),
        (
            {"sql": "SELECT 1", "sql_conn_id": "db", "field_mapping": {"a": "B", "b": "b"}},
            "maps both",
            "field_mapping",
        ),
        ({"records": [], "allow_empty": "yes"}, "allow_empty must be True or False", "allow_empty"),
    ],
)
def test_bad_options_name_themselves(options: dict[str, Any], message: str, field: str) -> None:
    with pytest.raises(InputError, match=message) as info:
        SourceSpec(**options)
    assert info.value.field == field


def test_the_repr_leaves_out_the_data_and_the_bind_parameters() -> None:
    spec = SourceSpec(sql="SELECT 1 WHERE k = ?", sql_conn_id="db", parameters=["s3cr3t-value"])
    assert "s3cr3t" not in repr(spec)
    assert "sql_conn_id='db'" in repr(spec)
    assert "Secret-Record" not in repr(SourceSpec(records=[{"Name": "Secret-Record"}]))


def test_the_spec_builds_the_grouped_source(tmp_path: Path) -> None:
    path = tmp_path / "contacts.csv"
    path.write_bytes(b"LastName,AccountId\nA,2\nB,1\nC,2\n")
    spec = SourceSpec(source=str(path), group_by_parent="AccountId")
    source = make_source(
        spec, limits=ChunkLimits(max_size_bytes=1_000, max_records=10), chunk_format=ChunkFormat()
    )
    assert isinstance(source, GroupedSource)
    with source.open() as chunks:
        assert [chunk.data for chunk in chunks] == [b"LastName,AccountId\nB,1\nA,2\nC,2\n"]
    source.close()
