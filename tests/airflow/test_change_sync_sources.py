"""Change-only syncs read every source kind the operator reads, compared as the job would send it.

For records (an XCom), a CSV file, a Parquet file with ``field_mapping``, a pandas DataFrame and a
SQL query: a first run sends every row; a second run, with one row changed and one new, sends those
two only. Values of other types (numbers, dates, None) compare by the text the job writes, so an
unchanged row of a typed source is never sent again.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_salesforce_bulk.emulator.server import RunningEmulator
from tests.airflow.change_sync_helpers import EXT, Raw, records_sent, run, stored, sync_dag
from tests.airflow.helpers import conn_uri_json

N = 60


@pytest.fixture
def sf(emulator: RunningEmulator, monkeypatch: pytest.MonkeyPatch, airflow_db: object) -> RunningEmulator:
    monkeypatch.setenv("AIRFLOW_CONN_SF_SYNC", conn_uri_json(emulator))
    return emulator


def _rows(second: bool) -> list[dict[str, Any]]:
    """Typed rows (a None, a date); the second run changes row 3 and adds row N."""
    rows = [
        {"ext": f"src-{i}", "last": f"Last {i}", "email": None if i % 5 == 0 else f"s{i}@example.com",
         "birth": f"1990-01-{1 + i % 28:02d}"}
        for i in range(N + (1 if second else 0))
    ]  # fmt: skip
    if second:
        rows[3]["last"] = "Changed"
    return rows


def _write(
    kind: str, tmp_path: Path, rows: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> dict[str, Any]:
    """The input in ``kind``'s form, and the operator's source arguments."""
    renamed = [
        {EXT: r["ext"], "LastName": r["last"], "Email": r["email"], "Birthdate": r["birth"]} for r in rows
    ]
    if kind == "records":
        path = tmp_path / "records.json"
        path.write_text(json.dumps(renamed))
        return {"records": Raw(f"json.load(open({str(path)!r}))")}
    if kind == "csv":
        path = tmp_path / "input.csv"
        lines = [",".join(renamed[0])] + [",".join(v or "" for v in r.values()) for r in renamed]
        path.write_text("\n".join(lines) + "\n")
        return {"source": str(path)}
    import pyarrow as pa

    table = pa.Table.from_pylist(rows)
    table = table.set_column(3, "birth", pa.array([r["birth"] for r in rows], pa.string()).cast(pa.date32()))
    mapping = {"ext": EXT, "last": "LastName", "email": "Email", "birth": "Birthdate"}
    if kind == "parquet":
        import pyarrow.parquet as pq

        path = tmp_path / "input.parquet"
        pq.write_table(table, path)
        return {"source": str(path), "field_mapping": mapping}
    if kind == "dataframe":
        path = tmp_path / "frame.parquet"
        table.to_pandas().to_parquet(path)
        return {"records": Raw(f"pandas.read_parquet({str(path)!r})"), "field_mapping": mapping}
    db = tmp_path / "warehouse.db"
    with sqlite3.connect(db) as conn:
        conn.execute("DROP TABLE IF EXISTS contacts")
        conn.execute("CREATE TABLE contacts (ext TEXT, last TEXT, email TEXT, birth TEXT)")
        conn.executemany("INSERT INTO contacts VALUES (?, ?, ?, ?)", [tuple(r.values()) for r in rows])
    monkeypatch.setenv("AIRFLOW_CONN_WAREHOUSE_SYNC", json.dumps({"conn_type": "sqlite", "host": str(db)}))
    return {"sql": "SELECT ext, last, email, birth FROM contacts", "sql_conn_id": "warehouse_sync",
            "field_mapping": mapping}  # fmt: skip


@pytest.mark.parametrize("kind", ["records", "csv", "parquet", "dataframe", "sql"])
def test_every_source_kind_sends_only_what_changed(
    sf: RunningEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    seam = "        import json, pandas\n"
    args = _write(kind, tmp_path, _rows(False), monkeypatch)
    args.setdefault("source", None)
    state, _, summary = run(sync_dag(f"sync_source_{kind}", tmp_path, seam=seam, **args))
    assert (state, summary["sync"]["sent"], summary["sync"]["version"]) == ("success", N, 1)

    args = _write(kind, tmp_path, _rows(True), monkeypatch)
    args.setdefault("source", None)
    state, _, summary = run(sync_dag(f"sync_source_{kind}", tmp_path, seam=seam, **args))
    sync = summary["sync"]
    assert (state, sync["new"], sync["changed"], sync["unchanged"]) == ("success", 1, 1, N - 1)
    assert records_sent(sf, "upsert") == N + 2
    org = stored(sf)
    assert len(org) == N + 1
    assert org["src-3"]["LastName"] == "Changed"


@pytest.mark.parametrize(("first", "then"), [("records", "parquet"), ("sql", "csv")])
def test_a_state_written_from_one_source_kind_matches_another(
    sf: RunningEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, first: str, then: str
) -> None:
    """Columnar sources are digested from their Arrow batches, the others from their chunks read back:
    the same rows compare unchanged across the two (and across states written before either)."""
    seam = "        import json, pandas\n"
    dag_id = f"sync_switch_{first}_{then}"
    args = _write(first, tmp_path, _rows(False), monkeypatch)
    args.setdefault("source", None)
    state, _, summary = run(sync_dag(dag_id, tmp_path, seam=seam, **args))
    assert (state, summary["sync"]["sent"]) == ("success", N)

    args = _write(then, tmp_path, _rows(True), monkeypatch)
    args.setdefault("source", None)
    state, _, summary = run(sync_dag(dag_id, tmp_path, seam=seam, **args))
    sync = summary["sync"]
    assert (state, sync["new"], sync["changed"], sync["unchanged"]) == ("success", 1, 1, N - 1)
    assert records_sent(sf, "upsert") == N + 2
