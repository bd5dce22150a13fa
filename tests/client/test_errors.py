"""The exception tree drawn in ``client/errors.py``'s docstring is the real one, and nothing is left out."""

from __future__ import annotations

import importlib
import pkgutil
import re

import pytest

import airflow_provider_salesforce_bulk.client as client_package
from airflow_provider_salesforce_bulk.client import errors
from airflow_provider_salesforce_bulk.client.errors import AuthenticationError, SalesforceBulkError

PACKAGE = "airflow_provider_salesforce_bulk"
# "    Name (also Base) [module] -- what it means"
LINE = re.compile(
    r"^(?P<indent> *)(?P<name>\w+)(?: \(also (?P<also>\w+)\))?(?: \[(?P<module>[\w.]+)\])?(?: -- .+)?$"
)


def drawn_tree() -> dict[str, tuple[tuple[str, ...], str]]:
    """Each drawn class: the names of its bases (its parent in the tree, then ``also``) and its module."""
    doc = errors.__doc__ or ""
    block = doc.split("::\n", 1)[1].strip("\n").splitlines()
    tree: dict[str, tuple[tuple[str, ...], str]] = {}
    parents: list[tuple[int, str]] = []
    for text in block:
        line = LINE.match(text)
        assert line, f"not a line of the tree: {text!r}"
        indent = len(line["indent"])
        while parents and parents[-1][0] >= indent:
            parents.pop()
        bases = tuple(name for name in (parents[-1][1] if parents else None, line["also"]) if name)
        module = f"{PACKAGE}.{line['module'] or 'client.errors'}"
        assert line["name"] not in tree, f"{line['name']} is drawn twice"
        tree[line["name"]] = (bases, module)
        parents.append((indent, line["name"]))
    return tree


def real_tree() -> dict[str, tuple[tuple[str, ...], str]]:
    """Every subclass of SalesforceBulkError the package defines, once every module that may define one
    is imported (the client's, the Airflow-free connection parser's and the sync engine's)."""
    for module in pkgutil.walk_packages(client_package.__path__, f"{client_package.__name__}."):
        importlib.import_module(module.name)
    importlib.import_module(f"{PACKAGE}.hooks.connection")
    importlib.import_module(f"{PACKAGE}.sync.errors")
    tree: dict[str, tuple[tuple[str, ...], str]] = {}
    pending = [SalesforceBulkError]
    while pending:
        cls = pending.pop()
        if cls.__module__.startswith(f"{PACKAGE}."):
            bases = () if cls is SalesforceBulkError else tuple(base.__name__ for base in cls.__bases__)
            tree[cls.__name__] = (bases, cls.__module__)
        pending.extend(cls.__subclasses__())
    return tree


def test_the_drawn_tree_is_the_class_hierarchy() -> None:
    drawn, real = drawn_tree(), real_tree()
    assert set(drawn) == set(real), "a class is missing from, or extra in, the tree in errors.py"
    for name, (bases, module) in drawn.items():
        assert (bases, module) == real[name], name
        assert getattr(importlib.import_module(module), name).__name__ == name


def test_the_root_is_a_plain_exception() -> None:
    assert next(iter(drawn_tree())) == "SalesforceBulkError"
    assert SalesforceBulkError.__bases__ == (Exception,)


def test_every_client_error_is_exported() -> None:
    exported = set(client_package.__all__)
    missing = {
        name for name, (_, module) in real_tree().items() if module.startswith(client_package.__name__)
    }
    assert missing - exported == set()


@pytest.mark.parametrize("line", ["Name -- x", "    Name (also Base) -- x", "    Name [hooks.connection]"])
def test_the_line_format_is_read(line: str) -> None:
    assert LINE.match(line)


def test_an_authentication_error_has_an_error_code_and_keeps_error_as_its_alias() -> None:
    error = AuthenticationError(
        "refused", error_code="invalid_grant", error_description="bad", status_code=400
    )
    assert (error.error_code, error.error, error.error_description, error.status_code) == (
        "invalid_grant",
        "invalid_grant",
        "bad",
        400,
    )
    with pytest.raises(AttributeError):
        error.error = "other"  # type: ignore[misc]
