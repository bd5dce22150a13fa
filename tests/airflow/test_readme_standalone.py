"""The README's *With `airflow standalone` and the UI* section, checked against what its commands drive.

The commands are read from README.md itself, so an edit that breaks them fails here: the order that
puts ``airflow`` on PATH before ``standalone``, Airflow settings that exist, the emulator's flags, the
connection logging in to that emulator, the hold-and-release variant, and the Dag and task the text
names, run end to end with that connection. What the UI shows was checked by hand in a browser
(screenshots of the task *Deferred* in the grid); no browser runs here.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import re
import shlex
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx
import pytest

from airflow_provider_salesforce_bulk.emulator.cli import build_parser
from airflow_provider_salesforce_bulk.emulator.server import RunningEmulator, run_emulator
from tests.airflow.helpers import load_dag_file
from tests.emulator.helpers import API, start_job, wait_done

if TYPE_CHECKING:
    from airflow.triggers.base import TriggerEvent

ROOT = Path(__file__).resolve().parents[2]
HEADING = "### With `airflow standalone` and the UI"
# The example Dag upserts this many contacts, every 25th with an invalid e-mail address.
EXAMPLE_RECORDS = 100
# Long enough for a person to open the run after pressing Trigger and still see the task deferred.
MIN_DEFERRED_SECONDS = 30.0


def _section() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert HEADING in text, f"README.md lost its section {HEADING!r}"
    body = text.split(HEADING, 1)[1]
    return re.split(r"^#{2,3} ", body, maxsplit=1, flags=re.MULTILINE)[0]


def _commands(block: str) -> list[list[str]]:
    """Split a bash block into commands as bash would: newlines end one unless quoted or escaped."""
    commands: list[str] = []
    current: list[str] = []
    quote: str | None = None
    i = 0
    while i < len(block):
        c = block[i]
        if quote is None and c == "\\" and block[i + 1 : i + 2] == "\n":
            i += 2
            continue
        if c in "'\"" and quote in (None, c):
            quote = None if quote == c else c
        if c == "\n" and quote is None:
            commands.append("".join(current))
            current = []
        else:
            current.append(c)
        i += 1
    commands.append("".join(current))
    return [argv for argv in (shlex.split(cmd, comments=True) for cmd in commands) if argv]


def _blocks() -> list[list[list[str]]]:
    blocks = re.findall(r"^```bash\n(.*?)^```", _section(), flags=re.MULTILINE | re.DOTALL)
    assert len(blocks) == 2, "expected the setup block and the hold-and-release block"
    return [_commands(b) for b in blocks]


def _exports(commands: list[list[str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for argv in commands:
        if argv[0] == "export":
            for assignment in argv[1:]:
                name, _, value = assignment.partition("=")
                env[name] = value.replace("$PWD", str(ROOT))
    return env


def _emulator_argv(commands: list[list[str]]) -> list[str]:
    (argv,) = [a for a in commands if a[0] == "salesforce-bulk-emulator"]
    assert argv[-1] == "&", "the emulator must run in the background, before airflow standalone"
    return argv[1:-1]


def _emulator_settings(argv: list[str]) -> dict[str, Any]:
    """The settings the CLI would start with (as ``cli.main`` builds them), on a free port."""
    args = vars(build_parser().parse_args(argv))
    for cli_only in ("log_level", "jwt_public_key"):
        args.pop(cli_only)
    args["port"] = 0
    return args


def _readme_connection(running: RunningEmulator) -> str:
    """The README's AIRFLOW_CONN_SALESFORCE_BULK_DEFAULT, pointed at ``running`` instead of port 8765."""
    setup, _ = _blocks()
    conn = json.loads(_exports(setup)["AIRFLOW_CONN_SALESFORCE_BULK_DEFAULT"])
    readme_port = build_parser().parse_args(_emulator_argv(setup)).port
    assert urlsplit(conn["host"]).port == readme_port, "the connection must point at the emulator's port"
    conn["host"] = running.base_url
    return json.dumps(conn)


def test_setup_puts_airflow_on_path_before_standalone() -> None:
    setup, _ = _blocks()
    heads = [" ".join(argv[:2]) for argv in setup]
    assert heads[0] == "make setup"
    assert "setup:" in (ROOT / "Makefile").read_text(encoding="utf-8")
    # standalone starts its scheduler, triggerer, ... as `airflow` from PATH.
    assert heads.index("source .venv/bin/activate") < heads.index("airflow standalone")
    assert heads[-1] == "airflow standalone"
    scripts = {e.name for e in importlib.metadata.entry_points(group="console_scripts")}
    assert {"salesforce-bulk-emulator", "airflow"} <= scripts


def test_airflow_settings_exist_and_point_at_the_named_dag() -> None:
    from airflow.configuration import conf

    env = _exports(_blocks()[0])
    settings = {k: v for k, v in env.items() if k.startswith("AIRFLOW__")}
    assert settings, "the section sets Airflow options"
    for name in settings:
        _, section, key = name.split("__", 2)
        assert conf.has_option(section.lower(), key.lower()), f"{name} is not an Airflow option"
    assert settings["AIRFLOW__CORE__TEST_CONNECTION"] in ("Enabled", "Disabled", "Hidden")
    assert settings["AIRFLOW__CORE__LOAD_EXAMPLES"] in ("True", "False")
    dag_id = re.search(r"Open the Dag `(\w+)`", _section())
    assert dag_id, "the section names the Dag to open"
    assert (
        f'dag_id="{dag_id[1]}"'
        in (Path(settings["AIRFLOW__CORE__DAGS_FOLDER"]) / f"{dag_id[1]}.py").read_text()
    )


def test_password_file_named_is_airflows() -> None:
    from airflow.api_fastapi.auth.managers.simple.simple_auth_manager import SimpleAuthManager

    named = re.search(r"it is in `airflow_home/([\w.]+)`", _section())
    assert named, "the section says where the generated password is kept"
    assert Path(SimpleAuthManager.get_generated_password_file()).name == named[1]


def _named_dag_and_task() -> tuple[Any, str]:
    section = _section()
    dag_id = re.search(r"Open the Dag `(\w+)`", section)
    task_id = re.search(r"`(\w+)` shows \*Deferred\*", section)
    assert dag_id, "the section names the Dag to open"
    assert task_id, "the section names the task that defers"
    dag = load_dag_file(dag_id[1], (ROOT / "dags_examples" / f"{dag_id[1]}.py").read_text())
    return dag, task_id[1]


def test_emulator_is_slow_enough_to_watch_the_deferral() -> None:
    settings = _emulator_settings(_emulator_argv(_blocks()[0]))
    speed = settings["records_per_second"]
    assert speed is not None, "an instant emulator leaves the task deferred for only a poll or two"
    dag, task_id = _named_dag_and_task()
    # The emulator paces each job on its own and the jobs run side by side: the largest job sets the time.
    job_size = dag.get_task(task_id).max_records_per_job
    assert job_size / speed >= MIN_DEFERRED_SECONDS
    said = re.search(
        r"with jobs of (\d+) records the task stays deferred for\s+about (\d+) seconds", _section()
    )
    assert said, "the section says how long the task stays deferred"
    assert int(said[1]) == job_size
    assert int(said[2]) == pytest.approx(job_size / speed, rel=0.25)


def test_readme_connection_logs_in_to_the_readme_emulator(
    airflow_db: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow_provider_salesforce_bulk.hooks.salesforce_bulk import SalesforceBulkHook

    with run_emulator(**_emulator_settings(_emulator_argv(_blocks()[0]))) as running:
        monkeypatch.setenv("AIRFLOW_CONN_SALESFORCE_BULK_DEFAULT", _readme_connection(running))
        ok, message = SalesforceBulkHook().test_connection()
    assert ok, message


def test_held_emulator_keeps_jobs_waiting_until_the_readme_release() -> None:
    _, hold = _blocks()
    (curl,) = [a for a in hold if a[0] == "curl"]
    opts = dict(zip(curl[1:-1:2], curl[2:-1:2], strict=True))
    readme_url = urlsplit(curl[-1])
    with run_emulator(**_emulator_settings(_emulator_argv(hold))) as running:
        assert running.settings.hold_processing
        api = httpx.Client(
            base_url=running.base_url + API,
            headers={"Authorization": f"Bearer {running.new_access_token()}"},
            timeout=30,
        )
        with api:
            job = start_job(api, "LastName\nHeld\n", object="Contact", operation="insert", lineEnding="LF")
            time.sleep(1.0)
            assert api.get(f"/jobs/ingest/{job['id']}").json()["state"] == "UploadComplete"
            header, _, value = opts["-H"].partition(": ")
            released = httpx.request(
                opts["-X"],
                running.base_url + readme_url.path,
                headers={header: value},
                content=opts["-d"],
                timeout=30,
            )
            assert released.status_code == 200, released.text
            assert wait_done(api, job["id"], timeout=30)["state"] == "JobComplete"


def test_named_dag_defers_and_succeeds_with_the_readme_connection(
    airflow_db: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow_provider_salesforce_bulk.triggers.salesforce_bulk import SalesforceBulkJobTrigger

    dag, task_id = _named_dag_and_task()
    assert dag.get_task(task_id).deferrable is True
    triggers_run: list[SalesforceBulkJobTrigger] = []
    real_run = SalesforceBulkJobTrigger.run

    async def spy_run(self: SalesforceBulkJobTrigger) -> AsyncIterator[TriggerEvent]:
        triggers_run.append(self)  # a trigger runs only for a task that deferred
        async for event in real_run(self):
            yield event

    monkeypatch.setattr(SalesforceBulkJobTrigger, "run", spy_run)
    # The README's pace would make this test wait 40 s; the connection is what is under test.
    settings = _emulator_settings(_emulator_argv(_blocks()[0])) | {"records_per_second": None}
    with run_emulator(**settings) as running:
        monkeypatch.setenv("AIRFLOW_CONN_SALESFORCE_BULK_DEFAULT", _readme_connection(running))
        run = dag.test(logical_date=datetime.datetime.now(datetime.timezone.utc))
        stored = running.records("Contact")
        jobs = running.emulator.store.list_jobs(0, 100)
    assert run.state == "success"
    assert len(triggers_run) == 1
    assert len(stored) == EXAMPLE_RECORDS - EXAMPLE_RECORDS // 25
    assert {j["state"] for j in jobs} == {"JobComplete"}


def _xcom_summary(dag_id: str, task_id: str) -> dict[str, Any]:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = (
            session.query(XComModel.value)
            .filter_by(dag_id=dag_id, task_id=task_id, key="return_value")
            .order_by(XComModel.timestamp.desc())
            .first()
        )
    assert row is not None, f"{dag_id}.{task_id} pushed no summary"
    value = json.loads(row[0]) if isinstance(row[0], (str, bytes)) else row[0]
    assert isinstance(value, dict)
    return value


def test_extract_walkthrough_runs_with_the_readme_connections(
    airflow_db: object, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The section's second part: the SQL Dag fills the emulator with Accounts, the extract Dag
    queries them to Parquet and loads a Contact per Account back, with the README's connections."""
    section = _section()
    unpaused = re.findall(r"unpause\s+(?:the\s+Dag\s+)?`(\w+)`", section)
    assert unpaused == ["example_salesforce_bulk_sql", "example_salesforce_bulk_extract"], unpaused
    said = re.search(r"upserts the\s+query's (\d+) Accounts \(in jobs of (\d+)", section)
    assert said, "the section says how many Accounts the SQL Dag loads, in jobs of how many"
    accounts, job_size = int(said[1]), int(said[2])
    contacts = re.search(r"loads the (\d+) Contacts back", section)
    assert contacts, "the section says how many Contacts come back"
    folder = re.search(r"`airflow_home/salesforce_bulk_extracts/(\w+)/<run>/(\w+)/`", section)
    assert folder, "the section says where the Parquet files land"
    setup, _ = _blocks()
    exports = _exports(setup)
    warehouse = json.loads(exports["AIRFLOW_CONN_WAREHOUSE_SQLITE"])
    assert warehouse["conn_type"] == "sqlite"
    warehouse["host"] = str(tmp_path / "warehouse.db")  # the README's /tmp path, made private
    dags = {
        name: load_dag_file(name, (ROOT / "dags_examples" / f"{name}.py").read_text()) for name in unpaused
    }
    sql_dag: Any = dags["example_salesforce_bulk_sql"]
    assert sql_dag.get_task("upsert_accounts").max_records_per_job == job_size
    speed = _emulator_settings(_emulator_argv(setup))["records_per_second"]
    scan = re.search(r"while the query job\s+scans the Accounts \(about (\d+) seconds\)", section)
    assert scan, "the section says how long the query job takes"
    assert int(scan[1]) == pytest.approx(accounts / speed, rel=0.25)
    before = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0) - datetime.timedelta(
        minutes=1
    )
    settings = _emulator_settings(_emulator_argv(setup)) | {"records_per_second": None}
    with run_emulator(**settings) as running:
        monkeypatch.setenv("AIRFLOW_CONN_SALESFORCE_BULK_DEFAULT", _readme_connection(running))
        monkeypatch.setenv("AIRFLOW_CONN_WAREHOUSE_SQLITE", json.dumps(warehouse))
        assert sql_dag.test(logical_date=before).state == "success"
        assert len(running.records("Account")) == accounts
        # An incremental extract reads up to the whole second before it starts (a record of that
        # second goes to the next run), so it starts after the second of the last upsert.
        time.sleep(1.1)
        extract_dag: Any = dags["example_salesforce_bulk_extract"]
        assert extract_dag.test(logical_date=before).state == "success"
        stored = {r["Id"] for r in running.records("Account")}
        derived = [c for c in running.records("Contact") if str(c["External_Id__c"]).startswith("PRIMARY-")]
    assert len(derived) == int(contacts[1]) == accounts
    assert {c["AccountId"] for c in derived} == stored
    summary = _xcom_summary(folder[1], folder[2])
    assert summary["records"] == accounts
    paths = [Path(f["path"]) for f in summary["files"]]
    assert paths
    assert all(p.suffix == ".parquet" for p in paths)
    for path in paths:
        assert path.parts[-5:-3] == ("salesforce_bulk_extracts", folder[1]), path
        assert path.parts[-2] == folder[2], path
