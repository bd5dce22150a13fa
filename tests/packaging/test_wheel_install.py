"""The install path a user takes: ``make dist``, then the README's "First loads, from the wheel".

That README block is run as it is written, command by command, in a clean venv: ``pip install`` of
Airflow, the package with the ``arrow`` extra (the wheel ``make dist`` built stands for the name) and
the sqlite provider WITHOUT any constraints, so the index's newest versions of everything else are
resolved, as a user's install would; the emulator with the README's flags (in this process, over a
real socket, so that its records can be counted); the README's exports (``$PWD`` and ``/tmp`` made
private); then ``airflow db migrate`` and ``airflow dags test`` of the Parquet and SQL examples.
Once beside the Airflow the README names, once beside ``apache-airflow==3.1.8``, the oldest
supported one: there a plain install used to resolve cryptography 51, and Airflow 3.1's
``Variable.set`` (the plan store before 3.3) then raised "'MultiFernet' object has no attribute
'is_encrypted'"; the bound in pyproject.toml keeps it out, and this test proves the bound sufficient.

It needs the package index (network). The pinned uv resolves (as pip would: the newest versions
that fit) because pip takes minutes over Airflow's tree. Nothing of this repository is on the venv's
path: the DAGs import the installed wheel.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import sqlite3
import subprocess
import sys
import tarfile
import zipfile
from email.parser import Parser
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from airflow_provider_salesforce_bulk.emulator.cli import build_parser
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


HEADING = "### First loads, from the wheel"
PACKAGE_REQUIREMENT = "airflow-provider-salesforce-bulk[arrow]"


def _readme_commands() -> list[list[str]]:
    """The block under HEADING, one argv per command (``&&`` splits a line; ``#`` starts a comment)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert HEADING in text, f"README.md lost its section {HEADING!r}"
    section = re.split(r"^#{2,3} ", text.split(HEADING, 1)[1], maxsplit=1, flags=re.MULTILINE)[0]
    (block,) = re.findall(r"^```bash\n(.*?)^```", section, flags=re.MULTILINE | re.DOTALL)
    commands: list[list[str]] = []
    for line in block.splitlines():
        argv = shlex.split(line, comments=True)
        while "&&" in argv:
            cut = argv.index("&&")
            commands.append(argv[:cut])
            argv = argv[cut + 1 :]
        if argv:
            commands.append(argv)
    return commands


def _readme_airflow_pin(commands: list[list[str]]) -> str:
    (pip,) = [argv for argv in commands if argv[:2] == ["pip", "install"]]
    (pin,) = [a for a in pip if a.startswith("apache-airflow==")]
    return pin.split("==", 1)[1]


def _user_env() -> dict[str, str]:
    """The user's shell: nothing of this test session's Airflow settings or paths."""
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AIRFLOW", "SF_BULK_")) and k not in ("PYTHONPATH", "VIRTUAL_ENV")
    }


class _Shell:
    """Runs the README's commands as bash would, in ``workdir``, with a clean venv."""

    def __init__(self, workdir: Path, wheel: Path, airflow_version: str, stack: contextlib.ExitStack) -> None:
        self.workdir = workdir
        self.wheel = wheel
        self.airflow_version = airflow_version
        self.stack = stack
        self.env = _user_env()
        self.venv: Path | None = None
        self.emulator: RunningEmulator | None = None
        self.readme_port: int | None = None
        self.outputs: list[str] = []

    def bin(self, name: str) -> str:
        assert self.venv is not None, "the block must create its venv first"
        return str(self.venv / "bin" / name)

    def run(self, argv: list[str]) -> None:
        head = argv[0]
        if argv[:3] == ["python3", "-m", "venv"]:
            self.venv = self.workdir / argv[3]
            _run([sys.executable, "-m", "venv", "--without-pip", str(self.venv)], timeout=120)
        elif head == "." and argv[1].endswith("/bin/activate"):
            pass  # every later command runs from the venv's bin/
        elif argv[:2] == ["pip", "install"]:
            self._pip_install(argv[2:])
        elif head == "export":
            for assignment in argv[1:]:
                name, _, value = assignment.partition("=")
                self.env[name] = self._private(name, value.replace("$PWD", str(self.workdir)))
        elif argv[:2] == ["mkdir", "-p"]:
            (self.workdir / argv[2]).mkdir(parents=True, exist_ok=True)
        elif head == "cp":
            *files, target = argv[1:]
            for name in files:
                shutil.copy(ROOT / "dags_examples" / name, self.workdir / target)
        elif head == "salesforce-bulk-emulator":
            self._start_emulator(argv[1:])
        elif head == "airflow":
            proc = _run(
                [self.bin("airflow"), *argv[1:]], timeout=AIRFLOW_TIMEOUT, env=self.env, cwd=self.workdir
            )
            self.outputs.append(proc.stdout + proc.stderr)
        else:
            raise AssertionError(f"the README block has a command this test does not know: {argv}")

    def _pip_install(self, requirements: list[str]) -> None:
        assert PACKAGE_REQUIREMENT in requirements, f"the README installs {requirements}"
        wanted = []
        for requirement in requirements:
            if requirement == PACKAGE_REQUIREMENT:
                requirement = f"{self.wheel}[arrow]"
            elif requirement.startswith("apache-airflow=="):
                requirement = f"apache-airflow=={self.airflow_version}"
            wanted.append(requirement)
        uv = Path(sys.executable).with_name("uv")  # the pinned uv `make setup` installs
        _run(
            [str(uv), "pip", "install", "--python", self.bin("python"), *wanted],
            timeout=INSTALL_TIMEOUT,
            cwd=self.workdir,
            env=self.env,
        )

    def _start_emulator(self, args: list[str]) -> None:
        assert args[-1] == "&", "the emulator runs in the background"
        settings = vars(build_parser().parse_args(args[:-1]))
        self.readme_port = settings["port"]
        for cli_only in ("log_level", "jwt_public_key"):
            settings.pop(cli_only)
        settings["port"] = 0
        self.emulator = self.stack.enter_context(run_emulator(**settings))

    def _private(self, name: str, value: str) -> str:
        """The README's connections, pointed at this test's emulator and a private SQLite file."""
        if name == "AIRFLOW_CONN_SALESFORCE_BULK_DEFAULT":
            assert self.emulator is not None, "the connection points at an emulator started before it"
            conn = json.loads(value)
            assert urlsplit(conn["host"]).port == self.readme_port, "the connection names the emulator's port"
            conn["host"] = self.emulator.base_url
            return json.dumps(conn)
        if name == "AIRFLOW_CONN_WAREHOUSE_SQLITE":
            conn = json.loads(value)
            conn["host"] = str(self.workdir / Path(conn["host"]).name)
            return json.dumps(conn)
        return value


def _installed(venv: Path, cwd: Path, code: str) -> str:
    return _run([str(venv / "bin" / "python"), "-c", code], timeout=120, cwd=cwd).stdout.strip()


def _check_installed(shell: _Shell, version: str) -> None:
    assert shell.venv is not None
    versions = json.loads(
        _installed(
            shell.venv,
            shell.workdir,
            "import json, importlib.metadata as m, airflow_provider_salesforce_bulk as p; "
            "print(json.dumps({n: m.version(n) for n in ('apache-airflow', 'cryptography', 'pyarrow')}"
            " | {'module': p.__file__}))",
        )
    )
    print(f"plain install beside Airflow {version}: {versions}")
    assert versions["apache-airflow"] == version
    assert str(shell.venv) in versions["module"], "the DAGs must import the installed wheel"


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


@pytest.mark.parametrize("airflow_version", ["as written", OLDEST_AIRFLOW])
def test_readme_first_loads_run_from_the_wheel_without_constraints(
    dist: Path, tmp_path: Path, airflow_version: str
) -> None:
    commands = _readme_commands()
    version = _readme_airflow_pin(commands) if airflow_version == "as written" else airflow_version
    ran = [argv[3] for argv in commands if argv[:3] == ["airflow", "dags", "test"]]
    assert ran == [dag_id for dag_id, *_ in EXAMPLES], ran
    with contextlib.ExitStack() as stack:
        shell = _Shell(tmp_path, _one(dist, "*.whl"), version, stack)
        checked = False
        for argv in commands:
            if argv[0] == "airflow" and not checked:
                _check_installed(shell, version)
                checked = True
            shell.run(argv)
        assert shell.emulator is not None
        stored = {obj: shell.emulator.records(obj) for obj in ("Contact", "Account")}
    assert not [out for out in shell.outputs if "MultiFernet" in out]
    home = Path(shell.env["AIRFLOW_HOME"])
    for dag_id, task_id, obj, prefix, expected in EXAMPLES:
        summary = _summary(home / "airflow.db", dag_id, task_id)
        totals = summary["totals"]
        assert isinstance(totals, dict)
        assert (totals["records"], totals["succeeded"], totals["failed"]) == (expected, expected, 0), summary
        ids = [r["External_Id__c"] for r in stored[obj] if str(r.get("External_Id__c")).startswith(prefix)]
        assert len(ids) == len(set(ids)) == expected, f"{obj}: {len(ids)} stored, {expected} loaded"
