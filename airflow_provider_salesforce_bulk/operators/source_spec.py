"""What the ingest operator reads: :class:`SourceSpec`, its input options as one checked value.

The operator's source options (``records``, ``source``, ``sql``, ...) are untyped DAG input and
three of them are templated, so the spec is built when the task runs, after rendering, and checked
there once: a bad option is an :class:`InputError` naming it, before any job. Everything after it
(:func:`~airflow_provider_salesforce_bulk.operators.sources.make_source` and the columnar builders)
takes the spec and decides nothing again; in particular whether the input is columnar (the Arrow
path) is decided here, once, in :attr:`SourceSpec.columnar`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from airflow_provider_salesforce_bulk.client import InputError

__all__ = ["COLUMNAR_FORMATS", "FileFormat", "SourceSpec", "file_format_of", "is_arrow_data"]

FileFormat = Literal["csv", "ndjson", "parquet", "arrow"]
FILE_FORMATS: tuple[FileFormat, ...] = ("csv", "ndjson", "parquet", "arrow")
COLUMNAR_FORMATS: tuple[FileFormat, ...] = ("parquet", "arrow")
_EXTENSIONS: dict[str, FileFormat] = {
    ".csv": "csv",
    ".ndjson": "ndjson",
    ".jsonl": "ndjson",
    ".json": "ndjson",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".arrow": "arrow",
    ".feather": "arrow",
    ".ipc": "arrow",
    ".arrows": "arrow",
}
_PYARROW_TABLES = ("Table", "RecordBatch", "RecordBatchReader")


def is_arrow_data(value: Any) -> bool:
    """Whether ``value`` is tabular Arrow data: a pyarrow Table, a pandas or polars DataFrame, ...

    Such a value is never turned into ``list(records)`` (a DataFrame iterates over its column names).
    """
    if value is None or isinstance(value, (list, tuple, str, bytes, Mapping)):
        return False
    if hasattr(value, "__arrow_c_stream__"):
        return True
    kind = type(value)
    return kind.__module__.split(".")[0] == "pyarrow" and kind.__name__ in _PYARROW_TABLES


def file_format_of(name: str, declared: str | None) -> FileFormat | None:
    """The format of the file ``name``: ``declared`` (any case), else told by its extension; ``None``
    when the name does not tell it."""
    if declared:
        fmt = declared.lower()
        return fmt if fmt in FILE_FORMATS else None
    lower = name.lower()
    return next((fmt for extension, fmt in _EXTENSIONS.items() if lower.endswith(extension)), None)


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class SourceSpec:
    """The operator's input: exactly one of ``records``, ``source`` and ``sql``, with how to read it.

    Built with keywords only, checked when built (an :class:`InputError` naming the option). Frozen:
    ``dataclasses.replace`` makes a changed copy, checked again. ``records`` and ``parameters`` stay
    out of its repr (the data, and bind values that may be secret).

    Parameters
    ----------
    records : list of dict, DataFrame or Arrow data, optional
        The records; any other iterable (a resolved XComArg's lazy sequence) is listed first.
    source : str, os.PathLike or ObjectStoragePath, optional
        A CSV, NDJSON, Parquet or Arrow IPC/Feather file.
    source_format : {"csv", "ndjson", "parquet", "arrow"}, optional
        The file's format, by default told by its name.
    fieldnames : Sequence[str], optional
        Columns for ``records`` and NDJSON (not a CSV file: its header names them).
    sql, sql_conn_id, parameters : optional
        A query, the common-sql connection it runs on, and its bind parameters (a dict or a list).
    field_mapping : Mapping[str, str], optional
        Source column to Salesforce field, for columnar input only.
    allow_empty : bool
        A query that returns no row loads nothing instead of being refused.
    group_by_parent : str, optional
        A parent field: the records are ordered by it (see :mod:`.grouping`).

    Attributes
    ----------
    file_format : {"csv", "ndjson", "parquet", "arrow"} or None
        The format of ``source`` (``None``: no file, or a name that does not tell it).
    columnar : bool
        The input goes through the Arrow path: ``sql``, a table or DataFrame, a Parquet/Arrow file.
    """

    records: Any = dataclasses.field(default=None, repr=False)
    source: Any = None
    source_format: str | None = None
    fieldnames: Sequence[str] | None = None
    sql: str | None = None
    sql_conn_id: str | None = None
    parameters: Mapping[str, Any] | Sequence[Any] | None = dataclasses.field(default=None, repr=False)
    field_mapping: Mapping[str, str] | None = None
    allow_empty: bool = False
    group_by_parent: str | None = None
    file_format: FileFormat | None = dataclasses.field(init=False)
    columnar: bool = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        given = [name for name in ("records", "source", "sql") if getattr(self, name) is not None]
        if len(given) != 1:
            raise InputError(
                f"give exactly one of records and source or sql, got {', '.join(given) or 'none'}",
                field=given[-1] if given else "records",
            )
        records = self.records
        if not isinstance(records, (type(None), list, tuple, str, bytes, Mapping)) and (
            hasattr(records, "__iter__") and not is_arrow_data(records)
        ):
            records = list(records)  # a resolved XComArg may arrive as a lazy sequence
        fmt = self._checked_format()
        derived = {
            "records": records,
            "fieldnames": tuple(self.fieldnames) if self.fieldnames is not None else None,
            "file_format": fmt,
            "columnar": self.sql is not None or is_arrow_data(records) or fmt in COLUMNAR_FORMATS,
        }
        for name, value in derived.items():
            object.__setattr__(self, name, value)
        self._check_records()
        self._check_sql()
        self._check_options()

    def _checked_format(self) -> FileFormat | None:
        if self.source is None:
            return None  # as before: a source_format beside records or sql is not read
        declared = self.source_format
        if declared and (not isinstance(declared, str) or declared.lower() not in FILE_FORMATS):
            raise InputError(
                f"source_format must be 'csv', 'ndjson', 'parquet' or 'arrow', got {declared!r}",
                field="source_format",
            )
        return file_format_of(str(self.source), declared)

    def _check_records(self) -> None:
        records = self.records
        if (
            records is not None
            and not self.columnar
            and (isinstance(records, (str, bytes, Mapping)) or not isinstance(records, Sequence))
        ):
            raise InputError(
                f"records must be a list of dicts, got {type(records).__name__}", field="records"
            )
        if self.fieldnames is not None and self.file_format == "csv":
            raise InputError(
                "fieldnames cannot be used with a CSV source: its header names the fields", field="fieldnames"
            )

    def _check_sql(self) -> None:
        if self.sql is not None:
            if not isinstance(self.sql, str) or not self.sql.strip():
                raise InputError("sql must be a non-empty query", field="sql")
            if not isinstance(self.sql_conn_id, str) or not self.sql_conn_id:
                raise InputError("sql needs sql_conn_id, the connection to run it on", field="sql_conn_id")
        elif self.sql_conn_id is not None or self.parameters is not None:
            name = "sql_conn_id" if self.sql_conn_id is not None else "parameters"
            raise InputError(f"{name} is only used with sql", field=name)
        parameters = self.parameters
        if parameters is not None and (
            isinstance(parameters, (str, bytes)) or not isinstance(parameters, (Mapping, Sequence))
        ):
            raise InputError(
                f"parameters must be a dict or a list, got {type(parameters).__name__}", field="parameters"
            )

    def _check_options(self) -> None:
        if self.field_mapping is not None:
            _check_mapping(self.field_mapping)
            if not self.columnar:
                raise InputError(
                    "field_mapping applies to sql, Parquet/Arrow files and DataFrames/Arrow tables; "
                    "name the fields in the records or the file's header instead",
                    field="field_mapping",
                )
        if not isinstance(self.allow_empty, bool):
            raise InputError(
                f"allow_empty must be True or False, got {self.allow_empty!r}", field="allow_empty"
            )
        parent = self.group_by_parent
        if parent is not None and (not isinstance(parent, str) or not parent.strip()):
            raise InputError(
                f"group_by_parent must be a field name such as 'AccountId', got {parent!r}",
                field="group_by_parent",
            )


def _check_mapping(mapping: Any) -> None:
    if (
        not isinstance(mapping, Mapping)
        or not mapping
        or not all(isinstance(k, str) and k and isinstance(v, str) and v for k, v in mapping.items())
    ):
        raise InputError(
            "field_mapping must be a non-empty dict of source column to Salesforce field (strings)",
            field="field_mapping",
        )
    targets: dict[str, str] = {}
    for column, target in mapping.items():
        other = targets.setdefault(target.lower(), column)
        if other != column:
            raise InputError(
                f"field_mapping maps both {other!r} and {column!r} to the field {target!r}",
                field="field_mapping",
            )
