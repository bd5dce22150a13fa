"""OpenLineage classes for the operators (common-compat facet imports), or None without the provider."""

from __future__ import annotations

from typing import Any, NamedTuple

__all__ = ["LineageClasses", "lineage_classes"]


class LineageClasses(NamedTuple):
    operator_lineage: Any
    dataset: Any
    output_dataset: Any
    output_statistics: Any


def lineage_classes() -> LineageClasses | None:
    """The classes an operator builds its lineage from; ``None`` when the OpenLineage provider is absent.

    Imported lazily, on completion only: the provider is optional, and common-compat's facet module picks
    the facet classes of whichever OpenLineage client is installed.
    """
    try:
        from airflow.providers.common.compat.openlineage.facet import (
            Dataset,
            OutputDataset,
            OutputStatisticsOutputDatasetFacet,
        )
        from airflow.providers.openlineage.extractors import OperatorLineage
    except ImportError:
        return None
    return LineageClasses(OperatorLineage, Dataset, OutputDataset, OutputStatisticsOutputDatasetFacet)
