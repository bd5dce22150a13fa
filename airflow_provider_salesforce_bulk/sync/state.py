"""The sync state: for each external id Salesforce accepted, the digest of what was sent and its Id.

Layout at the state's location (decisions):

- ``v<N>/state.parquet``: columns ``external_id`` (string), ``digest_lo`` and ``digest_hi`` (the two
  64-bit halves of the digest, :mod:`.digest`) and ``sf_id`` (string), sorted by external id (UTF-8
  byte order), unique, in row groups of exactly :data:`ROW_GROUP_ROWS` rows (the last one fewer),
  written with fixed options so the same rows give the same bytes.
- ``CURRENT``: a small JSON pointer, written last and replaced atomically: ``version``,
  ``format_version``, ``object``, ``external_id_field``, ``fields_fingerprint``, ``row_count``,
  ``sha256`` and ``file``. A reader trusts nothing it has not checked: the format, the object and the
  external id field must be this sync's, and the file must have the pointer's size and checksum.
- The version after ``N`` is ``N + 1``; the previous version is kept (a retried advance reads it
  again), older ones are removed after the pointer moves.

A changed column set is no error: ``fields_fingerprint`` differs, so every record compares as changed
and is sent once; the entries not accepted in that run are kept with a zero digest, which no line has.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from airflow_provider_salesforce_bulk.sync.errors import StateMovedError, SyncStateError
from airflow_provider_salesforce_bulk.sync.storage import SyncStorage

FORMAT_VERSION = 2
CURRENT = "CURRENT"
STATE_FILE = "state.parquet"
ROW_GROUP_ROWS = 65_536
SCHEMA = pa.schema(
    [
        pa.field("external_id", pa.string(), nullable=False),
        pa.field("digest_lo", pa.uint64(), nullable=False),
        pa.field("digest_hi", pa.uint64(), nullable=False),
        pa.field("sf_id", pa.string(), nullable=False),
    ]
)


@dataclass(frozen=True)
class SyncIdentity:
    """What a state belongs to; a state of another object or external id field is refused."""

    object_name: str
    external_id_field: str
    fields_fingerprint: str


@dataclass(frozen=True)
class StateInfo:
    """The CURRENT pointer's content."""

    version: int
    format_version: int
    object: str
    external_id_field: str
    fields_fingerprint: str
    row_count: int
    sha256: str
    file: str

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True, indent=1).encode() + b"\n"


def parse_current(storage: SyncStorage, data: bytes) -> StateInfo:
    where = storage.url(CURRENT)
    try:
        raw = json.loads(data)
    except ValueError as exc:
        raise SyncStateError(f"the sync state pointer {where} is not JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise SyncStateError(f"the sync state pointer {where} is not a JSON object")
    if raw.get("format_version") != FORMAT_VERSION:
        raise SyncStateError(
            f"the sync state at {storage.url(None)} has format version {raw.get('format_version')!r}; "
            f"this provider reads version {FORMAT_VERSION} (rebuild it with full_sync=True)"
        )
    try:
        info = StateInfo(**raw)
    except TypeError as exc:
        raise SyncStateError(f"the sync state pointer {where} has unexpected fields ({exc})") from None
    types = {
        "version": int,
        "row_count": int,
        "object": str,
        "external_id_field": str,
        "sha256": str,
        "file": str,
    }
    for name, kind in types.items():
        if not isinstance(getattr(info, name), kind):
            raise SyncStateError(f"the sync state pointer {where}: {name} is not a {kind.__name__}")
    return info


def read_current(storage: SyncStorage) -> tuple[StateInfo | None, bytes | None]:
    """The pointer (None when there is no state yet) and its raw bytes, to see later whether it moved."""
    data = storage.read_bytes(CURRENT)
    if data is None:
        return None, None
    return parse_current(storage, data), data


def check_identity(storage: SyncStorage, info: StateInfo, identity: SyncIdentity) -> None:
    for label, stored, wanted in (
        ("object", info.object, identity.object_name),
        ("external id field", info.external_id_field, identity.external_id_field),
    ):
        if stored != wanted:
            raise SyncStateError(
                f"the sync state at {storage.url(None)} is for {label} {stored!r}, not {wanted!r}: "
                "use another sync_state_path, or rebuild it with full_sync=True"
            )


def fetch_state(storage: SyncStorage, info: StateInfo, workdir: str) -> str:
    """Copy the state file named by ``info`` to ``workdir``, checking its checksum and rows.

    Returns its local path."""
    local = os.path.join(workdir, f"state-v{info.version}.parquet")
    digest = hashlib.sha256()
    try:
        with storage.open_read(info.file) as source, open(local, "wb") as target:
            while block := source.read(1 << 20):
                digest.update(block)
                target.write(block)
    except FileNotFoundError:
        raise SyncStateError(
            f"the sync state file {storage.url(info.file)} named by {storage.url(CURRENT)} is missing"
        ) from None
    if digest.hexdigest() != info.sha256:
        raise SyncStateError(
            f"the sync state file {storage.url(info.file)} is corrupt: its sha256 is {digest.hexdigest()}, "
            f"CURRENT says {info.sha256}"
        )
    try:
        metadata = pq.ParquetFile(local).metadata
        schema = pq.read_schema(local)
    except (pa.ArrowException, OSError) as exc:
        raise SyncStateError(f"the sync state file {storage.url(info.file)} is not Parquet ({exc})") from None
    if not schema.equals(SCHEMA) or metadata.num_rows != info.row_count:
        raise SyncStateError(
            f"the sync state file {storage.url(info.file)} holds {metadata.num_rows} rows of {schema.names}; "
            f"CURRENT says {info.row_count} rows of {SCHEMA.names}"
        )
    return local


def check_sorted(local: str, where: str) -> None:
    """Refuse a state file whose external ids are not strictly ascending (so unique), in C++."""
    previous: str | None = None
    for batch in pq.ParquetFile(local).iter_batches(batch_size=ROW_GROUP_ROWS, columns=["external_id"]):
        column = batch.column(0)
        if not len(column):
            continue
        first = column[0].as_py()
        # Compared in Arrow (UTF-8 byte order, which is code point order, as Python compares str).
        if (previous is not None and first <= previous) or (
            len(column) > 1
            and pc.any(pc.greater_equal(column.slice(0, len(column) - 1), column.slice(1))).as_py()
        ):
            raise SyncStateError(
                f"the sync state file {where} is not sorted by external id (or holds one twice)"
            )
        previous = column[len(column) - 1].as_py()


def write_state_file(batches: Iterable[pa.RecordBatch], local: str) -> tuple[int, str]:
    """Write sorted rows as a state file; its row count and sha256."""
    return write_parquet(batches, local, SCHEMA)


def write_parquet(batches: Iterable[pa.RecordBatch], local: str, schema: pa.Schema) -> tuple[int, str]:
    """Write rows of ``schema``; their count and the file's sha256. Same rows, same bytes: the row
    groups are cut at fixed counts, whatever the sizes of the batches given."""
    count = 0
    pending: list[pa.RecordBatch] = []
    held = 0
    with pq.ParquetWriter(local, schema, compression="zstd", use_dictionary=False) as writer:
        for batch in batches:
            pending.append(batch)
            held += batch.num_rows
            while held >= ROW_GROUP_ROWS:
                table = pa.Table.from_batches(pending, schema=schema)
                # One chunk per row group: the writer's page boundaries may follow the chunks'.
                group = table.slice(0, ROW_GROUP_ROWS).combine_chunks()
                writer.write_table(group, row_group_size=ROW_GROUP_ROWS)
                rest = table.slice(ROW_GROUP_ROWS)
                pending, held = rest.to_batches(), rest.num_rows
                count += ROW_GROUP_ROWS
        if held or not count:
            last = pa.Table.from_batches(pending, schema=schema).combine_chunks()
            writer.write_table(last, row_group_size=ROW_GROUP_ROWS)
            count += held
    digest = hashlib.sha256()
    with open(local, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return count, digest.hexdigest()


def commit_state(
    storage: SyncStorage,
    local: str,
    info: StateInfo,
    expected_current: bytes | None,
) -> StateInfo:
    """Publish ``local`` as version ``info.version`` and move CURRENT to it, unless another run moved it.

    When CURRENT already names exactly this state (a retried advance whose first try got that far),
    nothing is written: the same inputs made the same bytes.
    """
    current = storage.read_bytes(CURRENT)
    if current != expected_current:
        if current is not None and _same_state(storage, current, info):
            return info
        raise StateMovedError(
            f"the sync state at {storage.url(None)} moved since this run read it "
            f"(CURRENT was {_describe(expected_current)}, is now {_describe(current)}): another run "
            "advanced it, so this run's view of it is stale and it is left as is"
        )
    storage.put(local, info.file)
    storage.write_atomic(CURRENT, info.to_json())
    prune(storage, keep={info.version, info.version - 1})
    return info


def _same_state(storage: SyncStorage, current: bytes, info: StateInfo) -> bool:
    try:
        return parse_current(storage, current) == info
    except SyncStateError:
        return False


def _describe(current: bytes | None) -> str:
    if current is None:
        return "absent"
    try:
        raw = json.loads(current)
        return f"version {raw.get('version')!r}, sha256 {str(raw.get('sha256'))[:12]}"
    except ValueError:
        return "unreadable"


def prune(storage: SyncStorage, keep: set[int]) -> None:
    """Remove the state versions not in ``keep``."""
    for name in storage.children():
        if name.startswith("v") and name[1:].isdigit() and int(name[1:]) not in keep:
            storage.remove(name)


def version_file(version: int) -> str:
    return f"v{version}/{STATE_FILE}"
