"""The operator's input as a stream of job-sized CSV chunks: records, a CSV file or an NDJSON file.

Files are opened through ``ObjectStoragePath`` (local, ``s3://``, ``gs://``, ...) and read in blocks:
memory holds one chunk, never the file. Every source can be read twice, which the operator uses to
validate all of the input before any job exists.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import IO, Any

import orjson

from airflow_provider_salesforce_bulk.client import InputError, iter_record_chunks
from airflow_provider_salesforce_bulk.client.csv_split import CsvChunk, iter_csv_stream_chunks

__all__ = ["ChunkSource", "make_source"]

Opener = Callable[[], contextlib.AbstractContextManager[IO[bytes]]]


class ChunkSource:
    """Input that can be cut into chunks any number of times, identically each time."""

    def __init__(
        self,
        chunks: Callable[[], contextlib.AbstractContextManager[Iterator[CsvChunk]]],
        description: str,
        uri: str | None = None,
    ) -> None:
        self._chunks = chunks
        self.description = description
        self.uri = uri

    def open(self) -> contextlib.AbstractContextManager[Iterator[CsvChunk]]:
        """A fresh pass over the chunks, in input order."""
        return self._chunks()


def _detect_format(name: str, declared: str | None) -> str:
    if declared:
        fmt = declared.lower()
        if fmt not in ("csv", "ndjson"):
            raise InputError(
                f"source_format must be 'csv' or 'ndjson', got {declared!r}", field="source_format"
            )
        return fmt
    lower = name.lower()
    if lower.endswith(".csv"):
        return "csv"
    if lower.endswith((".ndjson", ".jsonl", ".json")):
        return "ndjson"
    raise InputError(
        f"cannot tell the format of source {name!r} from its name; pass source_format='csv' or 'ndjson'",
        field="source_format",
    )


def _path_opener(source: Any) -> tuple[Opener, str]:
    from airflow.providers.common.compat.sdk import ObjectStoragePath

    path = source if isinstance(source, ObjectStoragePath) else ObjectStoragePath(os.fspath(source))
    if not path.exists():
        raise InputError(f"source {path} does not exist", field="source")
    if path.is_dir():
        raise InputError(f"source {path} is a directory, not a file", field="source")

    def opener() -> contextlib.AbstractContextManager[IO[bytes]]:
        return path.open("rb")  # type: ignore[no-untyped-call,no-any-return]

    return opener, str(path)


def _iter_ndjson(stream: IO[bytes]) -> Iterator[dict[str, Any]]:
    for line_number, line in enumerate(stream, start=1):
        if not line.strip():
            continue
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise InputError(f"source line {line_number} is not valid JSON: {exc}", field="source") from None
        if not isinstance(record, dict):
            raise InputError(
                f"source line {line_number} is a JSON {type(record).__name__}, expected an object",
                field="source",
            )
        yield record


def _ndjson_fieldnames(opener: Opener) -> list[str]:
    """Union of the keys of every line, in first-seen order (relationships as ``Rel.Field``)."""
    names: dict[str, None] = {}
    with opener() as stream:
        for record in _iter_ndjson(stream):
            for key, value in record.items():
                if isinstance(value, Mapping):
                    for sub in value:
                        names.setdefault(f"{key}.{sub}", None)
                else:
                    names.setdefault(key, None)
    return list(names)


def make_source(
    *,
    records: Sequence[Mapping[str, Any]] | None,
    source: Any,
    source_format: str | None,
    fieldnames: Sequence[str] | None,
    max_size_bytes: int,
    max_records: int,
    column_delimiter: str,
    line_ending: str,
    none_as: str,
) -> ChunkSource:
    """Build the chunk source for exactly one of ``records`` and ``source``.

    Raises
    ------
    InputError
        Both or neither given, records not a list of dicts, an unknown format or a missing file.
    """
    if (records is None) == (source is None):
        raise InputError("give exactly one of records and source", field="records" if records else "source")
    fields = list(fieldnames) if fieldnames is not None else None

    def record_chunks(data: Any, names: list[str] | None) -> Iterator[CsvChunk]:
        return iter_record_chunks(
            data,
            names,
            max_size_bytes,
            max_records,
            column_delimiter=column_delimiter,
            line_ending=line_ending,
            none_as=none_as,
        )

    if records is not None:
        if isinstance(records, (str, bytes, Mapping)) or not isinstance(records, Sequence):
            raise InputError(
                f"records must be a list of dicts, got {type(records).__name__}", field="records"
            )
        materialized = records

        @contextlib.contextmanager
        def from_records() -> Iterator[Iterator[CsvChunk]]:
            yield record_chunks(materialized, fields)

        return ChunkSource(from_records, f"{len(records)} records")

    opener, name = _path_opener(source)
    fmt = _detect_format(name, source_format)
    if fmt == "csv":
        if fields is not None:
            raise InputError(
                "fieldnames cannot be used with a CSV source: its header names the fields", field="fieldnames"
            )

        @contextlib.contextmanager
        def from_csv() -> Iterator[Iterator[CsvChunk]]:
            with opener() as stream:
                yield iter_csv_stream_chunks(stream, max_size_bytes, max_records, line_ending=line_ending)

        return ChunkSource(from_csv, f"CSV file {name}", uri=name)

    names_cache: list[list[str]] = []

    @contextlib.contextmanager
    def from_ndjson() -> Iterator[Iterator[CsvChunk]]:
        names = fields
        if names is None:
            # Inferring from a stream would hold it all in memory; one extra streamed pass instead.
            if not names_cache:
                names_cache.append(_ndjson_fieldnames(opener))
            names = names_cache[0]
            if not names:
                raise InputError(f"source {name} holds no fields", field="source")
        with opener() as stream:
            yield record_chunks(_iter_ndjson(stream), names)

    return ChunkSource(from_ndjson, f"NDJSON file {name}", uri=name)
