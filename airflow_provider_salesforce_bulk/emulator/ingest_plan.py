"""How one ingest job's CSV header maps onto its object: the plan every slice of the job follows.

Worked out once per job, from the header and the schema as they are when processing starts; a
header Salesforce would refuse fails the whole job here (:class:`JobFailure`), before any row.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from .field_types import field_info
from .schema import Field, Schema, SObject
from .validation import Converter, converter_for


class JobFailure(Exception):
    """The whole job fails; ``str(error)`` is its ``errorMessage``."""


@dataclasses.dataclass
class Relation:
    """A column naming a parent through a relationship (``Account.External_Id__c``): resolved per slice."""

    column: int
    field: Field
    target: SObject
    target_field: str


@dataclasses.dataclass
class Plan:
    """How the columns of one job's CSV map onto its object."""

    obj: SObject
    operation: str
    id_column: int | None
    columns: list[tuple[int, Field, Converter]]
    relations: list[Relation]
    match_field: str | None  # upsert: the external id field, or "Id"
    match_column: int | None
    width: int
    #: Columns naming fields only the org sets (``CreatedDate``, ``CreatedById``, a Contact's ``Name``):
    #: a record giving one a value fails; an empty value is ignored.
    read_only: list[tuple[int, str]] = dataclasses.field(default_factory=list)


def make_plan(schema: Schema, job: dict[str, Any], header: list[str]) -> Plan:
    """Map the CSV header onto the job's object.

    Raises
    ------
    JobFailure
        ``InvalidBatch : Field name not found : X`` for a column the object does not have.
    """
    obj = schema.get(job["object"])
    if obj is None:  # the schema file changed since the job was created
        raise JobFailure(f"InvalidJob : Unable to find object: {job['object']}")
    id_column = None
    columns: list[tuple[int, Field, Converter]] = []
    relations: list[Relation] = []
    read_only: list[tuple[int, str]] = []
    for index, name in enumerate(header):
        if name.lower() == "id":
            id_column = index
            continue
        field = obj.field(name)
        if field is not None and not field.read_only:
            columns.append((index, field, converter_for(field, index)))
            continue
        info = field_info(obj, name)
        if info is not None:
            read_only.append((index, info.name))
            continue
        relation = _relation(schema, obj, name, index)
        if relation is None:
            raise JobFailure(f"InvalidBatch : Field name not found : {name}")
        relations.append(relation)
    match_field = match_column = None
    if job["operation"] == "upsert":
        match_field = job["external_id_field"]
        if match_field.lower() == "id":
            match_field, match_column = "Id", id_column
        else:
            for index, field, _ in columns:
                if field.name.lower() == match_field.lower():
                    match_field, match_column = field.name, index
    return Plan(
        obj,
        job["operation"],
        id_column,
        columns,
        relations,
        match_field,
        match_column,
        len(header),
        read_only,
    )


def _relation(schema: Schema, obj: SObject, name: str, index: int) -> Relation | None:
    # "Account.External_Id__c", custom "Account__r.External_Id__c", polymorphic "Account:Owner.Ext".
    path, _, target_field_name = name.rpartition(".")
    if not path or "." in path:
        return None
    target_name, _, relationship = path.rpartition(":")
    field = obj.relationship(relationship)
    if field is None or field.reference_to is None:
        return None
    if target_name and target_name.lower() != field.reference_to.lower():
        return None
    target = schema.get(field.reference_to)
    if target is None:
        return None
    if target_field_name.lower() == "id":
        return Relation(index, field, target, "Id")
    target_field = target.field(target_field_name)
    if target_field is None or not (target_field.external_id or target_field.unique):
        return None
    return Relation(index, field, target, target_field.name)
