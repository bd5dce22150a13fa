"""The operators take the connection id under the hook's name, and still under the older ``conn_id``."""

from __future__ import annotations

from typing import Any

import pytest

from airflow_provider_salesforce_bulk.hooks.salesforce_bulk import SalesforceBulkHook
from airflow_provider_salesforce_bulk.operators.salesforce_bulk import SalesforceBulkOperator
from airflow_provider_salesforce_bulk.operators.salesforce_bulk_query import SalesforceBulkQueryOperator


def _load(**kwargs: Any) -> SalesforceBulkOperator:
    return SalesforceBulkOperator(
        task_id="t", operation="insert", object_name="Contact", records=[], **kwargs
    )


def _extract(**kwargs: Any) -> SalesforceBulkQueryOperator:
    return SalesforceBulkQueryOperator(task_id="t", soql="SELECT Id FROM Account", **kwargs)


@pytest.mark.parametrize("make", [_load, _extract])
def test_either_name_or_the_default(make: Any) -> None:
    assert make(salesforce_bulk_conn_id="sf_a").conn_id == "sf_a"
    assert make(conn_id="sf_b").conn_id == "sf_b"
    assert make(salesforce_bulk_conn_id="sf_c", conn_id="sf_c").conn_id == "sf_c"
    assert make().conn_id == SalesforceBulkHook.default_conn_name


@pytest.mark.parametrize("make", [_load, _extract])
def test_two_different_connections_are_refused(make: Any) -> None:
    with pytest.raises(ValueError, match="salesforce_bulk_conn_id='sf_a' and conn_id='sf_b'"):
        make(salesforce_bulk_conn_id="sf_a", conn_id="sf_b")
