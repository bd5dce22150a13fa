"""The org's objects and fields, loaded from a JSON schema file (the default org ships with the package)."""

from __future__ import annotations

import dataclasses
import json
from importlib import resources
from pathlib import Path
from typing import Any

from .ids import DEFAULT_USER_ID, USER_PREFIX

FIELD_TYPES = frozenset(
    {
        "string",
        "textarea",
        "email",
        "phone",
        "url",
        "picklist",
        "number",
        "currency",
        "percent",
        "boolean",
        "date",
        "datetime",
        "reference",
    }
)


@dataclasses.dataclass(frozen=True)
class Field:
    """One field of an sObject.

    Attributes
    ----------
    name
        API name, e.g. ``AccountId`` or ``External_Id__c``.
    type
        One of :data:`FIELD_TYPES`.
    length
        Maximum length of text values (string-like types and picklists).
    required
        Creating a record without a value fails with REQUIRED_FIELD_MISSING.
    unique
        A value held by another record fails with DUPLICATE_VALUE.
    external_id
        Usable as ``externalIdFieldName`` for upsert and in relationship columns.
    values, restricted
        Picklist values; a restricted picklist refuses any other value.
    scale
        Decimal places of numbers; 0 stores integers.
    reference_to, relationship_name
        For references: the target object and the name used in relationship columns
        (``Account`` in ``Account.External_Id__c``).
    default
        Value given to a new record that does not set the field.
    read_only
        Set by the org only (``CreatedById``, ``LastModifiedById``): a load that gives it a value
        fails that record with INVALID_FIELD_FOR_INSERT_UPDATE, as Salesforce does.
    """

    name: str
    type: str
    length: int = 255
    required: bool = False
    unique: bool = False
    external_id: bool = False
    values: tuple[str, ...] = ()
    restricted: bool = False
    scale: int | None = None
    reference_to: str | None = None
    relationship_name: str | None = None
    default: Any = None
    read_only: bool = False


@dataclasses.dataclass(frozen=True)
class SObject:
    """An object of the org with its key prefix and fields (looked up case-insensitively)."""

    name: str
    key_prefix: str
    fields: tuple[Field, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_lower", {f.name.lower(): f for f in self.fields})
        object.__setattr__(
            self,
            "_by_relationship",
            {f.relationship_name.lower(): f for f in self.fields if f.relationship_name},
        )

    def field(self, name: str) -> Field | None:
        """Return the field called ``name`` (any case), or None."""
        found: Field | None = self._by_lower.get(name.lower())  # type: ignore[attr-defined]
        return found

    def relationship(self, name: str) -> Field | None:
        """Return the reference field whose relationship is called ``name`` (any case), or None."""
        found: Field | None = self._by_relationship.get(name.lower())  # type: ignore[attr-defined]
        return found


class SchemaError(ValueError):
    """The schema file is not valid."""


@dataclasses.dataclass(frozen=True)
class Schema:
    """All objects of the org, looked up case-insensitively by API name."""

    objects: tuple[SObject, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_lower", {o.name.lower(): o for o in self.objects})

    def get(self, name: str) -> SObject | None:
        """Return the object called ``name`` (any case), or None."""
        found: SObject | None = self._by_lower.get(name.lower())  # type: ignore[attr-defined]
        return found


def load_schema(path: str | Path | None = None) -> Schema:
    """Load a schema file, or the default org when ``path`` is None.

    Raises
    ------
    SchemaError
        If the file does not describe a valid org.
    """
    if path is None:
        text = resources.files(__package__).joinpath("default_schema.json").read_text("utf-8")
    else:
        text = Path(path).read_text("utf-8")
    try:
        return parse_schema(json.loads(text))
    except (KeyError, TypeError, json.JSONDecodeError) as exc:
        raise SchemaError(f"invalid schema: {exc}") from exc


def parse_schema(document: dict[str, Any]) -> Schema:
    """Build a :class:`Schema` from its JSON document (``{"objects": {name: {...}}}``)."""
    objects = []
    prefixes: set[str] = set()
    for name, spec in document["objects"].items():
        prefix = spec["keyPrefix"]
        if len(prefix) != 3 or not prefix.isalnum() or prefix in prefixes:
            raise SchemaError(f"{name}: keyPrefix must be 3 unique alphanumeric characters")
        prefixes.add(prefix)
        fields = []
        for field_name, fspec in spec["fields"].items():
            if not field_name.replace("_", "").isalnum() or field_name.lower() in _RESERVED:
                raise SchemaError(f"{name}.{field_name}: invalid field name")
            ftype = fspec["type"]
            if ftype not in FIELD_TYPES:
                raise SchemaError(f"{name}.{field_name}: unknown type {ftype!r}")
            if ftype == "reference" and not fspec.get("referenceTo"):
                raise SchemaError(f"{name}.{field_name}: a reference needs referenceTo")
            fields.append(
                Field(
                    name=field_name,
                    type=ftype,
                    length=int(fspec.get("length", 80 if ftype == "email" else 255)),
                    required=bool(fspec.get("required", False)),
                    unique=bool(fspec.get("unique", False)),
                    external_id=bool(fspec.get("externalId", False)),
                    values=tuple(fspec.get("values", ())),
                    restricted=bool(fspec.get("restricted", False)),
                    scale=fspec.get("scale"),
                    reference_to=fspec.get("referenceTo"),
                    relationship_name=fspec.get("relationshipName"),
                    default=fspec.get("default"),
                )
            )
        objects.append(SObject(name=name, key_prefix=prefix, fields=tuple(fields)))
    if not any(o.name.lower() == "user" for o in objects):
        if USER_PREFIX in prefixes:
            raise SchemaError(f"keyPrefix {USER_PREFIX} is the User object's")
        objects.append(SObject(name="User", key_prefix=USER_PREFIX, fields=_USER_FIELDS))
    schema = Schema(objects=tuple(_with_system_references(o) for o in objects))
    for obj in schema.objects:
        for f in obj.fields:
            if f.reference_to and schema.get(f.reference_to) is None:
                raise SchemaError(f"{obj.name}.{f.name}: unknown referenceTo {f.reference_to!r}")
    return schema


#: Names only the org sets, refused in a schema file.
_RESERVED = frozenset(
    {
        "id",
        "isdeleted",
        "createddate",
        "lastmodifieddate",
        "systemmodstamp",
        "createdbyid",
        "lastmodifiedbyid",
    }
)

#: The User object every org has (when the schema file brings none): the emulator's one user lives here.
_USER_FIELDS = (
    Field("Username", "string", length=80, required=True, unique=True),
    Field("LastName", "string", length=80, required=True),
    Field("FirstName", "string", length=40),
    Field("Email", "email", length=128, required=True),
    Field("Alias", "string", length=8, required=True),
    Field("IsActive", "boolean", default=True),
)


def _with_system_references(obj: SObject) -> SObject:
    """``obj`` with the owner and audit references every Salesforce object has: ``OwnerId`` (writable,
    the running user by default; not on User), ``CreatedById`` and ``LastModifiedById`` (read-only)."""
    extra = []
    if obj.name.lower() != "user" and obj.field("OwnerId") is None:
        extra.append(
            Field(
                "OwnerId",
                "reference",
                length=18,
                reference_to="User",
                relationship_name="Owner",
                default=DEFAULT_USER_ID,
            )
        )
    for name, relationship in (("CreatedById", "CreatedBy"), ("LastModifiedById", "LastModifiedBy")):
        extra.append(
            Field(
                name,
                "reference",
                length=18,
                reference_to="User",
                relationship_name=relationship,
                read_only=True,
            )
        )
    return SObject(name=obj.name, key_prefix=obj.key_prefix, fields=(*obj.fields, *extra))
