"""``GET /sobjects`` and ``GET /sobjects/{object}/describe`` from the schema, shaped as real orgs answer.

Clients describe an object before loading it (field types, lengths, external ids); these answers
carry the keys they read, with the types :mod:`.field_types` gives every other part of the emulator.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from .field_types import DOUBLE_TYPES, TEXT_TYPES, FieldInfo, fields_of
from .job_requests import emulator_of
from .responses import json_response, not_found
from .schema import SObject

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
    "address": "urn:address",
}


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
    system = not info.writable
    text = ftype in TEXT_TYPES
    length = 18 if ftype in ("id", "reference") else (field.length if field and text else 0)
    if info.expr is not None:
        length = 121  # a person's Name: first and last name with the space between

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
        "precision": 18 if ftype in DOUBLE_TYPES else 0,
        "scale": (field.scale or 0) if field and ftype in DOUBLE_TYPES else 0,
        "nillable": nillable,
        "custom": info.name.endswith("__c"),
        "externalId": bool(field and field.external_id),
        "unique": bool(field and field.unique),
        "idLookup": info.name == "Id" or bool(field and (field.external_id or field.unique)),
        "createable": not system,
        "updateable": not system,
        "filterable": ftype not in ("textarea", "address"),
        "sortable": ftype not in ("textarea", "address"),
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
