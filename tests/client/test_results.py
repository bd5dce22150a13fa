"""Result files are parsed as CSV while they stream: quoted newlines, CR, quotes and all Unicode survive."""

from __future__ import annotations

import csv
import io

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from airflow_provider_salesforce_bulk.client import (
    BulkIngestClient,
    ClientCredentialsAuth,
    RetryPolicy,
    SalesforceSession,
    TokenCache,
    TransportError,
)
from airflow_provider_salesforce_bulk.client.csv_format import RecordScan, count_records
from airflow_provider_salesforce_bulk.client.result_csv import iter_csv_records, iter_csv_rows, parse_results
from airflow_provider_salesforce_bulk.emulator.server import run_emulator
from tests.client.helpers import mock_session

# Result values can hold anything but NUL, which Salesforce does not store.
values = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=30)
# A few records of one to three values each.
records = st.lists(st.lists(values, min_size=1, max_size=3), min_size=1, max_size=8)


def to_csv(rows: list[list[str]], delimiter: str, quote_all: bool) -> bytes:
    out = io.StringIO()
    csv.writer(
        out,
        delimiter=delimiter,
        lineterminator="\n",
        quoting=csv.QUOTE_ALL if quote_all else csv.QUOTE_MINIMAL,
    ).writerows(rows)
    return out.getvalue().encode("utf-8")


async def stream(data: bytes, cuts: list[int]):
    start = 0
    for cut in sorted(set(cuts)):
        yield data[start:cut]
        start = cut
    yield data[start:]


@settings(max_examples=200, deadline=None)
@given(
    rows=st.lists(st.lists(values, min_size=3, max_size=3), min_size=1, max_size=20),
    delimiter=st.sampled_from([",", "\t", "|", ";", "^", "`"]),
    quote_all=st.booleans(),
    data=st.data(),
)
async def test_streamed_rows_equal_a_whole_parse_for_any_split(rows, delimiter, quote_all, data):
    payload = to_csv([["sf__Id", "sf__Error", "Name"], *rows], delimiter, quote_all)
    cuts = data.draw(st.lists(st.integers(0, len(payload)), max_size=10))
    parsed = [row async for row in iter_csv_rows(stream(payload, cuts), delimiter=delimiter)]
    whole = list(csv.reader(io.StringIO(payload.decode("utf-8"), newline=""), delimiter=delimiter))
    assert parsed == whole
    if quote_all:  # as Salesforce writes results: every value quoted, so every value survives
        assert parsed == [["sf__Id", "sf__Error", "Name"], *rows]


@given(rows=records, quote_all=st.booleans(), as_bytes=st.booleans())
@settings(max_examples=150, deadline=None)
def test_record_scan_finds_every_record_end_and_only_those(rows, quote_all, as_bytes):
    text = to_csv(rows, ",", quote_all).decode()
    ends, total = [], 0
    for row in rows:  # each row written alone ends where the scan must find a record end
        total += len(to_csv([row], ",", quote_all).decode())
        ends.append(total)
    data = text.encode() if as_bytes else text
    if as_bytes:
        ends = [len(text[:end].encode()) for end in ends]
    scan = RecordScan()
    assert list(iter(lambda: scan.first_end(data), None)) == ends
    assert RecordScan().last_end(data) == ends[-1]
    # Fed piece by piece (the buffer growing), the last end found is always a real record end.
    grown = RecordScan()
    for cut in range(1, len(data) + 1):
        end = grown.last_end(data[:cut])
        assert end == 0 or end in ends


async def test_records_with_crlf_quotes_and_multibyte_split_mid_character():
    payload = '"sf__Id","sf__Created",Name\n"001","true","a\r\nb ""q"" é😀"\n'.encode()
    cut = payload.index("😀".encode()) + 2  # inside the 4-byte character
    records = [r async for r in iter_csv_records(stream(payload, [cut, 5, 17]))]
    assert records == [{"sf__Id": "001", "sf__Created": "true", "Name": 'a\r\nb "q" é😀'}]


async def test_unicode_line_separators_do_not_split_records():
    payload = "Name,Other\nx\u2028y,z\u0085w\n".encode()
    assert [r async for r in iter_csv_records(stream(payload, []))] == [
        {"Name": "x\u2028y", "Other": "z\u0085w"}
    ]


async def test_truncated_file_is_an_error_not_a_short_record():
    payload = b'Name\n"unterminated\n'
    with pytest.raises(csv.Error):
        [r async for r in iter_csv_rows(stream(payload, [3]))]


async def test_ragged_rows_are_padded_or_keep_their_extras(caplog):
    payload = b"a,b\n1,2,3,4\n5\n6,7\n"
    records = [r async for r in iter_csv_records(stream(payload, [4, 9]))]
    assert records == [
        {"a": "1", "b": "2", "_extra_1": "3", "_extra_2": "4"},
        {"a": "5", "b": ""},
        {"a": "6", "b": "7"},
    ]
    assert parse_results(payload) == records
    assert [m for m in caplog.messages if "values for 2 columns" in m] == [
        "result row 1 has 4 values for 2 columns (and maybe more rows)"
    ]


@settings(max_examples=100, deadline=None)
@given(
    header=st.lists(
        st.from_regex(r"[A-Za-z][A-Za-z0-9_]{0,8}", fullmatch=True), min_size=1, max_size=5, unique=True
    ),
    rows=st.lists(st.lists(values, max_size=8), max_size=10),
)
async def test_any_row_width_is_read_without_losing_a_value(header, rows):
    rows = [row for row in rows if row and row != [""]]  # an empty line is no record
    payload = to_csv([header, *rows], ",", True)
    records = [r async for r in iter_csv_records(stream(payload, [7]))]
    assert len(records) == len(rows)
    for record, row in zip(records, rows, strict=True):
        assert [record[name] for name in header] == (row + [""] * len(header))[: len(header)]
        assert [record[f"_extra_{i}"] for i in range(1, len(row) - len(header) + 1)] == row[len(header) :]


async def test_empty_file_and_header_only():
    assert [r async for r in iter_csv_records(stream(b"", []))] == []
    assert [r async for r in iter_csv_records(stream(b'"sf__Id","sf__Error",Name\n', []))] == []


def test_parse_results_in_memory_with_a_delimiter():
    assert parse_results(b'a|b\n1|"x|y"\n', column_delimiter="PIPE") == [{"a": "1", "b": "x|y"}]


# --- downloads restarted after a dropped stream ----------------------------------------------------

JOB_ID = "7505e000000AbCdAAK"
RESULTS = b"sf__Id,sf__Created,Name\n" + b"".join(b'001%015d,true,"N %d"\n' % (i, i) for i in range(50))


class Dropping(httpx.AsyncByteStream):
    """A body that sends ``cut`` bytes in small pieces, then fails as a reset connection would."""

    def __init__(self, data: bytes, cut: int | None) -> None:
        self.data = data
        self.cut = cut

    async def __aiter__(self):
        end = len(self.data) if self.cut is None else self.cut
        for start in range(0, end, 37):
            yield self.data[start : min(start + 37, end)]
        if self.cut is not None:
            raise httpx.ReadError("connection reset by peer")


def results_client(
    cuts: list[int | None], max_attempts: int = 5
) -> tuple[BulkIngestClient, list[httpx.Request]]:
    """A client whose result downloads are cut at ``cuts[n]`` on the n-th request (None: complete)."""
    requests: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        cut = cuts[len(requests) - 1] if len(requests) <= len(cuts) else None
        return httpx.Response(200, stream=Dropping(RESULTS, cut), headers={"Content-Type": "text/csv"})

    session = mock_session(
        "00D!t",
        "https://acme.my.salesforce.com",
        transport=httpx.MockTransport(handler),
        retry_policy=RetryPolicy(max_attempts=max_attempts, initial_delay=0.001, max_delay=0.001),
    )
    return BulkIngestClient(session), requests


EXPECTED = parse_results(RESULTS)


@settings(max_examples=30, deadline=None)
@given(cuts=st.lists(st.integers(0, len(RESULTS) - 1), max_size=3))
async def test_iter_results_restarts_and_yields_each_record_once(cuts):
    client, requests = results_client([*cuts, None])
    async with client.session:
        records = [
            r async for r in client.iter_results(JOB_ID, "successfulResults", column_delimiter="COMMA")
        ]
    assert records == EXPECTED
    assert len(requests) == len(cuts) + 1


async def test_iter_results_gives_up_when_the_policy_is_spent():
    client, requests = results_client([100] * 10, max_attempts=3)
    seen = []

    async def read() -> None:
        async for record in client.iter_results(JOB_ID, "successfulResults", column_delimiter="COMMA"):
            seen.append(record)

    async with client.session:
        with pytest.raises(TransportError, match="ReadError"):
            await read()
    assert len(requests) == 3
    assert seen == EXPECTED[: len(seen)]  # what was yielded is a prefix, nothing twice


@settings(max_examples=30, deadline=None)
@given(cuts=st.lists(st.integers(1, len(RESULTS) - 1), max_size=3), prefix=st.binary(max_size=10))
async def test_copy_results_rewinds_a_seekable_file_and_writes_the_file_once(cuts, prefix):
    client, _ = results_client([*cuts, None])
    out = io.BytesIO()
    out.write(prefix)  # the copy starts where the file is: what was there before stays
    async with client.session:
        written = await client.copy_results(JOB_ID, "successfulResults", out)
    assert written == len(RESULTS)
    assert out.getvalue() == prefix + RESULTS


async def test_copy_results_to_a_real_file_after_drops(tmp_path):
    client, requests = results_client([500, 10, None])
    path = tmp_path / "results.csv"
    async with client.session:
        with path.open("wb") as handle:
            await client.copy_results(JOB_ID, "successfulResults", handle)
    assert path.read_bytes() == RESULTS
    assert len(requests) == 3


class AsyncSink:
    def __init__(self) -> None:
        self.data = b""

    async def write(self, chunk: bytes) -> None:
        self.data += chunk


async def test_copy_results_to_an_unrewindable_writer_is_not_restarted_once_written():
    client, requests = results_client([500, None])
    sink = AsyncSink()
    async with client.session:
        with pytest.raises(TransportError):
            await client.copy_results(JOB_ID, "successfulResults", sink)
    assert len(requests) == 1
    assert sink.data == RESULTS[:500]  # the caller knows to start over with a fresh destination


async def test_copy_results_to_an_unrewindable_writer_restarts_while_nothing_was_written():
    client, requests = results_client([0, None])
    sink = AsyncSink()
    async with client.session:
        await client.copy_results(JOB_ID, "successfulResults", sink)
    assert sink.data == RESULTS
    assert len(requests) == 2


async def test_downloads_from_the_emulator_survive_dropped_connections(caplog):
    with run_emulator(db=":memory:", records_per_second=None) as emulator:
        c = emulator.credentials
        auth = ClientCredentialsAuth(c.client_id, c.client_secret, emulator.base_url)
        policy = RetryPolicy(max_attempts=30, initial_delay=0.001, max_delay=0.01, max_total=60)
        async with SalesforceSession(auth, token_cache=TokenCache(), retry_policy=policy) as session:
            client = BulkIngestClient(session)
            records = [{"Name": f"Row {i}", "Description": "x" * 200} for i in range(3000)]
            (result,) = [
                r async for r in client.perform_operation("insert", "Account", records, polling_interval=0.05)
            ]
            clean = io.BytesIO()
            await client.copy_results(result.job_id, "successfulResults", clean)
            emulator.update_settings(drop_rate=0.5, seed=11)
            for _ in range(3):
                rows = [r async for r in client.iter_results(result.job_id, "successfulResults")]
                assert [r["Name"] for r in rows] == [f"Row {i}" for i in range(3000)]
                copied = io.BytesIO()
                await client.copy_results(result.job_id, "successfulResults", copied)
                assert copied.getvalue() == clean.getvalue()
            emulator.update_settings(drop_rate=0.0)
    restarts = [m for m in caplog.messages if "download dropped" in m]
    assert len(restarts) >= 3, "the emulator dropped no download midway: the test proves nothing"


def _forward_last_end(scan: RecordScan, text: str) -> int:
    """The record-end search line by line: the model the search from the end must agree with."""
    end, position = 0, scan.scanned
    while (newline := text.find("\n", position)) >= 0:
        if text.count('"', position, newline) % 2:
            scan.quotes_open = not scan.quotes_open
        position = newline + 1
        if not scan.quotes_open:
            end = position
    scan.scanned = position
    return end


@given(rows=records, quote_all=st.booleans(), data=st.data())
@settings(max_examples=200, deadline=None)
def test_last_end_agrees_with_a_line_by_line_scan_fed_and_consumed_in_pieces(rows, quote_all, data):
    text = to_csv(rows, ",", quote_all).decode()
    cuts = sorted(data.draw(st.lists(st.integers(0, len(text)), max_size=8)))
    scan, model = RecordScan(), RecordScan()
    pending, fed = "", 0
    for cut in [*cuts, len(text)]:
        pending += text[fed:cut]
        fed = max(fed, cut)
        end = scan.last_end(pending)
        assert end == _forward_last_end(model, pending)
        assert (scan.scanned, scan.quotes_open) == (model.scanned, model.quotes_open)
        if end and data.draw(st.booleans()):  # the caller drops what it parsed, or keeps growing
            pending = pending[end:]
            scan.consumed(end)
            model.consumed(end)


@given(
    rows=st.lists(st.lists(values, min_size=1, max_size=3), max_size=8),
    quote_all=st.booleans(),
    crlf=st.booleans(),
    blanks=st.lists(st.integers(0, 8), max_size=3),
)
@settings(max_examples=300, deadline=None)
def test_count_records_is_what_csv_reads_or_none(rows, quote_all, crlf, blanks):
    out = io.StringIO()
    writer = csv.writer(
        out,
        lineterminator="\r\n" if crlf else "\n",
        quoting=csv.QUOTE_ALL if quote_all else csv.QUOTE_MINIMAL,
    )
    for index, row in enumerate(rows):
        out.write(("\r\n" if crlf else "\n") * blanks.count(index))  # blank lines: no records
        writer.writerow(row)
    text = out.getvalue()
    counted = count_records(text)
    read = sum(1 for row in csv.reader(io.StringIO(text, newline="")) if row)
    assert counted in (read, None)
    # Only a value over several lines or a lone carriage return makes it give up.
    if not any("\n" in value or "\r" in value for row in rows for value in row):
        assert counted == read


def test_count_records_gives_up_where_lines_do_not_tell_records():
    assert count_records('"a\nb",c\n') is None  # a quoted value over two lines
    assert count_records("a\rb\n") is None  # csv ends a record at the lone carriage return
    assert count_records('"x""\n""y"\n') is None
    assert count_records('"sf__Id","sf__Created"\n"001","true"\n\n"002","false"\r\n') == 3
