"""Staged chunks: the exact bytes the first try cut from its input, kept so every retry sends those.

A retry must never send a record that an earlier try's jobs hold, nor skip one, even when the input
changed between the tries (a query without ``ORDER BY``, a regenerated file, rows that arrived). So
the input is read once: the try that starts the load writes every chunk it will upload into a file
under the task instance's staging folder, in a folder of its own (``try-<n>-<id>``), computing each
file's SHA-256 as it writes; the plan records the manifest (per chunk: its file, digest, first record
and record count) before the first job is created. Every later try sends from those files, after
checking each digest, never from the live source.

When the files are gone or corrupt (a local staging folder on another worker), the chunks are cut
again from the live source and compared with the manifest, digest by digest: any difference fails
the task before a job is created (see :func:`compare`).

The staging folder of a task instance is removed once every job of the load has ended (the summary
is pushed): every job was closed by then, so a retry only reattaches and never needs a chunk from the
input again. At its start each try removes the other tries' folders the plan does not name (left by
a try that was killed).
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import IO, Any

from airflow_provider_salesforce_bulk.client import JobSpec
from airflow_provider_salesforce_bulk.client.chunk_files import FileSink, file_digest
from airflow_provider_salesforce_bulk.client.csv_format import Chunk, StagedChunk
from airflow_provider_salesforce_bulk.operators.chunk_source import ChunkSource

__all__ = ["Manifest", "StagedEntry", "StagingArea", "compare", "replay", "stage"]

log = logging.getLogger(__name__)

_TRY_PREFIX = "try-"


@dataclasses.dataclass(frozen=True)
class StagedEntry:
    """One staged chunk as the plan records it."""

    file: str
    first: int
    count: int
    size: int
    digest: str

    def span(self) -> str:
        return f"records {self.first}..{self.first + self.count - 1}"


@dataclasses.dataclass(frozen=True)
class Manifest:
    """Every chunk of the load, staged under ``prefix`` (a folder of the staging area)."""

    prefix: str
    chunks: tuple[StagedEntry, ...]
    # The CSV header's field names: the describe check before the first job needs them.
    fieldnames: tuple[str, ...] = ()

    @property
    def total(self) -> int:
        return sum(entry.count for entry in self.chunks)

    def dump(self) -> dict[str, Any]:
        return {
            "prefix": self.prefix,
            "total": self.total,
            "chunks": [dataclasses.asdict(entry) for entry in self.chunks],
            "fieldnames": list(self.fieldnames),
        }

    @classmethod
    def load(cls, raw: Any) -> Manifest | None:
        """The manifest a plan holds, or ``None`` (a plan from before staging, or none)."""
        if not isinstance(raw, Mapping) or not isinstance(raw.get("chunks"), list):
            return None
        entries = tuple(
            StagedEntry(str(c["file"]), int(c["first"]), int(c["count"]), int(c["size"]), str(c["digest"]))
            for c in raw["chunks"]
        )
        return cls(str(raw["prefix"]), entries, tuple(str(name) for name in raw.get("fieldnames") or ()))


class StagingArea:
    """A task instance's staging folder (any ``ObjectStoragePath``): one sub-folder per try."""

    def __init__(self, root: Any) -> None:
        self.root = root

    def __repr__(self) -> str:
        return f"<StagingArea {self.root}>"

    @staticmethod
    def new_prefix(try_number: int | None) -> str:
        # The random part keeps two tries with the same number (a clear) apart.
        return f"{_TRY_PREFIX}{try_number if try_number is not None else 0}-{uuid.uuid4().hex[:8]}"

    def folder(self, prefix: str) -> Any:
        return self.root / prefix

    def local_folder(self, prefix: str) -> str | None:
        """The try's folder as a local path (created), when the staging area is on this machine."""
        folder = self.folder(prefix)
        if getattr(folder, "protocol", "file") not in ("file", "local", ""):
            return None
        folder.mkdir(parents=True, exist_ok=True)
        return str(folder.path)

    def sink(self, prefix: str) -> FileSink:
        folder = self.folder(prefix)
        folder.mkdir(parents=True, exist_ok=True)

        def create(name: str) -> IO[bytes]:
            return (folder / name).open("wb")  # type: ignore[no-any-return]

        return FileSink(create, lambda name: self._reader(folder / name), lambda name: str(folder / name))

    @staticmethod
    def _reader(path: Any) -> Any:
        def read() -> IO[bytes]:
            return path.open("rb")  # type: ignore[no-any-return]

        return read

    def chunk(self, prefix: str, entry: StagedEntry) -> StagedChunk:
        path = self.folder(prefix) / entry.file
        return StagedChunk(
            path=str(path),
            first_record_index=entry.first,
            record_count=entry.count,
            size=entry.size,
            digest=entry.digest,
            reader=self._reader(path),
        )

    def check(self, prefix: str, entry: StagedEntry) -> str | None:
        """Why the staged file of ``entry`` cannot be sent (missing, other size or digest), or None."""
        chunk = self.chunk(prefix, entry)
        try:
            digest, size = file_digest(chunk.open)
        except FileNotFoundError:
            return f"{chunk.path} is missing"
        except OSError as exc:
            return f"{chunk.path} cannot be read ({exc.strerror or exc})"
        if size != entry.size or digest != entry.digest:
            return f"{chunk.path} holds {size} bytes of digest {digest[:12]}.., not the {entry.size} staged"
        return None

    def remove(self, prefix: str) -> None:
        self._rm(self.folder(prefix))

    def remove_others(self, keep: str | None) -> None:
        """Remove every try's folder but ``keep``'s (orphans of killed tries)."""
        try:
            children = list(self.root.iterdir()) if self.root.exists() else []
        except OSError as exc:
            log.warning("Could not list the staging folder %s: %s", self.root, exc)
            return
        for child in children:
            if child.name.startswith(_TRY_PREFIX) and child.name != keep:
                log.info("Removing %s, staged by an earlier try and no longer needed", child)
                self._rm(child)

    def remove_all(self) -> None:
        self._rm(self.root)

    @staticmethod
    def _rm(path: Any) -> None:
        try:
            if path.exists():
                path.fs.rm(path.path, recursive=True)
        except OSError as exc:  # cleanup never fails a task; the next try removes it
            log.warning("Could not remove the staged copy %s: %s", path, exc)


def stage(source: ChunkSource, area: StagingArea, prefix: str, spec: JobSpec) -> Manifest:
    """Read ``source`` once, writing every chunk into files under ``prefix``; the manifest of them.

    Raises what reading the source raises (an :class:`InputError` for bad input), after removing
    what was written.
    """
    sink = area.sink(prefix)
    entries: list[StagedEntry] = []
    fieldnames: list[str] = []
    try:
        with source.open_into(sink) as chunks:
            for chunk in chunks:
                if not entries:  # every chunk repeats the first one's header
                    fieldnames = chunk.fieldnames(spec.column_delimiter)
                    spec.check_fieldnames(fieldnames)
                name = chunk.path.rsplit("/", 1)[-1] if isinstance(chunk, StagedChunk) else ""
                entries.append(
                    StagedEntry(name, chunk.first_record_index, chunk.record_count, chunk.size, chunk.digest)
                )
    except BaseException:
        sink.close()
        area.remove(prefix)
        raise
    return Manifest(prefix, tuple(entries), tuple(fieldnames))


def replay(
    area: StagingArea,
    manifest: Manifest,
    needed: Sequence[StagedEntry],
    read_again: Callable[[], Manifest],
    jobs_of: Mapping[int, list[str]],
    description: str,
) -> tuple[Manifest, list[Chunk]]:
    """The chunks of a retry and their manifest: the staged files, when every ``needed`` one matches
    its digest; otherwise the chunks cut again from the live source (``read_again``), if they are
    exactly those staged (else ``AirflowFailException`` naming the difference, before any job).
    """
    from airflow.providers.common.compat.sdk import AirflowFailException

    area.remove_others(manifest.prefix)
    problems = [problem for entry in needed if (problem := area.check(manifest.prefix, entry))]
    if not problems:
        log.info("Sending the chunks staged by the first try from %s", area.folder(manifest.prefix))
        return manifest, [area.chunk(manifest.prefix, entry) for entry in manifest.chunks]
    log.warning(
        "The staged copy cannot be used (%s%s): cutting the chunks again from %s to compare them",
        problems[0],
        f" and {len(problems) - 1} more" if len(problems) > 1 else "",
        description,
    )
    rebuilt = read_again()
    problem = compare(manifest, rebuilt, jobs_of, description)
    if problem is not None:
        area.remove(rebuilt.prefix)
        raise AirflowFailException(problem)
    log.info("The source gives exactly the staged chunks again: sending from %s", rebuilt.prefix)
    return rebuilt, [area.chunk(rebuilt.prefix, entry) for entry in rebuilt.chunks]


def compare(
    staged: Manifest, rebuilt: Manifest, jobs_of: Mapping[int, list[str]], description: str
) -> str | None:
    """The first difference between the staged chunks and those cut again from the live source.

    ``jobs_of`` maps a chunk's first record to the jobs an earlier try gave it. Any difference fails
    the load: a chunk with jobs may have loaded records the new cut holds elsewhere, and one without
    jobs would load input the first try never read.
    """
    for index, (old, new) in enumerate(zip(staged.chunks, rebuilt.chunks, strict=False)):
        if (old.first, old.count, old.digest) == (new.first, new.count, new.digest):
            continue
        changes = []
        if old.first != new.first or old.count != new.count:
            changes.append(f"now records {new.first}..{new.first + new.count - 1}")
        if old.digest != new.digest:
            changes.append(f"its bytes differ (sha256 {old.digest[:12]}.. staged, {new.digest[:12]}.. now)")
        return _mismatch(index, old, jobs_of, description, "; ".join(changes))
    if len(staged.chunks) != len(rebuilt.chunks):
        index = min(len(staged.chunks), len(rebuilt.chunks))
        what = (
            f"{staged.total} records in {len(staged.chunks)} chunks were staged, the source now gives "
            f"{rebuilt.total} in {len(rebuilt.chunks)}"
        )
        if index < len(staged.chunks):
            return _mismatch(index, staged.chunks[index], jobs_of, description, what)
        return f"{description} changed since the first try: {what}"
    return None


def _mismatch(
    index: int, entry: StagedEntry, jobs_of: Mapping[int, list[str]], description: str, what: str
) -> str:
    jobs = jobs_of.get(entry.first) or []
    held = f"given to job(s) {', '.join(jobs)}" if jobs else "not given to any job yet"
    return (
        f"{description} changed since the first try and its staged copy is gone: chunk {index} "
        f"({entry.span()}, {entry.count} records, {held}): {what}. Resending could load records twice "
        "or skip some; restore the input the first try read (or its staged copy), or check the org and "
        "start a new run"
    )
