"""A Parquet source's memory does not grow with the file (issue 15 §4).

Reading the whole file through one ``ParquetFile.iter_batches`` kept every page it had read until the
end: the peak grew by the file's size (about 20 bytes a row of the load bench). Each size is read in a
process of its own, through the operator's own path (``make_columnar_source`` opening the file as
``ObjectStoragePath``, chunks cut into a sink that keeps nothing), and the growth of its anonymous
memory over the read is compared: a file eight times larger may not take more than a fraction of the
difference.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

ROWS_PER_GROUP = 40_000
# 64 random hex characters a row: the pages hardly compress, so the file is as large as its text.
SMALL_GROUPS, LARGE_GROUPS = 4, 32

_CHILD = """
import json, sys
from airflow_provider_salesforce_bulk.client import ChunkFormat, ChunkLimits
from airflow_provider_salesforce_bulk.client.csv_format import CsvChunk
from airflow_provider_salesforce_bulk.operators.columnar_sources import make_columnar_source
from airflow_provider_salesforce_bulk.operators.source_spec import SourceSpec

def anon():
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no RssAnon")

class Discard:
    # A chunk sink that keeps nothing: what is measured is the reading, not the chunks.
    def begin(self, first):
        self.first = first
    def write(self, piece):
        peak[0] = max(peak[0], anon())
    def write_all(self, pieces):
        for piece in pieces:
            self.write(piece)
    def end(self, count):
        rows[0] += count
        return CsvChunk(b"", self.first, count)

rows, peak = [0], [0]
source = make_columnar_source(
    SourceSpec(source=sys.argv[1]), limits=ChunkLimits(max_size_bytes=10_000_000, max_records=100_000),
    chunk_format=ChunkFormat(),
)
with source.open_into(Discard()) as chunks:
    start = anon()
    for _ in chunks:
        pass
print(json.dumps({"rows": rows[0], "growth": peak[0] - start}))
"""


def _write(path: Path, groups: int) -> None:
    with pq.ParquetWriter(path, pa.schema([("Name", pa.string())])) as writer:
        for _ in range(groups):
            names = [os.urandom(32).hex() for _ in range(ROWS_PER_GROUP)]
            writer.write_table(pa.table({"Name": names}), row_group_size=ROWS_PER_GROUP)


def _read(path: Path) -> dict[str, int]:
    out = subprocess.run(  # noqa: S603 - this interpreter, our own script
        [sys.executable, "-c", _CHILD, str(path)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def test_reading_a_parquet_file_takes_memory_of_a_row_group_not_of_the_file(tmp_path: Path) -> None:
    small, large = tmp_path / "small.parquet", tmp_path / "large.parquet"
    _write(small, SMALL_GROUPS)
    _write(large, LARGE_GROUPS)
    extra_file = large.stat().st_size - small.stat().st_size
    assert extra_file > 70_000_000  # the difference the bug would add to the peak
    small_read, large_read = _read(small), _read(large)
    assert small_read["rows"] == SMALL_GROUPS * ROWS_PER_GROUP
    assert large_read["rows"] == LARGE_GROUPS * ROWS_PER_GROUP
    extra_memory = large_read["growth"] - small_read["growth"]
    # Wide: allocator noise on a busy machine and other pyarrow versions (24 MB seen for 75 MB with
    # Airflow 3.1.8's pins on Python 3.10), while the bug took about the whole file (83 MB for 74 MB).
    assert extra_memory < extra_file / 2, (
        f"reading {extra_file / 1e6:.0f} MB more of Parquet took {extra_memory / 1e6:.0f} MB more memory "
        f"({small_read}, {large_read})"
    )
