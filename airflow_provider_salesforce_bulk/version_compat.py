"""Which Airflow this process runs, as the official providers tell it (copied, not imported from one).

The provider supports Airflow 3.1 and later. Code that differs by version branches on these constants
or, better, on the presence of the feature (``context.get("task_state_store")``), never on a string.
"""

from __future__ import annotations

__all__ = [
    "AIRFLOW_V_3_1_PLUS",
    "AIRFLOW_V_3_2_PLUS",
    "AIRFLOW_V_3_3_PLUS",
    "MIN_AIRFLOW_VERSION",
    "get_base_airflow_version_tuple",
]

MIN_AIRFLOW_VERSION = (3, 1, 0)
"""The oldest Airflow the tests prove (``make test-airflow AIRFLOW=3.1.8``); pyproject states the same."""


def get_base_airflow_version_tuple() -> tuple[int, int, int]:
    """``(major, minor, micro)`` of the installed Airflow, pre-release and local tags dropped."""
    from airflow import __version__
    from packaging.version import Version

    version = Version(__version__)
    return version.major, version.minor, version.micro


AIRFLOW_V_3_1_PLUS: bool = get_base_airflow_version_tuple() >= (3, 1, 0)
AIRFLOW_V_3_2_PLUS: bool = get_base_airflow_version_tuple() >= (3, 2, 0)
AIRFLOW_V_3_3_PLUS: bool = get_base_airflow_version_tuple() >= (3, 3, 0)
