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

from airflow_provider_salesforce_bulk.client import (
    ChunkFormat,
    ChunkLimits,
    InputError,
)
from airflow_provider_salesforce_bulk.client.chunk_files import ChunkSink
from airflow_provider_salesforce_bulk.client.csv_split import iter_csv_stream_chunks
from airflow_provider_salesforce_bulk.client.serialize import iter_record_chunks
from airflow_provider_salesforce_bulk.operators.chunk_source import ChunkSource, Opener, path_opener
from airflow_provider_salesforce_bulk.operators.columnar_sources import make_columnar_source
from airflow_provider_salesforce_bulk.operators.grouping import group_by_parent
from airflow_provider_salesforce_bulk.operators.source_spec import SourceSpec

__all__ = ["ChunkSource", "SourceSpec", "make_source"]

_UTF8_BOM = b"\xef\xbb\xbf"


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
    spec: SourceSpec, *, limits: ChunkLimits, chunk_format: ChunkFormat, spool: bool = True
) -> ChunkSource:
    """The chunk source of ``spec``'s input, cut within ``limits``, grouped when the spec says so.

    Records, NDJSON and columnar data are written as ``chunk_format`` says; a CSV file is sent as it
    is, so only the format's delimiter and line ending apply to it (the file must already use them).
    ``spool`` is as for :func:`.columnar_sources.make_columnar_source`. With ``group_by_parent`` the
    source is a :class:`~.grouping.GroupedSource` (``close()`` it when done: its spool file).

    This is where a source is wrapped: a wrapper takes the :class:`ChunkSource` built here and gives
    one (as :func:`.grouping.group_by_parent` does), chosen by a field of the spec.

    Raises
    ------
    InputError
        A missing file, a directory, a path that cannot be read or whose format its name does not
        tell. Reading a pass raises it too, naming the source and the line: malformed CSV, bytes that
        are not UTF-8, invalid JSON or a line that is no object.
    """
    if spec.columnar:
        source = make_columnar_source(spec, limits=limits, chunk_format=chunk_format, spool=spool)
    elif spec.source is not None:
        source = _file_source(spec, limits, chunk_format)
    else:
        source = _records_source(spec.records, spec.fieldnames, limits, chunk_format)
    if spec.group_by_parent is not None:
        source = group_by_parent(source, spec.group_by_parent, limits=limits, chunk_format=chunk_format)
    return source


def _records_source(
    records: Sequence[Mapping[str, Any]],
    fieldnames: Sequence[str] | None,
    limits: ChunkLimits,
    chunk_format: ChunkFormat,
) -> ChunkSource:
    fields = list(fieldnames) if fieldnames is not None else None

    @contextlib.contextmanager
    def from_records(sink: ChunkSink | None = None) -> Iterator[Iterator[Any]]:
        yield iter_record_chunks(records, fields, limits, chunk_format, sink=sink)

    return ChunkSource(from_records, f"{len(records)} records", into_sink=from_records)


def _file_source(spec: SourceSpec, limits: ChunkLimits, chunk_format: ChunkFormat) -> ChunkSource:
    opener, name = path_opener(spec.source)
    fmt = spec.file_format  # told by the name; its errors come after the file's own
    if fmt is None:
        raise InputError(
            f"cannot tell the format of source {name!r} from its name; pass source_format='csv', 'ndjson', "
            "'parquet' or 'arrow'",
            field="source_format",
        )
    if fmt == "csv":

        @contextlib.contextmanager
        def from_csv(sink: ChunkSink | None = None) -> Iterator[Iterator[Any]]:
            with opener() as stream:
                yield iter_csv_stream_chunks(stream, limits, chunk_format, sink=sink)

        return ChunkSource(from_csv, f"CSV file {name}", uri=name, into_sink=from_csv)
    fields = list(spec.fieldnames) if spec.fieldnames is not None else None
    return _ndjson_source(opener, name, fields, limits, chunk_format)


def _ndjson_source(
    opener: Opener, name: str, fields: list[str] | None, limits: ChunkLimits, chunk_format: ChunkFormat
) -> ChunkSource:
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
            yield iter_record_chunks(_iter_ndjson(stream, name), names, limits, chunk_format, sink=sink)

    return ChunkSource(from_ndjson, f"NDJSON file {name}", uri=name, into_sink=from_ndjson)
