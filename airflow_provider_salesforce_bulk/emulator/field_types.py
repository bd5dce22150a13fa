"""What type each field has in Salesforce's terms (``id``, ``int``, ``double``, ``datetime``...).

One rule for the describe answer, the query engine (which checks filters and formats values by it)
and the ingest result files (which echo doubles as Java prints them), so the three never disagree
on whether a field is a double. Kept apart from the describe endpoints, so the query engine needs
nothing of the HTTP side.
"""

from __future__ import annotations

import dataclasses

from .schema import Field, SObject


@dataclasses.dataclass(frozen=True)
class FieldInfo:
    """A queryable field: its API name, its stored column and its describe type."""

    name: str
    column: str
    type: str
    field: Field | None = None


_SYSTEM = (
    FieldInfo("Id", "Id", "id"),
    FieldInfo("IsDeleted", "IsDeleted", "boolean"),
)
# SystemModstamp is not stored apart: the emulator changes records only through the API, where
# Salesforce moves it together with LastModifiedDate.
_AUDIT = (
    FieldInfo("CreatedDate", "CreatedDate", "datetime"),
    FieldInfo("LastModifiedDate", "LastModifiedDate", "datetime"),
    FieldInfo("SystemModstamp", "LastModifiedDate", "datetime"),
)
TEXT_TYPES = frozenset({"string", "textarea", "email", "phone", "url", "picklist"})
#: The describe types Salesforce holds as ``xsd:double``.
DOUBLE_TYPES = frozenset({"double", "currency", "percent"})
NUMBER_TYPES = DOUBLE_TYPES | {"int"}


def describe_type(field: Field) -> str:
    """Salesforce's describe type of a schema field.

    Standard whole-number fields (NumberOfEmployees) are ``int``; custom number fields are
    ``double`` in Salesforce whatever their scale.
    """
    if field.type == "number":
        return "int" if field.scale == 0 and not field.name.endswith("__c") else "double"
    return field.type


def fields_of(obj: SObject) -> list[FieldInfo]:
    """Every field of ``obj`` in describe order: Id, IsDeleted, the schema's, then the audit fields."""
    own = [FieldInfo(f.name, f.name, describe_type(f), f) for f in obj.fields]
    return [*_SYSTEM, *own, *_AUDIT]


def field_info(obj: SObject, name: str) -> FieldInfo | None:
    """The field called ``name`` (any case) on ``obj``, system fields included, or None."""
    lower = name.lower()
    for info in (*_SYSTEM, *_AUDIT):
        if info.name.lower() == lower:
            return info
    field = obj.field(name)
    return FieldInfo(field.name, field.name, describe_type(field), field) if field else None


def is_double(field: Field) -> bool:
    """Whether Salesforce holds the field as ``xsd:double`` (and echoes it as Java prints a double).

    Currency and percent fields are doubles; so is every custom number field, even one without
    decimals. Standard number fields without decimals (``NumberOfEmployees``) are ``xsd:int``.
    """
    return describe_type(field) in DOUBLE_TYPES
