"""Every parameter of every operator, hook and trigger is documented in docs/, and nothing else is.

Each class has one table in one doc file, under a named heading; its rows' first cells name the
parameters in backticks (a row may name several: `records` / `source` / `sql`). A parameter added to a
signature without a row, or a row left after a parameter is gone, fails here naming the class, the
parameter and the file to edit. A new operator, hook or trigger class fails until it is listed here.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "airflow_provider_salesforce_bulk"

# class (module.Class) -> (doc file, the heading its parameter table is under)
DOCUMENTED: dict[str, tuple[str, str]] = {
    "operators.base.SalesforceBulkBaseOperator": ("docs/operators/base.md", "## Parameters"),
    "operators.salesforce_bulk.SalesforceBulkOperator": (
        "docs/operators/salesforce_bulk.md",
        "## Parameters",
    ),
    "operators.salesforce_bulk_query.SalesforceBulkQueryOperator": (
        "docs/operators/salesforce_bulk_query.md",
        "## Parameters",
    ),
    "hooks.salesforce_bulk.SalesforceBulkHook": ("docs/connection.md", "### `SalesforceBulkHook` parameters"),
    "triggers.salesforce_bulk.SalesforceBulkJobTrigger": (
        "docs/triggers.md",
        "## `SalesforceBulkJobTrigger` parameters",
    ),
    "triggers.round_backoff.ResubmitBackoffTrigger": (
        "docs/triggers.md",
        "## `ResubmitBackoffTrigger` parameters",
    ),
}
# The hook's public methods, each a row of this table (the methods a DAG author or a custom
# operator calls).
HOOK_METHODS = ("docs/connection.md", "### `SalesforceBulkHook` methods")


def _load(dotted: str) -> type:
    module, _, name = dotted.rpartition(".")
    cls = getattr(importlib.import_module(f"{PACKAGE}.{module}"), name)
    assert isinstance(cls, type)
    return cls


def _signature_parameters(cls: type) -> set[str]:
    params = inspect.signature(cls.__init__).parameters.values()  # type: ignore[misc]
    return {p.name for p in params if p.name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}


def _table_names(doc: str, heading: str) -> set[str]:
    """The backticked identifiers in the first cell of each row of the first table under ``heading``."""
    text = (ROOT / doc).read_text(encoding="utf-8")
    lines = text.splitlines()
    assert heading in lines, f"{doc} has no heading {heading!r} (the table of parameters goes under it)"
    level = len(heading) - len(heading.lstrip("#"))
    names: set[str] = set()
    in_table = False
    for line in lines[lines.index(heading) + 1 :]:
        hashes = len(line) - len(line.lstrip("#"))
        if 0 < hashes <= level and line[hashes : hashes + 1] == " ":
            break
        if line.startswith("|"):
            in_table = True
            first_cell = line.strip("|").split("|", 1)[0]
            if set(first_cell.strip()) <= set("-: "):
                continue
            names |= set(re.findall(r"`([A-Za-z_]\w*)`", first_cell))
        elif in_table:
            break
    assert names, f"{doc}: no table with backticked names under {heading!r}"
    return names


@pytest.mark.parametrize("dotted", sorted(DOCUMENTED))
def test_every_parameter_is_documented(dotted: str) -> None:
    cls = _load(dotted)
    doc, heading = DOCUMENTED[dotted]
    documented = _table_names(doc, heading)
    expected = _signature_parameters(cls)
    missing = sorted(expected - documented)
    extra = sorted(documented - expected)
    problems = []
    if missing:
        problems.append(
            f"{cls.__name__} parameter(s) not documented in {doc} (table under {heading!r}): "
            + ", ".join(missing)
            + "; add a row `| `<name>` | ... |` for each"
        )
    if extra:
        problems.append(
            f"{doc} (table under {heading!r}) documents parameter(s) that {cls.__name__} does not take: "
            + ", ".join(extra)
        )
    assert not problems, "\n".join(problems)


def test_every_public_hook_method_is_documented() -> None:
    cls = _load("hooks.salesforce_bulk.SalesforceBulkHook")
    public = {
        name
        for name, member in vars(cls).items()
        if not name.startswith("_") and callable(getattr(cls, name)) and not isinstance(member, type)
    }
    doc, heading = HOOK_METHODS
    documented = _table_names(doc, heading)
    missing = sorted(public - documented)
    extra = sorted(documented - public)
    assert not missing, f"SalesforceBulkHook method(s) not documented in {doc} ({heading!r}): {missing}"
    assert not extra, f"{doc} ({heading!r}) documents method(s) SalesforceBulkHook lacks: {extra}"


def _provider_classes() -> set[str]:
    """Every operator, hook and trigger class the package defines (not those it imports)."""
    from airflow.providers.common.compat.sdk import BaseHook, BaseOperator
    from airflow.triggers.base import BaseTrigger

    bases = (BaseOperator, BaseHook, BaseTrigger)
    found: set[str] = set()
    for sub in ("operators", "hooks", "triggers"):
        package = importlib.import_module(f"{PACKAGE}.{sub}")
        for info in pkgutil.iter_modules(package.__path__):
            module = importlib.import_module(f"{PACKAGE}.{sub}.{info.name}")
            for name, member in vars(module).items():
                if (
                    isinstance(member, type)
                    and member.__module__ == module.__name__
                    and issubclass(member, bases)
                    and not name.startswith("_")
                ):
                    found.add(f"{sub}.{info.name}.{name}")
    return found


def test_every_operator_hook_and_trigger_class_has_a_documented_table() -> None:
    unlisted = sorted(_provider_classes() - set(DOCUMENTED))
    assert not unlisted, (
        f"{unlisted}: give each a parameter table in docs/ and list it in DOCUMENTED in {Path(__file__).name}"
    )
