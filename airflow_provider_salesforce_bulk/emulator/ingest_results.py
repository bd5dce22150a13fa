"""An ingest job's three result files (successful, failed, unprocessed), rebuilt on request.

Nothing is stored per file: each is rebuilt from the upload and the per-slice outcomes the worker
recorded, so a result file costs no space until it is asked for and streams in flat memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson

from .csv_values import java_double_text, quoted
from .field_types import is_double
from .store import Store
from .upload_csv import DELIMITERS, LINE_ENDINGS, UploadFormatError, raw_header, read_rows

SUCCESSFUL = "successfulResults"
FAILED = "failedResults"
UNPROCESSED = "unprocessedrecords"

_FLUSH_BYTES = 256 * 1024


def _header_name(name: str, delimiter: str) -> str:
    # Header names are echoed as uploaded; only a name that could not be read back gets quotes.
    if delimiter in name or '"' in name or "\n" in name or "\r" in name:
        return quoted(name)
    return name


def iter_result_csv(store: Store, job: dict[str, Any], kind: str) -> Iterator[bytes]:
    """Yield the CSV of ``kind`` (:data:`SUCCESSFUL`, :data:`FAILED` or :data:`UNPROCESSED`) in pieces.

    Values are all double-quoted, in the job's delimiter and line ending; the header is
    ``"sf__Id","sf__Created"`` or ``"sf__Id","sf__Error"`` then the uploaded header as uploaded
    (alone for unprocessed records). Double fields are echoed as Salesforce prints doubles
    (``912260031`` as ``9.12260031E8``); a row whose value count differs from the header's is echoed
    as empty values, one per column, so the file stays rectangular.
    """
    delimiter = DELIMITERS[job["column_delimiter"]]
    eol = LINE_ENDINGS[job["line_ending"]]
    uploaded = ""
    if job["upload"] == "done":
        try:
            header, rows = read_rows(store, job["id"], job["column_delimiter"])
        except UploadFormatError:
            header, rows = [], iter(())
        else:
            uploaded = raw_header(store, job["id"]) or delimiter.join(
                _header_name(h, delimiter) for h in header
            )
    else:
        header, rows = [], iter(())
    width = len(header)
    obj = store.schema.get(job["object"])
    doubles = [
        index
        for index, name in enumerate(header)
        if obj is not None and (field := obj.field(name)) is not None and is_double(field)
    ]
    if kind == SUCCESSFUL:
        lead = [quoted("sf__Id"), quoted("sf__Created")]
    elif kind == FAILED:
        lead = [quoted("sf__Id"), quoted("sf__Error")]
    else:
        lead = []
    first = delimiter.join([*lead, uploaded] if uploaded else lead)

    def lines() -> Iterator[str]:
        # Rows pair with the stored outcomes in upload order; a row without one was never processed.
        try:
            for _first_row, _count, blob in store.result_batches(job["id"]):
                for outcome in orjson.loads(blob):
                    row = next(rows, None)
                    if row is None:
                        break
                    if kind == UNPROCESSED:
                        continue
                    record_id, flag = outcome
                    if isinstance(flag, str):
                        if kind != FAILED:
                            continue
                        second = flag
                    elif kind == SUCCESSFUL:
                        second = "true" if flag else "false"
                    else:
                        continue
                    if len(row) != width:
                        row = [""] * width
                    elif doubles:
                        row = list(row)
                        for index in doubles:
                            row[index] = java_double_text(row[index])
                    yield delimiter.join([quoted(record_id), quoted(second), *map(quoted, row)]) + eol
            if kind == UNPROCESSED and job["state"] in ("Failed", "Aborted"):
                for row in rows:
                    yield delimiter.join(map(quoted, row)) + eol
        except UploadFormatError:
            pass  # the rest of a malformed upload cannot be echoed; the job already says why

    yield from _pieces(first + eol, lines())


def _pieces(first: str, lines: Iterator[str]) -> Iterator[bytes]:
    # Lines go out in pieces of about _FLUSH_BYTES: one write per line would be slow, one per file unbounded.
    buffer = [first]
    size = len(first)
    for line in lines:
        buffer.append(line)
        size += len(line)
        if size >= _FLUSH_BYTES:
            yield "".join(buffer).encode()
            buffer, size = [], 0
    yield "".join(buffer).encode()
