"""Result pages of a query job: one page's byte stream (resumed after a drop), and pages run
under bounded concurrency in a stable order."""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import csv
import dataclasses
import io
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from types import TracebackType
from typing import Any, Generic, Protocol, TypeVar

import httpx

from airflow_provider_salesforce_bulk.client.csv_format import RecordScan
from airflow_provider_salesforce_bulk.client.errors import InputError, TransportError, UnexpectedResponseError
from airflow_provider_salesforce_bulk.client.page_check import PageCheck
from airflow_provider_salesforce_bulk.client.query_inflate import body_chunks
from airflow_provider_salesforce_bulk.client.session import SalesforceSession

__all__ = ["PageRunner", "PageSink", "PageSummary", "ResultPage", "copy_page_in_thread", "read_csv_header"]

log = logging.getLogger(__name__)

_T = TypeVar("_T")


class PageSink(Protocol):
    """Where a page's bytes go: a binary file, or anything with a ``write`` (sync or async)."""

    def write(self, data: bytes, /) -> Any: ...


@dataclasses.dataclass(frozen=True)
class PageSummary:
    """What was written for one result page.

    Attributes
    ----------
    number : int
        0-based position of the page in the result order.
    locator : str | None
        The locator it was fetched with (None: the first page).
    records : int
        Records in the page (``Sforce-NumberOfRecords``, or rows written for Parquet).
    bytes : int
        Bytes written to the page's sink.
    fingerprint : bytes | None
        A digest of the page's first record line and last line (see
        :class:`~.page_check.PageCheck`); None for a page without records or not fingerprinted.
    """

    number: int
    locator: str | None
    records: int
    bytes: int
    fingerprint: builtins.bytes | None = None


class ResultPage:
    """One page of a query job's results, its head received and its body not read yet.

    Attributes
    ----------
    job_id : str
    number : int
        0-based position in the result order (use it to name files: the order is stable).
    locator : str | None
        The locator this page was fetched with; None for the first page.
    records : int
        ``Sforce-NumberOfRecords`` of the page.
    next_locator : str | None
        ``Sforce-Locator`` of the page: the next page's locator, None on the last page
        (Salesforce sends the string ``null``). In parallel mode pages are listed in advance,
        and this is informative only.
    """

    def __init__(
        self,
        session: SalesforceSession,
        job_id: str,
        number: int,
        path: str,
        params: Mapping[str, str] | None,
        *,
        locator: str | None,
        refetches: int,
        compress: bool,
    ) -> None:
        self.job_id = job_id
        self.number = number
        self.locator = locator
        self.records = 0
        self.next_locator: str | None = None
        self._session = session
        self._path = path
        self._params = dict(params or {})
        self._refetches = refetches
        self._headers = {"Accept": "text/csv"}
        if not compress:
            self._headers["Accept-Encoding"] = "identity"
        self._stack: contextlib.AsyncExitStack | None = None
        self._response: httpx.Response | None = None
        self._read = False

    def __repr__(self) -> str:
        return f"<ResultPage job={self.job_id} number={self.number} records={self.records}>"

    async def __aenter__(self) -> ResultPage:
        await self.open()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def open(self) -> None:
        """Send the request and read the head (retried by the session's policy)."""
        self._response = await self._connect()
        self.records, self.next_locator = page_head(self._response, self.job_id)

    async def _connect(self) -> httpx.Response:
        await self.aclose()
        stack = contextlib.AsyncExitStack()
        try:
            response = await stack.enter_async_context(
                self._session.stream("GET", self._path, params=self._params or None, headers=self._headers)
            )
        except BaseException:
            await stack.aclose()
            raise
        self._stack = stack
        return response

    async def aclose(self) -> None:
        """Release the connection (the body, if unread, is dropped)."""
        stack, self._stack, self._response = self._stack, None, None
        if stack is not None:
            await stack.aclose()

    async def iter_bytes(self) -> AsyncGenerator[bytes, None]:
        """The page's CSV (header row included), decompressed (:func:`~.query_inflate.body_chunks`),
        as it arrives.

                A connection dropped mid-body is re-opened from this page's locator (at most
                ``refetches`` times) and the stream resumes after the bytes already yielded, once the new
                answer's head (record count, next locator) and the last 4 KiB before the break match the
        first answer's: every byte is yielded exactly once. (Comparing the tail rather than a checksum
        of everything keeps the cost per chunk nil; a page's records carry unique ids, so a reordered
        or changed page differs there.)

                Raises
                ------
                TransportError
                    The page could not be read whole after the re-fetches.
                UnexpectedResponseError
                    A re-fetched page differs from the first answer.
        """
        if self._read:
            raise InputError(f"page {self.number} of job {self.job_id} was already read", field="page")
        if self._response is None:
            await self.open()
        self._read = True
        delivered = 0
        tail = b""
        failures = 0
        response = self._response
        while True:
            assert response is not None
            skip = delivered
            skipped_tail = b""
            try:
                async for chunk in body_chunks(response):
                    if skip:
                        head = chunk[:skip]
                        skipped_tail = _tail(skipped_tail, head)
                        skip -= len(head)
                        if skip:
                            continue
                        if skipped_tail != tail:
                            raise UnexpectedResponseError(
                                f"page {self.number} of job {self.job_id} changed between two fetches"
                            )
                        chunk = chunk[len(head) :]
                        if not chunk:
                            continue
                    delivered += len(chunk)
                    tail = _tail(tail, chunk)
                    yield chunk
            except httpx.HTTPError as exc:
                failures += 1
                if failures > self._refetches:
                    raise TransportError(
                        f"page {self.number} of job {self.job_id} dropped {failures} times, "
                        f"the last after {delivered} bytes: {type(exc).__name__}: {exc}"
                    ) from exc
                log.info("Page %d of job %s dropped (%s); fetching it again", self.number, self.job_id, exc)
                await asyncio.sleep(self._session.retry_policy.delay(failures))
                records, next_locator = self.records, self.next_locator
                response = self._response = await self._connect()
                if page_head(response, self.job_id) != (records, next_locator):
                    raise UnexpectedResponseError(
                        f"page {self.number} of job {self.job_id} answered different headers when fetched "
                        "again"
                    ) from exc
                continue
            if skip:
                raise UnexpectedResponseError(
                    f"page {self.number} of job {self.job_id} was shorter when fetched again"
                )
            return


async def in_thread(function: Callable[..., _T], *args: Any) -> _T:
    """``function(*args)`` in a worker thread; if cancelled, return only once the thread is done
    with it (so that no later call on the same sink races it)."""
    running = asyncio.get_running_loop().run_in_executor(None, function, *args)
    try:
        return await asyncio.shield(running)
    except asyncio.CancelledError:
        await asyncio.wait({running})
        raise


async def copy_page_in_thread(
    page: ResultPage, sink_factory: Callable[[ResultPage], contextlib.AbstractContextManager[PageSink]]
) -> PageSummary:
    manager = await in_thread(sink_factory, page)
    sink = await in_thread(manager.__enter__)
    check = PageCheck()
    try:
        async for chunk in page.iter_bytes():
            check.feed(chunk)
            result = await in_thread(sink.write, chunk)
            if asyncio.iscoroutine(result):
                await result
    except BaseException as exc:
        await in_thread(manager.__exit__, type(exc), exc, exc.__traceback__)
        raise
    await in_thread(manager.__exit__, None, None, None)
    check.verify(page.job_id, page.number, page.records)
    return PageSummary(page.number, page.locator, check.records, check.bytes, check.fingerprint())


class PageRunner(Generic[_T]):
    """Pages in flight, at most ``concurrency``; the first failure stops the rest."""

    def __init__(self, concurrency: int, handler: Callable[[ResultPage], Awaitable[_T]]) -> None:
        self._slots = asyncio.Semaphore(concurrency)
        self._handler = handler
        self._tasks: set[asyncio.Task[None]] = set()
        self.results: dict[int, _T] = {}
        self.total = 0

    def _raise_failed(self) -> None:
        for task in self._tasks:
            if task.done() and not task.cancelled():
                failure = task.exception()
                if failure is not None:
                    raise failure

    async def start(self, page: ResultPage, *, wait_for_head: bool) -> None:
        """Start ``page`` once a slot is free; with ``wait_for_head``, return after its head arrived."""
        self._raise_failed()
        await self._slots.acquire()
        head: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        try:
            self._raise_failed()
            task = asyncio.ensure_future(self._run(page, head))
        except BaseException:
            self._slots.release()
            raise
        self._tasks.add(task)
        if wait_for_head:
            await head
        else:
            head.cancel()

    async def _run(self, page: ResultPage, head: asyncio.Future[None]) -> None:
        try:
            try:
                await page.open()
            except BaseException as exc:
                if not head.done():
                    head.set_exception(exc)
                    # The caller waiting on the head reports this error; the task ends quietly.
                    return
                raise
            if not head.done():
                head.set_result(None)
            self.results[page.number] = await self._handler(page)
            self.total += page.records
        finally:
            await page.aclose()
            self._slots.release()

    async def finish(self) -> dict[int, _T]:
        while self._tasks:
            done, _ = await asyncio.wait(self._tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                self._tasks.discard(task)
                task.result()
        return self.results

    async def cancel(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()


_TAIL_BYTES = 4096


def _tail(tail: bytes, chunk: bytes) -> bytes:
    """The last ``_TAIL_BYTES`` of ``tail + chunk``, copying no more than that."""
    if len(chunk) >= _TAIL_BYTES:
        return chunk[-_TAIL_BYTES:]
    return (tail + chunk)[-_TAIL_BYTES:]


def page_head(response: httpx.Response, job_id: str) -> tuple[int, str | None]:
    """``Sforce-NumberOfRecords`` and the next locator (None for ``null``, empty or absent)."""
    count = response.headers.get("Sforce-NumberOfRecords", "").strip()
    if not count.isdigit():
        raise UnexpectedResponseError(
            f"a result page of job {job_id} came without a valid Sforce-NumberOfRecords header: {count!r}"
        )
    locator = response.headers.get("Sforce-Locator", "").strip()
    return int(count), None if locator in ("", "null") else locator


async def read_csv_header(chunks: AsyncIterator[bytes], delimiter: str) -> tuple[list[str] | None, bytes]:
    """The header row's names, and every byte read from ``chunks`` so far (the header included);
    None for an empty body. Reads no further than the chunk ending the header row."""
    buffered = b""
    end: int | None = None
    scan = RecordScan()
    async for chunk in chunks:
        buffered += chunk
        end = scan.first_end(buffered)
        if end is not None:
            break
    if not buffered.strip(b"\r\n"):
        return None, buffered
    line = buffered[: end if end is not None else len(buffered)].decode("utf-8-sig", "replace")
    row = next(csv.reader(io.StringIO(line, newline=""), delimiter=delimiter), [])
    return row, buffered
