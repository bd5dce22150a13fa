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
from airflow_provider_salesforce_bulk.client.describe import (
    DescribeCache,
    FieldDescription,
    SObjectDescription,
    describe_columns,
    describe_sobject,
)
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
from airflow_provider_salesforce_bulk.client.query import BulkQueryClient, QueryOperation
from airflow_provider_salesforce_bulk.client.query_pages import PageSink, PageSummary, ResultPage
from airflow_provider_salesforce_bulk.client.query_parquet import (
    arrow_schema,
    arrow_type,
    copy_results_to_parquet,
    csv_to_parquet,
)
from airflow_provider_salesforce_bulk.client.retry import RetryPolicy
from airflow_provider_salesforce_bulk.client.serialize import (
    CsvChunk,
    iter_record_chunks,
    serialize_ingest_data,
)
from airflow_provider_salesforce_bulk.client.session import DEFAULT_API_VERSION, ApiUsage, SalesforceSession

__all__ = [
    "DEFAULT_API_VERSION",
    "ApiDisabledError",
    "ApiUsage",
    "ApiVersionError",
    "AuthenticationError",
    "BulkIngestClient",
    "BulkJobFailedError",
    "BulkQueryClient",
    "ClientCredentialsAuth",
    "CsvChunk",
    "DescribeCache",
    "FieldDescription",
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
    "PageSink",
    "PageSummary",
    "PasswordAuth",
    "PollPolicy",
    "QueryError",
    "QueryJobFailedError",
    "QueryOperation",
    "RefreshTokenAuth",
    "RequestLimitExceededError",
    "ResultKind",
    "ResultPage",
    "RetryPolicy",
    "SObjectDescription",
    "SalesforceApiError",
    "SalesforceBulkError",
    "SalesforceSession",
    "ServerError",
    "ServerUnavailableError",
    "SessionExpiredError",
    "SoapLoginAuth",
    "StaticTokenAuth",
    "Token",
    "TokenCache",
    "TokenProvider",
    "TransportError",
    "UnexpectedResponseError",
    "UploadOutcomeUnknownError",
    "arrow_schema",
    "arrow_type",
    "copy_results_to_parquet",
    "csv_to_parquet",
    "default_token_cache",
    "describe_columns",
    "describe_sobject",
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
