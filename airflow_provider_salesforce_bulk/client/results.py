"""Reading result files as a stream: a real CSV parse that never splits a quoted value."""

from __future__ import annotations

import codecs
import csv
import io
from collections.abc import AsyncIterable, AsyncIterator, Iterable

from airflow_provider_salesforce_bulk.client.models import COLUMN_DELIMITERS

__all__ = ["iter_csv_records", "iter_csv_rows", "parse_results"]


async def iter_csv_rows(chunks: AsyncIterable[bytes], *, delimiter: str = ",") -> AsyncIterator[list[str]]:
    """Parse a UTF-8 CSV byte stream into rows while it arrives.

    A record ends at a line feed outside quotes; quoted CR, LF, quotes and any Unicode character are
    kept. Only complete records are handed to :mod:`csv`, so memory holds one network chunk plus
    one record at most.
    """
    decoder = codecs.getincrementaldecoder("utf-8-sig")()
    pending = ""  # text after the last complete record
    quotes_open = False  # parity of quotes in ``pending`` up to ``scanned``
    scanned = 0
    async for chunk in chunks:
        pending += decoder.decode(chunk)
        end, scanned, quotes_open = _last_record_end(pending, scanned, quotes_open)
        if end:
            for row in csv.reader(io.StringIO(pending[:end], newline=""), delimiter=delimiter, strict=True):
                yield row
            pending = pending[end:]
            scanned -= end
    pending += decoder.decode(b"", final=True)
    if pending.strip("\r\n"):
        if quotes_open or pending.count('"') % 2:
            raise csv.Error("result CSV ends inside a quoted value")
        for row in csv.reader(io.StringIO(pending, newline=""), delimiter=delimiter, strict=True):
            yield row


def _last_record_end(text: str, start: int, quotes_open: bool) -> tuple[int, int, bool]:
    """Index after the last line feed outside quotes in ``text``, scanning from ``start``.

    Returns ``(end, scanned, quotes_open)``: ``end`` is 0 if no complete record, ``scanned`` where
    the scan stopped (the last line feed seen) and the quote parity at that point.
    """
    end = 0
    position = start
    while True:
        newline = text.find("\n", position)
        if newline < 0:
            return end, position, quotes_open
        if text.count('"', position, newline) % 2:
            quotes_open = not quotes_open
        position = newline + 1
        if not quotes_open:
            end = position


async def iter_csv_records(
    chunks: AsyncIterable[bytes], *, delimiter: str = ","
) -> AsyncIterator[dict[str, str]]:
    """Parse a CSV byte stream with a header row into one dict per record."""
    header: list[str] | None = None
    async for row in iter_csv_rows(chunks, delimiter=delimiter):
        if header is None:
            header = row
            continue
        if len(row) != len(header):
            raise csv.Error(f"result row has {len(row)} values for {len(header)} columns")
        yield dict(zip(header, row, strict=False))


def parse_results(data: bytes, *, column_delimiter: str = "COMMA") -> list[dict[str, str]]:
    """Parse a whole result file held in memory (small results, tests)."""
    text = data.decode("utf-8-sig")
    reader: Iterable[list[str]] = csv.reader(
        io.StringIO(text, newline=""), delimiter=COLUMN_DELIMITERS[column_delimiter], strict=True
    )
    rows = list(reader)
    if not rows:
        return []
    header, body = rows[0], rows[1:]
    return [dict(zip(header, row, strict=False)) for row in body]
