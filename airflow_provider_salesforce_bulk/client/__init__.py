"""Async client for the Salesforce Bulk API 2.0 ingest, on httpx and orjson.

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

from airflow_provider_salesforce_bulk.client.auth import (
    ClientCredentialsAuth,
    JwtBearerAuth,
    PasswordAuth,
    RefreshTokenAuth,
    SoapLoginAuth,
    StaticTokenAuth,
    Token,
    TokenCache,
    TokenProvider,
    default_token_cache,
    normalize_login_url,
)
from airflow_provider_salesforce_bulk.client.csv_split import iter_csv_stream_chunks, split_csv_stream
from airflow_provider_salesforce_bulk.client.errors import (
    ApiDisabledError,
    ApiVersionError,
    AuthenticationError,
    BulkJobFailedError,
    InputError,
    InvalidJobError,
    InvalidJobStateError,
    MalformedRequestError,
    NotFoundError,
    OperationTimeoutError,
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
from airflow_provider_salesforce_bulk.client.ingest import BulkIngestClient, PollPolicy
from airflow_provider_salesforce_bulk.client.models import (
    JobInfo,
    JobState,
    OperationType,
    ResultKind,
)
from airflow_provider_salesforce_bulk.client.operation import (
    JobResult,
    perform_chunks,
    perform_csv_operation,
    perform_operation,
    submit_job,
)
from airflow_provider_salesforce_bulk.client.retry import RetryPolicy
from airflow_provider_salesforce_bulk.client.serialize import (
    CsvChunk,
    iter_record_chunks,
    serialize_ingest_data,
)
from airflow_provider_salesforce_bulk.client.session import DEFAULT_API_VERSION, ApiUsage, SalesforceSession
from airflow_provider_salesforce_bulk.client.timeouts import Timeouts

__all__ = [
    "DEFAULT_API_VERSION",
    "ApiDisabledError",
    "ApiUsage",
    "ApiVersionError",
    "AuthenticationError",
    "BulkIngestClient",
    "BulkJobFailedError",
    "ClientCredentialsAuth",
    "CsvChunk",
    "InputError",
    "InvalidJobError",
    "InvalidJobStateError",
    "JobInfo",
    "JobResult",
    "JobState",
    "JwtBearerAuth",
    "MalformedRequestError",
    "NotFoundError",
    "OperationTimeoutError",
    "OperationType",
    "PasswordAuth",
    "PollPolicy",
    "RefreshTokenAuth",
    "RequestLimitExceededError",
    "ResultKind",
    "RetryPolicy",
    "SalesforceApiError",
    "SalesforceBulkError",
    "SalesforceSession",
    "ServerError",
    "ServerUnavailableError",
    "SessionExpiredError",
    "SoapLoginAuth",
    "StaticTokenAuth",
    "Timeouts",
    "Token",
    "TokenCache",
    "TokenProvider",
    "TransportError",
    "UnexpectedResponseError",
    "UntrustedUrlError",
    "UploadOutcomeUnknownError",
    "default_token_cache",
    "iter_csv_stream_chunks",
    "iter_record_chunks",
    "normalize_login_url",
    "perform_chunks",
    "perform_csv_operation",
    "perform_operation",
    "serialize_ingest_data",
    "split_csv_stream",
    "submit_job",
]
