"""Stand-ins for the OpenLineage classes the operators import (the provider is not installed here)."""

from __future__ import annotations

import dataclasses
import sys
import types
from typing import Any

import pytest

#: What the operators import: the provider's extractors and common-compat's facet module.
OL_MODULES = (
    "airflow.providers.openlineage",
    "airflow.providers.openlineage.extractors",
    "airflow.providers.common.compat.openlineage.facet",
)


@dataclasses.dataclass
class Dataset:
    """Stand-in for OpenLineage's ``Dataset``."""

    namespace: str
    name: str
    facets: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class OutputDataset(Dataset):
    """Stand-in for OpenLineage's ``OutputDataset``."""

    outputFacets: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class OutputStatisticsOutputDatasetFacet:
    """Stand-in for OpenLineage's output statistics facet."""

    rowCount: int | None = None
    size: int | None = None


@dataclasses.dataclass
class OperatorLineage:
    """Stand-in for ``airflow.providers.openlineage.extractors.OperatorLineage``."""

    inputs: list[Any] = dataclasses.field(default_factory=list)
    outputs: list[Any] = dataclasses.field(default_factory=list)
    run_facets: dict[str, Any] = dataclasses.field(default_factory=dict)
    job_facets: dict[str, Any] = dataclasses.field(default_factory=dict)


def install(monkeypatch: pytest.MonkeyPatch) -> None:
    """Put the stand-ins where the operators import them from, for one test."""
    for name in OL_MODULES:
        module = types.ModuleType(name)
        module.__path__ = []  # type: ignore[attr-defined]
        monkeypatch.setitem(sys.modules, name, module)
    extractors = sys.modules["airflow.providers.openlineage.extractors"]
    extractors.OperatorLineage = OperatorLineage  # type: ignore[attr-defined]
    facet = sys.modules["airflow.providers.common.compat.openlineage.facet"]
    facet.Dataset = Dataset  # type: ignore[attr-defined]
    facet.OutputDataset = OutputDataset  # type: ignore[attr-defined]
    facet.OutputStatisticsOutputDatasetFacet = OutputStatisticsOutputDatasetFacet  # type: ignore[attr-defined]


def uninstall(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the OpenLineage provider unimportable, as when it is not installed."""
    for name in OL_MODULES[:2]:
        monkeypatch.setitem(sys.modules, name, None)
