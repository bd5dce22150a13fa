"""Records sent again are "resubmitted"; the older "retry" names still work, with a DeprecationWarning."""

from __future__ import annotations

import importlib
import warnings
from typing import Any

import pytest

from airflow_provider_salesforce_bulk.client import InputError, ResubmitPolicy
from airflow_provider_salesforce_bulk.operators.salesforce_bulk import SalesforceBulkOperator


def _load(**kwargs: Any) -> SalesforceBulkOperator:
    return SalesforceBulkOperator(
        task_id="t", operation="insert", object_name="Contact", records=[], **kwargs
    )


def test_resubmit_error_codes_default_and_given_without_a_warning() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        assert _load()._policy().codes == ("UNABLE_TO_LOCK_ROW",)
        assert _load(resubmit_error_codes=["A_CODE", "B_CODE"])._policy().codes == ("A_CODE", "B_CODE")
        assert _load(resubmit_error_codes=[])._policy() == ResubmitPolicy(codes=())


def test_the_old_name_warns_and_still_sets_the_codes() -> None:
    with pytest.warns(DeprecationWarning, match="retry_error_codes is deprecated: use resubmit_error_codes"):
        op = _load(retry_error_codes=["A_CODE"])
    assert op.resubmit_error_codes == ["A_CODE"]
    assert op._policy().codes == ("A_CODE",)


def test_both_names_at_once_are_refused_at_parse_time() -> None:
    with (
        pytest.warns(DeprecationWarning, match="retry_error_codes"),
        pytest.raises(ValueError, match="not both"),
    ):
        _load(resubmit_error_codes=["A_CODE"], retry_error_codes=["B_CODE"])


@pytest.mark.parametrize("name", ["resubmit_error_codes", "retry_error_codes"])
def test_a_bad_code_is_named_by_the_parameter_the_user_gave(name: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        op = _load(**{name: ["lock"]})
        string = _load(**{name: "UNABLE_TO_LOCK_ROW"})
    with pytest.raises(InputError, match=f"^{name} holds 'lock', not a status code") as info:
        op._policy()
    assert info.value.field == name
    with pytest.raises(InputError, match=f"^{name} must be a list of status codes") as info:
        string._policy()
    assert info.value.field == name


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("DEFAULT_RETRY_ERROR_CODES", "DEFAULT_RESUBMIT_ERROR_CODES"),
        ("RetryChunk", "ResubmitChunk"),
        ("RetryJob", "ResubmitJob"),
        ("iter_retry_chunks", "iter_resubmit_chunks"),
        ("submit_retry_round", "resubmit_round"),
    ],
)
def test_the_client_s_old_resubmit_names_import_with_a_warning(old: str, new: str) -> None:
    module = importlib.import_module("airflow_provider_salesforce_bulk.client.resubmit")
    with pytest.warns(DeprecationWarning, match=f"{old} is renamed {new}"):
        value = getattr(module, old)
    assert value is getattr(module, new)
    with pytest.raises(AttributeError):
        module.no_such_name  # noqa: B018
