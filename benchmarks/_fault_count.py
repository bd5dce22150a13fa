"""How the fault bench counts a load: by a key the org does NOT keep unique, so a record sent twice is
stored twice and shows up, and the verdict of a run.

Counting by a unique field (``External_Id__c``) cannot see a duplicate: the org refuses the second
insert with DUPLICATE_VALUE, which then reads as a failed record, not as a record loaded twice.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any

EXACTLY_ONCE = "exactly once"
FAILED_LOUDLY = "failed loudly before any new job"
DUPLICATED_OR_MISSING = "DUPLICATED/MISSING"
FAILED_AFTER_NEW_JOBS = "FAILED AFTER SENDING"
FAILED_UNNAMED = "FAILED WITHOUT NAMING THE CHUNK"
SUMMARY_NOT_ORG = "SUMMARY != ORG"


@dataclasses.dataclass(frozen=True)
class LoadCount:
    """What the org holds against the input.

    Attributes
    ----------
    stored
        Records the org holds.
    duplicated
        Stored records beyond the first of each key: records sent more than once.
    missing
        Keys of the input neither stored nor reported failed/unprocessed by the summary. When the
        input changed between tries, counted against the version the task says it loaded (the one
        with as many records as the summary's total; a task may load what its first try read or
        what the source holds now, but all of one of them), else the version the org matches best.
    extra
        Stored keys found in no version of the input.
    version
        Index of the input version ``missing`` was counted against.
    """

    stored: int
    duplicated: int
    missing: int
    extra: int
    version: int


def count_load(
    stored_keys: Iterable[str],
    inputs: Sequence[Collection[str]],
    reported_not_stored: int = 0,
    claimed_records: int | None = None,
) -> LoadCount:
    """Count ``stored_keys`` (one per record the org holds) against the versions of the input.

    ``claimed_records`` is the summary's record total: it names the version the task loaded.
    """
    counts = collections.Counter(stored_keys)
    held = set(counts)
    candidates = [i for i, keys in enumerate(inputs) if len(keys) == claimed_records] or range(len(inputs))
    missing, version = min((len(set(inputs[i]) - held) - reported_not_stored, i) for i in candidates)
    known: set[str] = set().union(*inputs)
    return LoadCount(
        stored=sum(counts.values()),
        duplicated=sum(c - 1 for c in counts.values()),
        missing=missing,
        extra=len(held - known),
        version=version,
    )


def stored_keys(records: Iterable[Mapping[str, Any]], key_field: str) -> list[str]:
    """The key of every stored record (the admin endpoint's rows)."""
    return [str(r.get(key_field)) for r in records]


def verdict(
    count: LoadCount,
    *,
    succeeded: bool,
    summary_vs_org: int | None,
    new_jobs_after_kill: int,
    failure: str | None,
) -> str:
    """The verdict of a kill-then-change run.

    A task may pass two ways: every record once (green, the summary equal to the org), or failed
    before creating any job after the kill, with a message (``failure``) naming the chunk that
    changed: nothing sent twice, nothing skipped silently.
    """
    if count.duplicated or count.extra or (succeeded and count.missing):
        return DUPLICATED_OR_MISSING
    if summary_vs_org not in (0, None) or (succeeded and summary_vs_org is None):
        return SUMMARY_NOT_ORG
    if succeeded:
        return EXACTLY_ONCE
    if new_jobs_after_kill:
        return FAILED_AFTER_NEW_JOBS
    if failure and "chunk" in failure.lower():
        return FAILED_LOUDLY
    return FAILED_UNNAMED
