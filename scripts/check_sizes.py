"""Longest functions and largest modules of the package (python AST): the sizes issue 17 bounds.

Usage: python scripts/check_sizes.py [--max-function 60] [--max-module 500] [paths...]
Prints every function over the bound and every module over its bound; exits 1 if any.
"""

from __future__ import annotations

import argparse
import ast
import pathlib
import sys


def function_lengths(path: pathlib.Path) -> list[tuple[int, str, int]]:
    """(lines, qualified name, first line) of every function and method in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out: list[tuple[int, str, int]] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                first = min([child.lineno, *(d.lineno for d in child.decorator_list)])
                out.append((child.end_lineno - first + 1, f"{prefix}{child.name}", first))
                visit(child, f"{prefix}{child.name}.")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")
            else:
                visit(child, prefix)

    visit(tree, "")
    return out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--max-function", type=int, default=60)
    parser.add_argument("--max-module", type=int, default=500)
    parser.add_argument("paths", nargs="*", default=["airflow_provider_salesforce_bulk"])
    args = parser.parse_args()
    files = sorted(
        p
        for root in args.paths
        for p in ([pathlib.Path(root)] if root.endswith(".py") else pathlib.Path(root).rglob("*.py"))
    )
    bad = 0
    for path in files:
        lines = len(path.read_text(encoding="utf-8").splitlines())
        if lines > args.max_module:
            print(f"module {path}: {lines} lines")
            bad += 1
        for length, name, first in function_lengths(path):
            if length > args.max_function:
                print(f"function {path}:{first} {name}: {length} lines")
                bad += 1
    longest = max((f for p in files for f in function_lengths(p)), default=(0, "-", 0))
    print(f"{len(files)} files; longest function {longest[1]} ({longest[0]} lines); {bad} over the bounds")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
