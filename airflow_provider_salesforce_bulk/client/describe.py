"""Field types of an object from ``GET /sobjects/{object}/describe``, and of a query's result columns.

A query's CSV header is its SELECT list as written: plain field names (any case) and relationship
paths (``Account.Name``, ``Account.Owner.Email``). :func:`describe_columns` follows each path
through the relationship fields' ``referenceTo`` to the field it ends on.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping
from typing import Any

import orjson

from airflow_provider_salesforce_bulk.client.errors import InputError, UnexpectedResponseError
from airflow_provider_salesforce_bulk.client.session import SalesforceSession

__all__ = ["DescribeCache", "FieldDescription", "SObjectDescription", "describe_columns", "describe_sobject"]

_OBJECT_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


@dataclasses.dataclass(frozen=True, kw_only=True)
class FieldDescription:
    """One field of a describe answer: what typed output needs of it.

    ``type`` is Salesforce's (``string``, ``boolean``, ``int``, ``double``, ``currency``,
    ``percent``, ``date``, ``datetime``, ``time``, ``reference``, ``id``, ``picklist``...).
    """

    name: str
    type: str
    nillable: bool = True
    length: int = 0
    precision: int = 0
    scale: int = 0
    reference_to: tuple[str, ...] = ()
    relationship_name: str | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FieldDescription:
        name, ftype = data.get("name"), data.get("type")
        if not isinstance(name, str) or not isinstance(ftype, str):
            raise ValueError(f"field without a name or type: {str(data)[:200]!r}")
        relationship = data.get("relationshipName")
        return cls(
            name=name,
            type=ftype,
            nillable=bool(data.get("nillable", True)),
            length=int(data.get("length") or 0),
            precision=int(data.get("precision") or 0),
            scale=int(data.get("scale") or 0),
            reference_to=tuple(str(r) for r in data.get("referenceTo") or ()),
            relationship_name=relationship if isinstance(relationship, str) and relationship else None,
        )


@dataclasses.dataclass(frozen=True)
class SObjectDescription:
    """An object's name and fields, looked up without regard to case (as SOQL does)."""

    name: str
    fields: tuple[FieldDescription, ...]

    def field(self, name: str) -> FieldDescription | None:
        lower = name.lower()
        return next((f for f in self.fields if f.name.lower() == lower), None)

    def relationship(self, name: str) -> FieldDescription | None:
        """The reference field whose ``relationshipName`` is ``name`` (``Account`` of ``AccountId``)."""
        lower = name.lower()
        return next(
            (f for f in self.fields if f.relationship_name and f.relationship_name.lower() == lower), None
        )


async def describe_sobject(session: SalesforceSession, sobject: str) -> SObjectDescription:
    """``GET /sobjects/{sobject}/describe``.

    Raises
    ------
    InputError
        ``sobject`` is not an object API name.
    NotFoundError
        The org has no such object.
    """
    if not isinstance(sobject, str) or not _OBJECT_NAME.match(sobject):
        raise InputError(f"not a Salesforce object name: {sobject!r}", field="sobject")
    response = await session.request(
        "GET", f"sobjects/{sobject}/describe", headers={"Accept": "application/json"}
    )
    try:
        data = orjson.loads(response.content)
        fields = tuple(FieldDescription.from_json(f) for f in data["fields"])
        name = str(data.get("name") or sobject)
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise UnexpectedResponseError(f"describe of {sobject} is not a describe answer: {exc}") from exc
    return SObjectDescription(name=name, fields=fields)


class DescribeCache:
    """Describe answers of one session, each object asked for once."""

    def __init__(self, session: SalesforceSession) -> None:
        self.session = session
        self._objects: dict[str, SObjectDescription] = {}

    async def get(self, sobject: str) -> SObjectDescription:
        key = sobject.lower()
        if key not in self._objects:
            self._objects[key] = await describe_sobject(self.session, sobject)
        return self._objects[key]


async def describe_columns(
    session: SalesforceSession | DescribeCache, sobject: str, columns: Iterable[str]
) -> dict[str, FieldDescription | None]:
    """The field each result column ends on, or None when it cannot be told.

    None for a column that is no field path of ``sobject`` (an expression's alias, a polymorphic
    relationship such as ``What.Name`` whose target object varies): typed output keeps it as text.
    """
    cache = session if isinstance(session, DescribeCache) else DescribeCache(session)
    out: dict[str, FieldDescription | None] = {}
    for column in columns:
        out[column] = await _resolve(cache, sobject, column)
    return out


async def _resolve(cache: DescribeCache, sobject: str, column: str) -> FieldDescription | None:
    parts = column.split(".")
    obj = await cache.get(sobject)
    # SOQL allows the object's own name as a prefix: SELECT Account.Name FROM Account.
    if len(parts) > 1 and parts[0].lower() == obj.name.lower() and obj.relationship(parts[0]) is None:
        parts = parts[1:]
    for hop in parts[:-1]:
        reference = obj.relationship(hop)
        if reference is None or len(reference.reference_to) != 1:
            return None
        obj = await cache.get(reference.reference_to[0])
    return obj.field(parts[-1])
