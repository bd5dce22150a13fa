"""Query CSV -> Parquet: every Salesforce type round-trips through the text Salesforce writes for it
(hypothesis), empty values are nulls, bad values name their column, and pages stream through the
worker thread into one file each."""

from __future__ import annotations

import asyncio
import csv
import datetime
import io
import math
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

from airflow_provider_salesforce_bulk.client import (  # noqa: E402
    BulkQueryClient,
    InputError,
    NotFoundError,
    RetryPolicy,
    UnexpectedResponseError,
)
from airflow_provider_salesforce_bulk.client.csv_format import COLUMN_DELIMITERS  # noqa: E402
from airflow_provider_salesforce_bulk.client.describe import (  # noqa: E402
    DescribeCache,
    FieldDescription,
    describe_columns,
    describe_sobject,
)
from airflow_provider_salesforce_bulk.client.query_arrow import (  # noqa: E402
    arrow_schema,
    arrow_type,
    dictionary_columns,
)
from airflow_provider_salesforce_bulk.client.query_parquet import (  # noqa: E402
    copy_results_to_parquet,
    csv_to_parquet,
)
from tests.client.helpers import mock_session, query_api_session  # noqa: E402

UTC = datetime.timezone.utc
TYPES = ["string", "boolean", "int", "double", "currency", "date", "datetime", "time", "picklist"]


def _java_double(value: float) -> str:
    """As Salesforce writes doubles: plain between 1e-3 and 1e7, else d.dddE±n."""
    if 1e-3 <= abs(value) < 1e7 or value == 0:
        text = repr(value)
        return text if "." in text else text + ".0"
    mantissa, exponent = f"{value:.16e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    if "." not in mantissa:
        mantissa += ".0"
    return f"{mantissa}E{int(exponent)}"


def _text(ftype: str, value: Any) -> str:
    """The text Salesforce writes in a query result for ``value`` of ``ftype``; '' for null."""
    if value is None:
        return ""
    if ftype == "boolean":
        return "true" if value else "false"
    if ftype in ("double", "currency"):
        return _java_double(value)
    if ftype == "datetime":
        return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"
    if ftype == "time":
        return value.strftime("%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"
    if ftype == "date":
        return value.isoformat()
    return str(value)


def _values(ftype: str) -> st.SearchStrategy[Any]:
    if ftype == "boolean":
        return st.booleans()
    if ftype == "int":
        return st.integers(-(2**53), 2**53)
    if ftype in ("double", "currency"):
        return st.floats(allow_nan=False, allow_infinity=False, width=64).map(lambda x: x + 0.0)
    if ftype == "date":
        return st.dates(datetime.date(1700, 1, 1), datetime.date(4000, 12, 31))
    if ftype == "datetime":
        return st.datetimes(datetime.datetime(1900, 1, 1), datetime.datetime(3000, 1, 1)).map(
            lambda d: d.replace(microsecond=d.microsecond // 1000 * 1000, tzinfo=UTC)
        )
    if ftype == "time":
        return st.times().map(lambda t: t.replace(microsecond=t.microsecond // 1000 * 1000))
    # Text: anything but an empty string (Salesforce has none; an empty field is null) and NUL.
    return st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1)


@st.composite
def tables(draw: st.DrawFn) -> tuple[list[str], list[str], list[list[Any]], str]:
    types = draw(st.lists(st.sampled_from(TYPES), min_size=1, max_size=6))
    names = [f"F{i}_{t}__c" for i, t in enumerate(types)]
    rows = draw(
        st.lists(st.tuples(*(st.none() | _values(t) for t in types)).map(list), min_size=0, max_size=30)
    )
    delimiter = draw(st.sampled_from(sorted(COLUMN_DELIMITERS)))
    return names, types, rows, delimiter


def _csv(names: list[str], types: list[str], rows: list[list[Any]], delimiter: str, eol: str = "\n") -> bytes:
    sep = COLUMN_DELIMITERS[delimiter]

    def quoted(text: str) -> str:
        return '"' + text.replace('"', '""') + '"'

    lines = [sep.join(quoted(n) for n in names)]
    for row in rows:
        lines.append(sep.join(quoted(_text(t, v)) for t, v in zip(types, row, strict=True)))
    return (eol.join(lines) + eol).encode()


def _convert(names, types, rows, delimiter, **kwargs) -> tuple[Any, int, int]:
    fields = {n: FieldDescription(name=n, type=t) for n, t in zip(names, types, strict=True)}
    schema = arrow_schema(names, fields)
    sink = io.BytesIO()
    count, written = csv_to_parquet(
        io.BytesIO(_csv(names, types, rows, delimiter, kwargs.pop("eol", "\n"))),
        sink,
        schema,
        column_delimiter=delimiter,
        **kwargs,
    )
    return pq.read_table(io.BytesIO(sink.getvalue())), count, written


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tables())
def test_every_type_round_trips_through_salesforce_text(table):
    names, types, rows, delimiter = table
    result, count, written = _convert(names, types, rows, delimiter, block_size=1024)
    assert count == len(rows)
    assert written > 0
    assert result.schema.types == [arrow_type(FieldDescription(name="x", type=t)) for t in types]
    assert result.to_pylist() == [dict(zip(names, row, strict=True)) for row in rows]


def test_types_map_as_documented():
    expected = {
        "id": pa.string(),
        "reference": pa.string(),
        "textarea": pa.string(),
        "email": pa.string(),
        "url": pa.string(),
        "phone": pa.string(),
        "boolean": pa.bool_(),
        "int": pa.int64(),
        "double": pa.float64(),
        "currency": pa.float64(),
        "percent": pa.float64(),
        "date": pa.date32(),
        "datetime": pa.timestamp("ms", tz="UTC"),
        "time": pa.time32("ms"),
        "anything_new": pa.string(),
    }
    assert {t: arrow_type(FieldDescription(name="x", type=t)) for t in expected} == expected
    assert arrow_type(None) == pa.string()


def test_empty_values_are_nulls_quoted_or_not_and_crlf_is_read():
    data = b'"Name","Amount__c","Active__c"\r\n"",,""\r\n"a",1.5E8,"true"\r\n'
    fields = {
        "Name": FieldDescription(name="Name", type="string"),
        "Amount__c": FieldDescription(name="Amount__c", type="currency"),
        "Active__c": FieldDescription(name="Active__c", type="boolean"),
    }
    sink = io.BytesIO()
    csv_to_parquet(io.BytesIO(data), sink, arrow_schema(["Name", "Amount__c", "Active__c"], fields))
    assert pq.read_table(io.BytesIO(sink.getvalue())).to_pylist() == [
        {"Name": None, "Amount__c": None, "Active__c": None},
        {"Name": "a", "Amount__c": 1.5e8, "Active__c": True},
    ]


def test_an_empty_line_is_a_record_of_nulls_so_the_parsed_rows_count_every_record():
    # One column: a null value is an empty line. Skipping it would lose the record and make the page's
    # own count (the parsed rows) disagree with what it holds.
    data = b'"Description"\n"a"\n\n"b"\n\n'
    sink = io.BytesIO()
    rows, _ = csv_to_parquet(io.BytesIO(data), sink, arrow_schema(["Description"], {}))
    assert rows == 4
    assert pq.read_table(io.BytesIO(sink.getvalue())).column("Description").to_pylist() == [
        "a",
        None,
        "b",
        None,
    ]


def test_only_the_columns_named_are_dictionary_encoded():
    names = ["Id", "Stage", "Amount__c"]
    fields = {
        "Id": FieldDescription(name="Id", type="id"),
        "Stage": FieldDescription(name="Stage", type="picklist"),
        "Amount__c": FieldDescription(name="Amount__c", type="currency"),
        "Owner.Id": FieldDescription(name="Id", type="reference"),
    }
    assert dictionary_columns([*names, "Owner.Id", "Unknown"], fields) == ["Stage", "Owner.Id"]
    data = b"Id,Stage,Amount__c\n" + b"".join(b"a%05d,Won,%d\n" % (i, i) for i in range(2_000))
    sink = io.BytesIO()
    csv_to_parquet(
        io.BytesIO(data),
        sink,
        arrow_schema(names, fields),
        use_dictionary=dictionary_columns(names, fields),
    )
    group = pq.ParquetFile(io.BytesIO(sink.getvalue())).metadata.row_group(0)
    dictionary = {
        group.column(i).path_in_schema: group.column(i).has_dictionary_page for i in range(len(names))
    }
    assert dictionary == {"Id": False, "Stage": True, "Amount__c": False}


def test_a_value_of_the_wrong_type_names_its_column():
    data = b'"Name","NumberOfEmployees"\n"a","12"\n"b","many"\n'
    fields = {"NumberOfEmployees": FieldDescription(name="NumberOfEmployees", type="int")}
    with pytest.raises(UnexpectedResponseError, match=r"column 'NumberOfEmployees'.*many"):
        csv_to_parquet(
            io.BytesIO(data),
            io.BytesIO(),
            arrow_schema(["Name", "NumberOfEmployees"], fields),
            where="page 3",
        )


def test_a_header_that_differs_from_the_schema_is_refused():
    data = b'"Name","Other"\n"a","b"\n'
    with pytest.raises(UnexpectedResponseError, match="header"):
        csv_to_parquet(io.BytesIO(data), io.BytesIO(), arrow_schema(["Name", "Phone"], {}))


def test_batches_are_bounded_row_groups():
    names, types = ["Name", "Amount__c"], ["string", "double"]
    rows = [[f"name {i}", i * 1.5] for i in range(20_000)]
    result, count, _ = _convert(names, types, rows, "COMMA", block_size=64 * 1024)
    assert count == 20_000
    assert not math.isnan(result.column("Amount__c")[5].as_py())
    sink = io.BytesIO()
    fields = {n: FieldDescription(name=n, type=t) for n, t in zip(names, types, strict=True)}
    csv_to_parquet(
        io.BytesIO(_csv(names, types, rows, "COMMA")),
        sink,
        arrow_schema(names, fields),
        block_size=64 * 1024,
    )
    groups = pq.ParquetFile(io.BytesIO(sink.getvalue())).num_row_groups
    assert groups > 5  # ~600 kB of CSV in 64 kB blocks: many small groups, never one whole table


# -- pages through the worker thread, against the in-memory query API ------------------------------


@pytest.fixture
async def fake_client():
    from tests.client.fake_query import FakeQueryApi

    api = FakeQueryApi(records=23, page_size=5)
    session = query_api_session(
        api, retry_policy=RetryPolicy(max_attempts=3, initial_delay=0.0, max_delay=0.0, max_total=5)
    )
    async with session:
        yield api, BulkQueryClient(session)


def _expected_rows(n: int) -> list[dict[str, str]]:
    from tests.client.fake_query import row

    out = []
    for i in range(n):
        values = next(csv.reader(io.StringIO(row(i).decode(), newline="")))
        out.append({"Id": values[0], "Name": values[1]})
    return out


async def test_pages_become_parquet_files_exactly_once_through_drops(fake_client, tmp_path):
    from tests.client.fake_query import JOB_ID

    api, client = fake_client
    api.drops = {5: [40], 15: [9, 120]}
    summaries = await copy_results_to_parquet(
        client, JOB_ID, lambda page: (tmp_path / f"part-{page.number}.parquet").open("wb"), block_size=1024
    )
    assert [s.records for s in summaries] == [5, 5, 5, 5, 3]
    rows = [r for n in range(5) for r in pq.read_table(tmp_path / f"part-{n}.parquet").to_pylist()]
    assert rows == _expected_rows(23)
    assert api.fetches[5] == 2
    assert api.fetches[15] == 3
    describes = [r for r in api.requests if r.url.path.endswith("/describe")]
    assert len(describes) == 1


async def test_a_page_that_fails_to_convert_stops_the_others_without_hanging(
    fake_client, tmp_path, monkeypatch
):
    from airflow_provider_salesforce_bulk.client import query_parquet
    from tests.client.fake_query import JOB_ID

    created, closed = [], []
    real_init, real_close = query_parquet._PageWriter.__init__, query_parquet._PageWriter.close

    def init(self, *args, **kwargs):
        created.append(self)
        real_init(self, *args, **kwargs)

    def close(self):
        closed.append(self)
        real_close(self)

    monkeypatch.setattr(query_parquet._PageWriter, "__init__", init)
    monkeypatch.setattr(query_parquet._PageWriter, "close", close)

    api, client = fake_client
    api.slow_bodies = {0: 0.05}  # the first page is still streaming into its thread when another fails
    api.describe_fields = [{"name": "Id", "type": "id"}, {"name": "Name", "type": "int"}]
    with pytest.raises(UnexpectedResponseError, match="column 'Name'"):
        await asyncio.wait_for(
            copy_results_to_parquet(
                client,
                JOB_ID,
                lambda page: (tmp_path / f"part-{page.number}.parquet").open("wb"),
                concurrency=3,
            ),
            10,
        )
    # The slow page was writing when another failed: it was stopped, and every writer was closed.
    assert len(created) >= 2
    assert set(map(id, closed)) == set(map(id, created))


# -- describe ---------------------------------------------------------------------------------------


def _describe_transport() -> httpx.MockTransport:
    objects = {
        "Contact": [
            {"name": "Id", "type": "id"},
            {"name": "Birthdate", "type": "date"},
            {
                "name": "AccountId",
                "type": "reference",
                "referenceTo": ["Account"],
                "relationshipName": "Account",
            },
        ],
        "Task": [
            {
                "name": "WhoId",
                "type": "reference",
                "referenceTo": ["Contact", "Lead"],
                "relationshipName": "Who",
            },
        ],
        "Account": [
            {"name": "Name", "type": "string"},
            {"name": "OwnerId", "type": "reference", "referenceTo": ["User"], "relationshipName": "Owner"},
        ],
        "User": [{"name": "Email", "type": "email"}, {"name": "IsActive", "type": "boolean"}],
    }

    def handle(request: httpx.Request) -> httpx.Response:
        name = request.url.path.split("/")[-2]
        if name not in objects:
            return httpx.Response(404, json=[{"errorCode": "NOT_FOUND", "message": "nope"}])
        return httpx.Response(200, json={"name": name, "fields": objects[name]})

    return httpx.MockTransport(handle)


async def test_columns_resolve_through_relationships_to_their_fields():
    from tests.client.fake_query import INSTANCE

    session = mock_session("t", INSTANCE, transport=_describe_transport())
    async with session:
        cache = DescribeCache(session)
        columns = ["Id", "birthdate", "Account.Name", "Account.Owner.IsActive", "Contact.Birthdate", "Nope"]
        fields = await describe_columns(cache, "Contact", columns)
        task = await describe_columns(cache, "Task", ["Who.Name"])
        with pytest.raises(NotFoundError):
            await describe_sobject(session, "Missing__c")
        with pytest.raises(InputError):
            await describe_sobject(session, "Account/../x")
    assert {k: (v.type if v else None) for k, v in fields.items()} == {
        "Id": "id",
        "birthdate": "date",
        "Account.Name": "string",
        "Account.Owner.IsActive": "boolean",
        "Contact.Birthdate": "date",
        "Nope": None,
    }
    assert task == {"Who.Name": None}  # polymorphic: the target object varies, so text
    schema = arrow_schema(columns, fields)
    assert [str(t) for t in schema.types] == [
        "string",
        "date32[day]",
        "string",
        "bool",
        "date32[day]",
        "string",
    ]


@pytest.mark.parametrize("header", [b'"Id","Name"\n', b""])
async def test_an_empty_result_writes_the_columns_or_nothing(fake_client, tmp_path, header):
    from tests.client.fake_query import JOB_ID

    api, client = fake_client
    api.records = api.processed = 0
    api.header = lambda: header  # type: ignore[method-assign]
    summaries = await copy_results_to_parquet(
        client, JOB_ID, lambda page: (tmp_path / "e.parquet").open("wb"), parallel=False
    )
    assert [(s.records, s.bytes > 0) for s in summaries] == [(0, bool(header))]
    if header:
        assert pq.read_table(tmp_path / "e.parquet").schema.names == ["Id", "Name"]
    else:
        assert not (tmp_path / "e.parquet").exists()


async def test_types_are_settled_before_pages_hold_the_sessions_only_request_slot(tmp_path):
    from tests.client.fake_query import JOB_ID, FakeQueryApi

    api = FakeQueryApi(records=12, page_size=5)
    session = query_api_session(api, max_connections=1)
    async with session:
        summaries = await asyncio.wait_for(
            copy_results_to_parquet(
                BulkQueryClient(session),
                JOB_ID,
                lambda page: (tmp_path / f"{page.number}.parquet").open("wb"),
            ),
            10,
        )
    assert [s.records for s in summaries] == [5, 5, 2]
    probe = next(r for r in api.requests if r.url.path.endswith("/results"))
    assert probe.url.params["maxRecords"] == "1"


async def test_pages_go_to_fsspec_files_as_airflow_object_storage_opens_them(fake_client):
    fsspec = pytest.importorskip("fsspec")
    from tests.client.fake_query import JOB_ID

    api, client = fake_client
    api.drops = {10: [50]}
    fs = fsspec.filesystem("memory")
    typed = await copy_results_to_parquet(
        client, JOB_ID, lambda page: fs.open(f"/extract/part-{page.number}.parquet", "wb")
    )
    raw = await client.copy_results_to(
        JOB_ID, lambda page: fs.open(f"/extract/part-{page.number}.csv", "wb"), write_in_thread=True
    )
    assert [s.records for s in typed] == [s.records for s in raw] == [5, 5, 5, 5, 3]
    rows = []
    for n in range(5):
        with fs.open(f"/extract/part-{n}.parquet", "rb") as handle:
            rows += pq.read_table(handle).to_pylist()
        assert fs.size(f"/extract/part-{n}.csv") == raw[n].bytes
    assert rows == _expected_rows(23)


@settings(max_examples=300, deadline=None)
@given(
    rows=st.lists(
        st.lists(st.text(st.sampled_from('ab,"\n'), max_size=6), min_size=1, max_size=3), max_size=8
    ),
    quote_all=st.booleans(),
    cut=st.integers(0, 200),
)
def test_a_block_ends_at_the_last_record_end_whatever_quotes_and_line_feeds_it_holds(rows, quote_all, cut):
    from airflow_provider_salesforce_bulk.client.csv_format import last_record_end

    def field(value: str) -> str:
        if (quote_all and value) or any(c in value for c in ',"\n'):
            return '"' + value.replace('"', '""') + '"'
        return value

    data, ends = b"", [0]
    for values in rows:
        data += (",".join(map(field, values)) + "\n").encode()
        ends.append(len(data))
    prefix = data[: min(cut, len(data))]
    expected = max(end for end in ends if end <= len(prefix))
    assert last_record_end(prefix) == expected
    # As a page's gathering buffer gives it: a reused bytearray, read up to a size.
    assert last_record_end(bytearray(data), len(prefix)) == expected


async def _copy_in_small_blocks(api, tmp_path):
    """Copies ``api``'s pages to Parquet in 1,024-byte blocks: the pages' record counts and rows."""
    from tests.client.fake_query import JOB_ID

    async with query_api_session(api) as session:
        summaries = await copy_results_to_parquet(
            BulkQueryClient(session),
            JOB_ID,
            lambda page: (tmp_path / f"part-{page.number}.parquet").open("wb"),
            block_size=1024,
        )
    pages = len(summaries)
    rows = [r for n in range(pages) for r in pq.read_table(tmp_path / f"part-{n}.parquet").to_pylist()]
    return [s.records for s in summaries], rows


async def test_a_page_larger_than_a_block_is_cut_at_record_ends_into_row_groups(tmp_path):
    from tests.client.fake_query import FakeQueryApi

    # Every fifth record holds a quoted line feed and doubled quotes; the body arrives 7 bytes at a
    # time, so block edges fall anywhere, inside quoted values too.
    counts, rows = await _copy_in_small_blocks(FakeQueryApi(records=600, page_size=250), tmp_path)
    assert counts == [250, 250, 100]
    assert rows == _expected_rows(600)
    assert pq.ParquetFile(tmp_path / "part-0.parquet").metadata.num_row_groups > 1


async def test_a_record_longer_than_two_blocks_is_read_whole(tmp_path):
    from tests.client.fake_query import FakeQueryApi

    # Values of 5,000 bytes against 1,024-byte blocks: a gathering buffer (2 blocks) grows to hold
    # one record, and the block is cut only once a record end has arrived.
    def value(i: int) -> str:
        return (f"long {i} " + "x" * 5000) if i % 3 == 0 else f"short {i}"

    class LongRecords(FakeQueryApi):
        def page(self, offset: int, count: int) -> bytes:
            rows = (f'"001{i:015d}","{value(i)}"\n' for i in range(offset, offset + count))
            return self.header() + "".join(rows).encode()

    counts, rows = await _copy_in_small_blocks(LongRecords(records=12, page_size=5), tmp_path)
    assert counts == [5, 5, 2]
    assert rows == [{"Id": f"001{i:015d}", "Name": value(i)} for i in range(12)]


async def test_the_pages_of_an_extract_share_one_parsing_thread_and_reuse_their_buffers(
    fake_client, tmp_path, monkeypatch
):
    import threading

    from airflow_provider_salesforce_bulk.client import query_parquet
    from tests.client.fake_query import JOB_ID

    threads: set[str] = set()
    buffers: set[int] = set()
    real_write, real_take = query_parquet._PageWriter._write, query_parquet.ConversionPool.take_buffer

    def write(self, table):
        threads.add(threading.current_thread().name)
        real_write(self, table)

    def take_buffer(self):
        buffer = real_take(self)
        buffers.add(id(buffer))
        return buffer

    monkeypatch.setattr(query_parquet._PageWriter, "_write", write)
    monkeypatch.setattr(query_parquet.ConversionPool, "take_buffer", take_buffer)
    _, client = fake_client
    summaries = await copy_results_to_parquet(
        client,
        JOB_ID,
        lambda page: (tmp_path / f"part-{page.number}.parquet").open("wb"),
        block_size=1024,
        concurrency=2,
    )
    assert [s.records for s in summaries] == [5, 5, 5, 5, 3]
    rows = [r for n in range(5) for r in pq.read_table(tmp_path / f"part-{n}.parquet").to_pylist()]
    assert rows == _expected_rows(23)
    assert len(threads) == 1
    # Two buffers per page in flight, kept from page to page (5 pages would take 10 new ones).
    assert len(buffers) <= 4


# Long enough for pages of several 1,024-byte blocks; and the shortest values, one a line feed.
_QUOTED_TEXT = st.text(alphabet='ab ,"\n', min_size=40, max_size=400) | st.sampled_from(
    ["", "\n", '"', "a\n"]
)


def _quoted(text: str) -> str:
    return '"' + text.replace('"', '""') + '"'


async def _copy_lines(
    lines: list[bytes], last_type: str, page_size: int, directory: Any
) -> tuple[list[int], Any]:
    """Pages of ``lines`` (records of Id, a textarea and a ``last_type`` column) to Parquet in
    1,024-byte blocks: the pages' record counts and their rows."""
    from tests.client.fake_query import FakeQueryApi

    class Lines(FakeQueryApi):
        def header(self) -> bytes:
            return b'"Id","Note","Last"\n'

        def page(self, offset: int, count: int) -> bytes:
            return self.header() + b"".join(lines[offset : offset + count])

    api = Lines(records=len(lines), page_size=page_size)
    api.describe_fields = [
        {"name": "Id", "type": "id", "nillable": False},
        {"name": "Note", "type": "textarea", "nillable": True},
        {"name": "Last", "type": last_type, "nillable": True},
    ]
    return await _copy_in_small_blocks(api, directory)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    notes=st.lists(_QUOTED_TEXT, min_size=10, max_size=40),
    lasts=st.lists(_QUOTED_TEXT | st.integers(-(10**6), 10**6), min_size=40, max_size=40),
    last_type=st.sampled_from(["textarea", "double"]),
    page_size=st.integers(8, 40),
)
def test_a_block_cut_inside_a_quoted_value_gives_back_the_record_it_cut(notes, lasts, last_type, page_size):
    # Blocks are cut at their last line feed without counting quotes: with quoted line feeds and
    # doubled quotes in the last column and the one before it, cuts fall inside quoted values; the
    # record cut must come back whole in the next block (a value ending in a line feed too).
    import tempfile
    from pathlib import Path

    lines, expected = [], []
    for i, note in enumerate(notes):
        last: Any = lasts[i]
        if last_type == "double":
            last = f"{last}.5" if isinstance(last, int) else ""
            value: Any = float(last) if last else None
        else:
            last = last if isinstance(last, str) else f"{last}\n"
            value = last or None
        lines.append(f"{_quoted(f'a{i:017d}')},{_quoted(note)},{_quoted(last)}\n".encode())
        expected.append({"Id": f"a{i:017d}", "Note": note or None, "Last": value})
    with tempfile.TemporaryDirectory() as directory:
        counts, rows = asyncio.run(_copy_lines(lines, last_type, page_size, Path(directory)))
    assert sum(counts) == len(notes)
    assert rows == expected


async def test_only_a_block_cut_inside_a_quoted_value_has_its_quotes_counted(tmp_path, monkeypatch):
    from airflow_provider_salesforce_bulk.client import query_parquet

    counted: list[int] = []
    real = query_parquet.last_record_end

    def last_record_end(data, size=None):
        counted.append(size)
        return real(data, size)

    monkeypatch.setattr(query_parquet, "last_record_end", last_record_end)
    # Records of about 100 bytes in 1,024-byte blocks: every 25th record's note holds line feeds
    # (a few blocks end inside it), the others none.
    notes = ["x\n" * 40 if i % 25 == 0 else "plain note" * 6 for i in range(400)]
    lines = [f'"a{i:017d}",{_quoted(n)},"{i}"\n'.encode() for i, n in enumerate(notes)]
    counts, rows = await _copy_lines(lines, "textarea", 400, tmp_path)
    assert counts == [400]
    assert [r["Note"] for r in rows] == notes
    assert [r["Last"] for r in rows] == [str(i) for i in range(400)]
    blocks = sum(len(line) for line in lines) // 1024
    assert 0 < len(counted) < blocks // 4
