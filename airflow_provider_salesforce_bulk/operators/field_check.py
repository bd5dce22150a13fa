"""The input's columns checked against the object's describe before any job exists.

A column the object does not have fails every job Salesforce is given (``InvalidBatch : Field name
not found``), one Failed job per chunk. One describe request, made once per load before its first
job, refuses such input with the column and the field it was mapped to named.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Mapping, Sequence

from airflow_provider_salesforce_bulk.client import (
    BulkIngestClient,
    InputError,
    NotFoundError,
    SalesforceBulkError,
)
from airflow_provider_salesforce_bulk.client.describe import SObjectDescription, describe_sobject
from airflow_provider_salesforce_bulk.operators.refusals import credentials_refused

__all__ = ["check_columns_exist"]

log = logging.getLogger(__name__)


async def check_columns_exist(
    client: BulkIngestClient,
    object_name: str,
    columns: Sequence[str],
    *,
    field_mapping: Mapping[str, str] | None = None,
    external_id_field: str | None = None,
) -> None:
    """Raise :class:`InputError` for a column (or the upsert's external id field) ``object_name`` lacks.

    A relationship column (``Account.External_Id__c``, ``Owner:User.Username``) is checked up to its
    relationship name. When the describe cannot be read for another reason than an unknown object
    (no permission, a server error), the check is skipped with a warning: Salesforce still refuses
    such a column, job by job.
    """
    try:
        described = await describe_sobject(client.session, object_name)
    except NotFoundError:
        raise InputError(
            f"object_name {object_name!r}: the org has no such object (its describe answered 404)",
            field="object_name",
        ) from None
    except SalesforceBulkError as exc:
        if credentials_refused(exc):
            raise
        log.warning(
            "Could not read the describe of %s to check the columns (%s): not checked", object_name, exc
        )
        return
    targets = {target: source for source, target in (field_mapping or {}).items()}
    for column in columns:
        if _exists(described, column):
            continue
        where = (
            f"field_mapping maps the column {targets[column]!r} to {column!r}"
            if column in targets
            else f"the input has the column {column!r}"
        )
        raise InputError(
            f"{where}, which {described.name} does not have{_suggest(described, column)}; no job was created",
            field=column,
        )
    if external_id_field and described.field(external_id_field) is None:
        raise InputError(
            f"external_id_field {external_id_field!r} is not a field of {described.name}"
            f"{_suggest(described, external_id_field)}",
            field="external_id_field",
        )


def _exists(described: SObjectDescription, column: str) -> bool:
    if "." not in column:
        return described.field(column) is not None
    relationship = column.split(".", 1)[0].split(":", 1)[0]
    return described.relationship(relationship) is not None


def _suggest(described: SObjectDescription, name: str) -> str:
    close = difflib.get_close_matches(name, [f.name for f in described.fields], n=1, cutoff=0.75)
    return f" (did you mean {close[0]!r}?)" if close else ""
