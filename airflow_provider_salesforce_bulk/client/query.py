"""``BulkQueryClient``: Bulk API 2.0 query jobs (extracts) and their result pages, streamed.

Results come in pages. Each page is fetched by its locator (``Sforce-Locator`` of the page before,
or a ``resultUrl`` of ``/resultPages`` from API 58.0), counted by ``Sforce-NumberOfRecords`` and
read as a byte stream: no page is ever held whole. A page whose connection drops mid-body is
fetched again from its own locator and resumed where it stopped (the new answer's record count,
next locator and last bytes before the break must match the first's), so the consumer sees every
record exactly once; when every page is read, their record counts are checked against the job's
``numberRecordsProcessed``.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Literal, TypeVar

import httpx
import orjson

from airflow_provider_salesforce_bulk.client.csv_format import (
    COLUMN_DELIMITERS,
    check_column_delimiter,
    check_line_ending,
)
from airflow_provider_salesforce_bulk.client.errors import (
    InputError,
    InvalidJobStateError,
    MalformedRequestError,
    NotFoundError,
    OperationTimeoutError,
    QueryError,
    QueryJobFailedError,
    UnexpectedResponseError,
)
from airflow_provider_salesforce_bulk.client.job_spec import PollPolicy
from airflow_provider_salesforce_bulk.client.jobs_common import (
    JSON_HEADERS,
    check_job_id,
    iter_job_list,
    job_info,
    json_object,
    list_params,
)
from airflow_provider_salesforce_bulk.client.models import FAILED_STATES, ColumnDelimiter, JobInfo, LineEnding
from airflow_provider_salesforce_bulk.client.page_check import PageCheck, check_distinct_pages
from airflow_provider_salesforce_bulk.client.query_pages import (
    PageRunner,
    PageSink,
    PageSummary,
    ResultPage,
    copy_page_in_thread,
    read_csv_header,
)
from airflow_provider_salesforce_bulk.client.result_csv import iter_csv_records
from airflow_provider_salesforce_bulk.client.session import SalesforceSession

__all__ = [
    "QUERY_OPERATIONS",
    "RESULT_PAGES_SINCE",
    "BulkQueryClient",
    "PageSink",
    "PageSummary",
    "QueryOperation",
    "ResultPage",
    "check_max_records",
    "check_query_options",
]

log = logging.getLogger(__name__)

QueryOperation = Literal["query", "queryAll"]
QUERY_OPERATIONS: tuple[str, ...] = ("query", "queryAll")
#: The first API version serving ``GET /jobs/query/{id}/resultPages``.
RESULT_PAGES_SINCE = 58.0
#: Salesforce's page size limit for ``maxRecords`` is not documented; pages are capped by size too.
MAX_RECORDS_CEILING = 100_000_000

_T = TypeVar("_T")


class BulkQueryClient:
    """Salesforce Bulk API 2.0 query client: jobs, and their results streamed page by page.

    Parameters
    ----------
    session : SalesforceSession
        Authenticated HTTP access to the org; closing it is the caller's business.
    page_refetches : int
        How often one result page dropped mid-body is fetched again before giving up.

    Examples
    --------
    >>> client = BulkQueryClient(session)  # doctest: +SKIP
    >>> job = await client.run_query("SELECT Id, Name FROM Account")  # doctest: +SKIP
    >>> async for page in client.iter_result_pages(job.id, max_records=50_000):  # doctest: +SKIP
    ...     async for chunk in page.iter_bytes():
    ...         out.write(chunk)
    """

    def __init__(self, session: SalesforceSession, *, page_refetches: int = 3) -> None:
        if isinstance(page_refetches, bool) or not isinstance(page_refetches, int) or page_refetches < 0:
            raise InputError(
                f"page_refetches must be a whole number >= 0, got {page_refetches!r}", field="page_refetches"
            )
        self.session = session
        self.page_refetches = page_refetches

    def __repr__(self) -> str:
        return f"<BulkQueryClient {self.session!r}>"

    # -- jobs ---------------------------------------------------------------------------------

    async def create_job(
        self,
        soql: str,
        *,
        operation: QueryOperation = "query",
        column_delimiter: ColumnDelimiter = "COMMA",
        line_ending: LineEnding = "LF",
    ) -> JobInfo:
        """Create a query job (state UploadComplete: Salesforce starts at once).

        Parameters
        ----------
        soql : str
            The query.
        operation : {"query", "queryAll"}
            ``queryAll`` includes deleted and archived records.
        column_delimiter : {"COMMA", "BACKQUOTE", "CARET", "PIPE", "SEMICOLON", "TAB"}
        line_ending : {"LF", "CRLF"}

        Raises
        ------
        QueryError
            Salesforce refused the query (``MALFORMED_QUERY``, ``INVALID_FIELD``, ``INVALID_TYPE``,
            an unsupported construct...), with its message naming the position or field.
        """
        check_query_options(soql, operation, column_delimiter, line_ending)
        payload = {
            "operation": operation,
            "query": soql,
            "contentType": "CSV",
            "columnDelimiter": column_delimiter,
            "lineEnding": line_ending,
        }
        try:
            response = await self.session.request(
                "POST", "jobs/query", content=orjson.dumps(payload), headers=JSON_HEADERS
            )
        except QueryError:
            raise
        except MalformedRequestError as exc:
            if exc.status_code != 400:
                raise
            # Options are checked above, so a 400 here is about the SOQL (API_ERROR for what Bulk
            # queries do not support, e.g. "Aggregate Relationships not supported in Bulk Query").
            raise QueryError(
                str(exc),
                status_code=exc.status_code,
                error_code=exc.error_code,
                errors=exc.errors,
                method=exc.method,
                url=exc.url,
            ) from exc
        return job_info(response)

    async def get_job(self, job_id: str) -> JobInfo:
        """Information about a query job (``numberRecordsProcessed``, ``errorMessage``...)."""
        response = await self.session.request(
            "GET", f"jobs/query/{check_job_id(job_id)}", headers=JSON_HEADERS
        )
        return job_info(response)

    async def list_jobs(
        self,
        *,
        job_type: str | None = None,
        concurrency_mode: str | None = None,
        is_pk_chunking_enabled: bool | None = None,
    ) -> AsyncIterator[JobInfo]:
        """Every query job of the org, following ``nextRecordsUrl`` page by page."""
        params = list_params(is_pk_chunking_enabled, job_type, concurrency_mode)
        seen: set[str] = set()

        def next_path(listing: dict[str, Any]) -> str | None:
            next_url = listing.get("nextRecordsUrl")
            path = str(next_url) if next_url and not listing.get("done", False) else None
            if path is not None:
                if path in seen:
                    raise UnexpectedResponseError(f"job list loops back to {path}")
                seen.add(path)
            return path

        async for job in iter_job_list(self.session, "jobs/query", params, next_path):
            yield job

    async def abort_job(self, job_id: str) -> JobInfo:
        """Abort a query job. Aborting a job that already ended returns its state instead of failing."""
        try:
            response = await self.session.request(
                "PATCH",
                f"jobs/query/{check_job_id(job_id)}",
                content=orjson.dumps({"state": "Aborted"}),
                headers=JSON_HEADERS,
            )
        except InvalidJobStateError:
            job = await self.get_job(job_id)
            if job.is_terminal:
                return job
            raise
        return job_info(response)

    async def delete_job(self, job_id: str) -> None:
        """Delete a finished query job and its results (JobComplete, Aborted or Failed)."""
        await self.session.request("DELETE", f"jobs/query/{check_job_id(job_id)}")

    async def wait_for_job(
        self,
        job_id: str,
        *,
        poll: PollPolicy | None = None,
        timeout: float | None = None,
        on_progress: Callable[[JobInfo], Awaitable[None] | None] | None = None,
        raise_on_failure: bool = True,
    ) -> JobInfo:
        """Poll a query job with backoff until it is JobComplete, Failed or Aborted.

        Raises
        ------
        QueryJobFailedError
            The job ended Failed or Aborted (when ``raise_on_failure``), with its ``errorMessage``.
        OperationTimeoutError
            ``timeout`` seconds passed first (the job keeps running on Salesforce).
        """
        check_timeout(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        for wait in (poll or PollPolicy()).intervals():
            job = await self.get_job(job_id)
            if on_progress is not None:
                maybe = on_progress(job)
                if maybe is not None:
                    await maybe
            if job.is_terminal:
                if raise_on_failure and job.state != "JobComplete":
                    raise QueryJobFailedError(
                        f"query job {job_id} ended {job.state}: {job.error_message or 'no error message'}",
                        job_id=job_id,
                        state=job.state or "",
                        error_message=job.error_message,
                    )
                return job
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise OperationTimeoutError(
                        f"query job {job_id} still {job.state} after {timeout}s; "
                        "it keeps running on Salesforce"
                    )
                wait = min(wait, remaining)
            await asyncio.sleep(wait)
        raise AssertionError("unreachable")  # pragma: no cover

    async def run_query(
        self,
        soql: str,
        *,
        include_deleted: bool = False,
        column_delimiter: ColumnDelimiter = "COMMA",
        line_ending: LineEnding = "LF",
        poll: PollPolicy | None = None,
        timeout: float | None = None,
    ) -> JobInfo:
        """Create a query job (``queryAll`` when ``include_deleted``) and wait until it is JobComplete."""
        check_timeout(timeout)
        job = await self.create_job(
            soql,
            operation="queryAll" if include_deleted else "query",
            column_delimiter=column_delimiter,
            line_ending=line_ending,
        )
        return await self.wait_for_job(job.id, poll=poll, timeout=timeout)

    # -- results ------------------------------------------------------------------------------

    async def finished_job(self, job: str | JobInfo) -> JobInfo:
        """The job, checked to be JobComplete (results exist only then).

        A :class:`JobInfo` already JobComplete (from :meth:`wait_for_job`) is taken as it is:
        that state is final. Anything else is asked for.
        """
        if isinstance(job, JobInfo):
            if job.state == "JobComplete":
                return job
            job = job.id
        job_id = job
        job = await self.get_job(job_id)
        if job.state != "JobComplete":
            if job.state in FAILED_STATES:
                raise QueryJobFailedError(
                    f"query job {job_id} ended {job.state} and has no results: "
                    f"{job.error_message or 'no error message'}",
                    job_id=job_id,
                    state=job.state or "",
                    error_message=job.error_message,
                )
            raise InvalidJobStateError(
                f"query job {job_id} is {job.state}; results exist once it is JobComplete",
                status_code=400,
                error_code="INVALIDJOBSTATE",
            )
        return job

    async def iter_result_pages(
        self, job_id: str | JobInfo, *, max_records: int | None = None, compress: bool = True
    ) -> AsyncIterator[ResultPage]:
        """The job's result pages in order, one open at a time, each by the previous one's locator.

        Read each page's :meth:`ResultPage.iter_bytes` before asking for the next page (a page
        left unread is closed and its body dropped). Memory holds one network chunk.

        Parameters
        ----------
        max_records : int, optional
            Records per page at most (``maxRecords``); Salesforce may send fewer. Default: the
            server's page size.
        compress : bool
            Ask for gzip (decompressed here); turn off on a fast local network to save CPU.

        Raises
        ------
        UnexpectedResponseError
            The pages do not add up to the job's ``numberRecordsProcessed``, or locators loop.
        """
        check_max_records(max_records)
        job = await self.finished_job(job_id)
        locator: str | None = None
        seen: set[str] = set()
        total = 0
        number = 0
        while True:
            page = self._page(job, number, locator, max_records, compress)
            async with page:
                yield page
            total += page.records
            locator = _next_locator(job, page, seen)
            if locator is None:
                break
            number += 1
        _check_total(job, total)

    async def iter_records(
        self, job_id: str | JobInfo, *, max_records: int | None = None
    ) -> AsyncIterator[dict[str, str]]:
        """Every record of the result as a dict of its CSV values, page after page, in order.

        Values are Salesforce's text; null is ``""`` (Bulk API CSV has no other null). For typed
        values write Parquet (:func:`~.query_parquet.copy_results_to_parquet`).
        """
        job = await self.finished_job(job_id)
        delimiter = COLUMN_DELIMITERS[job.column_delimiter or "COMMA"]
        async for page in self.iter_result_pages(job, max_records=max_records):
            try:
                async for record in iter_csv_records(page.iter_bytes(), delimiter=delimiter):
                    yield record
            except csv.Error as exc:
                raise UnexpectedResponseError(
                    f"page {page.number} of query job {job.id} is not valid CSV: {exc}"
                ) from exc

    async def for_each_result_page(
        self,
        job_id: str | JobInfo,
        handler: Callable[[ResultPage], Awaitable[_T]],
        *,
        max_records: int | None = None,
        concurrency: int = 4,
        parallel: bool | None = None,
        compress: bool = True,
    ) -> list[_T]:
        """Run ``handler`` on every result page, up to ``concurrency`` pages at once.

        Pages are found either from ``/resultPages`` (``parallel``; API 58.0 and later, server-sized
        pages, ``max_records`` not applicable) or by chaining locators, where the next page is
        requested as soon as the previous page's head names it, while earlier bodies still stream.
        ``parallel=None`` picks ``/resultPages`` when the job's API version offers it and no
        ``max_records`` is given, and falls back to locators on a 404.

        Each handler holds one of the session's request slots while its page streams; a handler
        that sends requests of its own through the same session needs ``concurrency`` below the
        session's slots.

        Returns
        -------
        list
            The handler's results in page order (stable whatever the completion order).

        Raises
        ------
        Whatever the handler raises (the other pages are cancelled), plus the errors of
        :meth:`iter_result_pages`.
        """
        check_max_records(max_records)
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise InputError(
                f"concurrency must be a whole number >= 1, got {concurrency!r}", field="concurrency"
            )
        if parallel and max_records is not None:
            raise InputError(
                "max_records applies to locator paging; /resultPages pages are sized by Salesforce",
                field="max_records",
            )
        job = await self.finished_job(job_id)
        use_pages = parallel
        if use_pages is None:
            use_pages = max_records is None and (job.api_version or 0) >= RESULT_PAGES_SINCE
        runner = PageRunner(concurrency, handler)
        try:
            listed = False
            if use_pages:
                listed = await self._run_listed(job, runner, compress)
            if not listed:
                await self._run_chained(job, runner, max_records, compress)
            results = await runner.finish()
        except BaseException:
            await runner.cancel()
            raise
        _check_total(job, runner.total)
        return [results[n] for n in sorted(results)]

    async def copy_results_to(
        self,
        job_id: str | JobInfo,
        sink_factory: Callable[[ResultPage], contextlib.AbstractContextManager[PageSink]],
        *,
        max_records: int | None = None,
        concurrency: int = 4,
        parallel: bool | None = None,
        compress: bool = True,
        write_in_thread: bool = False,
    ) -> list[PageSummary]:
        """Write each result page, as Salesforce sent it (header included), to a sink of its own.

        ``sink_factory(page)`` is called once per page, after its head arrived, and returns a
        context manager of a binary writable (``path.open("wb")`` of a local path or an
        ``ObjectStoragePath`` does; ``write`` may also be async). Name files by ``page.number``:
        the order is stable, and a re-run writes the same names. A page dropped mid-body resumes
        in the same sink (see :meth:`ResultPage.iter_bytes`); if the copy fails, sinks written so
        far are incomplete and should be discarded. Memory holds ``concurrency`` network chunks.

        Every page's records are counted from its bytes (quote-aware) and must equal its
        ``Sforce-NumberOfRecords``, and no two pages may begin and end with the same records
        (:mod:`.page_check`); either failure is an :class:`UnexpectedResponseError`, after which the
        sinks should be discarded and the results read again.

        ``write_in_thread`` opens, writes and closes each sink in a worker thread, for sinks whose
        calls block (an object store uploading a part, or committing the file on close), so that
        other pages keep streaming meanwhile.
        """

        async def copy(page: ResultPage) -> PageSummary:
            if write_in_thread:
                return await copy_page_in_thread(page, sink_factory)
            check = PageCheck()
            with sink_factory(page) as sink:
                async for chunk in page.iter_bytes():
                    check.feed(chunk)
                    result = sink.write(chunk)
                    if asyncio.iscoroutine(result):
                        await result
            check.verify(page.job_id, page.number, page.records)
            return PageSummary(page.number, page.locator, check.records, check.bytes, check.fingerprint())

        pages = await self.for_each_result_page(
            job_id,
            copy,
            max_records=max_records,
            concurrency=concurrency,
            parallel=parallel,
            compress=compress,
        )
        check_distinct_pages(str(getattr(job_id, "id", job_id)), ((p.number, p.fingerprint) for p in pages))
        return pages

    async def result_columns(self, job: str | JobInfo) -> list[str] | None:
        """The result's column names (its CSV header, the SELECT list as written), read from a
        one-record page; None when the result has no header (an empty body)."""
        if isinstance(job, str):
            job = await self.finished_job(job)
        page = self._page(job, 0, None, 1, True)
        async with page:
            chunks = page.iter_bytes()
            try:
                columns, _ = await read_csv_header(chunks, COLUMN_DELIMITERS[job.column_delimiter or "COMMA"])
            finally:
                await chunks.aclose()
        return columns

    # -- page plumbing ------------------------------------------------------------------------

    def _results_base(self, job: JobInfo) -> str:
        # Results must be read with the job's own API version (409 otherwise), whatever the session's.
        version = f"{job.api_version:.1f}" if job.api_version else self.session.api_version
        return f"/services/data/v{version}/jobs/query/{check_job_id(job.id)}"

    def _page(
        self, job: JobInfo, number: int, locator: str | None, max_records: int | None, compress: bool
    ) -> ResultPage:
        params: dict[str, str] = {}
        if max_records is not None:
            params["maxRecords"] = str(max_records)
        if locator is not None:
            params["locator"] = locator
        return ResultPage(
            self.session,
            job.id,
            number,
            f"{self._results_base(job)}/results",
            params,
            locator=locator,
            refetches=self.page_refetches,
            compress=compress,
        )

    async def _run_chained(
        self, job: JobInfo, runner: PageRunner[Any], max_records: int | None, compress: bool
    ) -> None:
        locator: str | None = None
        seen: set[str] = set()
        number = 0
        while True:
            page = self._page(job, number, locator, max_records, compress)
            await runner.start(page, wait_for_head=True)
            locator = _next_locator(job, page, seen)
            if locator is None:
                return
            number += 1

    async def _run_listed(self, job: JobInfo, runner: PageRunner[Any], compress: bool) -> bool:
        """Pages from ``/resultPages``; False when the org does not serve it (nothing started)."""
        path: str | None = f"{self._results_base(job)}/resultPages"
        seen: set[str] = set()
        number = 0
        while path is not None:
            try:
                response = await self.session.request("GET", path, headers=JSON_HEADERS)
            except NotFoundError:
                if number == 0:
                    log.info("No /resultPages for job %s; paging by locator", job.id)
                    return False
                raise
            listing = json_object(response)
            for entry in listing.get("resultPages") or ():
                url = entry.get("resultUrl") if isinstance(entry, dict) else None
                if not isinstance(url, str) or not url:
                    raise UnexpectedResponseError(f"resultPages of job {job.id}: entry without resultUrl")
                if url in seen:
                    raise UnexpectedResponseError(f"resultPages of job {job.id} lists {url} twice")
                seen.add(url)
                page = ResultPage(
                    self.session,
                    job.id,
                    number,
                    url,
                    None,
                    locator=httpx.URL(url).params.get("locator"),
                    refetches=self.page_refetches,
                    compress=compress,
                )
                await runner.start(page, wait_for_head=False)
                number += 1
            next_url = listing.get("nextRecordsUrl")
            path = str(next_url) if next_url and not listing.get("done", False) else None
            if path is not None and path in seen:
                raise UnexpectedResponseError(f"resultPages of job {job.id} loop back to {path}")
            if path is not None:
                seen.add(path)
        return True


def _next_locator(job: JobInfo, page: ResultPage, seen: set[str]) -> str | None:
    """The locator of the page after ``page`` (None after the last), refused when it was seen before:
    a server looping its locators would otherwise be read forever."""
    locator = page.next_locator
    if locator is None:
        return None
    if locator in seen:
        raise UnexpectedResponseError(f"result locators of job {job.id} loop back to {locator}")
    seen.add(locator)
    return locator


def _check_total(job: JobInfo, total: int) -> None:
    if total != job.number_records_processed:
        raise UnexpectedResponseError(
            f"the result pages of query job {job.id} hold {total} records, but the job processed "
            f"{job.number_records_processed}"
        )


def check_query_options(soql: str, operation: str, column_delimiter: str, line_ending: str) -> None:
    """Refuse what Salesforce would refuse about a query job's options, before any request."""
    if not isinstance(soql, str) or not soql.strip():
        raise InputError("soql (the query) must be a non-empty string", field="soql")
    if operation not in QUERY_OPERATIONS:
        raise InputError(
            f"operation must be one of {', '.join(QUERY_OPERATIONS)}, got {operation!r}", field="operation"
        )
    check_column_delimiter(column_delimiter)
    check_line_ending(line_ending)


def check_max_records(max_records: int | None) -> None:
    if max_records is None:
        return
    if (
        isinstance(max_records, bool)
        or not isinstance(max_records, int)
        or not 1 <= max_records <= MAX_RECORDS_CEILING
    ):
        raise InputError(
            f"max_records must be a whole number from 1 to {MAX_RECORDS_CEILING}, got {max_records!r}",
            field="max_records",
        )


def check_timeout(timeout: float | None) -> None:
    if timeout is None:
        return
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout < float("inf"):
        raise InputError(f"timeout must be a finite number of seconds > 0, got {timeout!r}", field="timeout")
