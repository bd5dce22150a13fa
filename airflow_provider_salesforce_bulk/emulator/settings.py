"""Everything an emulator run can be configured with: org behaviour, limits, speed and faults."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

#: Settings that may be changed while the emulator runs (through the admin endpoint or the handle).
RUNTIME_SETTINGS = frozenset(
    {
        "session_timeout_seconds",
        "upload_limit_bytes",
        "request_limit_bytes",
        "job_page_size",
        "hard_delete_enabled",
        "records_per_second",
        "daily_api_requests_max",
        "daily_bulk_batches_max",
        "daily_bulk_query_jobs_max",
        "min_api_version",
        "max_api_version",
        "error_503_rate",
        "error_500_rate",
        "drop_rate",
        "latency_seconds",
        "session_expiry_every_seconds",
        "lock_failure_rate",
        "lock_contention_seconds",
        "job_failure_rate",
        "lost_close_rate",
        "hold_processing",
        "seed",
    }
)


@dataclasses.dataclass
class EmulatorSettings:
    """How the emulated org behaves.

    Parameters
    ----------
    host, port
        Where to listen. Only loopback addresses are accepted; port 0 picks a free port.
    db
        SQLite database path; ``":memory:"`` keeps everything in memory for one run.
    schema_path
        JSON schema of the org; None uses the default org shipped with the package.
    session_timeout_seconds
        Lifetime of an access token (Salesforce's session timeout; 2 hours by default).
    upload_limit_bytes
        Largest CSV accepted by one upload (100 MB, as Salesforce), counted after decompression;
        the bytes on the wire are held to the same bound.
    request_limit_bytes
        Largest body of any other request (job specs, logins, settings), on the wire and after
        decompression: the emulator never inflates more than this, so a gzip bomb costs nothing.
    job_page_size
        Jobs per page of ``GET /jobs/ingest``.
    hard_delete_enabled
        False answers ``hardDelete`` jobs with FEATURENOTENABLED, like a user without the permission.
    records_per_second
        Processing speed; None processes as fast as possible ("instant").
    daily_api_requests_max, daily_bulk_batches_max
        24-hour limits reported by ``/limits`` and enforced.
    daily_bulk_query_jobs_max
        Query jobs per rolling 24 hours (``DailyBulkV2QueryJobs``, 10,000 in Salesforce); a job
        created past it is refused with 400 ``LIMIT_EXCEEDED``.
    min_api_version, max_api_version
        Accepted API versions; lower ones answer 410 (retired).
    error_503_rate, error_500_rate
        Share of API requests answered 503 or 500 before they are handled.
    drop_rate
        Share of API requests whose connection is dropped mid-response, after they were handled.
    latency_seconds
        Delay added to every API request.
    session_expiry_every_seconds
        If set, every session is invalidated at each multiple of this many seconds since start.
    lock_failure_rate
        Share of records failing with UNABLE_TO_LOCK_ROW.
    lock_contention_seconds
        If set, a record referencing a parent (a reference column such as ``AccountId``, or a
        relationship column) that another job's record referenced less than this many seconds ago
        fails with UNABLE_TO_LOCK_ROW: a stand-in for Salesforce locking a parent while jobs that
        run side by side save its children.
    job_failure_rate
        Share of jobs ending Failed after their first internal batch.
    lost_close_rate
        Share of job closes (``PATCH state=UploadComplete``) that are applied and whose answer is
        then lost: the connection is closed before any byte of the response.
    hold_processing
        While True, closed jobs are not processed: they stay UploadComplete (or InProgress between
        two slices) until it is set back to False.
    seed
        Seed of the fault randomness, for reproducible runs.
    """

    host: str = "127.0.0.1"
    port: int = 0
    db: str = ":memory:"
    schema_path: str | None = None
    session_timeout_seconds: float = 7200.0
    upload_limit_bytes: int = 100 * 1024 * 1024
    request_limit_bytes: int = 1024 * 1024
    job_page_size: int = 1000
    hard_delete_enabled: bool = True
    records_per_second: float | None = None
    daily_api_requests_max: int = 100_000
    daily_bulk_batches_max: int = 15_000
    daily_bulk_query_jobs_max: int = 10_000
    min_api_version: float = 41.0
    max_api_version: float = 68.0
    error_503_rate: float = 0.0
    error_500_rate: float = 0.0
    drop_rate: float = 0.0
    latency_seconds: float = 0.0
    session_expiry_every_seconds: float | None = None
    lock_failure_rate: float = 0.0
    lock_contention_seconds: float | None = None
    job_failure_rate: float = 0.0
    lost_close_rate: float = 0.0
    hold_processing: bool = False
    seed: int | None = None

    def __post_init__(self) -> None:
        fields = {f.name: f for f in dataclasses.fields(self)}
        for name in RUNTIME_SETTINGS:
            setattr(self, name, _coerce(name, str(fields[name].type), getattr(self, name)))

    def to_dict(self) -> dict[str, Any]:
        """Return the settings as a JSON-ready dictionary."""
        return dataclasses.asdict(self)

    def update(self, changes: Mapping[str, Any]) -> None:
        """Apply runtime changes, checking names and value types.

        Raises
        ------
        ValueError
            If a name is unknown, not changeable at runtime, or its value has the wrong type.
        """
        fields = {f.name: f for f in dataclasses.fields(self)}
        checked: dict[str, Any] = {}
        for name, value in changes.items():
            if name not in RUNTIME_SETTINGS:
                raise ValueError(f"setting {name!r} cannot be changed at runtime")
            checked[name] = _coerce(name, str(fields[name].type), value)
        for name, value in checked.items():
            setattr(self, name, value)


def _coerce(name: str, type_name: str, value: Any) -> Any:
    optional = "None" in type_name
    if value is None:
        if optional:
            return None
        raise ValueError(f"setting {name!r} cannot be null")
    ok = (
        (type_name.startswith("bool") and isinstance(value, bool))
        or (type_name.startswith("int") and isinstance(value, int) and not isinstance(value, bool))
        or (type_name.startswith("float") and isinstance(value, (int, float)) and not isinstance(value, bool))
    )
    if not ok:
        raise ValueError(f"setting {name!r} has an invalid value: {value!r}")
    if isinstance(value, bool):
        return value
    if name.endswith("_rate") and not 0.0 <= value <= 1.0:
        raise ValueError(f"setting {name!r} is a share between 0 and 1, not {value!r}")
    if name != "seed" and not (math.isfinite(value) and value >= 0):
        raise ValueError(f"setting {name!r} must be a finite number >= 0, not {value!r}")
    if name.endswith("_bytes") and value == 0:
        raise ValueError(f"setting {name!r} must be positive")
    return float(value) if type_name.startswith("float") else value
