"""The high-water mark of an incremental extract: where it is kept, the filter it becomes, and how the
next mark is read from the files a run published.

The mark belongs to the task (dag id, task id, map index), not to a DAG run: every run extracts what
changed since the last run whose output was published, whatever its logical date or data interval
(on Airflow 3 a scheduled or manual run's data interval has zero length, so a data-interval filter
extracts nothing new). It lives in an Airflow Variable, in the metadata database every worker of
every executor sees on Airflow 3.1-3.3 (``task_state_store`` is per task instance, so it cannot carry
a value from one run to the next).

The filter of a run after mark ``M`` with overlap ``O`` and boundary Ids ``B`` (the records the last
run published whose value was at or after ``M - O``) is::

    field >= floor(M - O) AND (field > ceil(M) OR Id NOT IN (B))

Records committed late with a value before ``M`` (up to ``O`` earlier) are caught; records the last
run already wrote are not written again unless they changed after ``M``. The one case this misses: a
record of ``B`` changed again with a value of ``ceil(M)`` or before that committed after the last run
read it (a second late commit of the same record inside the overlap).
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import hashlib
import io
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

from airflow_provider_salesforce_bulk.client.errors import InputError, UnexpectedResponseError
from airflow_provider_salesforce_bulk.operators.soql_filter import soql_datetime
from airflow_provider_salesforce_bulk.triggers.task_state import COMMS_GUARD

__all__ = [
    "MAX_BOUNDARY_IDS",
    "WATERMARK_VARIABLE_PREFIX",
    "Watermark",
    "WatermarkStore",
    "incremental_condition",
    "parse_datetime",
    "scan_marks",
    "watermark_store_for",
]

WATERMARK_VARIABLE_PREFIX = "salesforce_bulk_watermark."
#: Ids kept for the overlap at most: ~21 characters each in the SOQL (which Salesforce caps at
#: 100,000 characters). Past it, the Ids of the oldest values in the overlap are not kept, and those
#: records may be written again by the next run (a repeat, announced in the log; never a miss).
MAX_BOUNDARY_IDS = 2000
_ID_CHARS = 80
_OFFSET = re.compile(r"([+-]\d\d)(\d\d)$")


def parse_datetime(value: Any, *, what: str = "value") -> datetime.datetime:
    """A timezone-aware UTC datetime from a datetime (naive taken as UTC) or Salesforce's text
    (``2024-01-01T00:00:00.000Z`` / ``...+0000``)."""
    if isinstance(value, datetime.datetime):
        moment = value
    elif isinstance(value, str) and value.strip():
        text = value.strip()
        if text.endswith("Z"):
            text = text[:-1] + "+00:00"
        text = _OFFSET.sub(r"\1:\2", text)
        try:
            moment = datetime.datetime.fromisoformat(text)
        except ValueError:
            raise UnexpectedResponseError(f"{what} {value!r} is not a datetime") from None
    else:
        raise UnexpectedResponseError(f"{what} {value!r} is not a datetime")
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    return moment.astimezone(datetime.timezone.utc)


@dataclasses.dataclass(frozen=True)
class Watermark:
    """A published run's mark: the greatest ``field`` value it wrote, and the Ids it wrote whose value
    was within the overlap before that."""

    field: str
    mark: datetime.datetime
    boundary_ids: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"field": self.field, "mark": self.mark.isoformat(), "boundary_ids": list(self.boundary_ids)}

    @classmethod
    def from_json(cls, value: Any) -> Watermark | None:
        if not isinstance(value, Mapping) or not isinstance(value.get("field"), str):
            return None
        try:
            mark = parse_datetime(value.get("mark"), what="stored watermark")
        except UnexpectedResponseError:
            return None
        ids = value.get("boundary_ids") or ()
        return cls(value["field"], mark, tuple(str(i) for i in ids if isinstance(i, str)))


def incremental_condition(
    field: str, before: Watermark | None, initial: datetime.datetime | None, overlap: datetime.timedelta
) -> str | None:
    """The SOQL condition of the next run (None: extract everything)."""
    if before is None:
        return None if initial is None else f"{field} >= {soql_datetime(initial)}"
    lower = f"{field} >= {soql_datetime(before.mark - overlap)}"
    if not before.boundary_ids:
        return lower
    ids = ", ".join(f"'{i}'" for i in before.boundary_ids)
    return f"{lower} AND ({field} > {soql_datetime(before.mark, round_up=True)} OR Id NOT IN ({ids}))"


class WatermarkStore:
    """The task's mark in an Airflow Variable (JSON; it holds a field name, a datetime and record Ids:
    no secret, so Airflow's masking of sensitive Variable names is not needed)."""

    def __init__(self, dag_id: str, task_id: str, map_index: int = -1) -> None:
        self.dag_id, self.task_id, self.map_index = dag_id, task_id, map_index

    def __repr__(self) -> str:
        return f"<WatermarkStore {self.variable_key()}>"

    def variable_key(self) -> str:
        identity = json.dumps([self.dag_id, self.task_id, self.map_index])
        digest = hashlib.sha256(identity.encode("utf-8")).hexdigest()[:24]
        return f"{WATERMARK_VARIABLE_PREFIX}{self.dag_id[:_ID_CHARS]}.{self.task_id[:_ID_CHARS]}.{digest}"

    def get(self) -> Any:
        from airflow.providers.common.compat.sdk import Variable

        with COMMS_GUARD:
            return Variable.get(self.variable_key(), default=None, deserialize_json=True)

    def set(self, value: Mapping[str, Any]) -> None:
        from airflow.providers.common.compat.sdk import Variable

        mapped = "" if self.map_index == -1 else f" [{self.map_index}]"
        description = (
            f"Salesforce Bulk extract watermark of {self.dag_id} / {self.task_id}{mapped}: the next run "
            "extracts the records changed since. Delete it to extract everything again."
        )
        with COMMS_GUARD:
            Variable.set(self.variable_key(), dict(value), description=description, serialize_json=True)


def watermark_store_for(context: Mapping[str, Any]) -> WatermarkStore:
    ti = context.get("ti")
    if ti is None:
        raise InputError(
            "incremental_field needs a task instance to keep its mark", field="incremental_field"
        )
    map_index = getattr(ti, "map_index", -1)
    return WatermarkStore(ti.dag_id, ti.task_id, -1 if map_index is None else int(map_index))


class _Marks:
    """The greatest value seen, and the Ids whose value is within ``overlap`` of it (bounded)."""

    def __init__(self, overlap: datetime.timedelta, floor: datetime.datetime | None) -> None:
        self.overlap = overlap
        self.top = floor
        self.near: dict[str, datetime.datetime] = {}

    def add(self, record_id: str, moment: datetime.datetime) -> None:
        if self.top is None or moment > self.top:
            self.top = moment
            if len(self.near) > 4 * MAX_BOUNDARY_IDS:
                self._prune()
        if moment >= self.top - self.overlap:
            self.near[record_id] = max(moment, self.near.get(record_id, moment))

    def _prune(self) -> None:
        assert self.top is not None
        cut = self.top - self.overlap
        self.near = {k: v for k, v in self.near.items() if v >= cut}
        if len(self.near) > 4 * MAX_BOUNDARY_IDS:
            kept = sorted(self.near.items(), key=lambda item: item[1], reverse=True)[: 2 * MAX_BOUNDARY_IDS]
            self.near = dict(kept)

    def result(self, field: str) -> tuple[Watermark | None, int]:
        """The mark and how many overlap Ids could not be kept."""
        if self.top is None:
            return None, 0
        self._prune()
        ranked = sorted(self.near.items(), key=lambda item: (item[1], item[0]), reverse=True)
        kept = tuple(sorted(k for k, _ in ranked[:MAX_BOUNDARY_IDS]))
        return Watermark(field, self.top, kept), max(len(ranked) - MAX_BOUNDARY_IDS, 0)


def _column(names: Iterable[str], wanted: str, where: str) -> str:
    for name in names:
        if name.lower() == wanted.lower():
            return name
    raise UnexpectedResponseError(f"{where} has no column {wanted!r}: the mark cannot be read")


def scan_marks(
    paths: Iterable[Any],
    output_format: str,
    field: str,
    overlap: datetime.timedelta,
    before: Watermark | None,
) -> tuple[Watermark | None, int]:
    """The mark after a run (never before ``before``'s) from its staged files, and how many overlap
    Ids were dropped past :data:`MAX_BOUNDARY_IDS`. Reads only the ``Id`` and ``field`` columns."""
    marks = _Marks(overlap, None)
    for path in paths:
        if output_format == "parquet":
            _scan_parquet(path, field, marks)
        else:
            _scan_csv(path, field, marks)
    after, dropped = marks.result(field)
    if before is not None and before.field == field and (after is None or after.mark < before.mark):
        # Nothing newer was written: the mark stays, and so do the Ids it keeps out.
        return before, 0
    return after, dropped


def _scan_csv(path: Any, field: str, marks: _Marks) -> None:
    with path.open("rb") as raw:
        reader = csv.reader(io.TextIOWrapper(raw, encoding="utf-8", newline=""))
        header = next(reader, None)
        if header is None:
            return
        id_at = header.index(_column(header, "Id", str(path)))
        field_at = header.index(_column(header, field, str(path)))
        for row in reader:
            if row[field_at]:
                marks.add(row[id_at], parse_datetime(row[field_at], what=f"{field} of {row[id_at]}"))


def _scan_parquet(path: Any, field: str, marks: _Marks) -> None:
    import importlib

    pq = importlib.import_module("pyarrow.parquet")
    with path.open("rb") as raw:
        parquet = pq.ParquetFile(raw)
        names = parquet.schema_arrow.names
        columns = [_column(names, "Id", str(path)), _column(names, field, str(path))]
        for batch in parquet.iter_batches(columns=columns, batch_size=65536):
            ids, values = batch.column(0).to_pylist(), batch.column(1).to_pylist()
            for record_id, value in zip(ids, values, strict=True):
                if value is not None:
                    marks.add(record_id, parse_datetime(value, what=f"{field} of {record_id}"))
