"""The staging area (issue 15 §1): chunks staged once with their digests, checked, compared and cleaned up."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_salesforce_bulk.client import ChunkFormat, ChunkLimits, InputError, JobSpec
from airflow_provider_salesforce_bulk.operators.sources import SourceSpec, make_source
from airflow_provider_salesforce_bulk.operators.staging import Manifest, StagingArea, compare, stage

SPEC = JobSpec(operation="insert", object="Contact")


def area(tmp_path: Path) -> StagingArea:
    from airflow.providers.common.compat.sdk import ObjectStoragePath

    return StagingArea(ObjectStoragePath(f"file://{tmp_path}/staging/dag/run/load"))


def source(names: list[str]) -> Any:
    return make_source(
        SourceSpec(records=[{"LastName": name} for name in names]),
        limits=ChunkLimits(max_size_bytes=10_000, max_records=3),
        chunk_format=ChunkFormat(),
    )


def test_a_source_is_staged_once_with_the_digest_of_each_chunk(tmp_path: Path) -> None:
    staging = area(tmp_path)
    names = [f"N{i}" for i in range(8)]
    manifest = stage(source(names), staging, "try-1-a", SPEC)
    assert [(e.first, e.count) for e in manifest.chunks] == [(0, 3), (3, 3), (6, 2)]
    assert manifest.total == 8
    with source(names).open() as chunks:
        in_memory = list(chunks)
    for entry, chunk in zip(manifest.chunks, in_memory, strict=True):
        assert staging.chunk("try-1-a", entry).data == chunk.data
        assert entry.digest == chunk.digest
        assert staging.check("try-1-a", entry) is None
    assert Manifest.load(manifest.dump()) == manifest


def test_a_missing_or_altered_staged_file_is_found(tmp_path: Path) -> None:
    staging = area(tmp_path)
    manifest = stage(source(["a", "b", "c", "d"]), staging, "try-1-a", SPEC)
    first, second = manifest.chunks
    path = tmp_path / "staging/dag/run/load/try-1-a" / first.file
    path.write_bytes(path.read_bytes().replace(b"a", b"z"))
    (tmp_path / "staging/dag/run/load/try-1-a" / second.file).unlink()
    assert "holds" in (staging.check("try-1-a", first) or "")
    assert "missing" in (staging.check("try-1-a", second) or "")


def test_bad_input_leaves_no_staged_file(tmp_path: Path) -> None:
    staging = area(tmp_path)
    bad = make_source(
        SourceSpec(records=[{"LastName": "ok"}] * 5 + [{"LastName": float("nan")}]),
        limits=ChunkLimits(max_size_bytes=10_000, max_records=2),
        chunk_format=ChunkFormat(),
    )
    with pytest.raises(InputError, match="record 5"):
        stage(bad, staging, "try-1-a", SPEC)
    assert not (tmp_path / "staging/dag/run/load/try-1-a").exists()


def test_other_tries_folders_are_removed_and_the_named_one_kept(tmp_path: Path) -> None:
    staging = area(tmp_path)
    for prefix in ("try-1-a", "try-2-b", "try-3-c"):
        stage(source(["x", "y"]), staging, prefix, SPEC)
    (tmp_path / "staging/dag/run/load/not-a-try").mkdir()
    staging.remove_others("try-2-b")
    left = sorted(p.name for p in (tmp_path / "staging/dag/run/load").iterdir())
    assert left == ["not-a-try", "try-2-b"]
    staging.remove_all()
    assert not (tmp_path / "staging/dag/run/load").exists()
    staging.remove_all()  # nothing left: no error


def test_compare_names_the_first_changed_chunk_and_its_jobs(tmp_path: Path) -> None:
    staging = area(tmp_path)
    names = [f"N{i}" for i in range(8)]
    staged = stage(source(names), staging, "try-1-a", SPEC)
    same = stage(source(names), staging, "try-2-b", SPEC)
    assert compare(staged, same, {0: ["750A"]}, "records") is None

    swapped = [*names[:3], names[4], names[3], *names[5:]]
    changed = stage(source(swapped), staging, "try-3-c", SPEC)
    message = compare(staged, changed, {0: ["750A"], 3: ["750B", "750C"]}, "8 records")
    assert message is not None
    assert "chunk 1 (records 3..5, 3 records, given to job(s) 750B, 750C)" in message
    assert "bytes differ" in message

    added = stage(source(["new", *names]), staging, "try-4-d", SPEC)
    message = compare(staged, added, {0: ["750A"]}, "8 records")
    assert message is not None
    assert "chunk 0 (records 0..2, 3 records, given to job(s) 750A)" in message

    fewer = dataclasses.replace(staged, chunks=staged.chunks[:2])
    message = compare(fewer, staged, {}, "records")
    assert message is not None
    assert "6 records in 2 chunks were staged, the source now gives 8 in 3" in message
