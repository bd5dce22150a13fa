from __future__ import annotations

import pytest

from airflow_provider_salesforce_bulk.emulator.ids import case_safe_suffix, make_id, normalize_id


def test_suffix_of_a_real_id() -> None:
    # 0018c00002DJIpJAAX is an id from Salesforce's own documentation example.
    assert case_safe_suffix("0018c00002DJIpJ") == "AAX"
    assert case_safe_suffix("001000000000000") == "AAA"
    assert case_safe_suffix("ABCDEABCDEABCDE") == "555"


def test_normalize_restores_case_from_the_suffix() -> None:
    assert normalize_id("0018c00002DJIpJ") == "0018c00002DJIpJAAX"
    assert normalize_id("0018C00002DJIPJAAX".lower()) == "0018c00002DJIpJAAX"


@pytest.mark.parametrize("bad", ["", "001", "0018c00002DJIpJAA", "0018c00002DJIp!AAX", "0018c00002DJIpJA9X"])
def test_malformed_ids_are_refused(bad: str) -> None:
    assert normalize_id(bad) is None


def test_generated_ids_are_valid_and_distinct() -> None:
    ids = [make_id("a01", n) for n in range(0, 200_000, 7)]
    assert len(set(ids)) == len(ids)
    assert all(len(i) == 18 and i.startswith("a01") and normalize_id(i) == i for i in ids)
    with pytest.raises(OverflowError):
        make_id("001", 62**9)
