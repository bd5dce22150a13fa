"""What every source of the operator's input is: :class:`ChunkSource`, and how a file source is opened."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import IO, Any

from airflow_provider_salesforce_bulk.client import InputError
from airflow_provider_salesforce_bulk.client.chunk_files import ChunkSink
from airflow_provider_salesforce_bulk.client.csv_format import Chunk, CsvChunk

__all__ = ["ChunkSource", "Opener", "path_opener"]

Opener = Callable[[], contextlib.AbstractContextManager[IO[bytes]]]
SinkPass = Callable[[ChunkSink], contextlib.AbstractContextManager[Iterator[Chunk]]]
ArrowPass = Callable[[], contextlib.AbstractContextManager[Iterator[Any]]]


class ChunkSource:
    """Input that can be cut into chunks, in input order.

    ``chunks`` makes a pass with the chunks in memory; ``into_sink``, when the source's builder can
    write a chunk piece by piece, a pass writing each chunk into a :class:`ChunkSink` (a file), so
    that no chunk is ever held whole. A source without it is copied into the sink chunk by chunk.

    ``arrow``, for a columnar source, is a pass over the Arrow record batches its chunks are written
    from (after ``field_mapping``), with ``arrow_fieldnames`` the chunks' columns (``None``: the
    batches' own): a change-only sync digests them without writing and parsing the chunks.
    """

    def __init__(
        self,
        chunks: Callable[[], contextlib.AbstractContextManager[Iterator[CsvChunk]]],
        description: str,
        uri: str | None = None,
        *,
        into_sink: SinkPass | None = None,
        arrow: ArrowPass | None = None,
        arrow_fieldnames: list[str] | None = None,
    ) -> None:
        self._chunks = chunks
        self._into_sink = into_sink
        self.arrow = arrow
        self.arrow_fieldnames = arrow_fieldnames
        self.description = description
        self.uri = uri

    def close(self) -> None:
        """Release what the source keeps between passes (a wrapper's spool file); a plain source keeps
        nothing. A wrapping source (one built on another, as :class:`.grouping.GroupedSource` is)
        overrides it."""

    def open(self) -> contextlib.AbstractContextManager[Iterator[CsvChunk]]:
        """A fresh pass over the chunks, in input order."""
        return self._chunks()

    @contextlib.contextmanager
    def open_into(self, sink: ChunkSink) -> Iterator[Iterator[Chunk]]:
        """A fresh pass whose chunks are written into ``sink`` (each yielded once ended there)."""
        if self._into_sink is not None:
            with self._into_sink(sink) as chunks:
                yield chunks
            return
        with self.open() as chunks:
            yield _copied(chunks, sink)


def _copied(chunks: Iterator[CsvChunk], sink: ChunkSink) -> Iterator[Chunk]:
    for chunk in chunks:
        sink.begin(chunk.first_record_index)
        sink.write(chunk.data)
        yield sink.end(chunk.record_count)


def _reason(exc: OSError) -> str:
    """An OS error's reason without its repr noise (``[Errno 21] Is a directory: 'x'``)."""
    return exc.strerror or str(exc) or type(exc).__name__


def path_opener(source: Any) -> tuple[Opener, str]:
    """A checked file path or URL (``ObjectStoragePath``): a function opening it for reading in binary,
    and its name. A missing file, a directory or an unreadable path is an :class:`InputError` now."""
    from airflow.providers.common.compat.sdk import ObjectStoragePath

    try:
        path = source if isinstance(source, ObjectStoragePath) else ObjectStoragePath(os.fspath(source))
    except (TypeError, ValueError) as exc:
        raise InputError(f"source {source!r} is not a path or URL: {exc}", field="source") from None
    try:
        exists = path.exists()
        is_dir = exists and path.is_dir()
    except OSError as exc:
        raise InputError(f"cannot read source {path}: {_reason(exc)}", field="source") from None
    if not exists:
        raise InputError(f"source {path} does not exist", field="source")
    if is_dir:
        raise InputError(f"source {path} is a directory, not a file", field="source")

    @contextlib.contextmanager
    def opener() -> Iterator[IO[bytes]]:
        try:
            stream: IO[bytes] = path.open("rb")  # type: ignore[no-untyped-call]
        except OSError as exc:
            # Deleted, made a directory or unreadable since the check above.
            raise InputError(f"cannot open source {path}: {_reason(exc)}", field="source") from None
        with stream:
            yield stream

    return opener, str(path)
