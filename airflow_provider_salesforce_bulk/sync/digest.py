"""One record's values as the job writes them, and their digest.

Decisions:

- A record is normalized to the job's columns (``fieldnames``, after ``field_mapping``) in order;
  each value becomes the text the client's serializer writes for it (:func:`~..client.serialize.value_text`:
  dates, datetimes, numbers and booleans exactly as sent), ``None`` stays ``None``. A key that is not
  a column is an error, a missing column is empty (the serializer's rules); a relationship given as
  ``{"Account": {"Ext__c": v}}`` fills the column ``Account.Ext__c``.
- The digest is over what the job sends: ``None`` counts as the job's ``none_as`` text (``""`` or
  ``#N/A``), so two records Salesforce receives identically have the same digest. The texts are
  joined with NUL (which no value may hold: the serializer refuses it, and so does this) and encoded
  as UTF-8; BLAKE2b with a 16-byte digest, keyed by the column names, so a changed column set changes
  every digest. UTF-8 and BLAKE2b are fixed by their specifications: the digest does not depend on the
  Python version, the process or ``PYTHONHASHSEED``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from datetime import date
from typing import Any

from airflow_provider_salesforce_bulk.client.errors import InputError
from airflow_provider_salesforce_bulk.client.serialize import value_text

DIGEST_SIZE = 16
# Bumped when the encoding below changes: it is part of the key, so old digests never match new ones.
DIGEST_VERSION = b"salesforce-bulk-sync-digest-1"
_NA_MARKER = "#N/A"
_NONE_TEXT = {"empty": "", "null": _NA_MARKER}

Texts = list[str | None]


def _none(_value: None) -> None:
    return None


# The serializer's text for the commonest exact types, without its per-value dispatch (the same
# texts: tests/sync/test_digest.py checks them against value_text); every other type goes through it.
_FAST: dict[type, Callable[[Any], str | None]] = {
    int: int.__repr__,
    bool: {True: "true", False: "false"}.__getitem__,
    date: date.isoformat,
    type(None): _none,
}


def fields_fingerprint(fieldnames: Sequence[str]) -> str:
    """A hex name of the column set and its order, recorded with the state."""
    encoded = "\x00".join(fieldnames).encode()
    return hashlib.blake2b(DIGEST_VERSION + b"\x00" + encoded, digest_size=32).hexdigest()


class RecordDigester:
    """Normalizes records to the job's column texts and digests them."""

    def __init__(
        self, fieldnames: Sequence[str], *, none_as: str = "empty", allow_na_marker: bool = False
    ) -> None:
        if none_as not in _NONE_TEXT:
            raise InputError(f"none_as must be 'empty' or 'null', got {none_as!r}", field="none_as")
        self.fieldnames = list(fieldnames)
        self.positions = {name: i for i, name in enumerate(self.fieldnames)}
        self.none_text = _NONE_TEXT[none_as]
        self.allow_na_marker = allow_na_marker
        self.key = bytes.fromhex(fields_fingerprint(self.fieldnames))
        self.hasher = hashlib.blake2b(digest_size=DIGEST_SIZE, key=self.key)

    def batch(self, records: list[Any], base: int) -> tuple[list[tuple[str | None, ...]], list[bytes]]:
        """The texts and digests of a batch of records (``base`` is the first one's index), the same as
        :meth:`texts` and :meth:`digest` one by one, worked column by column."""
        width = len(self.fieldnames)
        if set(map(type, records)) != {dict} or set(map(len, records)) != {width}:
            return self._one_by_one(records, base)
        try:
            columns = [[record[name] for record in records] for name in self.fieldnames]
        except KeyError:
            return self._one_by_one(records, base)
        texts: list[list[str | None]] = []
        for column in columns:
            kinds = set(map(type, column))
            if kinds == {str}:
                texts.append(column)
            elif kinds <= _FAST.keys():
                texts.append([_FAST[type(value)](value) for value in column])
            else:
                try:
                    texts.append([None if value is None else value_text(value) for value in column])
                except ValueError:  # _one_by_one names the record and the field
                    return self._one_by_one(records, base)
        sent = [
            column if None not in column else [self.none_text if t is None else t for t in column]
            for column in texts
        ]
        flagged = any("\x00" in "".join(column) for column in sent) or any(  # type: ignore[arg-type]
            _NA_MARKER in column for column in texts if not self.allow_na_marker
        )
        if flagged:
            return self._one_by_one(records, base)
        try:
            encoded = ["\x00".join(row).encode() for row in zip(*sent, strict=True)]
        except UnicodeEncodeError:
            return self._one_by_one(records, base)
        copy = self.hasher.copy
        digests = []
        for data in encoded:
            hasher = copy()
            hasher.update(data)
            digests.append(hasher.digest())
        return list(zip(*texts, strict=True)), digests

    def _one_by_one(self, records: list[Any], base: int) -> tuple[list[tuple[str | None, ...]], list[bytes]]:
        rows = [tuple(self.texts(record, index)) for index, record in enumerate(records, base)]
        return rows, [self.digest(list(row), index) for index, row in enumerate(rows, base)]

    def texts(self, record: Mapping[str, Any], index: int) -> Texts:
        """The record's values as the job writes them, in column order (``None`` kept)."""
        values: list[Any]
        if type(record) is dict and len(record) == len(self.fieldnames):
            try:
                values = [record[name] for name in self.fieldnames]
            except KeyError:
                values = self._normalize(record, index)
        else:
            values = self._normalize(record, index)
        fast = _FAST
        try:
            texts: Texts = [
                value
                if type(value) is str
                else fast[type(value)](value)
                if type(value) in fast
                else value_text(value)
                for value in values
            ]
        except ValueError:
            texts = [self._text(value, index, i) for i, value in enumerate(values)]
        if not self.allow_na_marker and _NA_MARKER in texts:
            field = self.fieldnames[texts.index(_NA_MARKER)]
            raise InputError(
                f"record {index}, field {field!r}: the text '#N/A' would make Salesforce null the field; "
                "pass None with none_as='null', or allow_na_marker=True",
                record_index=index,
                field=field,
            )
        return texts

    def digest(self, texts: Texts, index: int) -> bytes:
        none_text = self.none_text
        joined = "\x00".join([none_text if text is None else text for text in texts])
        if joined.count("\x00") != len(texts) - 1:
            raise InputError(
                f"record {index} holds a NUL character, which a CSV value cannot", record_index=index
            )
        try:
            data = joined.encode()
        except UnicodeEncodeError:
            raise InputError(
                f"record {index} holds a lone surrogate, which UTF-8 cannot encode", record_index=index
            ) from None
        return hashlib.blake2b(data, digest_size=DIGEST_SIZE, key=self.key).digest()

    def _text(self, value: Any, index: int, position: int) -> str | None:
        if value is None:
            return None
        try:
            return value_text(value)
        except ValueError as exc:
            field = self.fieldnames[position]
            raise InputError(
                f"record {index}, field {field!r}: {exc}", record_index=index, field=field
            ) from None

    def _normalize(self, record: Mapping[str, Any], index: int) -> list[Any]:
        if not isinstance(record, Mapping):
            raise InputError(
                f"record {index} is a {type(record).__name__}, expected a dict of field name to value",
                record_index=index,
            )
        values: list[Any] = [""] * len(self.fieldnames)
        for key, value in record.items():
            column = key
            if isinstance(value, Mapping) and len(value) == 1:
                ((sub, value),) = value.items()
                column = f"{key}.{sub}"
            position = self.positions.get(column)
            if position is None:
                raise InputError(
                    f"record {index} has the field {column!r}, which is not in fieldnames "
                    f"{self.fieldnames!r}",
                    record_index=index,
                    field=str(column),
                )
            values[position] = value
        return values
