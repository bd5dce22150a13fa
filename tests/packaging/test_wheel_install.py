"""The install path a user takes: ``make dist``, then the wheel into a clean venv, then example DAGs.

The wheel is installed beside a plain ``apache-airflow==3.1.8`` (the oldest supported Airflow) WITHOUT
the project's constraints, so the index's newest versions of everything else are resolved, as a user's
``pip install`` would. That is how cryptography 51 broke Airflow 3.1.8's ``Variable.set`` (the plan
store before 3.3); the dependency bound in pyproject.toml is what keeps it out, and this test is what
proves the bound sufficient. It needs the package index (network); nothing of this repository is on
the venv's path: the DAGs import the installed wheel.

Then ``airflow dags test`` runs, in that venv, the two examples a newcomer starts from: a Parquet file
(``example_salesforce_bulk_parquet``, the ``arrow`` extra) and an SQL query on SQLite
(``example_salesforce_bulk_sql``, Airflow's sqlite provider), against the emulator over a real socket;
the records the emulator holds are counted afterwards.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Iterator
from email.parser import Parser
from pathlib import Path

import pytest

from airflow_provider_salesforce_bulk.emulator.server import RunningEmulator, run_emulator

ROOT = Path(__file__).resolve().parents[2]
OLDEST_AIRFLOW = "3.1.8"
# (dag id, task whose summary is checked, object, external-id prefix, records the DAG loads)
EXAMPLES = [
    ("example_salesforce_bulk_parquet", "upsert_contacts", "Contact", "PQ-", 120),
    # 200 warehouse rows, half of them in the DAG's default region.
    ("example_salesforce_bulk_sql", "upsert_accounts", "Account", "WH-", 100),
]
INSTALL_TIMEOUT = 1200
AIRFLOW_TIMEOUT = 600


def _explain(output: str) -> str:
    """The lines that say why (errors, their tracebacks), then the tail: a failed task's cause is
    often far above the last lines, which only report that the run failed."""
    lines = output.splitlines()
    why = [i for i, line in enumerate(lines) if "Traceback" in line or "Error" in line]
    picked: list[str] = []
    for i in why[:5]:
        picked += [*lines[i : i + 25], "..."]
    return "\n".join([*picked, "--- last lines ---", *lines[-60:]])


def _run(argv: list[str], timeout: float, **kwargs: object) -> subprocess.CompletedProcess[str]:
    """Run ``argv``; on failure the assertion carries the command's own output, which explains it."""
    proc = subprocess.run(  # noqa: S603
        argv, capture_output=True, text=True, timeout=timeout, check=False, **kwargs
    )
    assert proc.returncode == 0, (
        f"{' '.join(argv)} exited {proc.returncode}\n--- stdout ---\n{_explain(proc.stdout)}"
        f"\n--- stderr ---\n{_explain(proc.stderr)}"
    )
    return proc


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    _run(["make", "-C", str(ROOT), "dist", f"DIST_DIR={out}"], timeout=600)
    return out


def _one(dist: Path, pattern: str) -> Path:
    (found,) = dist.glob(pattern)
    return found


def test_make_dist_builds_an_sdist_and_a_wheel_with_the_metadata(dist: Path) -> None:
    wheel = _one(dist, "airflow_provider_salesforce_bulk-*-py3-none-any.whl")
    sdist = _one(dist, "airflow_provider_salesforce_bulk-*.tar.gz")
    with zipfile.ZipFile(wheel) as whl:
        names = whl.namelist()
        (meta_name,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        meta = Parser().parsestr(whl.read(meta_name).decode())
        (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        assert "apache_airflow_provider" in whl.read(entry_points).decode()
    assert "airflow_provider_salesforce_bulk/py.typed" in names
    assert "airflow_provider_salesforce_bulk/emulator/default_schema.json" in names
    assert not [n for n in names if n.startswith("tests/")], "the wheel ships no tests"
    requires = meta.get_all("Requires-Dist") or []
    assert any(r.replace(" ", "").startswith("cryptography<51") for r in requires), requires
    assert "arrow" in (meta.get_all("Provides-Extra") or [])
    urls = dict(u.split(", ", 1) for u in meta.get_all("Project-URL") or [])
    for label in ("Homepage", "Source", "Documentation", "Changelog", "Issues"):
        assert urls.get(label, "").startswith("https://"), f"no {label} URL in {sorted(urls)}"
    classifiers = meta.get_all("Classifier") or []
    assert any(c.startswith("Development Status ::") for c in classifiers)
    assert meta["Author-email"] or meta["Author"]
    with tarfile.open(sdist) as sd:
        members = {m.name.split("/", 1)[1] for m in sd.getmembers() if "/" in m.name}
    assert {"pyproject.toml", "README.md", "LICENSE", "airflow_provider_salesforce_bulk/__init__.py"} <= (
        members
    )


def _clean_env(home: Path, emulator: RunningEmulator, warehouse: Path) -> dict[str, str]:
    """The user's environment: nothing of this test session's Airflow settings or paths."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AIRFLOW", "SF_BULK_")) and k not in ("PYTHONPATH", "VIRTUAL_ENV")
    }
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
            "AIRFLOW_CONN_SALESFORCE_BULK_DEFAULT": emulator.airflow_connection(),
            "AIRFLOW_CONN_WAREHOUSE_SQLITE": json.dumps({"conn_type": "sqlite", "host": str(warehouse)}),
        }
    )
    return env


@pytest.fixture(scope="module")
def plain_venv(dist: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A clean venv with the wheel beside ``apache-airflow==3.1.8``, resolved without constraints."""
    venv = tmp_path_factory.mktemp("plain-venv") / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], timeout=120)
    wheel = _one(dist, "*.whl")
    uv = Path(sys.executable).with_name("uv")  # the pinned uv `make setup` installs
    _run(
        [
            str(uv),
            "pip",
            "install",
            "--python",
            str(venv / "bin" / "python"),
            f"apache-airflow=={OLDEST_AIRFLOW}",
            f"{wheel}[arrow]",
            "apache-airflow-providers-sqlite",
        ],
        timeout=INSTALL_TIMEOUT,
        cwd=venv.parent,
    )
    yield venv
    shutil.rmtree(venv, ignore_errors=True)


def _installed(venv: Path, cwd: Path, code: str) -> str:
    return _run([str(venv / "bin" / "python"), "-c", code], timeout=120, cwd=cwd).stdout.strip()


def _summary(db: Path, dag_id: str, task_id: str) -> dict[str, object]:
    with sqlite3.connect(db) as conn:
        row = conn.execute(
            "SELECT value FROM xcom WHERE dag_id = ? AND task_id = ? AND key = 'return_value'",
            (dag_id, task_id),
        ).fetchone()
    assert row is not None, f"{dag_id}.{task_id} pushed no summary"
    value = json.loads(row[0]) if isinstance(row[0], (str, bytes)) else row[0]
    assert isinstance(value, dict)
    return value


def test_plain_install_beside_the_oldest_airflow_runs_the_parquet_and_sql_examples(
    plain_venv: Path, tmp_path: Path
) -> None:
    versions = json.loads(
        _installed(
            plain_venv,
            tmp_path,
            "import json, importlib.metadata as m, airflow_provider_salesforce_bulk as p; "
            "print(json.dumps({n: m.version(n) for n in ('apache-airflow', 'cryptography', 'pyarrow')}"
            " | {'module': p.__file__}))",
        )
    )
    print(f"plain install beside Airflow {OLDEST_AIRFLOW}: {versions}")
    assert versions["apache-airflow"] == OLDEST_AIRFLOW
    assert str(plain_venv) in versions["module"], "the DAGs must import the installed wheel"
    home = tmp_path / "airflow_home"
    (home / "dags").mkdir(parents=True)
    for dag_id, *_ in EXAMPLES:
        shutil.copy(ROOT / "dags_examples" / f"{dag_id}.py", home / "dags")
    airflow = str(plain_venv / "bin" / "airflow")
    with run_emulator() as emulator:
        env = _clean_env(home, emulator, tmp_path / "warehouse.db")
        _run([airflow, "db", "migrate"], timeout=AIRFLOW_TIMEOUT, env=env, cwd=tmp_path)
        for dag_id, *_ in EXAMPLES:
            proc = _run([airflow, "dags", "test", dag_id], timeout=AIRFLOW_TIMEOUT, env=env, cwd=tmp_path)
            assert "MultiFernet" not in proc.stdout + proc.stderr
        stored = {obj: emulator.records(obj) for obj in ("Contact", "Account")}
    for dag_id, task_id, obj, prefix, expected in EXAMPLES:
        summary = _summary(home / "airflow.db", dag_id, task_id)
        totals = summary["totals"]
        assert isinstance(totals, dict)
        assert (totals["records"], totals["succeeded"], totals["failed"]) == (expected, expected, 0), summary
        ids = [r["External_Id__c"] for r in stored[obj] if str(r.get("External_Id__c")).startswith(prefix)]
        assert len(ids) == len(set(ids)) == expected, f"{obj}: {len(ids)} stored, {expected} loaded"
