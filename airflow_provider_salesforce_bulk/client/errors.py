"""The client's exception hierarchy.

Every failure a caller can see is a :class:`SalesforceBulkError`: Salesforce's
``[{"errorCode", "message"}]`` bodies and HTTP statuses are mapped onto the classes below, and
transport failures are wrapped, so no bare ``httpx`` exception or ``ExceptionGroup`` escapes.
Salesforce's own code is ``error_code`` on every class that carries one.

The whole tree, as a child's indentation under its base class (``also`` names a second base,
``[module]`` a class defined outside this module, also outside the client); ``tests/client/test_errors.py``
keeps it equal to the classes::

    SalesforceBulkError
        InputError (also ValueError) -- bad input or configuration, refused before sending; never retried
            UntrustedUrlError -- a host that may not receive the token
            ConnectionConfigError [hooks.connection] -- an Airflow connection field to fix
            SyncStateError [sync.errors] -- a change-only sync state that cannot be used
                StateMovedError [sync.errors] -- another run advanced the state meanwhile
            DeleteGuardError [sync.errors] -- more deletes than max_delete_ratio allows
        AuthenticationError -- the login was refused
        TransportError -- no complete answer (retried when safe)
            UploadOutcomeUnknownError -- an upload's answer was lost: never send it to that job again
        UnexpectedResponseError -- an answer the API does not document
        OperationTimeoutError (also TimeoutError) -- an overall deadline passed
        SalesforceApiError -- an error answer, with its status and error_code
            SessionExpiredError -- 401 INVALID_SESSION_ID (the session logs in again once)
            RequestLimitExceededError -- 429, REQUEST_LIMIT_EXCEEDED, LIMIT_EXCEEDED
            ApiDisabledError -- 403
            NotFoundError -- 404
            InvalidJobStateError -- 400 INVALIDJOBSTATE
            InvalidJobError -- 400 INVALIDJOB
            MalformedRequestError -- other 4xx
                QueryError -- Salesforce refused the SOQL
            ApiVersionError -- 409, 410
            ServerError -- 5xx
                ServerUnavailableError -- 502, 503, 504
        BulkJobFailedError -- a job ended Failed or Aborted
            QueryJobFailedError -- a query job did
        JobOutcomeUnknownError -- a job's close was sent and its state is unknown
        BulkOperationError -- a multi-job operation stopped; says what became of each chunk
            BulkOperationTimeoutError (also OperationTimeoutError) -- its deadline passed
        LimitsCheckError [client.limits] -- the limits check refused a load
            InsufficientLimitsError [client.limits] -- the daily allowances left are too small
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import orjson

if TYPE_CHECKING:
    from airflow_provider_salesforce_bulk.client.models import JobInfo

__all__ = [
    "ApiDisabledError",
    "ApiVersionError",
    "AuthenticationError",
    "BulkJobFailedError",
    "BulkOperationError",
    "BulkOperationTimeoutError",
    "InputError",
    "InvalidJobError",
    "InvalidJobStateError",
    "JobOutcomeUnknownError",
    "JobReport",
    "MalformedRequestError",
    "NotFoundError",
    "OperationTimeoutError",
    "QueryError",
    "QueryJobFailedError",
    "RequestLimitExceededError",
    "SalesforceApiError",
    "SalesforceBulkError",
    "ServerError",
    "ServerUnavailableError",
    "SessionExpiredError",
    "TransportError",
    "UnexpectedResponseError",
    "UntrustedUrlError",
    "UploadOutcomeUnknownError",
    "error_from_response",
]


class SalesforceBulkError(Exception):
    """Base class of every error this client raises."""


class InputError(SalesforceBulkError, ValueError):
    """The caller's input is invalid; raised before anything is sent to Salesforce.

    Attributes
    ----------
    record_index : int | None
        0-based index of the offending record in the input, when one record is to blame.
    field : str | None
        Name of the offending field or parameter, when known.
    """

    def __init__(self, message: str, *, record_index: int | None = None, field: str | None = None) -> None:
        super().__init__(message)
        self.record_index = record_index
        self.field = field


class UntrustedUrlError(InputError):
    """A URL the token would be sent to is not allowed (plain http, or a host that is not Salesforce's).

    An :class:`InputError` because only the user's configuration can fix it (allow the host
    explicitly); retrying does not help. Carries the host, never the URL's query or a token.
    """

    def __init__(self, message: str, *, host: str) -> None:
        super().__init__(message, field="allowed_hosts")
        self.host = host


class AuthenticationError(SalesforceBulkError):
    """Getting a token failed.

    Attributes
    ----------
    error_code : str | None
        Salesforce's code for the refusal: the OAuth ``error`` (``invalid_grant``), the SOAP fault
        code (``sf:INVALID_LOGIN``) or ``PASSWORD_EXPIRED``; named as on :class:`SalesforceApiError`.
    error_description : str | None
        The OAuth ``error_description`` or the SOAP fault string.
    status_code : int | None
        HTTP status of the answer, when there was one.
    """

    def __init__(
        self,
        message: str,
        *,
        error_code: str | None = None,
        error_description: str | None = None,
        status_code: int | None = None,
    ) -> None:
        super().__init__(message)
        self.error_code = error_code
        self.error_description = error_description
        self.status_code = status_code

    @property
    def error(self) -> str | None:
        """:attr:`error_code` under its first name (the OAuth field's)."""
        return self.error_code


class TransportError(SalesforceBulkError):
    """The request did not get an HTTP answer (connection refused or dropped, timeout, ...)."""


class UnexpectedResponseError(SalesforceBulkError):
    """A successful answer whose body is not what the API documents (not JSON, bad CSV, no job id)."""


class UploadOutcomeUnknownError(TransportError):
    """An upload's answer was lost: Salesforce may or may not hold the data for that job.

    Salesforce accepts one upload per job, so the data must never be sent to the same job again.
    """

    def __init__(self, message: str, *, job_id: str) -> None:
        super().__init__(message)
        self.job_id = job_id


class OperationTimeoutError(SalesforceBulkError, TimeoutError):
    """An overall deadline (for example of ``perform_operation``) passed."""


class SalesforceApiError(SalesforceBulkError):
    """Salesforce answered with an error status.

    Attributes
    ----------
    status_code : int
        HTTP status of the answer.
    error_code : str | None
        The first ``errorCode`` of the body (``INVALID_SESSION_ID``, ``NOT_FOUND``, ...).
    errors : list[dict[str, Any]]
        Every error object of the body, as sent.
    method, url : str
        The request that failed (the URL holds no credentials).
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        error_code: str | None = None,
        errors: Sequence[Mapping[str, Any]] = (),
        method: str = "",
        url: str = "",
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.error_code = error_code
        self.errors = [dict(e) for e in errors]
        self.method = method
        self.url = url


class SessionExpiredError(SalesforceApiError):
    """401 ``INVALID_SESSION_ID``: the token expired or was revoked."""


class RequestLimitExceededError(SalesforceApiError):
    """403 ``REQUEST_LIMIT_EXCEEDED``, 429, or 400 ``LIMIT_EXCEEDED`` (e.g. "Max bulk v2 query jobs
    (10000) per 24 hrs has been reached"): an org limit was reached; it frees up with time."""


class ApiDisabledError(SalesforceApiError):
    """403: the API is not enabled for the org or the user (``API_DISABLED_FOR_ORG``, ...)."""


class NotFoundError(SalesforceApiError):
    """404 ``NOT_FOUND``: unknown or deleted job, wrong URL."""


class InvalidJobStateError(SalesforceApiError):
    """400 ``INVALIDJOBSTATE``: the request is not allowed in the job's current state."""


class InvalidJobError(SalesforceApiError):
    """400 ``INVALIDJOB``: the job cannot take this request (for example a second upload)."""


class MalformedRequestError(SalesforceApiError):
    """400, 405, 415 and other client errors: the request itself is wrong."""


class QueryError(MalformedRequestError):
    """400 ``MALFORMED_QUERY``, ``INVALID_FIELD``, ``INVALID_TYPE``...: Salesforce refused the SOQL.

    The message is Salesforce's own (the query line, a caret, ``ERROR at Row:1:Column:12`` and the
    reason); :attr:`row`, :attr:`column` and :attr:`field` are read from it when it names them.
    """

    @property
    def salesforce_message(self) -> str:
        """The first error's ``message`` as Salesforce sent it."""
        return str(self.errors[0].get("message") or "") if self.errors else ""

    @property
    def row(self) -> int | None:
        match = _POSITION.search(self.salesforce_message)
        return int(match[1]) if match else None

    @property
    def column(self) -> int | None:
        match = _POSITION.search(self.salesforce_message)
        return int(match[2]) if match else None

    @property
    def field(self) -> str | None:
        """The field the message names (``No such column 'Nme'``, ``field 'Name'``), if any."""
        match = _FIELD_NAMED.search(self.salesforce_message)
        return match[1] if match else None


class ApiVersionError(SalesforceApiError):
    """409 or 410: the API version is retired or differs from the job's."""


class ServerError(SalesforceApiError):
    """5xx from Salesforce."""


class ServerUnavailableError(ServerError):
    """502, 503 or 504: Salesforce is temporarily unavailable."""


class BulkJobFailedError(SalesforceBulkError):
    """A job ended Failed or Aborted (raised only when the caller asks for it)."""

    def __init__(self, message: str, *, job_id: str, state: str, error_message: str | None) -> None:
        super().__init__(message)
        self.job_id = job_id
        self.state = state
        self.error_message = error_message


class JobOutcomeUnknownError(SalesforceBulkError):
    """A job's close was sent (or may have been) and its state could not be read afterwards.

    The job may be processing its records, so it was not aborted. Read its state
    (:meth:`~airflow_provider_salesforce_bulk.client.BulkIngestClient.get_job`) before doing
    anything with its records: never send them again while it may process them.

    Attributes
    ----------
    job_id : str
    job_info : JobInfo | None
        The job as last seen (``state`` ``"Open"`` if it was never seen closed).
    """

    def __init__(self, message: str, *, job_id: str, job_info: JobInfo | None = None) -> None:
        super().__init__(message)
        self.job_id = job_id
        self.job_info = job_info


JobReportStatus = Literal["completed", "unfinished", "not_loaded"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class JobReport:
    """What became of one chunk of a failed operation (see :class:`BulkOperationError`).

    Attributes
    ----------
    first_record_index, record_count : int
        The chunk holds input records ``first_record_index`` to ``first_record_index + record_count - 1``.
    job_id : str | None
        The job holding the chunk; None if no job was created for it.
    job_info : JobInfo | None
        The job as last seen (its counters are real only once ``job_info.is_terminal``).
    status : {"completed", "unfinished", "not_loaded"}
        ``completed``: the job ended (JobComplete, Failed or Aborted: see ``job_info``).
        ``unfinished``: the job was closed (or its close may have reached Salesforce) and was
        left as it is, never aborted: it may be processing its records; read its state before
        sending any of them again. ``not_loaded``: no job processes these records (every job made
        for them was aborted before being closed, or none was made): they can be sent again.
    yielded : bool
        Its ``JobResult`` was yielded before the error was raised.
    replaced_job_ids : tuple[str, ...]
        Jobs aborted before being closed because an upload's answer was lost.
    error : BaseException | None
        This chunk's own failure, if it is the one that failed.
    """

    first_record_index: int
    record_count: int
    job_id: str | None
    job_info: JobInfo | None
    status: JobReportStatus
    yielded: bool = False
    replaced_job_ids: tuple[str, ...] = ()
    error: BaseException | None = dataclasses.field(default=None, compare=False)


class BulkOperationError(SalesforceBulkError):
    """A multi-job operation stopped on a failure; ``__cause__`` is the failure itself.

    Every job's ``JobResult`` that completed was yielded before this was raised. No job that
    may hold data was aborted: :attr:`jobs` says, chunk by chunk, which are done, which are left
    running on Salesforce and which were never loaded, so the caller can reconcile.

    Attributes
    ----------
    jobs : tuple[JobReport, ...]
        One entry per chunk read from the input, in input order.
    first_unsent_record_index : int
        Records from this index on were never sent; each record before it is in exactly one
        entry of :attr:`jobs` (entries ``not_loaded`` included).
    """

    def __init__(self, message: str, *, jobs: Sequence[JobReport], first_unsent_record_index: int) -> None:
        super().__init__(message)
        self.jobs = tuple(jobs)
        self.first_unsent_record_index = first_unsent_record_index

    @property
    def unfinished_job_ids(self) -> tuple[str, ...]:
        """Jobs left on Salesforce that may still process records."""
        return tuple(j.job_id for j in self.jobs if j.status == "unfinished" and j.job_id)


class BulkOperationTimeoutError(BulkOperationError, OperationTimeoutError):
    """The operation's overall ``timeout`` passed: jobs never closed were aborted, closed ones left
    running (see :attr:`BulkOperationError.jobs`)."""


class QueryJobFailedError(BulkJobFailedError):
    """A query job ended Failed (or Aborted); :attr:`error_message` is Salesforce's ``errorMessage``.

    :attr:`error_code` is the exception code it starts with (``InvalidBatch`` in
    ``InvalidBatch : Failed to process query: ...``), when it has one.
    """

    @property
    def error_code(self) -> str | None:
        match = _LEADING_CODE.match(self.error_message or "")
        return match[1] if match else None


_POSITION = re.compile(r"Row:(\d+):Column:(\d+)")
_FIELD_NAMED = re.compile(r"(?:[Cc]olumn|[Ff]ield) '([^']+)'")
_LEADING_CODE = re.compile(r"^\s*([A-Za-z_]+)\s*:")

# errorCode values that decide the class regardless of the status (upper-cased as on the wire).
_BY_ERROR_CODE: dict[str, type[SalesforceApiError]] = {
    "INVALID_SESSION_ID": SessionExpiredError,
    "INVALIDSESSIONID": SessionExpiredError,
    "REQUEST_LIMIT_EXCEEDED": RequestLimitExceededError,
    "EXCEEDEDQUOTA": RequestLimitExceededError,
    # 400 with this code: a daily allowance is used up (DailyBulkV2QueryJobs for query jobs).
    "LIMIT_EXCEEDED": RequestLimitExceededError,
    "API_DISABLED_FOR_ORG": ApiDisabledError,
    "API_CURRENTLY_DISABLED": ApiDisabledError,
    "NOT_FOUND": NotFoundError,
    "NOTFOUND": NotFoundError,
    "INVALIDJOBSTATE": InvalidJobStateError,
    "INVALIDJOB": InvalidJobError,
    # A second upload to a job ("Found multiple contents for job"): the job cannot take it.
    "BULK_API_ERROR": InvalidJobError,
    "MALFORMED_QUERY": QueryError,
    "INVALID_FIELD": QueryError,
    "INVALID_TYPE": QueryError,
    "INVALID_QUERY_FILTER_OPERATOR": QueryError,
}

_BY_STATUS: dict[int, type[SalesforceApiError]] = {
    401: SessionExpiredError,
    403: ApiDisabledError,
    404: NotFoundError,
    409: ApiVersionError,
    410: ApiVersionError,
    429: RequestLimitExceededError,
    500: ServerError,
    502: ServerUnavailableError,
    503: ServerUnavailableError,
    504: ServerUnavailableError,
}


def parse_error_body(body: bytes) -> list[dict[str, Any]]:
    """Salesforce's error objects from a response body; ``[]`` when it holds none."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return []
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        return []
    return [e for e in data if isinstance(e, dict)]


def error_from_response(
    status_code: int, body: bytes, *, method: str = "", url: str = ""
) -> SalesforceApiError:
    """Map an error answer onto the exception class that describes it."""
    errors = parse_error_body(body)
    error_code: str | None = None
    message = ""
    if errors:
        first = errors[0]
        raw_code = first.get("errorCode") or first.get("error")
        error_code = str(raw_code) if raw_code is not None else None
        message = str(first.get("message") or first.get("error_description") or "")
    elif body:
        # Not Salesforce's JSON (a proxy's HTML page, say): keep a short, printable excerpt.
        message = body[:200].decode("utf-8", "replace").strip()
    cls = _BY_ERROR_CODE.get((error_code or "").upper())
    if status_code >= 500 and (error_code or "").upper() == "BULK_API_ERROR":
        cls = None  # a generic code: on a 5xx it is a server failure, retried as such
    if cls is None:
        cls = _BY_STATUS.get(status_code)
    if cls is None:
        cls = ServerError if status_code >= 500 else MalformedRequestError
    summary = "; ".join(_describe(e) for e in errors) or message or "no error body"
    text = f"{method} {url} -> HTTP {status_code}: {summary}".strip()
    return cls(text, status_code=status_code, error_code=error_code, errors=errors, method=method, url=url)


def _describe(error: Mapping[str, Any]) -> str:
    code = error.get("errorCode") or error.get("error") or "?"
    return f"{code}: {error.get('message') or error.get('error_description') or ''}"
