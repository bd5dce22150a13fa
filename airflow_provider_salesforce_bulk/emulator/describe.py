"""``GET /sobjects`` and ``GET /sobjects/{object}/describe`` from the schema, shaped as real orgs answer.

Also the one place that says what type each field has in Salesforce's terms (``id``, ``int``,
``double``, ``datetime``...), which the query engine uses to check filters and format values.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response

from .job_requests import emulator_of
from .responses import json_response, not_found
from .schema import Field, SObject

if TYPE_CHECKING:
    pass


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
_SOAP_TYPES = {
    "id": "tns:ID",
    "reference": "tns:ID",
    "boolean": "xsd:boolean",
    "int": "xsd:int",
    "double": "xsd:double",
    "currency": "xsd:double",
    "percent": "xsd:double",
    "date": "xsd:date",
    "datetime": "xsd:dateTime",
}
TEXT_TYPES = frozenset({"string", "textarea", "email", "phone", "url", "picklist"})
NUMBER_TYPES = frozenset({"int", "double", "currency", "percent"})


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


def _label(name: str) -> str:
    base = name[:-3] if name.endswith("__c") else name
    if base.endswith("Id") and len(base) > 2:
        base = base[:-2]
    out = []
    for i, char in enumerate(base.replace("_", " ")):
        if char.isupper() and i and base[i - 1].islower():
            out.append(" ")
        out.append(char)
    return "".join(out).strip()


def _plural(label: str) -> str:
    if label.endswith("y") and not label.endswith(("ay", "ey", "oy")):
        return label[:-1] + "ies"
    if label.endswith(("s", "x", "ch", "sh")):
        return label + "es"
    return label + "s"


def field_body(info: FieldInfo) -> dict[str, Any]:
    """One entry of ``fields`` in a describe answer (a subset of Salesforce's keys, same names)."""
    field = info.field
    ftype = info.type
    system = field is None
    text = ftype in TEXT_TYPES
    length = 18 if ftype in ("id", "reference") else (field.length if field and text else 0)
    nillable = not system and ftype != "boolean" and not (field and field.required)
    default = field.default if field else None
    body: dict[str, Any] = {
        "name": info.name,
        "label": "Record ID" if info.name == "Id" else _label(info.name),
        "type": ftype,
        "soapType": _SOAP_TYPES.get(ftype, "xsd:string"),
        "length": length,
        "byteLength": length * 3,
        "digits": 9 if ftype == "int" else 0,
        "precision": 18 if ftype in ("double", "currency", "percent") else 0,
        "scale": (field.scale or 0) if field and ftype in ("double", "currency", "percent") else 0,
        "nillable": nillable,
        "custom": info.name.endswith("__c"),
        "externalId": bool(field and field.external_id),
        "unique": bool(field and field.unique),
        "idLookup": info.name == "Id" or bool(field and (field.external_id or field.unique)),
        "createable": not system,
        "updateable": not system,
        "filterable": ftype != "textarea",
        "sortable": ftype != "textarea",
        "calculated": False,
        "defaultedOnCreate": system or bool(field and field.default is not None) or ftype == "boolean",
        "defaultValue": field.default if field and ftype != "picklist" else None,
        "referenceTo": [field.reference_to] if field and field.reference_to else [],
        "relationshipName": field.relationship_name if field else None,
        "restrictedPicklist": bool(field and field.restricted),
        "picklistValues": [
            {
                "active": True,
                "defaultValue": value == default,
                "label": value,
                "validFor": None,
                "value": value,
            }
            for value in (field.values if field else ())
        ],
    }
    return body


def _object_summary(obj: SObject, version: str) -> dict[str, Any]:
    base = f"/services/data/v{version}/sobjects/{obj.name}"
    label = _label(obj.name)
    return {
        "activateable": False,
        "createable": True,
        "custom": obj.name.endswith("__c"),
        "customSetting": False,
        "deletable": True,
        "deprecatedAndHidden": False,
        "feedEnabled": False,
        "keyPrefix": obj.key_prefix,
        "label": label,
        "labelPlural": _plural(label),
        "layoutable": True,
        "mergeable": obj.name in ("Account", "Contact", "Lead"),
        "name": obj.name,
        "queryable": True,
        "replicateable": True,
        "retrieveable": True,
        "searchable": True,
        "triggerable": True,
        "undeletable": True,
        "updateable": True,
        "urls": {"sobject": base, "describe": f"{base}/describe", "rowTemplate": f"{base}/{{ID}}"},
    }


async def list_sobjects(request: Request) -> Response:
    """``GET /sobjects``: every object of the org."""
    version = str(request.path_params["version"])
    objects = [_object_summary(o, version) for o in emulator_of(request).schema.objects]
    return json_response({"encoding": "UTF-8", "maxBatchSize": 200, "sobjects": objects})


async def describe_sobject(request: Request) -> Response:
    """``GET /sobjects/{object}/describe``: the object and its fields; 404 for an unknown object."""
    obj = emulator_of(request).schema.get(str(request.path_params["object"]))
    if obj is None:
        return not_found()
    body = _object_summary(obj, str(request.path_params["version"]))
    body["childRelationships"] = []
    body["fields"] = [field_body(info) for info in fields_of(obj)]
    return json_response(body)
