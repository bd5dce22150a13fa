"""Atomic extract output: pages staged apart, published only when every page is written and counted,
then a manifest and a ``_SUCCESS`` marker written last.

Layout of ``output_path``::

    part-00000.parquet ...      the published parts (documented names)
    _manifest.json              files with their records and bytes, job id, SOQL, watermark, format
    _SUCCESS                    empty; written last: the folder is complete (Spark/Hadoop convention)
    _staging/<token>/part-*     a run in progress (removed at publish, or by the next publish)

Publishing, in this order: delete ``_SUCCESS``, then ``_manifest.json``, then every ``part-*`` of an
earlier extract; move the staged parts into place (a rename on local disk; a copy then a delete on
object storage, which has no rename); write ``_manifest.json``; write ``_SUCCESS``; remove
``_staging``. A run that fails or is killed before publishing leaves the earlier extract untouched (and
complete); one killed while publishing leaves no ``_SUCCESS``. So a folder with ``_SUCCESS`` always
holds exactly the files its manifest lists, never a mix of two extracts.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from airflow_provider_salesforce_bulk.client import InputError
from airflow_provider_salesforce_bulk.operators.query_output import display_path

__all__ = [
    "MANIFEST_NAME",
    "STAGING_FOLDER",
    "SUCCESS_NAME",
    "Staging",
    "check_output_dir",
    "manifest",
    "published_manifest",
]

log = logging.getLogger(__name__)

STAGING_FOLDER = "_staging"
MANIFEST_NAME = "_manifest.json"
SUCCESS_NAME = "_SUCCESS"
MANIFEST_VERSION = 1

_PART = re.compile(r"^part-(\d{5,})\.(csv|parquet)$")
# Which package brings the filesystem of a protocol (the ImportError of fsspec names only the first).
_PACKAGES = {
    "s3": "s3fs (apache-airflow-providers-amazon[s3fs])",
    "s3a": "s3fs (apache-airflow-providers-amazon[s3fs])",
    "gs": "gcsfs (apache-airflow-providers-google)",
    "gcs": "gcsfs (apache-airflow-providers-google)",
    "abfs": "adlfs (apache-airflow-providers-microsoft-azure)",
    "abfss": "adlfs (apache-airflow-providers-microsoft-azure)",
    "az": "adlfs (apache-airflow-providers-microsoft-azure)",
    "adl": "adlfs (apache-airflow-providers-microsoft-azure)",
}


def _is_local(path: Any) -> bool:
    return getattr(path, "protocol", None) in ("", "file", "local")


def check_output_dir(resolve: Callable[[], Any], shown_path: str) -> None:
    """Before any query job: the folder (``resolve()``) can be named on an installed filesystem,
    created, and a file written and deleted in it. An :class:`InputError` naming the path (and the
    package to install) otherwise: a bad path is the DAG's to fix, not a reason to run the query."""
    shown = shown_path
    protocol = shown_path.split("://", 1)[0] if "://" in shown_path else "file"
    try:
        # Some Airflow versions look the filesystem up when the path is made, others when it is used.
        directory = resolve()
        shown = display_path(directory)
        probe = directory / f"_probe-{uuid.uuid4().hex}"
        directory.mkdir(parents=True, exist_ok=True)
        with probe.open("wb") as file:
            file.write(b"")
        probe.unlink()
    except (ImportError, ValueError) as exc:
        # Airflow 3.1 says "No filesystem registered for scheme s3" (a ValueError), later ones raise
        # fsspec's ImportError ("Install s3fs to access S3").
        if not isinstance(exc, ImportError) and "no filesystem" not in str(exc).lower():
            raise InputError(
                f"output_path {shown} cannot be written: {type(exc).__name__}: {exc}", field="output_path"
            ) from None
        package = _PACKAGES.get(protocol, f"the fsspec filesystem of {protocol!r}")
        raise InputError(
            f"output_path {shown}: the {protocol}:// filesystem is not installed; install {package} ({exc})",
            field="output_path",
        ) from None
    except OSError as exc:
        raise InputError(
            f"output_path {shown} cannot be written: {type(exc).__name__}: {exc}", field="output_path"
        ) from None


class Staging:
    """One run's staging folder under ``directory`` and its publication."""

    def __init__(self, directory: Any, label: str = "") -> None:
        self.directory = directory
        token = re.sub(r"[^A-Za-z0-9._-]", "_", f"{label}-{uuid.uuid4().hex[:12]}".strip("-"))
        self.folder = directory / STAGING_FOLDER / token

    def part(self, name: str) -> Any:
        return self.folder / name

    def discard(self) -> None:
        """Remove this run's staged files (best effort: the next publish removes what is left)."""
        _remove_tree(self.folder)

    def publish(self, names: Sequence[str], manifest: Mapping[str, Any]) -> list[Any]:
        """Put the staged ``names`` in place of the earlier extract, then the manifest and ``_SUCCESS``."""
        directory = self.directory
        for marker in (SUCCESS_NAME, MANIFEST_NAME):
            _unlink(directory / marker)
        if directory.exists():
            for child in list(directory.iterdir()):
                if _PART.match(child.name) and child.is_file():
                    child.unlink()
        published = []
        for name in names:
            staged, final = self.part(name), directory / name
            if _is_local(directory):
                os.replace(staged.path, final.path)
            else:
                staged.copy(final)
                staged.unlink()
            published.append(final)
        body = json.dumps(manifest, indent=2, sort_keys=True).encode("utf-8")
        with (directory / MANIFEST_NAME).open("wb") as file:
            file.write(body)
        with (directory / SUCCESS_NAME).open("wb") as file:
            file.write(b"")
        _remove_tree(directory / STAGING_FOLDER)
        return published


def manifest(
    *,
    files: Sequence[Mapping[str, Any]],
    job_id: str,
    soql: str,
    operation: str,
    object_name: str | None,
    output_format: str,
    watermark: Mapping[str, Any] | None,
    task: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """What ``_manifest.json`` holds: readers check ``_SUCCESS``, then read exactly these files."""
    return {
        "manifest_version": MANIFEST_VERSION,
        "task": dict(task) if task is not None else None,
        "job_id": job_id,
        "operation": operation,
        "object": object_name,
        "soql": soql,
        "output_format": output_format,
        "records": sum(int(f["records"]) for f in files),
        "files": [{"name": f["name"], "records": f["records"], "bytes": f["bytes"]} for f in files],
        "watermark": dict(watermark) if watermark is not None else None,
        "published_at": datetime.datetime.now(datetime.timezone.utc).isoformat(),
    }


def published_manifest(directory: Any) -> dict[str, Any] | None:
    """The manifest of the complete extract in ``directory`` (``_SUCCESS`` present), else None."""
    try:
        if not (directory / SUCCESS_NAME).exists():
            return None
        with (directory / MANIFEST_NAME).open("rb") as file:
            value = json.loads(file.read())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _unlink(path: Any) -> None:
    try:
        if path.exists():
            path.unlink()
    except FileNotFoundError:
        pass


def _remove_tree(path: Any) -> None:
    try:
        if not path.exists():
            return
        if _is_local(path):
            import shutil

            shutil.rmtree(path.path, ignore_errors=True)
        else:
            path.fs.rm(path.path, recursive=True)
    except Exception as exc:  # cleanup only: never hides the failure that led here
        log.warning("Could not remove %s: %s: %s", display_path(path), type(exc).__name__, exc)
