"""The high-water mark of an incremental extract: where it is kept, the filter it becomes, and how the
next mark is read from the files a run published.

The mark belongs to the task (dag id, task id, map index), not to a DAG run: every run extracts what
changed since the last run whose output was published, whatever its logical date or data interval
(on Airflow 3 a scheduled or manual run's data interval has zero length, so a data-interval filter
extracts nothing new). It lives in an Airflow Variable, in the metadata database every worker of
every executor sees on Airflow 3.1-3.3 (``task_state_store`` is per task instance, so it cannot carry
a value from one run to the next).

Each run reads up to an upper bound ``U``, a whole second just before the run's start (by the
worker's clock), and ``U`` becomes the mark once the run's output is published. The filter of a run
after mark ``M`` with overlap ``O`` is::

    field >= M - O AND field < U AND (field >= M OR Id NOT IN (B))

where ``B`` holds the Ids already published with a value in ``[M - O, M)``. Records committed late
with a value up to ``O`` before ``M`` (and a worker clock up to ``O`` ahead of Salesforce's) are
caught; records already written are not written again, and a record changed again gets a value at or
after ``M``. The upper bound closes each run's last second, so no change is ever missed for sharing
it. The one case not caught: a record of ``B`` changed again and committed late with a value before
``M`` (a second late commit of the same record inside the overlap).
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import hashlib
import io
import json
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from airflow.providers.common.compat.sdk import AirflowFailException

from airflow_provider_salesforce_bulk.client import InputError, UnexpectedResponseError
from airflow_provider_salesforce_bulk.operators.soql_filter import (
    add_condition,
    check_incremental_soql,
    soql_datetime,
)
from airflow_provider_salesforce_bulk.triggers.task_state import COMMS_GUARD

__all__ = [
    "MAX_BOUNDARY_IDS",
    "WATERMARK_VARIABLE_PREFIX",
    "Watermark",
    "WatermarkStore",
    "Window",
    "check_incremental_settings",
    "fresh_window",
    "incremental_condition",
    "move_mark",
    "next_mark",
    "parse_datetime",
    "published_window",
    "scan_marks",
    "stored_mark",
    "upper_bound",
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
    """A published run's mark (its upper bound) and the Ids published with a value within the
    overlap before it (with those values, to drop them once they are older than the overlap)."""

    field: str
    mark: datetime.datetime
    boundary: tuple[tuple[str, str], ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "field": self.field,
            "mark": self.mark.isoformat(),
            "boundary": [list(b) for b in self.boundary],
        }

    @classmethod
    def from_json(cls, value: Any) -> Watermark | None:
        if not isinstance(value, Mapping) or not isinstance(value.get("field"), str):
            return None
        try:
            mark = parse_datetime(value.get("mark"), what="stored watermark")
        except UnexpectedResponseError:
            return None
        pairs = value.get("boundary") or ()
        boundary = tuple(
            (str(p[0]), str(p[1])) for p in pairs if isinstance(p, (list, tuple)) and len(p) == 2
        )
        return cls(value["field"], mark, boundary)


def upper_bound(now: datetime.datetime | None = None) -> datetime.datetime:
    """The whole second before ``now`` (UTC): a run reads up to it, exclusive."""
    moment = (now or datetime.datetime.now(datetime.timezone.utc)).astimezone(datetime.timezone.utc)
    return moment.replace(microsecond=0) - datetime.timedelta(seconds=1)


def incremental_condition(
    field: str,
    before: Watermark | None,
    initial: datetime.datetime | None,
    overlap: datetime.timedelta,
    upper: datetime.datetime,
) -> str:
    """The SOQL condition of a run reading up to ``upper`` (exclusive)."""
    below = f"{field} < {soql_datetime(upper)}"
    if before is None:
        return below if initial is None else f"{field} >= {soql_datetime(initial)} AND {below}"
    lower = f"{field} >= {soql_datetime(before.mark - overlap)} AND {below}"
    ids = [record_id for record_id, _ in before.boundary]
    if not ids:
        return lower
    listed = ", ".join(f"'{i}'" for i in ids)
    return f"{lower} AND ({field} >= {soql_datetime(before.mark)} OR Id NOT IN ({listed}))"


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
    """The Ids written with a value at or after ``start`` (the new mark minus the overlap)."""

    def __init__(self, start: datetime.datetime) -> None:
        self.start = start
        self.near: dict[str, datetime.datetime] = {}

    def add(self, record_id: str, moment: datetime.datetime) -> None:
        if moment >= self.start:
            self.near[record_id] = max(moment, self.near.get(record_id, moment))

    def result(self, field: str, upper: datetime.datetime) -> tuple[Watermark, int]:
        """The new mark and how many overlap Ids could not be kept (those may be written again)."""
        ranked = sorted(self.near.items(), key=lambda item: (item[1], item[0]), reverse=True)
        kept = sorted((k, v.isoformat()) for k, v in ranked[:MAX_BOUNDARY_IDS])
        return Watermark(field, upper, tuple(kept)), max(len(ranked) - MAX_BOUNDARY_IDS, 0)


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
    upper: datetime.datetime,
) -> tuple[Watermark, int]:
    """The mark after a run that read up to ``upper`` from its staged files, with the Ids written
    within the overlap before it (this run's and those of ``before`` still inside it), and how many
    were dropped past :data:`MAX_BOUNDARY_IDS`. Reads only the ``Id`` and ``field`` columns."""
    marks = _Marks(upper - overlap)
    if before is not None and before.field == field:
        for record_id, value in before.boundary:
            marks.add(record_id, parse_datetime(value, what="stored boundary value"))
    for path in paths:
        if output_format == "parquet":
            _scan_parquet(path, field, marks)
        else:
            _scan_csv(path, field, marks)
    return marks.result(field, upper)


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


# -- the window one run reads ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Window:
    """What one run of an incremental extract reads: its query, the mark it starts from, the upper
    bound it reads to, and whether it reads a published window again (the mark then stays)."""

    query: str
    before: Watermark | None
    upper: str | None
    rerun: bool = False


def fresh_window(
    soql: str,
    field: str,
    before: Watermark | None,
    initial: datetime.datetime | None,
    overlap: datetime.timedelta,
    plan: Any,
) -> Window:
    """The window after mark ``before``, up to now; or up to the earlier try's bound (in ``plan``)
    when it started from the same mark: the retry then runs the same query and reattaches to its job."""
    mark = before.mark.isoformat() if before is not None else None
    upper = None
    if isinstance(plan, Mapping) and plan.get("mark_before", "") == mark:
        upper = plan.get("upper")
    upper_at = parse_datetime(upper) if isinstance(upper, str) else upper_bound()
    condition = incremental_condition(field, before, initial, overlap, upper_at)
    return Window(add_condition(soql, condition), before, upper_at.isoformat())


def published_window(
    soql: str, field: str, overlap: datetime.timedelta, published: Any, task: Mapping[str, Any]
) -> Window | None:
    """The window of the complete extract of this task already in the folder (``published``, its
    manifest), read again: publishing another window there would drop its records from the lake."""
    marks = published.get("watermark") if isinstance(published, Mapping) else None
    if not isinstance(marks, Mapping) or published.get("task") != task or marks.get("field") != field:
        return None
    try:
        upper_at = parse_datetime(marks.get("after"))
        initial = None if marks.get("initial") is None else parse_datetime(marks["initial"])
    except UnexpectedResponseError:
        return None
    before = None
    if marks.get("before") is not None:
        before = Watermark.from_json(
            {"field": field, "mark": marks["before"], "boundary": marks.get("before_boundary") or []}
        )
    condition = incremental_condition(field, before, initial, overlap, upper_at)
    return Window(add_condition(soql, condition), before, upper_at.isoformat(), rerun=True)


def next_mark(
    paths: list[Any],
    output_format: str,
    field: str,
    overlap: datetime.timedelta,
    window: Window,
    initial: datetime.datetime | None,
    warn: Callable[..., object],
) -> dict[str, Any]:
    """The summary's ``watermark``: the mark the staged files move it to, and where it came from."""
    before = window.before
    after, dropped = scan_marks(paths, output_format, field, overlap, before, parse_datetime(window.upper))
    if dropped:
        warn(
            "%d records share the overlap of the new mark beyond the %d Ids kept: the next run may "
            "write them again",
            dropped,
            len(after.boundary),
        )
    return {
        "field": field,
        "before": before.mark.isoformat() if before is not None else None,
        "after": after.mark.isoformat(),
        "overlap_seconds": overlap.total_seconds(),
        "boundary": [list(b) for b in after.boundary],
        "before_boundary": [list(b) for b in before.boundary] if before is not None else [],
        "initial": None if initial is None else initial.isoformat(),
        "query": window.query,
    }


def check_incremental_settings(
    soql: str, field: str, overlap: Any, initial_watermark: datetime.datetime | str | None
) -> None:
    """An incremental extract's settings, checked before any job: an ``InputError`` naming the bad one."""
    check_incremental_soql(soql, field)
    if not isinstance(overlap, datetime.timedelta) or overlap < datetime.timedelta(0):
        raise InputError(
            f"watermark_overlap must be a timedelta >= 0, got {overlap!r}", field="watermark_overlap"
        )
    if initial_watermark is not None:
        try:
            parse_datetime(initial_watermark, what="initial_watermark")
        except UnexpectedResponseError as exc:
            raise InputError(str(exc), field="initial_watermark") from None


def stored_mark(store: WatermarkStore, field: str, warn: Callable[..., object]) -> Watermark | None:
    """The task's mark on ``field``; ``None`` before the first published run or for another field.

    Raises
    ------
    AirflowFailException
        The stored value is unreadable: a user decides (deleting the Variable extracts everything).
    """
    raw = store.get()
    before = Watermark.from_json(raw)
    if raw is not None and before is None:
        raise AirflowFailException(
            f"The stored watermark of this task is unreadable ({raw!r:.200}): delete the Variable "
            f"{store.variable_key()} to extract everything again"
        )
    if before is not None and before.field != field:
        warn("The stored mark is for %s, not %s: extracting from initial_watermark", before.field, field)
        return None
    return before


def move_mark(
    store: WatermarkStore, watermark: dict[str, Any], window: Window, job_id: str, run_id: Any
) -> dict[str, Any]:
    """Advance the task's mark once the run's output is published (not for a window read again);
    the summary's ``watermark`` then counts the overlap's Ids rather than listing them."""
    if window.rerun:
        watermark["mark_moved"] = False
    else:
        # Only now: a failure before leaves the mark where it was.
        after = {"field": watermark["field"], "mark": watermark["after"], "boundary": watermark["boundary"]}
        store.set({**after, "job_id": job_id, "run_id": run_id})
        watermark["mark_moved"] = True
    watermark["boundary"] = len(watermark["boundary"])
    watermark["before_boundary"] = len(watermark["before_boundary"])
    return watermark
