"""Each record's CSV line as the client writes it, and the digest of that line.

Decisions:

- One scheme for every kind of input: a record's digest is the MD5 of its CSV line in a canonical
  form of the job's format (comma, LF, the job's ``none_as`` and ``allow_na_marker``), written by the
  client's own serializer: Arrow batches by its column-wise C++ formatter
  (:mod:`~..client.arrow_chunks`), dicts by its record serializer (:mod:`~..client.serialize`). The
  two write the same bytes for the same rows, so a sync may switch from dicts to a Parquet file (or
  back) without resending anything, and two records Salesforce receives identically (``None`` and
  ``""`` with ``none_as="empty"``) have the same digest. The delimiter and line ending are fixed so
  that changing them does not resend every record.
- MD5 rather than a keyed BLAKE2b: it is the 128-bit hash DuckDB computes over an Arrow column in C++
  (the digest is no defence against an adversary, only against accidental equality, for which 128
  well-mixed bits make a missed update negligible). The digest is kept as two unsigned 64-bit halves
  of the MD5 read as a little-endian 128-bit integer (:func:`digest_of` is the reference).
- The column set is no part of the line: it is recorded with the state (``fields_fingerprint``), and
  a state of another column set compares as changed everywhere (see :mod:`.diff` and :mod:`.advance`).
- The external id is the value's text as sent (unquoted): what Salesforce echoes in its results.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from airflow_provider_salesforce_bulk.client.arrow_chunks import _Plan
from airflow_provider_salesforce_bulk.client.errors import InputError
from airflow_provider_salesforce_bulk.client.job_spec import ChunkFormat
from airflow_provider_salesforce_bulk.client.serialize import _Writer

# Bumped when the line or the digest changes: recorded in the fingerprint, so old digests never match.
DIGEST_VERSION = b"salesforce-bulk-sync-digest-2-md5-csv"
_MASK = (1 << 64) - 1
_RANGE_ROWS = 65_536

LINES_SCHEMA = pa.schema(
    [
        pa.field("external_id", pa.string()),
        pa.field("line", pa.string()),
        pa.field("row", pa.int64()),
    ]
)


def fields_fingerprint(fieldnames: Sequence[str]) -> str:
    """A hex name of the column set, its order and the digest scheme, recorded with the state."""
    encoded = "\x00".join(fieldnames).encode()
    return hashlib.blake2b(DIGEST_VERSION + b"\x00" + encoded, digest_size=32).hexdigest()


def digest_of(line: bytes) -> tuple[int, int]:
    """``(digest_lo, digest_hi)`` of one CSV line: what the engine computes in C++ for every row."""
    number = int.from_bytes(hashlib.md5(line).digest(), "little")  # noqa: S324 - not for security
    return number & _MASK, number >> 64


# The same digest in DuckDB SQL (md5_number is the MD5 read as a little-endian 128-bit integer).
DIGEST_SQL = (
    "(md5_number(line) & 18446744073709551615::UHUGEINT)::UBIGINT AS digest_lo, "
    "(md5_number(line) >> 64)::UBIGINT AS digest_hi"
)


class RowFormatter:
    """A batch of records (dicts, or an Arrow record batch) to its external ids and CSV lines."""

    def __init__(
        self,
        fieldnames: Sequence[str],
        external_id_field: str,
        *,
        none_as: str = "empty",
        allow_na_marker: bool = False,
    ) -> None:
        self.fieldnames = list(fieldnames)
        self.external_id_field = external_id_field
        self.key = self.fieldnames.index(external_id_field)
        self.format = ChunkFormat(none_as=none_as, allow_na_marker=allow_na_marker)  # type: ignore[arg-type]
        self.writer = _Writer(self.fieldnames, self.format)
        self.plan: _Plan | None = None
        self._range = pa.array(range(_RANGE_ROWS), pa.int64())

    def lines(self, batch: Any, base: int) -> pa.Table:
        """``external_id``, ``line`` and ``row`` (the record's index in the input) of each record."""
        if isinstance(batch, pa.RecordBatch):
            ids, lines = self._arrow(batch, base)
        else:
            ids, lines = self._records(batch, base)
        self._check_ids(ids, base)
        return pa.Table.from_arrays([ids, lines, self._rows(base, len(lines))], schema=LINES_SCHEMA)

    def _rows(self, base: int, count: int) -> pa.Array:
        """``base``, ``base + 1``, ... as an Arrow array, made in C++ from a cached ``0 .. count``."""
        if len(self._range) < count:
            self._range = pa.array(range(max(count, 2 * len(self._range))), pa.int64())
        return pc.add(self._range.slice(0, count), pa.scalar(base, pa.int64()))

    def _records(self, records: list[Any], base: int) -> tuple[pa.Array, pa.Array]:
        writer = self.writer
        columns = writer.columns(records, base)
        texts = [writer.convert(column, position, base) for position, column in enumerate(columns)]
        if len(texts) == 1 and "" in texts[0]:
            texts[0] = ['""' if text == "" else text for text in texts[0]]
        data, offsets = writer.encode(writer.assemble(texts), columns, base)
        lines = pa.StringArray.from_buffers(
            len(records), pa.array(offsets, pa.int32()).buffers()[1], pa.py_buffer(data)
        )
        raw = columns[self.key]
        # The id as sent, unquoted: a str as it is, any other value as the serializer writes it.
        if set(map(type, raw)) != {str}:
            raw = [
                value if type(value) is str or value is None else text
                for value, text in zip(raw, texts[self.key], strict=True)
            ]
        return pa.array(raw, pa.string()), lines

    def _arrow(self, batch: pa.RecordBatch, base: int) -> tuple[pa.Array, pa.Array]:
        if self.plan is None:
            self.plan = _Plan(pa, batch.schema, self.fieldnames, self.format)
        lines = self.plan.rows(batch, base)
        name = self.external_id_field
        if name not in batch.schema.names:
            return pa.nulls(batch.num_rows, pa.string()), lines
        column = batch.column(name)
        if pa.types.is_dictionary(column.type):
            column = column.dictionary_decode()
        kind = column.type
        if pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind):
            return column.cast(pa.string()), lines
        formatter = self.plan.formatters[self.key]
        assert formatter is not None  # the column is in the batch
        return formatter(column, name, base), lines

    def _check_ids(self, ids: pa.Array, base: int) -> None:
        missing = pc.fill_null(pc.equal(ids, ""), True)
        if pc.any(missing).as_py():
            offset = pc.index(missing, True).as_py()
            what = "None" if ids[offset].as_py() is None else "empty"
            raise InputError(
                f"record {base + offset} has no {self.external_id_field} (the external id field is "
                f"{what}): every record of a change-only sync needs one",
                record_index=base + offset,
                field=self.external_id_field,
            )
