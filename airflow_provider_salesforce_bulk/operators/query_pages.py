"""A query job's result pages written into a staging folder, every page counted and checked."""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from typing import Any

from airflow.providers.common.compat.sdk import AirflowException

from airflow_provider_salesforce_bulk.client import BulkQueryClient, UnexpectedResponseError
from airflow_provider_salesforce_bulk.client.describe import DescribeCache, describe_columns
from airflow_provider_salesforce_bulk.client.query_arrow import arrow_schema, require_parquet
from airflow_provider_salesforce_bulk.client.query_pages import PageSummary, ResultPage
from airflow_provider_salesforce_bulk.client.query_parquet import copy_results_to_parquet
from airflow_provider_salesforce_bulk.hooks.connection import ConnectionSettings
from airflow_provider_salesforce_bulk.hooks.salesforce_bulk import SalesforceBulkHook, run_sync
from airflow_provider_salesforce_bulk.operators.extract_output import Staging
from airflow_provider_salesforce_bulk.operators.query_output import OffLoopSinks, part_name
from airflow_provider_salesforce_bulk.operators.soql_filter import select_columns
from airflow_provider_salesforce_bulk.triggers.abort import Log

__all__ = ["PageWriter"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class PageWriter:
    """Writes the pages of one JobComplete query job; stops at a page boundary once ``stop`` is set."""

    hook: SalesforceBulkHook
    settings: ConnectionSettings
    job_id: str
    output_format: str
    records_per_file: int | None
    stop: threading.Event
    log: Log

    def stage(self, directory: Any, label: str) -> tuple[Staging, list[dict[str, Any]]]:
        """Every page into a staging folder of this try, verified; read again once if a check fails."""
        for attempt in (1, 2):
            staging = Staging(directory, label)
            try:
                staging.folder.mkdir(parents=True, exist_ok=True)
                files = run_sync(lambda: self._write(staging))  # noqa: B023 (run before the next turn)
            except UnexpectedResponseError as exc:
                staging.discard()
                if attempt == 2:
                    raise UnexpectedResponseError(
                        f"the results of query job {self.job_id} failed their checks twice: {exc}"
                    ) from None
                self.log.warning(
                    "The results of query job %s failed a check (%s): reading them again", self.job_id, exc
                )
                continue
            except BaseException:
                staging.discard()
                raise
            return staging, files
        raise AssertionError("unreachable")  # pragma: no cover

    async def _write(self, staging: Staging) -> list[dict[str, Any]]:
        paths: dict[int, Any] = {}
        off_loop = OffLoopSinks()

        def sink(page: ResultPage) -> Any:
            if self.stop.is_set():
                raise AirflowException(f"Stopped at page {page.number} of query job {self.job_id}")
            path = staging.part(part_name(page.number, self.output_format))
            paths[page.number] = path
            if self.output_format == "parquet":
                return off_loop.open(path)
            return path.open("wb")  # CSV sinks are opened, written and closed in a thread already

        async with self.hook.client(self.settings) as ingest:
            client = BulkQueryClient(ingest.session)
            job = await client.finished_job(self.job_id)
            pages: list[PageSummary]
            if self.output_format == "parquet":
                try:
                    pages = await copy_results_to_parquet(
                        client, job, sink, max_records=self.records_per_file
                    )
                except BaseException:
                    with contextlib.suppress(Exception):
                        await off_loop.wait()
                    raise
                await off_loop.wait()
            else:
                pages = await client.copy_results_to(
                    job, sink, max_records=self.records_per_file, write_in_thread=True
                )
        if self.stop.is_set():
            raise AirflowException(f"Stopped after the last page of query job {self.job_id}")
        return [
            {"name": paths[p.number].name, "records": p.records, "bytes": p.bytes}
            for p in pages
            if p.number in paths  # an empty Parquet page writes no file
        ]

    def empty_part(
        self, staging: Staging, files: list[dict[str, Any]], query: str, object_name: str | None
    ) -> list[dict[str, Any]]:
        """An empty extract still publishes one part with the columns: Salesforce may answer an empty
        result with an empty body (no header), which leaves no file (Parquet) or an empty one (CSV)."""
        if any(int(f["bytes"]) > 0 for f in files):
            return files
        columns = select_columns(query)
        if columns is None:
            self.log.warning("The result is empty and its columns are unknown: the part has no header")
            return files
        name = part_name(0, self.output_format)
        with staging.part(name).open("wb") as file:
            if self.output_format == "csv":
                data = (",".join(f'"{c}"' for c in columns) + "\n").encode()
            else:
                data = run_sync(lambda: self._empty_parquet(columns, object_name or ""))
            file.write(data)
        return [{"name": name, "records": 0, "bytes": len(data)}]

    async def _empty_parquet(self, columns: list[str], object_name: str) -> bytes:
        async with self.hook.client(self.settings) as ingest:
            fields = await describe_columns(DescribeCache(ingest.session), object_name, columns)
        schema = arrow_schema(columns, fields)
        pyarrow = require_parquet()
        sink = pyarrow.BufferOutputStream()
        pyarrow.parquet.write_table(schema.empty_table(), sink)
        return bytes(sink.getvalue().to_pybytes())
