"""A run's change set, published next to the state before any job, so a retry can advance from it.

:class:`PendingChanges` is a small JSON-able value: the plan store records it when the run is planned,
and the advance (in this try or a retried one, in another process) rebuilds everything from it, the
state version it read and the job results Salesforce still holds. The files themselves live at
``<state>/pending/<run key>/`` and are checked by checksum when read back.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from airflow_provider_salesforce_bulk.sync.errors import SyncStateError
from airflow_provider_salesforce_bulk.sync.state import StateInfo, SyncIdentity, write_parquet
from airflow_provider_salesforce_bulk.sync.storage import SyncStorage

_BLOCK = 65_536


CHANGES_SCHEMA = pa.schema(
    [
        pa.field("external_id", pa.string(), nullable=False),
        pa.field("digest_lo", pa.uint64(), nullable=False),
        pa.field("digest_hi", pa.uint64(), nullable=False),
    ]
)
DELETES_SCHEMA = pa.schema(
    [pa.field("external_id", pa.string(), nullable=False), pa.field("sf_id", pa.string(), nullable=False)]
)


class RowFile:
    """A local Parquet file of a change set: the new and changed records' digests, or the deletes."""

    def __init__(self, path: str, schema: pa.Schema) -> None:
        self.path = path
        self.schema = schema
        self.count = 0

    def write(self, batches: Iterable[pa.RecordBatch]) -> None:
        self.count, _ = write_parquet(batches, self.path, self.schema)

    def rows(self) -> Iterator[tuple[Any, ...]]:
        for batch in pq.ParquetFile(self.path).iter_batches(batch_size=_BLOCK):
            yield from zip(*(column.to_pylist() for column in batch.columns), strict=True)

    def sha256(self) -> str:
        digest = hashlib.sha256()
        with open(self.path, "rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
        return digest.hexdigest()


@dataclass(frozen=True)
class PendingChanges:
    """What the plan store records for one change-only run (JSON-able via :meth:`to_dict`)."""

    run_key: str
    object_name: str
    external_id_field: str
    fields_fingerprint: str
    base: dict[str, Any] | None  # the StateInfo compared with (None: no state, or full_sync)
    base_current: str | None  # CURRENT's exact text when read: the advance refuses if it moved
    full_sync: bool
    changes_sha256: str
    changes_rows: int
    deletes_sha256: str
    deletes_rows: int
    next_version: int  # decided when planned, so a retried advance writes the same version

    @property
    def folder(self) -> str:
        return f"pending/{self.run_key}"

    @property
    def identity(self) -> SyncIdentity:
        return SyncIdentity(self.object_name, self.external_id_field, self.fields_fingerprint)

    @property
    def base_info(self) -> StateInfo | None:
        return None if self.base is None else StateInfo(**self.base)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> PendingChanges:
        return cls(**raw)

    @classmethod
    def publish(
        cls,
        storage: SyncStorage,
        run_key: str,
        *,
        spec_identity: SyncIdentity,
        base: StateInfo | None,
        base_current: bytes | None,
        full_sync: bool,
        changes: RowFile,
        deletes: RowFile,
    ) -> PendingChanges:
        if not run_key or "/" in run_key or run_key.startswith("."):
            raise ValueError(f"run_key must be a plain name, got {run_key!r}")
        pending = cls(
            run_key=run_key,
            object_name=spec_identity.object_name,
            external_id_field=spec_identity.external_id_field,
            fields_fingerprint=spec_identity.fields_fingerprint,
            base=None if base is None else asdict(base),
            base_current=None if base_current is None else base_current.decode(),
            full_sync=full_sync,
            changes_sha256=changes.sha256(),
            changes_rows=changes.count,
            deletes_sha256=deletes.sha256(),
            deletes_rows=deletes.count,
            next_version=_next_version(storage, base, base_current),
        )
        storage.put(changes.path, f"{pending.folder}/changes.parquet")
        storage.put(deletes.path, f"{pending.folder}/deletes.parquet")
        return pending

    def fetch(self, storage: SyncStorage, workdir: str) -> tuple[RowFile, RowFile]:
        """The change set's files, copied to ``workdir`` and checked against their checksums."""
        files = []
        for name, schema, sha in (
            ("changes", CHANGES_SCHEMA, self.changes_sha256),
            ("deletes", DELETES_SCHEMA, self.deletes_sha256),
        ):
            local = RowFile(os.path.join(workdir, f"pending-{name}.parquet"), schema)
            remote = f"{self.folder}/{name}.parquet"
            digest = hashlib.sha256()
            try:
                with storage.open_read(remote) as source, open(local.path, "wb") as target:
                    while block := source.read(1 << 20):
                        digest.update(block)
                        target.write(block)
            except FileNotFoundError:
                raise SyncStateError(
                    f"the pending change set {storage.url(remote)} of this run is missing"
                ) from None
            if digest.hexdigest() != sha:
                raise SyncStateError(
                    f"the pending change set {storage.url(remote)} is corrupt (sha256 differs)"
                )
            files.append(local)
        return files[0], files[1]


def _next_version(storage: SyncStorage, base: StateInfo | None, base_current: bytes | None) -> int:
    if base is not None:
        return base.version + 1
    if base_current is None:
        return 1
    # A full sync over a state it did not read (perhaps an unreadable one): after every version stored.
    numbers = [int(n[1:]) for n in storage.children() if n.startswith("v") and n[1:].isdigit()]
    return max(numbers, default=0) + 1
