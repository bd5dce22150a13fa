"""Salesforce-style record ids: key prefixes, base-62 counters and the case-safe 18-character form."""

from __future__ import annotations

import string

_BASE62 = string.digits + string.ascii_uppercase + string.ascii_lowercase
_SUFFIX_ALPHABET = string.ascii_uppercase + "012345"
_ID_CHARS = frozenset(_BASE62)
_PAIRS = [a + b for a in _BASE62 for b in _BASE62]
# Upper-case letters become "1", every other id character "0": the suffix's bit masks.
_UPPER_BITS = str.maketrans({c: "1" if c.isupper() else "0" for c in _BASE62})

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
    bits = id15.translate(_UPPER_BITS)
    return (
        _SUFFIX_ALPHABET[int(bits[4::-1], 2)]
        + _SUFFIX_ALPHABET[int(bits[9:4:-1], 2)]
        + _SUFFIX_ALPHABET[int(bits[14:9:-1], 2)]
    )


def make_id(prefix: str, number: int) -> str:
    """Build the 18-character id of record ``number`` of the object with key ``prefix``."""
    if not 0 <= number < 62**9:
        raise OverflowError("record number out of range for a Salesforce id")
    # Four base-3844 (two-character) digits and one base-62 digit: fewer divisions per id.
    number, d4 = divmod(number, 3844)
    number, d3 = divmod(number, 3844)
    number, d2 = divmod(number, 3844)
    d0, d1 = divmod(number, 3844)
    id15 = prefix + _POD + _BASE62[d0] + _PAIRS[d1] + _PAIRS[d2] + _PAIRS[d3] + _PAIRS[d4]
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


#: The org's one user: every session acts as this user (``OwnerId``, ``CreatedById``... of what it writes).
DEFAULT_USER_ID = make_id(USER_PREFIX, 42)
