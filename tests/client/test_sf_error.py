"""``parse_sf_error`` reads Salesforce's ``sf__Error`` values: the one parser behind the summary's counts
by code and the choice of records to resubmit."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from airflow_provider_salesforce_bulk.client.resubmit import ResubmitPolicy
from airflow_provider_salesforce_bulk.client.sf_error import SfError, parse_sf_error


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (
            "UNABLE_TO_LOCK_ROW:unable to obtain exclusive access to this record:--",
            SfError(
                status_code="UNABLE_TO_LOCK_ROW",
                message="unable to obtain exclusive access to this record",
                fields=(),
            ),
        ),
        (
            "REQUIRED_FIELD_MISSING:Required fields are missing: [Name]:Name --",
            SfError(
                status_code="REQUIRED_FIELD_MISSING",
                message="Required fields are missing: [Name]",
                fields=("Name",),
            ),
        ),
        (
            "INVALID_FIELD:Failed to deserialize field at col 3. Due to, 'x' is not valid for "
            "xsd:date:CloseDate --",
            SfError(
                status_code="INVALID_FIELD",
                message="Failed to deserialize field at col 3. Due to, 'x' is not valid for xsd:date",
                fields=("CloseDate",),
            ),
        ),
        (
            "DUPLICATE_VALUE:dup:A__c,B__c --",
            SfError(status_code="DUPLICATE_VALUE", message="dup", fields=("A__c", "B__c")),
        ),
        ("ENTITY_IS_DELETED", SfError(status_code="ENTITY_IS_DELETED", message="", fields=())),
        ("something went wrong", SfError(status_code=None, message="something went wrong", fields=())),
        ("", SfError(status_code=None, message="", fields=())),
    ],
)
def test_a_value_is_read_into_its_code_message_and_fields(value: str, expected: SfError) -> None:
    assert parse_sf_error(value) == expected


_code = st.from_regex(r"[A-Z][A-Z0-9_]{0,30}", fullmatch=True)
_message = st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=60).map(str.strip)
_field = st.from_regex(r"[A-Za-z][A-Za-z0-9_]{0,20}", fullmatch=True)


@given(code=_code, message=_message, fields=st.lists(_field, max_size=3))
def test_what_salesforce_writes_is_read_back(code: str, message: str, fields: list[str]) -> None:
    value = f"{code}:{message}:{','.join(fields)} --" if fields else f"{code}:{message}:--"
    assert parse_sf_error(value) == SfError(status_code=code, message=message, fields=tuple(fields))


def test_resubmission_matches_on_the_parsed_code_only() -> None:
    policy = ResubmitPolicy()
    assert policy.matches("UNABLE_TO_LOCK_ROW:unable to obtain exclusive access to this record:--")
    assert policy.matches("UNABLE_TO_LOCK_ROW")
    assert not policy.matches("UNABLE_TO_LOCK_ROWS:x:--")
    assert not policy.matches("unable_to_lock_row:x:--")
    assert not policy.matches("INVALID_FIELD:mentions UNABLE_TO_LOCK_ROW:--")
