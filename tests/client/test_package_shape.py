"""The package's shape: modules depend one way (no import cycle, not even inside a function), and the
client's facade is typed as strictly as the functions behind it."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import pathlib
import textwrap

import pytest
from mypy import api as mypy_api

import airflow_provider_salesforce_bulk

PACKAGE = pathlib.Path(airflow_provider_salesforce_bulk.__file__).parent
NAME = PACKAGE.name


def module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: pathlib.Path, modules: set[str]) -> set[str]:
    """The package's modules ``path`` imports anywhere in it (functions and TYPE_CHECKING blocks
    included), each resolved to the module that defines the name."""
    this = module_name(path)
    package = this if path.name == "__init__.py" else this.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # ``from pkg import mod`` imports the module pkg.mod; ``from mod import name`` imports mod.
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != this:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    modules = set(paths)
    return {name: imported_modules(path, modules) for name, path in paths.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path of modules, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            cycle = visit(start)
            if cycle:
                return cycle
    return None


def test_the_package_has_no_import_cycle() -> None:
    graph = import_graph()
    assert f"{NAME}.client.ingest" in graph[f"{NAME}.client"]
    assert f"{NAME}.client.ingest_jobs" in graph[f"{NAME}.client.operation"]
    assert len(graph) > 100
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


# Each layer may import only the layers after it; the emulator stands apart from all of them.
LAYERS = ("operators", "triggers", "hooks", "client")


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    def layer(module: str) -> str:
        parts = module.split(".")
        return parts[1] if len(parts) > 1 else ""

    found = []
    for name, imports in sorted(graph.items()):
        here = layer(name)
        for target in sorted(imports):
            there = layer(target)
            if here == there or (there not in LAYERS and there != "emulator"):
                continue
            if here == "emulator" or there == "emulator":
                # Airflow code may start the emulator (tests, demo); the emulator imports none of them.
                if here == "emulator":
                    found.append(f"{name} -> {target}")
                continue
            if here in LAYERS and LAYERS.index(there) < LAYERS.index(here):
                found.append(f"{name} -> {target}")
    return found


def test_layers_depend_one_way() -> None:
    graph = import_graph()
    assert layer_violations(graph) == []
    # The check sees a client module importing a hook, and the emulator importing the client.
    graph[f"{NAME}.client.operation"] = graph[f"{NAME}.client.operation"] | {f"{NAME}.hooks.connection"}
    graph[f"{NAME}.emulator.app"] = graph[f"{NAME}.emulator.app"] | {f"{NAME}.client.csv_format"}
    assert layer_violations(graph) == [
        f"{NAME}.client.operation -> {NAME}.hooks.connection",
        f"{NAME}.emulator.app -> {NAME}.client.csv_format",
    ]


def test_the_graph_holds_imports_inside_functions_and_the_check_finds_a_cycle() -> None:
    graph = import_graph()
    # The lazy Arrow export of the client package is an import inside a function.
    assert f"{NAME}.client.arrow_chunks" in imported_modules(PACKAGE / "client" / "__init__.py", set(graph))
    # ingest imports operation; operation importing ingest back, even inside a function, is a cycle.
    graph[f"{NAME}.client.operation"] = graph[f"{NAME}.client.operation"] | {f"{NAME}.client.ingest"}
    assert find_cycle(graph) == [f"{NAME}.client.ingest", f"{NAME}.client.operation", f"{NAME}.client.ingest"]


def sync_violations(graph: dict[str, set[str]]) -> list[str]:
    """The change-only sync engine (``sync``) imports only the client; of the other layers only the
    operators import it."""
    sync = f"{NAME}.sync"
    found = []
    for name, imports in sorted(graph.items()):
        inside = name == sync or name.startswith(f"{sync}.")
        for target in sorted(imports):
            there_inside = target == sync or target.startswith(f"{sync}.")
            if inside and not there_inside and not target.startswith(f"{NAME}.client"):
                found.append(f"{name} -> {target}")
            if there_inside and not inside and not name.startswith(f"{NAME}.operators"):
                found.append(f"{name} -> {target}")
    return found


def test_the_sync_engine_imports_only_the_client_and_only_operators_import_it() -> None:
    graph = import_graph()
    assert f"{NAME}.sync.diff" in graph
    assert f"{NAME}.client.serialize" in graph[f"{NAME}.sync.digest"]
    assert sync_violations(graph) == []
    # The check sees the engine importing a hook, and a trigger importing the engine.
    graph[f"{NAME}.sync.diff"] = graph.get(f"{NAME}.sync.diff", set()) | {f"{NAME}.hooks.connection"}
    graph[f"{NAME}.triggers.events"] = graph.get(f"{NAME}.triggers.events", set()) | {f"{NAME}.sync.state"}
    graph[f"{NAME}.operators.summary"] = graph.get(f"{NAME}.operators.summary", set()) | {f"{NAME}.sync"}
    assert sync_violations(graph) == [
        f"{NAME}.sync.diff -> {NAME}.hooks.connection",
        f"{NAME}.triggers.events -> {NAME}.sync.state",
    ]


def test_the_airflow_layers_import_only_public_client_names() -> None:
    """Operators, hooks and triggers use the client through public names only: the package's exports,
    a name the owning submodule's ``__all__`` lists, or a public submodule; never a private one."""
    offenders = []
    for layer in ("operators", "hooks", "triggers"):
        for path in sorted((PACKAGE / layer).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(f"{NAME}.client"):
                    module = importlib.import_module(node.module or "")
                    for alias in node.names:
                        submodule = hasattr(module, "__path__") and (
                            importlib.util.find_spec(f"{node.module}.{alias.name}") is not None
                        )
                        public = alias.name in module.__all__ or (submodule and alias.name[0] != "_")
                        if not public or any(part.startswith("_") for part in (node.module or "").split(".")):
                            offenders.append(f"{path.name}:{node.lineno} {node.module} {alias.name}")
    assert offenders == []


def test_the_client_facade_is_small_and_every_export_resolves() -> None:
    """At most 60 names (httpx exports 69): what a user of the client needs; the rest stays public in
    the submodule that owns it."""
    import airflow_provider_salesforce_bulk.client as client

    assert len(client.__all__) <= 60, len(client.__all__)
    assert len(set(client.__all__)) == len(client.__all__)
    for name in client.__all__:
        getattr(client, name)
    with pytest.raises(AttributeError):
        client.submit_job  # type: ignore[attr-defined]  # noqa: B018 (an engine detail, in client.operation)


def mypy_errors(tmp_path: pathlib.Path, body: str) -> list[str]:
    source = tmp_path / "snippet.py"
    source.write_text(
        "from airflow_provider_salesforce_bulk.client import BulkIngestClient\n\n\n"
        "async def load(client: BulkIngestClient) -> None:\n" + textwrap.indent(textwrap.dedent(body), "    ")
    )
    stdout, _, _ = mypy_api.run(
        ["--strict", "--no-incremental", "--cache-dir", str(tmp_path / ".mypy_cache"), str(source)]
    )
    return [line for line in stdout.splitlines() if ": error:" in line]


def test_mypy_rejects_a_misspelt_option_and_an_unknown_delimiter_through_the_facade(
    tmp_path: pathlib.Path,
) -> None:
    # The serializers take the format's keywords through one TypedDict (ChunkFormatOptions): mypy
    # still checks each keyword's name and value there.
    serializers = (
        "from airflow_provider_salesforce_bulk.client import ChunkFormat, iter_arrow_chunks, "
        "serialize_ingest_data\n"
    )
    correct = mypy_errors(
        tmp_path,
        """
        records = [{"Name": "A"}]
        async for result in client.perform_operation(
            "insert", "Account", records, max_concurrent_jobs=2, column_delimiter="PIPE"
        ):
            print(result.job_info.state)
        async for result in client.perform_csv_operation("insert", "Account", "a.csv", compress=True):
            print(result.number_records_failed)
        await client.create_job("upsert", "Contact", "Ext__c", line_ending="CRLF")
        """
        + serializers
        + """
        rows = [{"Name": "A"}]
        print(list(serialize_ingest_data(rows, ["Name"], 1_000, column_delimiter="PIPE", none_as="null")))
        print(list(iter_arrow_chunks(rows, line_ending="CRLF", allow_na_marker=True)))
        print(ChunkFormat.of(column_delimiter="TAB", line_ending="LF"))
        """,
    )
    assert correct == []
    wrong = mypy_errors(
        tmp_path,
        """
        async for _ in client.perform_operation("insert", "Account", [], max_concurent_jobs=5):
            pass
        async for _ in client.perform_csv_operation("insert", "Account", "a.csv", column_delimiter="COLON"):
            pass
        await client.create_job("insert", "Account", line_ending="CR")
        """
        + serializers
        + """
        rows = [{"Name": "A"}]
        serialize_ingest_data(rows, colum_delimiter="PIPE")
        iter_arrow_chunks(rows, line_ending="CR")
        serialize_ingest_data(rows, none_as="NULL")
        ChunkFormat(column_delimiter="COLON")
        """,
    )
    assert len(wrong) == 7, wrong
    assert '"max_concurent_jobs"' in wrong[0]
    assert "COLON" in wrong[1]
    assert "'CR'" in wrong[2] or '"CR"' in wrong[2]
    assert '"colum_delimiter"' in wrong[3]
    assert "'CR'" in wrong[4] or '"CR"' in wrong[4]
    assert "NULL" in wrong[5]
    assert "COLON" in wrong[6]
