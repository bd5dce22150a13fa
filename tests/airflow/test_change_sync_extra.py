"""Change-only syncs need the ``[sync]`` extra; a plain install still imports the operator.

In a fresh interpreter where ``pyarrow`` and ``duckdb`` cannot be imported (``sys.modules[name] =
None`` makes their import fail, as on an install without the extras).
"""

from __future__ import annotations

import subprocess
import sys

_SCRIPT = """
import sys
sys.modules["pyarrow"] = None
sys.modules["duckdb"] = None
from airflow_provider_salesforce_bulk.operators.salesforce_bulk import SalesforceBulkOperator
from airflow_provider_salesforce_bulk.operators.change_sync import check_sync_options
from airflow_provider_salesforce_bulk.client import InputError
try:
    check_sync_options(
        changes_only=True, sync_state_path="/tmp/state", delete_missing=False, max_delete_ratio=0.1,
        full_sync=False, operation="upsert", external_id_field="External_Id__c",
    )
except InputError as exc:
    print("refused:", exc.field, exc)
print("plain:", check_sync_options(
    changes_only=False, sync_state_path=None, delete_missing=False, max_delete_ratio=0.1,
    full_sync=False, operation="insert", external_id_field=None,
))
"""


def test_without_the_sync_extra_the_operator_imports_and_changes_only_is_refused_naming_it() -> None:
    done = subprocess.run(  # noqa: S603 - our own interpreter and script
        [sys.executable, "-c", _SCRIPT], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("refused: changes_only change-only syncs need DuckDB and pyarrow"), lines
    assert "airflow-provider-salesforce-bulk[sync]" in lines[0]
    assert lines[1] == "plain: None"
