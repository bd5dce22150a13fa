"""The operator's extra link: the job in Salesforce Setup (Bulk Data Load Jobs)."""

from __future__ import annotations

from typing import Any

from airflow.providers.common.compat.sdk import BaseOperatorLink

__all__ = ["LINK_XCOM_KEY", "SalesforceBulkJobLink", "job_url"]

LINK_XCOM_KEY = "salesforce_bulk_job_url"


def job_url(instance_url: str, job_ids: list[str]) -> str:
    """The job's page in Setup, or the list of bulk jobs when the task made several."""
    base = instance_url.rstrip("/")
    if len(job_ids) == 1:
        return f"{base}/lightning/setup/AsyncApiJobStatus/page?address=%2F{job_ids[0]}"
    return f"{base}/lightning/setup/AsyncApiJobStatus/home"


class SalesforceBulkJobLink(BaseOperatorLink):
    """Opens the Bulk API job of the task in Salesforce Setup."""

    name = "Salesforce Bulk Job"

    @property
    def xcom_key(self) -> str:
        """The key the operator writes the URL under as soon as the jobs exist: Airflow stores the link
        under this key again when the task ends, so it is one XCom row, not two with the same URL, and
        the UI shows the link while the task is still deferred."""
        return LINK_XCOM_KEY

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        from airflow.providers.common.compat.sdk import XCom

        url = XCom.get_value(key=LINK_XCOM_KEY, ti_key=ti_key)
        return str(url) if url else ""
