"""Reading the CSV files Salesforce returns (job results, query results) as a stream: a real CSV parse
that never splits a quoted value, one dict per record."""

from __future__ import annotations

import codecs
import csv
import io
import logging
from collections.abc import AsyncIterable, AsyncIterator, Iterable

from airflow_provider_salesforce_bulk.client.csv_format import COLUMN_DELIMITERS, RecordScan
from airflow_provider_salesforce_bulk.client.models import ColumnDelimiter

__all__ = ["EXTRA_KEY_PREFIX", "iter_csv_records", "iter_csv_rows", "parse_results"]

log = logging.getLogger(__name__)


async def iter_csv_rows(chunks: AsyncIterable[bytes], *, delimiter: str = ",") -> AsyncIterator[list[str]]:
    """Parse a UTF-8 CSV byte stream into rows while it arrives.

    A record ends at a line feed outside quotes; quoted CR, LF, quotes and any Unicode character are
    kept. Only complete records are handed to :mod:`csv`, so memory holds one network chunk plus
    one record at most.
    """
    decoder = codecs.getincrementaldecoder("utf-8-sig")()
    pending = ""  # text after the last complete record
    scan = RecordScan()
    async for chunk in chunks:
        pending += decoder.decode(chunk)
        end = scan.last_end(pending)
        if end:
            for row in csv.reader(io.StringIO(pending[:end], newline=""), delimiter=delimiter, strict=True):
                yield row
            pending = pending[end:]
            scan.consumed(end)
    pending += decoder.decode(b"", final=True)
    if pending.strip("\r\n"):
        if scan.quotes_open or pending.count('"') % 2:
            raise csv.Error("result CSV ends inside a quoted value")
        for row in csv.reader(io.StringIO(pending, newline=""), delimiter=delimiter, strict=True):
            yield row


EXTRA_KEY_PREFIX = "_extra_"
"""Values beyond the header's columns are kept under ``_extra_1``, ``_extra_2``, ...: no Salesforce field
name can start with an underscore, so these never collide with a column."""


def _record(header: list[str], row: list[str]) -> dict[str, str]:
    """One row as a dict, tolerating a row whose length differs from the header's.

    Salesforce's result files always match their header; a proxy, a truncating server or another
    implementation may not. Losing the row (or the whole download) over it would be worse than
    reading it: missing values become ``""`` (as Salesforce writes a null), extra ones are kept under
    :data:`EXTRA_KEY_PREFIX` keys.
    """
    if len(row) == len(header):
        return dict(zip(header, row, strict=True))
    record = dict(zip(header, row, strict=False))
    for name in header[len(row) :]:
        record.setdefault(name, "")
    for index, value in enumerate(row[len(header) :], start=1):
        record[f"{EXTRA_KEY_PREFIX}{index}"] = value
    return record


async def iter_csv_records(
    chunks: AsyncIterable[bytes], *, delimiter: str = ","
) -> AsyncIterator[dict[str, str]]:
    """Parse a CSV byte stream with a header row into one dict per record.

    A row shorter than the header gets ``""`` for its missing columns; a longer one keeps its extra
    values under ``_extra_1``, ``_extra_2``, ... (:data:`EXTRA_KEY_PREFIX`); both are logged.
    """
    header: list[str] | None = None
    number = 0
    ragged = False
    async for row in iter_csv_rows(chunks, delimiter=delimiter):
        if header is None:
            header = row
            continue
        number += 1
        if len(row) != len(header) and not ragged:
            ragged = True  # once per file: a server writing ragged rows writes many
            log.warning(
                "result row %d has %d values for %d columns (and maybe more rows)",
                number,
                len(row),
                len(header),
            )
        yield _record(header, row)


def parse_results(data: bytes, *, column_delimiter: ColumnDelimiter = "COMMA") -> list[dict[str, str]]:
    """Parse a whole result file held in memory (small results, tests); ragged rows as in
    :func:`iter_csv_records`."""
    text = data.decode("utf-8-sig")
    reader: Iterable[list[str]] = csv.reader(
        io.StringIO(text, newline=""), delimiter=COLUMN_DELIMITERS[column_delimiter], strict=True
    )
    rows = list(reader)
    if not rows:
        return []
    header, body = rows[0], rows[1:]
    return [_record(header, row) for row in body]
