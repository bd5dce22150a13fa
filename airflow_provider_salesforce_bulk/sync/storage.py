"""Where a sync state lives: a tiny storage protocol over fsspec.

Every location the operator accepts comes down to an fsspec filesystem and a root path in it:
an ``ObjectStoragePath`` or a ``UPath`` (both carry ``.fs`` and ``.path``), a ``(filesystem, path)``
pair, a URL string (``s3://bucket/prefix``, ``memory://...``) or a local path. The engine needs only
a handful of operations (:class:`SyncStorage`), so any fsspec backend serves.

Atomic replacement is what the state's CURRENT pointer relies on: on object storage one PUT of a
small object is atomic; on a local disk the pointer is written to a temporary name and renamed.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from typing import IO, Any

import fsspec  # type: ignore[import-untyped]
from fsspec.implementations.local import LocalFileSystem  # type: ignore[import-untyped]


class SyncStorage:
    """Files under ``root`` of the fsspec filesystem ``fs``, named by paths relative to it."""

    def __init__(self, fs: Any, root: str) -> None:
        self.fs = fs
        self.root = root.rstrip("/") or "/"

    def __repr__(self) -> str:
        return f"SyncStorage({self.url(None)!r})"

    def path(self, name: str) -> str:
        return f"{self.root}/{name}"

    def url(self, name: str | None) -> str:
        """The location as a user would name it, for error messages."""
        protocol = self.fs.protocol if isinstance(self.fs.protocol, str) else self.fs.protocol[0]
        where = self.root if name is None else self.path(name)
        return where if protocol in ("file", "local") else f"{protocol}://{where.lstrip('/')}"

    def read_bytes(self, name: str) -> bytes | None:
        """The file's bytes, or None when it does not exist."""
        try:
            data: bytes = self.fs.cat_file(self.path(name))
        except FileNotFoundError:
            return None
        return data

    def write_atomic(self, name: str, data: bytes) -> None:
        """Replace the file with ``data`` so that a reader sees the old bytes or the new, never a mix."""
        target = self.path(name)
        if isinstance(self.fs, LocalFileSystem):
            self.fs.makedirs(self.fs._parent(target), exist_ok=True)
            temporary = f"{target}.tmp-{uuid.uuid4().hex}"
            with open(temporary, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, target)
        else:
            self.fs.pipe_file(target, data)

    def open_read(self, name: str) -> IO[bytes]:
        handle: IO[bytes] = self.fs.open(self.path(name), "rb")
        return handle

    def put(self, local_file: str, name: str) -> None:
        """Upload a local file (written in full before it is named anywhere a reader looks)."""
        target = self.path(name)
        self.fs.makedirs(self.fs._parent(target), exist_ok=True)
        self.fs.put_file(local_file, target)

    def exists(self, name: str) -> bool:
        return bool(self.fs.exists(self.path(name)))

    def children(self) -> list[str]:
        """The names directly under the root (none when it does not exist)."""
        return self.children_of(None)

    def children_of(self, name: str | None) -> list[str]:
        """The names directly under the folder ``name`` (the root by default; none when it does not exist)."""
        try:
            entries = self.fs.ls(self.root if name is None else self.path(name), detail=False)
        except FileNotFoundError:
            return []
        return sorted(str(entry).rstrip("/").rsplit("/", 1)[-1] for entry in entries)

    def remove(self, name: str) -> None:
        """Remove a file or a folder and what it holds; a missing one is no error."""
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm(self.path(name), recursive=True)


def storage_for(location: Any) -> SyncStorage:
    """The storage at ``location``: a :class:`SyncStorage`, an fsspec path object (``.fs`` and
    ``.path``: ``ObjectStoragePath``, ``UPath``), a ``(filesystem, path)`` pair, a URL or a local path."""
    if isinstance(location, SyncStorage):
        return location
    fs = getattr(location, "fs", None)
    if fs is not None and isinstance(getattr(location, "path", None), str):
        return SyncStorage(fs, location.path)
    if isinstance(location, tuple) and len(location) == 2:
        return SyncStorage(location[0], str(location[1]))
    if isinstance(location, (str, os.PathLike)):
        text = os.fspath(location)
        if "://" in text:
            fs, root = fsspec.core.url_to_fs(text)
            return SyncStorage(fs, root)
        return SyncStorage(LocalFileSystem(), os.path.abspath(text))
    raise TypeError(
        f"sync_state_path must be a path, a URL, an ObjectStoragePath/UPath or (filesystem, path), "
        f"got {type(location).__name__}"
    )
