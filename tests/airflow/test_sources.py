"""The operator's input sources: every bad file or line is an InputError naming the source and the line."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_salesforce_bulk.client import ChunkFormat, ChunkLimits, InputError
from airflow_provider_salesforce_bulk.client.models import ColumnDelimiter
from airflow_provider_salesforce_bulk.operators.sources import ChunkSource, SourceSpec, make_source


def source_of(
    source: Any = None,
    *,
    records: Sequence[dict[str, Any]] | None = None,
    fieldnames: Sequence[str] | None = None,
    column_delimiter: ColumnDelimiter = "COMMA",
    allow_na_marker: bool = False,
) -> ChunkSource:
    return make_source(
        SourceSpec(records=records, source=source, fieldnames=fieldnames),
        limits=ChunkLimits(max_size_bytes=10_000, max_records=2),
        chunk_format=ChunkFormat(column_delimiter=column_delimiter, allow_na_marker=allow_na_marker),
    )


def read_all(source: ChunkSource) -> list[bytes]:
    with source.open() as chunks:
        return [chunk.data for chunk in chunks]


def test_missing_file_and_directory_are_input_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist") as info:
        source_of(str(tmp_path / "missing.csv"))
    assert info.value.field == "source"
    folder = tmp_path / "data.csv"
    folder.mkdir()
    with pytest.raises(InputError, match="is a directory"):
        source_of(folder)


def test_file_that_cannot_be_opened_is_an_input_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow.sdk import ObjectStoragePath

    path = tmp_path / "data.csv"
    path.write_bytes(b"Id\n1\n")
    source = source_of(str(path))

    def denied(self: Any, *args: Any, **kwargs: Any) -> Any:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(ObjectStoragePath, "open", denied)
    with pytest.raises(InputError, match=r"cannot open source .*data\.csv: Permission denied") as info:
        read_all(source)
    assert info.value.field == "source"


def test_file_removed_after_the_check_is_an_input_error(tmp_path: Path) -> None:
    path = tmp_path / "data.ndjson"
    path.write_bytes(b'{"Id": "1"}\n')
    source = source_of(str(path))
    path.unlink()
    with pytest.raises(InputError, match="cannot open source"):
        read_all(source)


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (b'{"Name": "a"}\n{"Name": "caf\xe9"}\n', r"line 2 is not UTF-8"),
        (b'{"Name": "a"}\n\n{"Name": \n', r"line 3 is not valid JSON"),
        (b'{"Name": "a"}\n["a"]\n', r"line 2 is a JSON list, expected an object"),
        (b'{"Name": "a"}\n"a"\n', r"line 2 is a JSON str, expected an object"),
    ],
)
@pytest.mark.parametrize("fieldnames", [None, ["Name"]])
def test_bad_ndjson_lines_name_source_and_line(
    tmp_path: Path, lines: bytes, message: str, fieldnames: list[str] | None
) -> None:
    path = tmp_path / "data.ndjson"
    path.write_bytes(lines)
    with pytest.raises(InputError, match=rf"source .*data\.ndjson {message}") as info:
        read_all(source_of(str(path), fieldnames=fieldnames))
    assert info.value.field == "source"


def test_ndjson_with_a_byte_order_mark(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"Name": "a"}\n{"Name": "b"}\n')
    assert read_all(source_of(str(path))) == [b"Name\na\nb\n"]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b'Name,Size\nTV,5" screen\nMonitor,27" wide\n', r"^line 2 \(record 0\): malformed quoting"),
        (b"Na\xefme\na\n", r"^line 1 \(the header\): bytes that are not UTF-8"),
        (b"Name\na\nb\x00\n", r"^line 3 \(record 1\): a NUL byte"),
    ],
)
def test_bad_csv_names_the_line(tmp_path: Path, data: bytes, message: str) -> None:
    path = tmp_path / "data.csv"
    path.write_bytes(data)
    with pytest.raises(InputError, match=message):
        read_all(source_of(str(path)))


def test_csv_quoting_is_read_in_the_jobs_delimiter(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_bytes(b'Name\tNote\n"a\tb"\t"x ""y"""\n')
    assert read_all(source_of(str(path), column_delimiter="TAB")) == [path.read_bytes()]


def test_na_marker_in_records_is_refused_unless_allowed() -> None:
    records = [{"Name": "a"}, {"Name": "#N/A"}]
    with pytest.raises(InputError, match=r"record 1, field 'Name'.*#N/A") as info:
        read_all(source_of(records=records))
    assert info.value.record_index == 1
    assert read_all(source_of(records=records, allow_na_marker=True)) == [b"Name\na\n#N/A\n"]


@pytest.mark.parametrize(
    ("name", "body"),
    [("empty.ndjson", b""), ("blank.ndjson", b"\n\n"), ("header.csv", b"Id,Name\n"), ("nothing.csv", b"")],
)
def test_an_input_without_records_is_zero_chunks(tmp_path: Path, name: str, body: bytes) -> None:
    """An empty extract upstream (an empty NDJSON, a CSV with only its header) loads nothing: no job."""
    path = tmp_path / name
    path.write_bytes(body)
    assert read_all(source_of(str(path))) == []


def test_ndjson_records_without_fields_are_still_refused(tmp_path: Path) -> None:
    path = tmp_path / "blank_records.ndjson"
    path.write_bytes(b"{}\n{}\n")
    with pytest.raises(InputError, match="holds no fields"):
        read_all(source_of(str(path)))
