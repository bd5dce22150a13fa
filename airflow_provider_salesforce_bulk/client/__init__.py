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
    Token,
    TokenCache,
    TokenProvider,
    default_token_cache,
    fingerprint,
    normalize_login_url,
)
from airflow_provider_salesforce_bulk.client.chunk_files import ChunkSink, FileSink, MemorySink, file_digest
from airflow_provider_salesforce_bulk.client.csv_format import (
    COLUMN_DELIMITERS,
    LINE_ENDINGS,
    MAX_RECORDS,
    MAX_SIZE_BYTES,
    Chunk,
    CsvChunk,
    CsvSource,
    RecordScan,
    StagedChunk,
    check_column_delimiter,
    check_line_ending,
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
from airflow_provider_salesforce_bulk.client.http_client import DEFAULT_MAX_CONNECTIONS, build_http_client
from airflow_provider_salesforce_bulk.client.ingest import BulkIngestClient
from airflow_provider_salesforce_bulk.client.ingest_jobs import RESULT_KINDS, IngestJobApi
from airflow_provider_salesforce_bulk.client.job_spec import (
    DEFAULT_OPERATION_TIMEOUT,
    ChunkFormat,
    ChunkFormatOptions,
    ChunkLimits,
    JobSpec,
    PollPolicy,
    validate_operation_fields,
)
from airflow_provider_salesforce_bulk.client.limits import (
    InsufficientLimitsError,
    LimitsCheck,
    LimitsCheckError,
    LimitsVerdict,
    LimitUsage,
    LoadEstimate,
    OrgLimits,
    check_limits_before_load,
    check_limits_mode,
    check_load_allowance,
    estimate_load,
    get_limits,
)
from airflow_provider_salesforce_bulk.client.models import (
    TERMINAL_STATES,
    ColumnDelimiter,
    JobInfo,
    JobState,
    LineEnding,
    NoneAs,
    OperationType,
    RecordCounts,
    ResultKind,
)
from airflow_provider_salesforce_bulk.client.operation import (
    JobResult,
    RunOptions,
    close_uploaded_job,
    perform_chunks,
    perform_csv_operation,
    perform_operation,
    submit_job,
)
from airflow_provider_salesforce_bulk.client.per_loop import PerLoop
from airflow_provider_salesforce_bulk.client.query import (
    BulkQueryClient,
    QueryOperation,
    check_max_records,
    check_query_options,
)
from airflow_provider_salesforce_bulk.client.query_pages import PageSink, PageSummary, ResultPage
from airflow_provider_salesforce_bulk.client.query_parquet import (
    arrow_schema,
    arrow_type,
    copy_results_to_parquet,
    csv_to_parquet,
    require_parquet,
)
from airflow_provider_salesforce_bulk.client.resubmit import (
    DEFAULT_RESUBMIT_ERROR_CODES,
    LedgerJob,
    ResubmitChunk,
    ResubmitJob,
    ResubmitLedger,
    ResubmitPolicy,
    error_code,
    iter_resubmit_chunks,
    resubmit_round,
)
from airflow_provider_salesforce_bulk.client.retry import RetryPolicy
from airflow_provider_salesforce_bulk.client.serialize import (
    iter_record_chunks,
    serialize_ingest_data,
    value_text,
)
from airflow_provider_salesforce_bulk.client.session import DEFAULT_API_VERSION, ApiUsage, SalesforceSession
from airflow_provider_salesforce_bulk.client.timeouts import Timeouts

if TYPE_CHECKING:
    from airflow_provider_salesforce_bulk.client.arrow_chunks import (
        iter_arrow_chunks,
        iter_arrow_source_chunks,
        require_pyarrow,
    )

__all__ = [
    "COLUMN_DELIMITERS",
    "DEFAULT_API_VERSION",
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_OPERATION_TIMEOUT",
    "DEFAULT_RESUBMIT_ERROR_CODES",
    "LINE_ENDINGS",
    "MAX_RECORDS",
    "MAX_SIZE_BYTES",
    "RESULT_KINDS",
    "TERMINAL_STATES",
    "ApiDisabledError",
    "ApiUsage",
    "ApiVersionError",
    "AuthenticationError",
    "BulkIngestClient",
    "BulkJobFailedError",
    "BulkOperationError",
    "BulkOperationTimeoutError",
    "BulkQueryClient",
    "Chunk",
    "ChunkFormat",
    "ChunkFormatOptions",
    "ChunkLimits",
    "ChunkSink",
    "ClientCredentialsAuth",
    "ColumnDelimiter",
    "CsvChunk",
    "CsvSource",
    "DescribeCache",
    "FieldDescription",
    "FileSink",
    "HostPolicy",
    "IngestJobApi",
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
    "LedgerJob",
    "LimitUsage",
    "LimitsCheck",
    "LimitsCheckError",
    "LimitsVerdict",
    "LineEnding",
    "LoadEstimate",
    "MalformedRequestError",
    "MemorySink",
    "NoneAs",
    "NotFoundError",
    "OperationTimeoutError",
    "OperationType",
    "OrgLimits",
    "PageSink",
    "PageSummary",
    "PasswordAuth",
    "PerLoop",
    "PollPolicy",
    "QueryError",
    "QueryJobFailedError",
    "QueryOperation",
    "RecordCounts",
    "RecordScan",
    "RefreshTokenAuth",
    "RequestLimitExceededError",
    "ResubmitChunk",
    "ResubmitJob",
    "ResubmitLedger",
    "ResubmitPolicy",
    "ResultKind",
    "ResultPage",
    "RetryPolicy",
    "RunOptions",
    "SObjectDescription",
    "SalesforceApiError",
    "SalesforceBulkError",
    "SalesforceSession",
    "ServerError",
    "ServerUnavailableError",
    "SessionExpiredError",
    "SoapLoginAuth",
    "StagedChunk",
    "StaticTokenAuth",
    "Timeouts",
    "Token",
    "TokenCache",
    "TokenProvider",
    "TransportError",
    "UnexpectedResponseError",
    "UntrustedUrlError",
    "UploadOutcomeUnknownError",
    "arrow_schema",
    "arrow_type",
    "build_http_client",
    "check_column_delimiter",
    "check_limits_before_load",
    "check_limits_mode",
    "check_line_ending",
    "check_load_allowance",
    "check_max_records",
    "check_query_options",
    "close_uploaded_job",
    "copy_results_to_parquet",
    "csv_to_parquet",
    "default_token_cache",
    "describe_columns",
    "describe_sobject",
    "error_code",
    "estimate_load",
    "file_digest",
    "fingerprint",
    "get_limits",
    "iter_arrow_chunks",
    "iter_arrow_source_chunks",
    "iter_csv_stream_chunks",
    "iter_record_chunks",
    "iter_resubmit_chunks",
    "normalize_login_url",
    "perform_chunks",
    "perform_csv_operation",
    "perform_operation",
    "require_parquet",
    "require_pyarrow",
    "resubmit_round",
    "serialize_ingest_data",
    "split_csv_stream",
    "submit_job",
    "validate_operation_fields",
    "value_text",
]


def __getattr__(name: str) -> Any:
    # The Arrow path is loaded on first use: importing the client must not need pyarrow (an extra).
    if name in ("iter_arrow_chunks", "iter_arrow_source_chunks", "require_pyarrow"):
        from airflow_provider_salesforce_bulk.client import arrow_chunks

        return getattr(arrow_chunks, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
