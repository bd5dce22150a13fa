"""Change-only syncs in the ingest operator: the options, and the planning of a first try.

The engine (:mod:`airflow_provider_salesforce_bulk.sync`) compares the input with the state at
``sync_state_path``; this module feeds it the operator's input exactly as the jobs would send it and
puts the records to send in the place of the input, so the existing load path (staging, jobs,
deferral, resubmit rounds, results) sends them unchanged. The end of the run, deletes and the state's
advance, is in :mod:`.sync_finish`.

Decisions:

- The input is read through the operator's own source (every source kind, after ``field_mapping``,
  with the job's ``none_as``): a columnar one (Parquet, Arrow, DataFrames, SQL) as the Arrow batches
  its chunks are written from, formatted once by the same C++ formatter; any other as its chunks,
  each written to a local file and parsed back by Arrow's CSV reader. Either way the line digested is
  the record's line as a full load uploads it (in a canonical delimiter and line ending), so a state
  written from one source kind matches another.
- Order of one first try: plan (no job, nothing published), stage the records to send (the plan
  store's ``staged``), publish the change set and record it in the plan store under
  :data:`SYNC_KEY`, then the jobs. A try killed before the record plans again (no job exists and the
  change set of the killed try is replaced); a try that finds the record never plans again: it sends
  the staged records, or reattaches to their jobs.
- An input with no record leaves the state as it is (no comparison, no delete): an empty extract is
  far more often a broken upstream than a table whose every row left.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import itertools
import json
import os
import tempfile
from collections.abc import Iterator
from typing import Any, NamedTuple

from airflow.providers.common.compat.sdk import AirflowFailException

from airflow_provider_salesforce_bulk import sync  # lazy: the engine needs the [sync] extra
from airflow_provider_salesforce_bulk.client import ChunkFormat, ChunkLimits, InputError, JobSpec
from airflow_provider_salesforce_bulk.client.chunk_files import ChunkSink, FileSink
from airflow_provider_salesforce_bulk.client.csv_format import COLUMN_DELIMITERS
from airflow_provider_salesforce_bulk.client.serialize import iter_record_chunks
from airflow_provider_salesforce_bulk.operators import load_input
from airflow_provider_salesforce_bulk.operators.grouping import GroupedSource, group_by_parent
from airflow_provider_salesforce_bulk.operators.job_plan import JobPlan
from airflow_provider_salesforce_bulk.operators.plan_store import PlanStore
from airflow_provider_salesforce_bulk.operators.sources import ChunkSource
from airflow_provider_salesforce_bulk.operators.staging import Manifest, StagingArea

__all__ = [
    "DEFAULT_MAX_DELETE_RATIO",
    "DELETE_KEY",
    "SYNC_KEY",
    "Prepared",
    "SyncOptions",
    "check_sync_options",
    "forget",
    "prepare",
]

SYNC_KEY = "salesforce_bulk_sync"
"""The plan store's key of a change-only run: its pending change set, then its advance."""
DELETE_KEY = "salesforce_bulk_sync_delete"
"""The plan store's key of the delete job's plan (a :class:`~.job_plan.JobPlan` of its own)."""
DEFAULT_MAX_DELETE_RATIO = 0.1
_CSV_BLOCK = 8 << 20  # bytes of a chunk parsed at a time


@dataclasses.dataclass(frozen=True)
class SyncOptions:
    """A change-only sync's operator options, checked (see :func:`check_sync_options`)."""

    sync_state_path: Any
    delete_missing: bool
    max_delete_ratio: float
    full_sync: bool

    @property
    def where(self) -> str:
        """The state's location for messages and the summary."""
        return str(sync.storage_for(self.sync_state_path).url(None))


def _bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise InputError(f"{name} must be True or False, got {value!r}", field=name)
    return value


def check_sync_options(
    *,
    changes_only: Any,
    sync_state_path: Any,
    delete_missing: Any,
    max_delete_ratio: Any,
    full_sync: Any,
    operation: Any,
    external_id_field: Any,
) -> SyncOptions | None:
    """The options as one value (``None``: not a change-only run), or an ``InputError`` naming one."""
    _bool("changes_only", changes_only)
    _bool("delete_missing", delete_missing)
    _bool("full_sync", full_sync)
    ratio = max_delete_ratio
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 <= ratio <= 1:
        raise InputError(
            f"max_delete_ratio must be a number between 0 and 1, got {ratio!r}", field="max_delete_ratio"
        )
    if not changes_only:
        given = {
            "sync_state_path": sync_state_path is not None,
            "delete_missing": delete_missing,
            "full_sync": full_sync,
            "max_delete_ratio": ratio != DEFAULT_MAX_DELETE_RATIO,
        }
        for name, set_ in given.items():
            if set_:
                raise InputError(f"{name} is only used with changes_only=True", field=name)
        return None
    if operation != "upsert":
        raise InputError(
            f"changes_only=True needs operation='upsert' (got {operation!r}): the state is keyed by "
            "the external id",
            field="changes_only",
        )
    if not external_id_field:
        raise InputError("changes_only=True needs external_id_field", field="external_id_field")
    if sync_state_path is None or (isinstance(sync_state_path, str) and not sync_state_path.strip()):
        raise InputError(
            "changes_only=True needs sync_state_path, where the sync state is kept", field="sync_state_path"
        )
    if full_sync and delete_missing:
        raise InputError(
            "full_sync=True rebuilds the state without reading it, so delete_missing has nothing to "
            "compare with: run the full sync first, then delete_missing",
            field="delete_missing",
        )
    try:
        sync.require_engine()
    except ImportError as exc:
        raise InputError(str(exc), field="changes_only") from None
    try:
        sync.storage_for(sync_state_path)
    except (TypeError, ValueError, ImportError) as exc:  # ImportError: the scheme's fsspec package
        raise InputError(f"sync_state_path {sync_state_path!r}: {exc}", field="sync_state_path") from None
    return SyncOptions(sync_state_path, delete_missing, float(ratio), full_sync)


def run_key(ti: Any) -> str:
    """A plain name for this try's change set: unique per task instance and planning try."""
    if ti is None:
        return "untracked"
    identity = json.dumps([ti.dag_id, ti.run_id, ti.task_id, getattr(ti, "map_index", -1)])
    digest = hashlib.sha256(identity.encode()).hexdigest()[:24]
    return f"{digest}-try{getattr(ti, 'try_number', 0)}"


def forget(store: PlanStore | None) -> None:
    """Drop what an earlier, finished run of this task instance recorded (``reload_on_clear``)."""
    if store is not None:
        for key in (SYNC_KEY, DELETE_KEY):
            with contextlib.suppress(Exception):  # a missing key: nothing to forget
                store.delete(key)


class Prepared(NamedTuple):
    """What :func:`prepare` found or made."""

    staged: Manifest | None
    """The staged records to send; ``None``: nothing to upsert."""
    source: ChunkSource
    """What the load names them by (it never reads the input again)."""
    record: dict[str, Any] | None
    """The change set's record in the plan store; ``None``: an empty input, nothing compared."""


def prepare(
    source: ChunkSource,
    plan: JobPlan,
    area: StagingArea,
    ti: Any,
    spec: JobSpec,
    options: SyncOptions,
    *,
    limits: ChunkLimits,
    chunk_format: ChunkFormat,
    group_by: str | None,
    log: Any,
) -> Prepared:
    """The records this try sends, planning only when no earlier try recorded a change set."""
    store = plan.store
    recorded = store.get(SYNC_KEY) if store is not None else None
    gone = _gone_source(options)
    if isinstance(recorded, dict):
        log.info("An earlier try planned this sync: sending its change set, not planning again")
        staged = Manifest.load(plan.staged) if plan.staged is not None else None
        return Prepared(staged, gone, recorded)
    with tempfile.TemporaryDirectory(prefix="sf-sync-") as workdir:
        sync_plan = _plan(source, options, spec, chunk_format, workdir)
        if sync_plan is None:
            return Prepared(None, gone, None)
        counts = sync_plan.counts
        log.info(
            "Change-only sync against %s: %d records read, %d unchanged, %d new, %d changed, %d to delete",
            options.where,
            counts.read,
            counts.unchanged,
            counts.new,
            counts.changed,
            counts.to_delete,
        )
        changes = _changes_source(sync_plan, limits, chunk_format, group_by)
        try:
            staged = load_input.stage_input(changes, plan, area, getattr(ti, "try_number", None), spec, log)
        finally:
            if isinstance(changes, GroupedSource):
                changes.close()
        pending = sync_plan.pending(options.sync_state_path, run_key(ti))
        record = {
            "pending": pending.to_dict(),
            "counts": dataclasses.asdict(counts),
            "version_before": None if sync_plan.base is None else sync_plan.base.version,
        }
        if store is not None:
            store.set(SYNC_KEY, record)  # before any job: a retry advances from this change set
    return Prepared(staged, gone, record)


def _plan(
    source: ChunkSource, options: SyncOptions, spec: JobSpec, chunk_format: ChunkFormat, workdir: str
) -> sync.SyncPlan | None:
    """Compare the input, as its jobs would send it, with the state; ``None`` for an empty input."""
    delimiter = COLUMN_DELIMITERS[spec.column_delimiter]
    assert spec.external_id_field is not None  # check_sync_options
    try:
        with contextlib.ExitStack() as stack:
            if source.arrow is not None:
                # A columnar source: its batches are formatted once, in C++, straight into the digests.
                batches: Iterator[Any] = (b for b in stack.enter_context(source.arrow()) if b.num_rows)
                allow_na_marker = chunk_format.allow_na_marker
            else:
                batches = stack.enter_context(
                    _input_batches(source, delimiter, os.path.join(workdir, "input"))
                )
                allow_na_marker = True  # the texts are the chunks' own: '#N/A' there is a null sent
            first = next(batches, None)
            if first is None:
                return None
            sync_spec = sync.SyncSpec(
                object_name=spec.object,
                external_id_field=spec.external_id_field,
                fieldnames=tuple(source.arrow_fieldnames or first.schema.names),
                none_as=chunk_format.none_as,
                allow_na_marker=allow_na_marker,
                delete_missing=options.delete_missing,
                max_delete_ratio=options.max_delete_ratio,
                full_sync=options.full_sync,
            )
            return sync.plan_sync(
                options.sync_state_path, itertools.chain([first], batches), sync_spec, workdir
            )
    except InputError as exc:
        raise AirflowFailException(
            f"Change-only sync ({source.description}, state {options.where}): {type(exc).__name__}: {exc}"
        ) from None


@contextlib.contextmanager
def _input_batches(source: ChunkSource, delimiter: str, folder: str) -> Iterator[Iterator[Any]]:
    """Every record's texts as Arrow batches of string columns named by the header, read back from
    the source's chunks written one at a time to ``folder`` by Arrow's CSV reader (C++: a Python
    parse of every row cost more CPU than the whole full upsert)."""
    os.makedirs(folder, exist_ok=True)

    def path(name: str) -> str:
        return os.path.join(folder, name)

    # The sink closes each chunk's file at its end (and any left open in close()).
    sink = FileSink(
        lambda name: open(path(name), "wb"),  # noqa: SIM115
        lambda name: lambda: open(path(name), "rb"),  # noqa: SIM115
        path,
    )

    def batches(chunks: Iterator[Any]) -> Iterator[Any]:
        for chunk in chunks:
            yield from _chunk_batches(chunk.path, delimiter)
            os.remove(chunk.path)

    try:
        with source.open_into(sink) as chunks:
            yield batches(chunks)
    finally:
        sink.close()


def _chunk_batches(path: str, delimiter: str) -> Iterator[Any]:
    """One chunk file's records as Arrow batches of its column texts (an empty value is ``""``).

    Read in blocks of :data:`_CSV_BLOCK`; a record longer than a block (Arrow cannot parse one across
    blocks) makes the file be read again in one block, from the first record not yet given.
    """
    import pyarrow as pa
    import pyarrow.csv as pcsv

    with open(path, encoding="utf-8", newline="") as handle:
        header = next(csv.reader(handle, delimiter=delimiter), None)
    if header is None:
        return
    size, block, given = os.path.getsize(path), _CSV_BLOCK, 0
    parse = pcsv.ParseOptions(delimiter=delimiter, newlines_in_values=True)
    convert = pcsv.ConvertOptions(
        column_types=dict.fromkeys(header, pa.string()),
        strings_can_be_null=False,
        quoted_strings_can_be_null=False,
    )
    while True:
        read = pcsv.ReadOptions(column_names=header, skip_rows=1, block_size=block, use_threads=False)
        seen = 0
        try:
            for batch in pcsv.open_csv(path, read_options=read, parse_options=parse, convert_options=convert):
                start, seen = max(given - seen, 0), seen + batch.num_rows
                if start < batch.num_rows:
                    given += batch.num_rows - start
                    yield batch.slice(start) if start else batch
            return
        except pa.ArrowInvalid:
            if block > size:
                raise
            block = size + 1


def _changes_source(
    sync_plan: sync.SyncPlan, limits: ChunkLimits, chunk_format: ChunkFormat, group_by: str | None
) -> ChunkSource:
    """The records to send as the load's input: texts, written as they are ('#N/A' included)."""
    fields = list(sync_plan.spec.fieldnames)
    texts = dataclasses.replace(chunk_format, allow_na_marker=True)
    counts = sync_plan.counts

    @contextlib.contextmanager
    def changed(sink: ChunkSink | None = None) -> Iterator[Iterator[Any]]:
        yield iter_record_chunks(sync_plan.records(), fields, limits, texts, sink=sink)

    source = ChunkSource(changed, f"{counts.sent} new or changed of {counts.read} records", into_sink=changed)
    if group_by is not None:
        source = group_by_parent(source, group_by, limits=limits, chunk_format=texts)
    return source


def _gone_source(options: SyncOptions) -> ChunkSource:
    """What a try names its change set by once planned: it is read from the staged files only."""

    @contextlib.contextmanager
    def gone(sink: ChunkSink | None = None) -> Iterator[Iterator[Any]]:
        raise InputError(
            "the staged records of this change-only run are gone (or corrupt) and a planned run never "
            "reads its input again (it may have changed since): clear the task with reload_on_clear=True "
            f"to plan again against the state at {options.where}",
            field="staging_path",
        )
        yield iter(())  # pragma: no cover - a generator, so the raise happens when entered

    return ChunkSource(gone, "the staged change set", into_sink=gone)
