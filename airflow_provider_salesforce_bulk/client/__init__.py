"""Async client for the Salesforce Bulk API 2.0 (ingest and query), on httpx and orjson.

It imports nothing from Airflow and can be used on its own::

    from airflow_provider_salesforce_bulk.client import (
        BulkIngestClient, ClientCredentialsAuth, SalesforceSession,
    )

    async with SalesforceSession(ClientCredentialsAuth(client_id, client_secret, login_url)) as session:
        client = BulkIngestClient(session)
        async for result in client.perform_operation("upsert", "Contact", records,
                                                     external_id_field="External_Id__c"):
            print(result.job_id, result.job_info.state, result.number_records_failed)
"""

from typing import TYPE_CHECKING, Any

from airflow_provider_salesforce_bulk.client.auth import (
    ClientCredentialsAuth,
    JwtBearerAuth,
    PasswordAuth,
    RefreshTokenAuth,
    SoapLoginAuth,
    StaticTokenAuth,
    TokenCache,
    TokenProvider,
)
from airflow_provider_salesforce_bulk.client.errors import (
    ApiDisabledError,
    ApiVersionError,
    AuthenticationError,
    BulkJobFailedError,
    BulkOperationError,
    BulkOperationTimeoutError,
    InputError,
    InvalidJobError,
    InvalidJobStateError,
    JobOutcomeUnknownError,
    JobReport,
    MalformedRequestError,
    NotFoundError,
    OperationTimeoutError,
    QueryError,
    QueryJobFailedError,
    RequestLimitExceededError,
    SalesforceApiError,
    SalesforceBulkError,
    ServerError,
    ServerUnavailableError,
    SessionExpiredError,
    TransportError,
    UnexpectedResponseError,
    UntrustedUrlError,
    UploadOutcomeUnknownError,
)
from airflow_provider_salesforce_bulk.client.hosts import HostPolicy
from airflow_provider_salesforce_bulk.client.ingest import BulkIngestClient
from airflow_provider_salesforce_bulk.client.job_spec import ChunkFormat, ChunkLimits, JobSpec, PollPolicy
from airflow_provider_salesforce_bulk.client.limits import InsufficientLimitsError, LimitsCheckError
from airflow_provider_salesforce_bulk.client.models import JobInfo, JobState, OperationType, RecordCounts
from airflow_provider_salesforce_bulk.client.operation import JobResult, RunOptions, perform_operation
from airflow_provider_salesforce_bulk.client.query import BulkQueryClient
from airflow_provider_salesforce_bulk.client.resubmit import ResubmitPolicy
from airflow_provider_salesforce_bulk.client.retry import RetryPolicy
from airflow_provider_salesforce_bulk.client.serialize import serialize_ingest_data
from airflow_provider_salesforce_bulk.client.session import DEFAULT_API_VERSION, SalesforceSession
from airflow_provider_salesforce_bulk.client.timeouts import Timeouts

if TYPE_CHECKING:
    from airflow_provider_salesforce_bulk.client.arrow_chunks import iter_arrow_chunks

# What a user of the client needs: the session and its logins, the two clients, the frozen settings
# they take, the values they return and the exception tree. Everything else is public in the submodule
# that owns it (README, "The async client", says which); the facade stays small enough to hold in mind.
__all__ = [
    "DEFAULT_API_VERSION",
    "ApiDisabledError",
    "ApiVersionError",
    "AuthenticationError",
    "BulkIngestClient",
    "BulkJobFailedError",
    "BulkOperationError",
    "BulkOperationTimeoutError",
    "BulkQueryClient",
    "ChunkFormat",
    "ChunkLimits",
    "ClientCredentialsAuth",
    "HostPolicy",
    "InputError",
    "InsufficientLimitsError",
    "InvalidJobError",
    "InvalidJobStateError",
    "JobInfo",
    "JobOutcomeUnknownError",
    "JobReport",
    "JobResult",
    "JobSpec",
    "JobState",
    "JwtBearerAuth",
    "LimitsCheckError",
    "MalformedRequestError",
    "NotFoundError",
    "OperationTimeoutError",
    "OperationType",
    "PasswordAuth",
    "PollPolicy",
    "QueryError",
    "QueryJobFailedError",
    "RecordCounts",
    "RefreshTokenAuth",
    "RequestLimitExceededError",
    "ResubmitPolicy",
    "RetryPolicy",
    "RunOptions",
    "SalesforceApiError",
    "SalesforceBulkError",
    "SalesforceSession",
    "ServerError",
    "ServerUnavailableError",
    "SessionExpiredError",
    "SoapLoginAuth",
    "StaticTokenAuth",
    "Timeouts",
    "TokenCache",
    "TokenProvider",
    "TransportError",
    "UnexpectedResponseError",
    "UntrustedUrlError",
    "UploadOutcomeUnknownError",
    "iter_arrow_chunks",
    "perform_operation",
    "serialize_ingest_data",
]


def __getattr__(name: str) -> Any:
    # The Arrow path is loaded on first use: importing the client must not need pyarrow (an extra).
    if name == "iter_arrow_chunks":
        from airflow_provider_salesforce_bulk.client import arrow_chunks

        return arrow_chunks.iter_arrow_chunks
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
