"""The one reader of ``sf__Error``, the error column of a job's failed results.

Salesforce writes ``STATUS_CODE:message:field[,field] --`` (``...:--`` when no field is named), e.g.
``REQUIRED_FIELD_MISSING:Required fields are missing: [Name]:Name --``. The message may itself hold
colons, so the code is read up to the first colon and the fields after the last one. The summary's
counts by code and the choice of records to resubmit both read a value here, so they cannot disagree.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["SfError", "parse_sf_error"]

_CODE = re.compile(r"\s*([A-Z][A-Z0-9_]*)\s*(?::|$)")
_NO_FIELD = "--"


@dataclass(frozen=True, kw_only=True)
class SfError:
    """An ``sf__Error`` value, read.

    Attributes
    ----------
    status_code : str or None
        The status code it starts with (``UNABLE_TO_LOCK_ROW``); None when it starts with none.
    message : str
        The text after the code (the whole value when there is no code), without the fields.
    fields : tuple of str
        The fields it names (empty for ``--``).
    """

    status_code: str | None
    message: str
    fields: tuple[str, ...]


def parse_sf_error(value: str) -> SfError:
    """The status code, message and fields of an ``sf__Error`` value."""
    match = _CODE.match(value)
    rest = value[match.end() :] if match else value
    fields: tuple[str, ...] = ()
    text = rest.rstrip()
    if text.endswith(_NO_FIELD):
        rest, _, named = text.rpartition(":")
        fields = tuple(name.strip() for name in named[: -len(_NO_FIELD)].split(",") if name.strip())
    return SfError(status_code=match[1] if match else None, message=rest.strip(), fields=fields)
