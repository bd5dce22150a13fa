"""Salesforce-style record ids: key prefixes, base-62 counters and the case-safe 18-character form."""

from __future__ import annotations

import string

_BASE62 = string.digits + string.ascii_uppercase + string.ascii_lowercase
_SUFFIX_ALPHABET = string.ascii_uppercase + "012345"
_ID_CHARS = frozenset(_BASE62)

# Two characters of "pod" and one reserved character, as in real ids (e.g. 0018c00002DJIpJAAX).
_POD = "5e0"

#: Key prefixes of the objects that are not records of the org's schema.
JOB_PREFIX = "750"
USER_PREFIX = "005"
ORG_PREFIX = "00D"


def case_safe_suffix(id15: str) -> str:
    """Return the 3-character suffix that makes a 15-character id case-insensitive.

    Each 5-character chunk contributes one character: a 5-bit mask of which characters are
    upper-case letters (least significant bit first), looked up in ``A..Z0..5``.
    """
    suffix = []
    for start in (0, 5, 10):
        mask = 0
        for bit, char in enumerate(id15[start : start + 5]):
            if "A" <= char <= "Z":
                mask |= 1 << bit
        suffix.append(_SUFFIX_ALPHABET[mask])
    return "".join(suffix)


def make_id(prefix: str, number: int) -> str:
    """Build the 18-character id of record ``number`` of the object with key ``prefix``."""
    digits = []
    while number:
        number, rem = divmod(number, 62)
        digits.append(_BASE62[rem])
    body = "".join(reversed(digits)).rjust(9, "0")
    if len(body) > 9:
        raise OverflowError("record number too large for a Salesforce id")
    id15 = prefix + _POD + body
    return id15 + case_safe_suffix(id15)


def normalize_id(value: str) -> str | None:
    """Return the canonical 18-character form of ``value``, or None if it is not a well-formed id.

    A 15-character id is case-sensitive and gains its suffix; an 18-character id must carry the
    right suffix (compared case-insensitively, as Salesforce does).
    """
    if len(value) == 15:
        if not _ID_CHARS.issuperset(value):
            return None
        return value + case_safe_suffix(value)
    if len(value) == 18:
        if not _ID_CHARS.issuperset(value):
            return None
        # The suffix encodes which letters are upper-case, so an 18-character id survives any
        # change of case: rebuild the 15-character id from it, then check it round-trips.
        chars = []
        for chunk, code in enumerate(value[15:].upper()):
            mask = _SUFFIX_ALPHABET.find(code)
            if mask < 0:
                return None
            for bit, char in enumerate(value[chunk * 5 : chunk * 5 + 5]):
                chars.append(char.upper() if mask & (1 << bit) else char.lower())
        id15 = "".join(chars)
        suffix = case_safe_suffix(id15)
        if suffix != value[15:].upper():
            return None
        return id15 + suffix
    return None
