"""Grouping records by a parent field: chunk boundaries never split a group that fits, every record
once with its bytes as the source wrote them, flat memory, and a grouped load into the emulator."""

from __future__ import annotations

import collections
import contextlib
import itertools
import json
import os
import random
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from airflow_provider_salesforce_bulk.client import (
    BulkIngestClient,
    ChunkFormat,
    ChunkLimits,
    ClientCredentialsAuth,
    InputError,
    JobSpec,
    SalesforceSession,
    TokenCache,
    perform_operation,
)
from airflow_provider_salesforce_bulk.client.csv_format import CsvChunk
from airflow_provider_salesforce_bulk.client.operation import perform_chunks
from airflow_provider_salesforce_bulk.client.serialize import iter_record_chunks
from airflow_provider_salesforce_bulk.emulator.server import run_emulator
from airflow_provider_salesforce_bulk.operators.grouping import GroupedChunk, group_by_parent
from airflow_provider_salesforce_bulk.operators.sources import ChunkSource, SourceSpec, make_source

FIELDS = ["LastName", "AccountId", "Title"]


def record_source(records: list[dict[str, str]], max_size: int, max_records: int, **fmt: str) -> ChunkSource:
    @contextlib.contextmanager
    def chunks() -> Iterator[Iterator[CsvChunk]]:
        yield iter_record_chunks(
            records, FIELDS, ChunkLimits(max_size_bytes=max_size, max_records=max_records), ChunkFormat(**fmt)
        )

    return ChunkSource(chunks, f"{len(records)} records")


def record_bytes(records: list[dict[str, str]], **fmt: str) -> list[bytes]:
    """Each record's CSV bytes as the record serializer writes it on its own."""
    chunk_format = ChunkFormat(**fmt)
    first = next(iter_record_chunks(records[:1], FIELDS, chunk_format=chunk_format))
    header_len = len(first.data.split(b"\n", 1)[0]) + 1
    one_each = iter_record_chunks(records, FIELDS, ChunkLimits(max_records=1), chunk_format)
    return [c.data[header_len:] for c in one_each]


def read(source: ChunkSource) -> list[GroupedChunk]:
    with source.open() as chunks:
        return list(chunks)  # type: ignore[arg-type]


values = st.text(alphabet=st.sampled_from(list('ab,"\n\r é|;')), max_size=6)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    parents=st.lists(
        st.sampled_from(["", "001A", "001B", "001C", "001D", "001E", "001F"]), min_size=1, max_size=80
    ),
    titles=st.lists(values, min_size=80, max_size=80),
    max_records=st.integers(min_value=1, max_value=12),
    room=st.integers(min_value=0, max_value=120),
    crlf=st.booleans(),
)
def test_groups_stay_in_one_chunk_and_every_record_once(
    tmp_path_factory, parents, titles, max_records, room, crlf
):
    fmt = {"line_ending": "CRLF" if crlf else "LF", "column_delimiter": "COMMA"}
    records = [{"LastName": f"N{i}", "AccountId": p, "Title": titles[i]} for i, p in enumerate(parents)]
    originals = record_bytes(records, **fmt)
    header = len(b"LastName,AccountId,Title\r\n" if crlf else b"LastName,AccountId,Title\n")
    max_size = header + max(map(len, originals)) + room
    source = record_source(records, max_size, max_records, **fmt)
    grouped = group_by_parent(
        source,
        "AccountId",
        limits=ChunkLimits(max_size_bytes=max_size, max_records=max_records),
        chunk_format=ChunkFormat(**fmt),
        spool_dir=str(tmp_path_factory.mktemp("spool")),
    )
    with grouped:
        chunks = read(grouped)
        assert [(c.data, list(c.source_indexes)) for c in read(grouped)] == [
            (c.data, list(c.source_indexes)) for c in chunks
        ]  # a second pass is identical: the operator validates on one pass and loads on another
    # Limits, contiguous grouped positions.
    assert all(len(c.data) <= max_size and 1 <= c.record_count <= max_records for c in chunks)
    assert [c.first_record_index for c in chunks] == [
        sum(c.record_count for c in chunks[:k]) for k in range(len(chunks))
    ]
    # Every source record exactly once, byte for byte.
    placed = [(pos, chunk) for chunk in chunks for pos in chunk.source_indexes]
    assert sorted(pos for pos, _ in placed) == list(range(len(records)))
    for chunk in chunks:
        head = chunk.data[:header]
        assert head == (b"LastName,AccountId,Title\r\n" if crlf else b"LastName,AccountId,Title\n")
        assert chunk.data[header:] == b"".join(originals[pos] for pos in chunk.source_indexes)
    # Grouped: a parent's records adjacent, in source order; in one chunk when they fit in one.
    order = [records[pos]["AccountId"] for pos, _ in placed]
    seen_done: set[str] = set()
    for previous, current in itertools.pairwise(order):
        if current != previous and previous:
            seen_done.add(previous)
        assert current not in seen_done or not current
    by_parent: dict[str, list[int]] = collections.defaultdict(list)
    chunk_of: dict[str, set[int]] = collections.defaultdict(set)
    for pos, chunk in placed:
        by_parent[records[pos]["AccountId"]].append(pos)
        chunk_of[records[pos]["AccountId"]].add(chunk.first_record_index)
    for parent, positions in by_parent.items():
        assert positions == sorted(positions)
        size = sum(len(originals[p]) for p in positions)
        if parent and len(positions) <= max_records and header + size <= max_size:
            assert len(chunk_of[parent]) == 1, parent


def test_a_csv_file_keeps_its_bytes_and_the_spool_file_is_removed(tmp_path):
    # Needless quotes and a quoted CRLF: a re-serializer would change them, grouping must not.
    rows = [
        b'"Smith",001B,"Mr"\r\n',
        b'Jones,001A,"two\r\nlines"\r\n',
        b'"Lee",001B,\r\n',
        b'Kim,,"a,b"\r\n',
        b'Ray,001A,""\r\n',
    ]
    path = tmp_path / "contacts.csv"
    path.write_bytes(b"LastName,AccountId,Title\r\n" + b"".join(rows))
    spool = tmp_path / "spool"
    spool.mkdir()
    kwargs = {
        "limits": ChunkLimits(max_size_bytes=10_000, max_records=3),
        "chunk_format": ChunkFormat(line_ending="CRLF"),
    }
    source = make_source(SourceSpec(source=str(path)), **kwargs)
    grouped = group_by_parent(source, "AccountId", spool_dir=str(spool), **kwargs)
    chunks = read(grouped)
    assert len(list(spool.iterdir())) == 1
    assert [list(c.source_indexes) for c in chunks] == [[3, 1, 4], [0, 2]]
    assert chunks[0].data == b"LastName,AccountId,Title\r\n" + rows[3] + rows[1] + rows[4]
    assert chunks[1].data == b"LastName,AccountId,Title\r\n" + rows[0] + rows[2]
    grouped.close()
    assert list(spool.iterdir()) == []


def test_an_unknown_parent_field_is_an_input_error_naming_it(tmp_path):
    source = record_source([{"LastName": "x", "AccountId": "1", "Title": ""}], 1000, 10)
    grouped = group_by_parent(
        source,
        "Account.Id",
        limits=ChunkLimits(max_size_bytes=1000, max_records=10),
        chunk_format=ChunkFormat(),
        spool_dir=str(tmp_path),
    )
    with pytest.raises(InputError, match=r"'Account\.Id' is not a column .*LastName, AccountId, Title"):
        read(grouped)
    assert list(tmp_path.iterdir()) == []  # the half-made spool is gone too
    with pytest.raises(InputError, match="group_by_parent"):
        group_by_parent(
            source, "", limits=ChunkLimits(max_size_bytes=1000, max_records=10), chunk_format=ChunkFormat()
        )


async def load_contacts(org, contacts, grouped: bool) -> tuple[list, dict[int, list[int]]]:
    c = org.credentials
    auth = ClientCredentialsAuth(c.client_id, c.client_secret, org.base_url)
    positions: dict[int, list[int]] = {}

    def remember(chunks: Iterator[CsvChunk]) -> Iterator[CsvChunk]:
        for chunk in chunks:
            if isinstance(chunk, GroupedChunk):
                positions[chunk.first_record_index] = list(chunk.source_indexes)
            yield chunk

    source = record_source(contacts, 100_000, 150)
    if grouped:
        source = group_by_parent(
            source,
            "AccountId",
            limits=ChunkLimits(max_size_bytes=100_000, max_records=150),
            chunk_format=ChunkFormat(),
        )
    async with SalesforceSession(auth, token_cache=TokenCache()) as session:
        client = BulkIngestClient(session)
        with source.open() as chunks:
            results = [
                r
                async for r in perform_chunks(
                    client,
                    JobSpec(operation="insert", object="Contact"),
                    remember(chunks),
                    polling_interval=0.02,
                    max_concurrent_jobs=3,
                )
            ]
    return results, positions


async def contacts_scenario(grouped: bool) -> tuple[list, dict[int, list[int]], list, list]:
    """40 accounts, 2,000 contacts spread over them at random, loaded 150 a job under lock contention."""
    rng = random.Random(4)
    with run_emulator(db=":memory:", records_per_second=None) as org:
        c = org.credentials
        auth = ClientCredentialsAuth(c.client_id, c.client_secret, org.base_url)
        async with SalesforceSession(auth, token_cache=TokenCache()) as session:
            accounts = [{"Name": f"Parent {i}"} for i in range(40)]
            client = BulkIngestClient(session)
            [r async for r in perform_operation(client, "insert", "Account", accounts, polling_interval=0.02)]
        ids = sorted(a["Id"] for a in org.records("Account"))
        contacts = [{"LastName": f"C{i}", "AccountId": rng.choice(ids), "Title": ""} for i in range(2_000)]
        # Children of one parent in jobs close together contend for the parent's lock.
        org.update_settings(lock_contention_seconds=600.0)
        results, positions = await load_contacts(org, contacts, grouped=grouped)
        return results, positions, contacts, org.records("Contact")


async def test_a_grouped_load_puts_each_accounts_contacts_in_one_job_and_meets_no_lock():
    ungrouped, _, _, stored_ungrouped = await contacts_scenario(grouped=False)
    results, positions, contacts, stored = await contacts_scenario(grouped=True)
    locked_ungrouped = sum(r.job_info.number_records_failed for r in ungrouped)
    print(f"lock failures: ungrouped {locked_ungrouped} of 2000, grouped 0")
    assert locked_ungrouped > 1_000  # 14 jobs, each account's children spread over them
    assert len(stored_ungrouped) == 2_000 - locked_ungrouped
    assert all(r.job_info.number_records_failed == 0 for r in results)
    assert sorted(r["LastName"] for r in stored) == sorted(f"C{i}" for i in range(2_000))
    jobs_of: dict[str, set[str]] = collections.defaultdict(set)
    for result in results:
        for pos in positions[result.first_record_index]:
            jobs_of[contacts[pos]["AccountId"]].add(result.job_id)
    assert len(results) > 1
    assert all(len(jobs) == 1 for jobs in jobs_of.values())  # ~50 contacts an account, 150 a job


MEMORY_SCRIPT = textwrap.dedent(
    """
    import contextlib, sys
    from airflow_provider_salesforce_bulk.client import ChunkFormat, ChunkLimits
    from airflow_provider_salesforce_bulk.client.serialize import iter_record_chunks
    from airflow_provider_salesforce_bulk.operators.grouping import group_by_parent
    from airflow_provider_salesforce_bulk.operators.sources import ChunkSource

    n, spool = int(sys.argv[1]), sys.argv[2]

    def status(key):
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith(key + ":"))

    # Reset the peak (VmHWM) after the imports, so the peak is the grouping's own.
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    baseline = status("VmRSS")
    fields = ["LastName", "AccountId", "Title", "Email"]

    def records():
        for i in range(n):
            yield {"LastName": f"Name {i}", "AccountId": f"001{(i * 7919) % (n // 20):015d}",
                   "Title": "Engineer" * 3, "Email": f"person{i}@example.com"}

    limits = ChunkLimits(max_size_bytes=2_000_000, max_records=10_000)

    @contextlib.contextmanager
    def chunks():
        yield iter_record_chunks(records(), fields, limits)

    total = 0
    with group_by_parent(ChunkSource(chunks, "gen"), "AccountId", limits=limits,
                         chunk_format=ChunkFormat(), spool_dir=spool) as grouped:
        with grouped.open() as out:
            for chunk in out:
                total += chunk.record_count
    assert total == n, total
    print(baseline, status("VmHWM"))
    """
)


def peak_rss_kib(n: int, spool: Path) -> tuple[int, int]:
    """(RSS before grouping, peak RSS while grouping) in KiB."""
    done = subprocess.run(  # noqa: S603 - our own interpreter and script
        [sys.executable, "-c", MEMORY_SCRIPT, str(n), str(spool)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    baseline, peak = done.stdout.strip().splitlines()[-1].split()
    return int(baseline), int(peak)


def test_memory_is_flat_in_the_number_of_records(tmp_path):
    base_small, small = peak_rss_kib(100_000, tmp_path)
    base_large, large = peak_rss_kib(500_000, tmp_path)
    print(
        f"peak RSS: 100k records {small / 1024:.1f} MiB (RSS before grouping {base_small / 1024:.1f}), "
        f"500k records {large / 1024:.1f} MiB (RSS before grouping {base_large / 1024:.1f})"
    )
    # Five times the records: the spool grows on disk, not in memory.
    assert large - base_large <= (small - base_small) * 1.25 + 4 * 1024, (
        base_small,
        small,
        base_large,
        large,
    )


def test_a_spool_dir_that_does_not_exist_is_a_clear_error(tmp_path):
    source = record_source([{"LastName": "x", "AccountId": "1", "Title": ""}], 1000, 10)
    missing = tmp_path / "nowhere"
    grouped = group_by_parent(
        source,
        "AccountId",
        limits=ChunkLimits(max_size_bytes=1000, max_records=10),
        chunk_format=ChunkFormat(),
        spool_dir=str(missing),
    )
    with pytest.raises(InputError, match=r"spool file in .*nowhere"):
        read(grouped)


CHUNK_MEMORY_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from airflow_provider_salesforce_bulk.client import ChunkFormat, ChunkLimits
    from airflow_provider_salesforce_bulk.client.csv_format import CsvChunk
    from airflow_provider_salesforce_bulk.operators.source_spec import SourceSpec
    from airflow_provider_salesforce_bulk.operators.sources import make_source

    path, spool, max_size = sys.argv[1], sys.argv[2], int(sys.argv[3])

    def status(key):
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith(key + ":"))

    class Discard:
        # A chunk sink that keeps nothing (the staging area writes a file): what is measured is
        # the grouping, not the chunks.
        def begin(self, first):
            self.first, self.size = first, 0
        def write(self, piece):
            self.size += len(piece)
        def write_all(self, pieces):
            for piece in pieces:
                self.write(piece)
        def end(self, count):
            out["rows"] += count
            out["chunks"] += 1
            out["largest"] = max(out["largest"], self.size)
            return CsvChunk(b"", self.first, count)

    out = {"rows": 0, "chunks": 0, "largest": 0}
    source = make_source(
        SourceSpec(source=path, group_by_parent="AccountId"),
        limits=ChunkLimits(max_size_bytes=max_size, max_records=10_000_000),
        chunk_format=ChunkFormat(),
    )
    source.spool_dir = spool
    # Reset the peak (VmHWM) after the imports, so the peak is the pass's own.
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    out["baseline"] = status("VmRSS")
    with source, source.open_into(Discard()) as chunks:
        for _ in chunks:
            pass
    out["peak"] = status("VmHWM")
    print(json.dumps(out))
    """
)


def grouped_pass_kib(path: Path, spool: Path, max_size: int) -> dict[str, int]:
    done = subprocess.run(  # noqa: S603 - our own interpreter and script
        [sys.executable, "-c", CHUNK_MEMORY_SCRIPT, str(path), str(spool), str(max_size)],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def test_memory_does_not_grow_with_the_chunk_size(tmp_path):
    """The operator's path (a CSV file, grouped, each chunk written into a sink): chunks 32 times
    larger may not take more memory; holding a chunk whole (and its records split apart) took about
    seven times the chunk."""
    rows = 600_000
    path = tmp_path / "contacts.csv"
    with path.open("w") as f:
        f.write("LastName,AccountId,Title,Email\n")
        for i in range(rows):
            f.write(f"Name {i},001{(i * 7919) % 15_000:015d},Engineer,person{i}@example.com\n")
    size = path.stat().st_size
    small, large = 1_000_000, 32_000_000
    assert size > large  # the large chunks are as large as the limit lets them be
    small_run = grouped_pass_kib(path, tmp_path, small)
    large_run = grouped_pass_kib(path, tmp_path, large)
    print(f"grouped {size / 1e6:.0f} MB, peak growth: {small_run} with 1 MB chunks, {large_run} with 32 MB")
    for run, limit in ((small_run, small), (large_run, large)):
        assert run["rows"] == rows
        assert limit * 0.9 < run["largest"] <= limit  # chunks filled to about their limit
    grew = (large_run["peak"] - large_run["baseline"]) - (small_run["peak"] - small_run["baseline"])
    # Wide: SQLite's cache and sorter fill by up to 9 MB more in one run than in another; a chunk
    # held whole even once is 31 MB more.
    assert grew * 1024 < (large - small) / 2, (small_run, large_run)
    assert [p.name for p in tmp_path.iterdir()] == ["contacts.csv"]  # the spool files are gone
