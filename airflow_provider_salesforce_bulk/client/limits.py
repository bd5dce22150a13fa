"""The org's daily allowances (``GET /limits``) and whether they cover a planned load.

Salesforce counts two allowances an ingest load spends: **DailyBulkApiBatches** (15,000 per rolling
24 hours, shared with Bulk API 1.0; Bulk API 2.0 takes one batch per 10,000 records of a job, the
last batch possibly partial) and **DailyApiRequests** (every REST call: create, upload, close, each
poll, each result download). Reading ``/limits`` first lets a load stop before any job exists instead
of dying halfway with ``REQUEST_LIMIT_EXCEEDED`` or a job Failed for want of batches.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypeGuard

from airflow_provider_salesforce_bulk.client.errors import (
    InputError,
    OperationTimeoutError,
    RequestLimitExceededError,
    SalesforceApiError,
    SalesforceBulkError,
    UnexpectedResponseError,
)

__all__ = [
    "BATCH_RECORDS",
    "LIMITS_CHECK_MODES",
    "InsufficientLimitsError",
    "LimitUsage",
    "LimitsCheck",
    "LimitsCheckError",
    "LimitsVerdict",
    "LoadEstimate",
    "OrgLimits",
    "check_limits_before_load",
    "check_limits_mode",
    "check_load_allowance",
    "estimate_load",
    "get_limits",
]

log = logging.getLogger(__name__)

#: Records per internal batch: each started 10,000 of a job's records counts one DailyBulkApiBatches.
BATCH_RECORDS = 10_000

LimitsCheck = Literal["fail", "warn", "off"]
LIMITS_CHECK_MODES: tuple[LimitsCheck, ...] = ("fail", "warn", "off")

#: Longest wait for the ``/limits`` answer before the check counts as not made (seconds).
LIMITS_READ_TIMEOUT = 60.0

# API requests every ingest job makes besides polls: create, upload, close.
_REQUESTS_TO_SUBMIT = 3


class _HasRequest(Protocol):
    async def request(self, method: str, path: str, *, headers: Mapping[str, str] | None = ...) -> Any: ...


@dataclass(frozen=True, kw_only=True)
class LimitUsage:
    """One allowance: its daily maximum and what is left of it now."""

    max: int
    remaining: int

    @property
    def used(self) -> int:
        return max(0, self.max - self.remaining)


@dataclass(frozen=True, kw_only=True)
class OrgLimits:
    """The allowances of ``GET /limits`` a bulk load cares about (None: the org did not report it).

    ``daily_bulk_api_batches`` is read from ``DailyBulkApiBatches``, or from ``DailyBulkApiRequests``
    (the same allowance's name in older orgs and API versions). ``entries`` holds every entry with a
    ``Max`` and a ``Remaining``, by the name Salesforce gave it.
    """

    daily_api_requests: LimitUsage | None
    daily_bulk_api_batches: LimitUsage | None
    daily_bulk_v2_query_jobs: LimitUsage | None
    daily_bulk_v2_query_file_storage_mb: LimitUsage | None
    entries: Mapping[str, LimitUsage] = field(default_factory=dict, repr=False)
    unreadable: Mapping[str, str] = field(default_factory=dict, repr=False)
    """Entries whose ``Max`` or ``Remaining`` is missing, negative or not an integer, by name: what
    was wrong. Such an allowance is unknown, never taken as enough."""

    @classmethod
    def from_json(cls, body: object) -> OrgLimits:
        """Read the JSON body of ``GET /limits``; an entry without two integer counts of at least 0
        is not in :attr:`entries` but in :attr:`unreadable`, saying why."""
        if not isinstance(body, dict):
            raise UnexpectedResponseError(f"/limits answered a JSON {type(body).__name__}, not an object")
        entries: dict[str, LimitUsage] = {}
        unreadable: dict[str, str] = {}
        for name, value in body.items():
            if not isinstance(value, dict):
                unreadable[str(name)] = f"not an object: {value!r:.60}"
                continue
            top, left = value.get("Max"), value.get("Remaining")
            if _count(top) and _count(left):
                entries[str(name)] = LimitUsage(max=top, remaining=left)
            else:
                unreadable[str(name)] = f"Max {top!r:.30}, Remaining {left!r:.30}"
        batches = "DailyBulkApiBatches"
        if batches not in entries and batches not in unreadable and "DailyBulkApiRequests" in entries:
            batches = "DailyBulkApiRequests"  # the same allowance's name in older orgs and API versions
        return cls(
            daily_api_requests=entries.get("DailyApiRequests"),
            daily_bulk_api_batches=entries.get(batches),
            daily_bulk_v2_query_jobs=entries.get("DailyBulkV2QueryJobs"),
            daily_bulk_v2_query_file_storage_mb=entries.get("DailyBulkV2QueryFileStorageMB"),
            entries=entries,
            unreadable=unreadable,
        )


def _count(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


async def get_limits(client: Any) -> OrgLimits:
    """``GET /services/data/vXX.X/limits`` through a :class:`BulkIngestClient` or a
    :class:`SalesforceSession` (anything with the session's ``request``).

    The call itself counts one DailyApiRequests. Raises what the session raises for an error answer
    (:class:`SalesforceApiError` subclasses, :class:`TransportError`) and
    :class:`UnexpectedResponseError` for a body that is not a JSON object.
    """
    session: _HasRequest = getattr(client, "session", client)
    response = await session.request("GET", "limits", headers={"Accept": "application/json"})
    try:
        body = response.json()
    except ValueError as exc:
        raise UnexpectedResponseError(f"/limits did not answer JSON: {exc}") from None
    return OrgLimits.from_json(body)


@dataclass(frozen=True, kw_only=True)
class LoadEstimate:
    """What a load is expected to spend: ``batches`` of DailyBulkApiBatches and ``api_requests`` of
    DailyApiRequests, for ``jobs`` jobs holding ``records`` records."""

    jobs: int
    records: int
    batches: int
    api_requests: int


def estimate_load(
    job_record_counts: Iterable[int], *, polls_per_job: int = 20, downloads_per_job: int = 2
) -> LoadEstimate:
    """Estimate a load from the number of records of each job it will create.

    Each job takes ``ceil(records / 10,000)`` batches and ``3 + polls_per_job + downloads_per_job``
    API requests (create, upload, close, the polls until it ends, its result downloads: by default
    successful and failed results). Pass the counts the operator's validation pass saw per chunk.
    """
    _check_count("polls_per_job", polls_per_job)
    _check_count("downloads_per_job", downloads_per_job)
    jobs = records = batches = 0
    for count in job_record_counts:
        _check_count("job record count", count)
        jobs += 1
        records += count
        batches += max(1, math.ceil(count / BATCH_RECORDS))
    per_job = _REQUESTS_TO_SUBMIT + polls_per_job + downloads_per_job
    return LoadEstimate(jobs=jobs, records=records, batches=batches, api_requests=jobs * per_job)


@dataclass(frozen=True)
class LimitsVerdict:
    """Whether the allowances left cover a load; ``message`` names every number either way."""

    ok: bool
    message: str
    estimate: LoadEstimate
    limits: OrgLimits = field(repr=False)
    shortfalls: tuple[str, ...] = ()

    def raise_if_short(self) -> None:
        """Raise :class:`InsufficientLimitsError` when the allowances do not cover the load."""
        if not self.ok:
            raise InsufficientLimitsError(self.message, verdict=self)


class LimitsCheckError(SalesforceBulkError):
    """The limits check refused a load before any job existed (``limits_check="fail"``).

    Retrying soon does not help (the allowances refill over a rolling 24 hours; a missing
    permission stays missing), so an operator fails without retries.
    """


class InsufficientLimitsError(LimitsCheckError):
    """The org's daily allowances left do not cover a planned load (``verdict`` says by how much;
    None when Salesforce already refused the /limits call with ``REQUEST_LIMIT_EXCEEDED``)."""

    def __init__(self, message: str, *, verdict: LimitsVerdict | None) -> None:
        super().__init__(message)
        self.verdict = verdict


def check_load_allowance(limits: OrgLimits, estimate: LoadEstimate, *, margin: int = 0) -> LimitsVerdict:
    """Compare a :class:`LoadEstimate` with the allowances left.

    ``margin`` API requests are kept in reserve on top of the estimate (for other integrations of
    the org, or the operator's own extra calls). An allowance the org did not report, or reported
    with a ``Remaining`` that is negative or not an integer, is unknown: a shortfall (the load could
    not be shown to fit), never a reason to skip the check.
    """
    _check_count("margin", margin)
    shortfalls: list[str] = []
    notes: list[str] = []
    batches_needed = (
        f"{estimate.batches:,} DailyBulkApiBatches needed ({estimate.records:,} records in "
        f"{estimate.jobs:,} jobs, one batch per started {BATCH_RECORDS:,} records of a job)"
    )
    _compare(
        "DailyBulkApiBatches",
        limits.daily_bulk_api_batches,
        estimate.batches,
        batches_needed,
        limits,
        shortfalls,
        notes,
    )
    needed = estimate.api_requests + margin
    what = f"{needed:,} DailyApiRequests needed ({estimate.api_requests:,} for {estimate.jobs:,} jobs" + (
        f" + {margin:,} margin)" if margin else ")"
    )
    _compare("DailyApiRequests", limits.daily_api_requests, needed, what, limits, shortfalls, notes)
    if shortfalls:
        message = (
            "the org's daily allowances left do not cover this load: "
            + "; ".join(shortfalls)
            + (f" ({'; '.join(notes)})" if notes else "")
            + "; they refill over a rolling 24 hours"
        )
    else:
        message = "the org's daily allowances cover this load: " + "; ".join(notes)
    return LimitsVerdict(
        ok=not shortfalls, message=message, estimate=estimate, limits=limits, shortfalls=tuple(shortfalls)
    )


def _compare(
    name: str,
    usage: LimitUsage | None,
    needed: int,
    what: str,
    limits: OrgLimits,
    shortfalls: list[str],
    notes: list[str],
) -> None:
    """One allowance against what the load needs: a shortfall when short or unknown, else a note."""
    if usage is None:
        bad = limits.unreadable.get(name)
        if name == "DailyBulkApiBatches" and bad is None:
            bad = limits.unreadable.get("DailyBulkApiRequests")
        left = f"/limits gave {bad}" if bad is not None else f"the org did not report {name}"
        shortfalls.append(f"{what} but what is left is unknown ({left}): taken as exhausted")
    elif needed > usage.remaining:
        shortfalls.append(f"{what} but {usage.remaining:,} of {usage.max:,} left")
    else:
        notes.append(f"{what}, {usage.remaining:,} of {usage.max:,} left")


def check_limits_mode(value: object, name: str = "limits_check") -> LimitsCheck:
    """Validate an operator's ``limits_check`` setting: ``"fail"``, ``"warn"`` or ``"off"``."""
    if not isinstance(value, str) or value not in LIMITS_CHECK_MODES:
        raise InputError(f"{name} must be one of 'fail', 'warn', 'off', got {value!r}", field=name)
    return value


def _check_count(name: str, value: object) -> None:
    if not _count(value):
        raise InputError(f"{name} must be an int of at least 0, got {value!r}", field=name.replace(" ", "_"))


async def check_limits_before_load(
    client: Any,
    job_record_counts: Iterable[int],
    mode: str,
    *,
    polls_per_job: int = 20,
    downloads_per_job: int = 2,
    margin: int = 0,
    timeout: float = LIMITS_READ_TIMEOUT,
) -> LimitsVerdict | None:
    """The whole check an operator runs before its first job, by its ``limits_check`` setting.

    ``"off"``: nothing is asked, None is returned. Otherwise ``/limits`` is read and compared with
    :func:`estimate_load` of ``job_record_counts`` (see :func:`check_load_allowance`); a shortfall
    raises :class:`InsufficientLimitsError` with ``"fail"`` and is logged as a warning with
    ``"warn"``; an allowance whose ``Remaining`` is missing, negative or not an integer is unknown,
    a shortfall. ``/limits`` refused with 403 or 404 (the user lacks the *View Setup and
    Configuration* permission, say) raises :class:`LimitsCheckError` with ``"fail"``. Any other
    failure to read it (5xx, an answer that is not JSON, no answer within ``timeout`` seconds) is
    raised as it is with ``"fail"`` (worth a retry). With ``"warn"`` none of them stops the load:
    each is a warning and None is returned.
    """
    mode = check_limits_mode(mode)
    if mode == "off":
        return None
    estimate = estimate_load(
        job_record_counts, polls_per_job=polls_per_job, downloads_per_job=downloads_per_job
    )
    try:
        limits = await asyncio.wait_for(get_limits(client), timeout)
    except RequestLimitExceededError as exc:
        message = (
            "the org has no DailyApiRequests left: /limits was refused with "
            f"{exc.error_code or exc.status_code} ({exc}); this load needs about {estimate.api_requests:,}"
        )
        if mode == "fail":
            raise InsufficientLimitsError(message, verdict=None) from None
        log.warning("%s; loading anyway (limits_check='warn')", message)
        return None
    except SalesforceApiError as exc:
        if exc.status_code in (403, 404):
            message = (
                f"cannot read the org's limits (/limits answered {exc.status_code} "
                f"{exc.error_code or ''}: {exc}); "
                "the user needs the View Setup and Configuration permission, or set limits_check to "
                "'warn' or 'off' to load without this check"
            )
            if mode == "fail":
                raise LimitsCheckError(message) from None
            log.warning("%s", message)
            return None
        if mode == "fail":
            raise  # a server error: worth a retry
        log.warning("cannot read the org's limits (%s); loading anyway (limits_check='warn')", exc)
        return None
    except (SalesforceBulkError, asyncio.TimeoutError) as exc:
        # A transport failure, an answer that is not JSON (a proxy's HTML page), no answer in time:
        # the check could not be made. "warn" never stops a load for it; "fail" is retried.
        if isinstance(exc, asyncio.TimeoutError):
            exc = OperationTimeoutError(f"/limits did not answer within {timeout:g}s")
        if mode == "fail":
            raise exc from None
        log.warning(
            "cannot read the org's limits (%s: %s); loading anyway (limits_check='warn')",
            type(exc).__name__,
            exc,
        )
        return None
    verdict = check_load_allowance(limits, estimate, margin=margin)
    if not verdict.ok:
        if mode == "fail":
            verdict.raise_if_short()
        log.warning("%s; loading anyway (limits_check='warn')", verdict.message)
    else:
        log.info("%s", verdict.message)
    return verdict
