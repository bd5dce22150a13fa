"""``BulkIngestClient``: every Bulk API 2.0 ingest endpoint, one method each, and whole loads."""

from __future__ import annotations

from airflow_provider_salesforce_bulk.client import operation
from airflow_provider_salesforce_bulk.client.ingest_jobs import IngestJobApi
from airflow_provider_salesforce_bulk.client.job_spec import JobSpec
from airflow_provider_salesforce_bulk.client.models import ColumnDelimiter, JobInfo, LineEnding, OperationType

__all__ = ["BulkIngestClient"]


class BulkIngestClient(IngestJobApi):
    """Salesforce Bulk API 2.0 ingest client.

    Parameters
    ----------
    session : SalesforceSession
        Authenticated HTTP access to the org; closing it is the caller's business.

    Examples
    --------
    >>> async with SalesforceSession(ClientCredentialsAuth(id, secret, url)) as session:  # doctest: +SKIP
    ...     client = BulkIngestClient(session)
    ...     async for result in client.perform_operation("insert", "Account", records):
    ...         print(result.job_info.state, result.number_records_failed)
    """

    async def create_job(
        self,
        operation: OperationType,
        sobject: str,
        external_id_field: str | None = None,
        assignment_rule_id: str | None = None,
        *,
        column_delimiter: ColumnDelimiter = "COMMA",
        line_ending: LineEnding = "LF",
    ) -> JobInfo:
        """Create an ingest job (state Open), with the reference client's parameters.

        The parameters are those of :class:`.JobSpec` (``sobject`` is its ``object``), which checks
        them: an option Salesforce would refuse is an ``InputError`` before any request. Returns the
        new job's :class:`JobInfo`.
        """
        spec = JobSpec(
            operation=operation,
            object=sobject,
            external_id_field=external_id_field,
            assignment_rule_id=assignment_rule_id,
            column_delimiter=column_delimiter,
            line_ending=line_ending,
        )
        return await self.create_job_from_spec(spec)

    # The whole load, typed: the facade's parameters are the functions' own, so a misspelt option or a
    # delimiter Salesforce does not know fails type checking here as it does through the functions.
    perform_operation = operation.perform_operation
    perform_csv_operation = operation.perform_csv_operation
