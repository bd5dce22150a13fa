"""The result-file tee counts exactly what a parse of the whole file reads, however the bytes arrive."""

from __future__ import annotations

import asyncio
import collections
import csv
import io

from hypothesis import given, settings
from hypothesis import strategies as st

from airflow_provider_salesforce_bulk.client.sf_error import parse_sf_error
from airflow_provider_salesforce_bulk.operators.result_files import ResultCounter

values = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=20)
errors = st.sampled_from(
    ["REQUIRED_FIELD_MISSING:Required fields are missing: [Name]:Name --", "DUPLICATE_VALUE:dup:--", ""]
)


def _csv(header: list[str], rows: list[list[str]], crlf: bool) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n" if crlf else "\n", quoting=csv.QUOTE_ALL)
    writer.writerows([header, *rows])
    return out.getvalue().encode("utf-8")


def _count(payload: bytes, cuts: list[int], count_errors: bool) -> ResultCounter:
    sink = io.BytesIO()
    counter = ResultCounter(sink, ",", count_errors)

    async def feed() -> None:
        start = 0
        for cut in [*sorted(set(cuts)), len(payload)]:
            await counter.write(payload[start:cut])
            start = cut
        counter.finish()

    asyncio.run(feed())
    assert sink.getvalue() == payload  # the tee writes every byte as it came
    return counter


@given(
    rows=st.lists(st.tuples(errors, values), max_size=12),
    failed=st.booleans(),
    crlf=st.booleans(),
    data=st.data(),
)
@settings(max_examples=300, deadline=None)
def test_results_are_counted_as_a_parse_reads_them(rows, failed, crlf, data):
    """Successful results only counted; failed ones counted by error code too (their values read)."""
    second = "sf__Error" if failed else "sf__Created"
    payload = _csv(["sf__Id", second, "Name"], [["", error, name] for error, name in rows], crlf)
    cuts = data.draw(st.lists(st.integers(0, len(payload)), max_size=10))
    counter = _count(payload, cuts, count_errors=failed)
    assert counter.rows == len(rows)
    if failed:
        codes = (parse_sf_error(error).status_code or "UNKNOWN" for error, _ in rows)
        assert counter.by_code == collections.Counter(codes)
