"""The connection form the UI renders, as Airflow's API serves it (``/ui/connections/hook_meta``).

Airflow 3.2+ builds it from ``conn-fields``; 3.1 from the hook's form methods. The same assertions
run on every supported version (``make test-airflow AIRFLOW=...``), so both paths are proven.
"""

from __future__ import annotations

from typing import Any

import pytest

from airflow_provider_salesforce_bulk.get_provider_info import AUTH_TYPE_CHOICES, conn_fields


@pytest.fixture(scope="module")
def form() -> Any:
    from airflow.api_fastapi.core_api.services.ui.connections import HookMetaService

    metas = {meta.connection_type: meta for meta in HookMetaService.hook_meta_data()}
    assert "salesforce_bulk" in metas, sorted(metas)
    return metas["salesforce_bulk"].model_dump()


def test_every_extra_field_is_in_the_form(form: Any) -> None:
    assert form["hook_name"] == "Salesforce Bulk API 2.0"
    assert set(form["extra_fields"]) == set(conn_fields())
    assert form["extra_fields"]["client_id"]["schema"]["title"] == "Client ID (consumer key)"


def test_auth_type_is_a_dropdown_without_a_null_choice(form: Any) -> None:
    schema = form["extra_fields"]["auth_type"]["schema"]
    assert schema["enum"] == AUTH_TYPE_CHOICES
    assert None not in schema["enum"]
    # Left empty the dropdown shows its placeholder; empty means "infer from the fields".
    assert form["extra_fields"]["auth_type"]["value"] is None
    assert "null" in schema["type"]


def test_standard_fields_are_relabelled_and_port_stays_visible(form: Any) -> None:
    standard = form["standard_fields"]
    assert standard["host"]["title"] == "Login URL / My Domain"
    assert standard["login"]["title"] == "Username"
    assert standard["url_schema"]["hidden"] is True
    # Hidden, an empty port is posted as 0 by the 3.3 list's Test button and the test is refused.
    assert not standard["port"]["hidden"]
    assert standard["port"]["placeholder"] == "443"


def test_api_version_keeps_its_default(form: Any) -> None:
    assert form["extra_fields"]["api_version"]["value"] == "64.0"


def test_hook_methods_describe_the_same_form() -> None:
    from airflow_provider_salesforce_bulk.hooks.salesforce_bulk import SalesforceBulkHook

    behaviour = SalesforceBulkHook.get_ui_field_behaviour()
    assert behaviour["hidden_fields"] == ["schema"]
    assert behaviour["relabeling"]["host"] == "Login URL / My Domain"
