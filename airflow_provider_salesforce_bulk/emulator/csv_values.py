"""How Salesforce writes values into the CSV files it returns, for ingest results and query results alike.

Every value is double-quoted (inner quotes doubled) and a double is written as Java's
``Double.toString`` writes it. Both result writers (:mod:`.ingest_results` and :mod:`.query_csv`)
use these, so the two files can never disagree on a number's text.
"""

from __future__ import annotations

import decimal
import math

from .validation import NUMBER


def quoted(text: str) -> str:
    """``text`` as one double-quoted CSV value."""
    return '"' + text.replace('"', '""') + '"'


def java_double(value: float) -> str:
    """``Double.toString``: plain between 10^-3 and 10^7, else ``d.dddE±n``; always a fraction digit.

    ``912260031.0`` -> ``9.12260031E8``, ``100.0`` -> ``100.0``, ``0.0001`` -> ``1.0E-4``; the
    digits are the shortest that read back as the same double (Python's ``repr`` has the same).
    """
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    if value == 0:
        return "-0.0" if math.copysign(1.0, value) < 0 else "0.0"
    if 1e-3 <= abs(value) < 1e7:
        text = repr(value)
        return text if "." in text else text + ".0"
    number = decimal.Decimal(repr(value))
    sign, digits, _ = number.as_tuple()
    text = "".join(map(str, digits)).rstrip("0") or "0"
    mantissa = text[0] + "." + (text[1:] or "0")
    return f"{'-' if sign else ''}{mantissa}E{number.adjusted()}"


def java_double_text(value: str) -> str:
    """A number's text (as uploaded) the way :func:`java_double` writes the double it reads as.

    This is how ingest results echo a double field: ``912260031`` -> ``9.12260031E8``, ``100`` ->
    ``100.0``. Text that is not a number is returned as it is.
    """
    if NUMBER.fullmatch(value) is None:
        return value
    return java_double(float(value))
