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
    """A field of an object: its API name, its stored column and its describe type.

    ``expr`` is set for a field the org computes (``Name`` of a Contact): SQL over the record's
    columns, with ``{alias}`` for the table. ``compound`` marks an address: describe lists it, Bulk
    API 2.0 query refuses to select it.
    """

    name: str
    column: str
    type: str
    field: Field | None = None
    expr: str | None = None
    compound: bool = False

    @property
    def writable(self) -> bool:
        """Whether a load may set it: schema fields that the org does not set itself."""
        return self.field is not None and not self.field.read_only


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


#: The compound address fields of the standard objects (every org has them, whatever fields the schema
#: file lists): describe shows them, Bulk API 2.0 query refuses them.
COMPOUND_FIELDS = {
    "account": ("BillingAddress", "ShippingAddress"),
    "contact": ("MailingAddress", "OtherAddress"),
    "lead": ("Address",),
}
_AUDIT_REFERENCES = ("createdbyid", "lastmodifiedbyid")


def _info(field: Field) -> FieldInfo:
    return FieldInfo(field.name, field.name, describe_type(field), field)


def _computed(obj: SObject) -> list[FieldInfo]:
    """The fields the org derives: a person's ``Name`` from its first and last names, and addresses."""
    out = []
    if obj.field("Name") is None and obj.field("FirstName") and obj.field("LastName"):
        # "First Last", or the one that is set; null when neither is.
        first, last = '{alias}."FirstName"', '{alias}."LastName"'
        expr = f"NULLIF(TRIM(COALESCE({first}, '') || ' ' || COALESCE({last}, '')), '')"
        out.append(FieldInfo("Name", "", "string", expr=expr))
    out += [
        FieldInfo(name, "", "address", compound=True) for name in COMPOUND_FIELDS.get(obj.name.lower(), ())
    ]
    return out


def fields_of(obj: SObject) -> list[FieldInfo]:
    """Every field of ``obj`` in describe order: Id, IsDeleted, the schema's and the org's own, then
    the audit fields as Salesforce lists them (CreatedDate, CreatedById, LastModifiedDate...)."""
    own = [_info(f) for f in obj.fields if f.name.lower() not in _AUDIT_REFERENCES]
    created_by, modified_by = (_info(obj.field(name)) for name in ("CreatedById", "LastModifiedById"))  # type: ignore[arg-type]
    created, modified, stamp = _AUDIT
    return [*_SYSTEM, *own, *_computed(obj), created, created_by, modified, modified_by, stamp]


def field_info(obj: SObject, name: str) -> FieldInfo | None:
    """The field called ``name`` (any case) on ``obj``, system and computed fields included, or None."""
    lower = name.lower()
    for info in (*_SYSTEM, *_AUDIT):
        if info.name.lower() == lower:
            return info
    field = obj.field(name)
    if field is not None:
        return _info(field)
    return next((info for info in _computed(obj) if info.name.lower() == lower), None)


def is_double(field: Field) -> bool:
    """Whether Salesforce holds the field as ``xsd:double`` (and echoes it as Java prints a double).

    Currency and percent fields are doubles; so is every custom number field, even one without
    decimals. Standard number fields without decimals (``NumberOfEmployees``) are ``xsd:int``.
    """
    return describe_type(field) in DOUBLE_TYPES
