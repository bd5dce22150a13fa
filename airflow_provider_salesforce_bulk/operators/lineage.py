"""OpenLineage classes for the operators (common-compat facet imports), or None without the provider."""

from __future__ import annotations

import os
import urllib.parse
from typing import Any, NamedTuple

__all__ = ["LineageClasses", "extract_lineage", "lineage_classes", "path_dataset", "salesforce_namespace"]


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


def path_dataset(path: Any) -> tuple[str, str]:
    """OpenLineage namespace and name of a file path or URL, parsed as ``ObjectStoragePath`` opens it:
    a local path is ``file`` and its absolute path; ``s3://bucket/key`` is ``s3://bucket`` and ``key``."""
    from airflow.providers.common.compat.sdk import ObjectStoragePath

    if not isinstance(path, ObjectStoragePath):
        text = os.fspath(path) if isinstance(path, os.PathLike) else str(path)
        if "://" not in text:
            return "file", os.path.abspath(text)
        # A conn id in the URL (s3://conn@bucket/key) is not the bucket.
        path = ObjectStoragePath(text)
    if path.protocol in ("", "file", "local"):
        return "file", str(path.path)
    # Not ``path.namespace``: before Airflow 3.2 it keeps the conn id (s3://conn@bucket).
    bucket = str(path.bucket).rpartition("@")[2]
    namespace = f"{path.protocol}://{bucket}" if bucket else str(path.protocol)
    return namespace, str(path.key) or "/"


def salesforce_namespace(instance_url: str | None) -> str:
    """``salesforce://<instance host>``: where a Salesforce object lives for OpenLineage."""
    return f"salesforce://{urllib.parse.urlsplit(instance_url or '').netloc or 'unknown'}"


def extract_lineage(
    instance_url: str | None, object_name: str | None, files: list[tuple[str, int, int]]
) -> Any:
    """An extract's lineage: the object as input, each file (path, records, bytes) as an output with its
    statistics; ``None`` when the OpenLineage provider is not installed."""
    ol = lineage_classes()
    if ol is None:
        return None
    inputs = [ol.dataset(namespace=salesforce_namespace(instance_url), name=object_name or "unknown")]
    outputs = []
    for path, records, size in files:
        namespace, name = path_dataset(path)
        stats = ol.output_statistics(rowCount=records, size=size)
        outputs.append(
            ol.output_dataset(namespace=namespace, name=name, outputFacets={"outputStatistics": stats})
        )
    return ol.operator_lineage(inputs=inputs, outputs=outputs)


def load_lineage(source: Any, object_name: str, instance_url: str | None, succeeded: int | None) -> Any:
    """A load's lineage: ``source`` (a file; records passed directly have none) as input, the object as
    output with the records that succeeded; ``None`` when the OpenLineage provider is not installed."""
    ol = lineage_classes()
    if ol is None:
        return None
    inputs = []
    if source is not None:
        namespace, name = path_dataset(source)
        inputs.append(ol.dataset(namespace=namespace, name=name))
    facets = {}
    if succeeded is not None:
        facets["outputStatistics"] = ol.output_statistics(rowCount=succeeded)
    outputs = [
        ol.output_dataset(namespace=salesforce_namespace(instance_url), name=object_name, outputFacets=facets)
    ]
    return ol.operator_lineage(inputs=inputs, outputs=outputs)
