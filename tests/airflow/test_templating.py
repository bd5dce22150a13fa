"""Templated fields: strings without Jinja markup are taken as they are, others are rendered."""

from __future__ import annotations

import datetime
from typing import Any

import pytest


def _operator(native: bool, records: list[dict[str, Any]], **dag_kwargs: Any) -> Any:
    from airflow.sdk import DAG

    from airflow_provider_salesforce_bulk.operators.salesforce_bulk import SalesforceBulkOperator

    with DAG(
        "templating",
        schedule=None,
        start_date=datetime.datetime(2024, 1, 1),
        render_template_as_native_obj=native,
        **dag_kwargs,
    ):
        return SalesforceBulkOperator(
            task_id="load", operation="insert", object_name="{{ params.obj }}", records=records
        )


def _render(op: Any) -> int:
    """Renders ``op``'s fields; how many strings Jinja compiled."""
    env = op.get_template_env()
    compiled = 0
    from_string = env.from_string

    def counting(source: str, *args: Any, **kwargs: Any) -> Any:
        nonlocal compiled
        compiled += 1
        return from_string(source, *args, **kwargs)

    env.from_string = counting
    op.render_template_fields({"ds": "2024-01-02", "params": {"obj": "Account"}}, jinja_env=env)
    return compiled


@pytest.mark.parametrize("native", [False, True])
def test_values_without_markup_reach_salesforce_unchanged_and_uncompiled(native: bool) -> None:
    # Jinja would drop the trailing newline, and a native environment would turn "123" into 123
    # and "True" into a bool: values of records, not templates.
    plain = {"Name": "Acme\n", "Code__c": "123", "Flag__c": "True", "Note__c": "50% {off}"}
    records = [dict(plain, Day__c="{{ ds }}"), dict(plain, Day__c="{# gone #}{% if 1 %}x{% endif %}")]
    op = _operator(native, records)
    compiled = _render(op)
    assert op.records == [dict(plain, Day__c="2024-01-02"), dict(plain, Day__c="x")]
    assert op.object_name == "Account"
    assert compiled == 3  # the two Day__c values and object_name, nothing else


def test_thousands_of_literal_records_compile_nothing() -> None:
    records = [{"Name": f"Item {i}", "External_Id__c": f"EX-{i}"} for i in range(5_000)]
    op = _operator(False, records)
    assert _render(op) == 1  # object_name only
    assert op.records == records


def test_the_dags_own_delimiters_and_line_statements_are_honoured() -> None:
    records = [{"Name": "[[ ds ]]", "Other__c": "{{ not a template here }}"}]
    op = _operator(
        False, records, jinja_environment_kwargs={"variable_start_string": "[[", "variable_end_string": "]]"}
    )
    _render(op)
    assert op.records == [{"Name": "2024-01-02", "Other__c": "{{ not a template here }}"}]

    lines = [{"Name": "# for i in [1, 2]\n[[ i ]]\n# endfor\n"}]
    op = _operator(
        False,
        lines,
        jinja_environment_kwargs={
            "line_statement_prefix": "#",
            "variable_start_string": "[[",
            "variable_end_string": "]]",
        },
    )
    _render(op)
    assert op.records == [{"Name": "1\n2\n"}]
