"""The operator's input as a stream of job-sized CSV chunks: records, a CSV file or an NDJSON file.

Files are opened through ``ObjectStoragePath`` (local, ``s3://``, ``gs://``, ...) and read in blocks:
memory holds one chunk, never the file. Every source can be read twice, which the operator uses to
validate all of the input before any job exists.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import IO, Any

import orjson

from airflow_provider_salesforce_bulk.client import ChunkFormat, ChunkLimits, InputError
from airflow_provider_salesforce_bulk.client.chunk_files import ChunkSink
from airflow_provider_salesforce_bulk.client.csv_split import iter_csv_stream_chunks
from airflow_provider_salesforce_bulk.client.serialize import iter_record_chunks
from airflow_provider_salesforce_bulk.operators import columnar_sources as columnar
from airflow_provider_salesforce_bulk.operators.chunk_source import ChunkSource, Opener, path_opener

__all__ = ["ChunkSource", "make_source"]

_UTF8_BOM = b"\xef\xbb\xbf"


def _detect_format(name: str, declared: str | None) -> str:
    if declared:
        fmt = declared.lower()
        if fmt not in ("csv", "ndjson"):
            raise InputError(
                f"source_format must be 'csv', 'ndjson', 'parquet' or 'arrow', got {declared!r}",
                field="source_format",
            )
        return fmt
    lower = name.lower()
    if lower.endswith(".csv"):
        return "csv"
    if lower.endswith((".ndjson", ".jsonl", ".json")):
        return "ndjson"
    raise InputError(
        f"cannot tell the format of source {name!r} from its name; pass source_format='csv', 'ndjson', "
        "'parquet' or 'arrow'",
        field="source_format",
    )


def _iter_ndjson(stream: IO[bytes], name: str) -> Iterator[dict[str, Any]]:
    for line_number, line in enumerate(stream, start=1):
        if line_number == 1 and line.startswith(_UTF8_BOM):
            line = line[len(_UTF8_BOM) :]
        if not line.strip():
            continue
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            try:
                line.decode()
            except UnicodeDecodeError as bad:
                raise InputError(
                    f"source {name} line {line_number} is not UTF-8 (byte {bad.start} of the line): "
                    "NDJSON must be UTF-8",
                    field="source",
                ) from None
            raise InputError(
                f"source {name} line {line_number} is not valid JSON: {exc}", field="source"
            ) from None
        if not isinstance(record, dict):
            raise InputError(
                f"source {name} line {line_number} is a JSON {type(record).__name__}, expected an object "
                "(one record per line)",
                field="source",
            )
        yield record


def _ndjson_fieldnames(opener: Opener, name: str) -> list[str]:
    """Union of the keys of every line, in first-seen order (relationships as ``Rel.Field``)."""
    names: dict[str, None] = {}
    with opener() as stream:
        for record in _iter_ndjson(stream, name):
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
    limits: ChunkLimits,
    chunk_format: ChunkFormat,
) -> ChunkSource:
    """Build the chunk source for exactly one of ``records`` and ``source``, cut within ``limits``.

    Records, NDJSON and columnar data are written as ``chunk_format`` says; a CSV file is sent as it
    is, so only the format's delimiter and line ending apply to it (the file must already use them).

    Raises
    ------
    InputError
        Both or neither given, records not a list of dicts, an unknown format, a missing file, a
        directory or a path that cannot be read. Reading a pass raises it too, naming the source and
        the line: malformed CSV, bytes that are not UTF-8, invalid JSON or a line that is no object.
    """
    if (records is None) == (source is None):
        raise InputError("give exactly one of records and source", field="records" if records else "source")
    if columnar.is_arrow_data(records) or columnar.columnar_format(source, source_format):
        # A DataFrame or Arrow table as records, or a Parquet/Arrow file: the Arrow path.
        return columnar.make_columnar_source(
            source=source,
            source_format=source_format,
            table=records,
            fieldnames=fieldnames,
            limits=limits,
            chunk_format=chunk_format,
        )
    fields = list(fieldnames) if fieldnames is not None else None

    def record_chunks(data: Any, names: list[str] | None, sink: ChunkSink | None = None) -> Iterator[Any]:
        return iter_record_chunks(data, names, limits, chunk_format, sink=sink)

    if records is not None:
        if isinstance(records, (str, bytes, Mapping)) or not isinstance(records, Sequence):
            raise InputError(
                f"records must be a list of dicts, got {type(records).__name__}", field="records"
            )
        materialized = records

        @contextlib.contextmanager
        def from_records(sink: ChunkSink | None = None) -> Iterator[Iterator[Any]]:
            yield record_chunks(materialized, fields, sink)

        return ChunkSource(from_records, f"{len(records)} records", into_sink=from_records)

    opener, name = path_opener(source)
    fmt = _detect_format(name, source_format)
    if fmt == "csv":
        if fields is not None:
            raise InputError(
                "fieldnames cannot be used with a CSV source: its header names the fields", field="fieldnames"
            )

        @contextlib.contextmanager
        def from_csv(sink: ChunkSink | None = None) -> Iterator[Iterator[Any]]:
            with opener() as stream:
                yield iter_csv_stream_chunks(stream, limits, chunk_format, sink=sink)

        return ChunkSource(from_csv, f"CSV file {name}", uri=name, into_sink=from_csv)

    names_cache: list[list[str]] = []

    @contextlib.contextmanager
    def from_ndjson(sink: ChunkSink | None = None) -> Iterator[Iterator[Any]]:
        names = fields
        if names is None:
            # Inferring from a stream would hold it all in memory; one extra streamed pass instead.
            if not names_cache:
                names_cache.append(_ndjson_fieldnames(opener, name))
            names = names_cache[0]
            if not names:
                with opener() as stream:
                    if next(_iter_ndjson(stream, name), None) is None:
                        # No record at all (an empty extract upstream): zero records, no job.
                        yield iter(())
                        return
                raise InputError(f"source {name} holds no fields", field="source")
        with opener() as stream:
            yield record_chunks(_iter_ndjson(stream, name), names, sink)

    return ChunkSource(from_ndjson, f"NDJSON file {name}", uri=name, into_sink=from_ndjson)
