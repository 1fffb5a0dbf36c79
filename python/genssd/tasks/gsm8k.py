"""GSM8K: grade-school word problems whose gold solutions end in ``#### <number>``.

Two extractions, as in the usual GSM8K harnesses:

- strict: the number after the first ``####`` (a model that learned the format);
- flexible: strict when present, else the last number in the text.

Numbers are compared by value after removing thousands separators and ``$`` signs, so
``$1,000``, ``1000`` and ``1000.00`` are the same answer.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

from genssd.tasks import Task

# A number as GSM8K writes it: optional sign and $, thousands groups or plain digits, decimals.
# A minus sign right after a digit or ")" is subtraction ("10-3"), not a negative number.
_SIGN = r"(?:(?<![\d)])-)?"
_NUMBER = _SIGN + r"\$?" + _SIGN + r"(?:(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?|\.\d+)"
_NUMBER_RE = re.compile(_NUMBER)
_STRICT_RE = re.compile(r"####\s*(" + _NUMBER + r")")


def normalize_number(text: str) -> str | None:
    """The canonical form of a number string (``"$1,000.50"`` -> ``"1000.5"``), or None.

    Integers print without a decimal point and ``-0`` is ``0``, so equal values give equal
    strings.
    """
    cleaned = text.replace(",", "").replace("$", "").strip().rstrip(".")
    negative = cleaned.count("-") % 2 == 1
    cleaned = cleaned.replace("-", "")
    try:
        value = Decimal(cleaned)
    except InvalidOperation:
        return None
    if not value.is_finite():
        return None
    value = -value if negative else value
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")


def extract_strict(text: str) -> str | None:
    """The number after the first ``####``, normalized, or None."""
    match = _STRICT_RE.search(text)
    return normalize_number(match.group(1)) if match else None


def extract_flexible(text: str) -> str | None:
    """:func:`extract_strict`, else the last number in ``text``, normalized, or None."""
    strict = extract_strict(text)
    if strict is not None:
        return strict
    for candidate in reversed(_NUMBER_RE.findall(text)):
        number = normalize_number(candidate)
        if number is not None:
            return number
    return None


class GSM8KTask(Task):
    """GSM8K with flexible extraction (``strict=True``: only ``#### n`` counts)."""

    def __init__(self, strict: bool = False):
        self.strict = strict
        self.name = "gsm8k-strict" if strict else "gsm8k"

    def extract_answer(self, text: str) -> str | None:
        return extract_strict(text) if self.strict else extract_flexible(text)

    def gold_answer(self, row: dict) -> str | None:
        """The ``#### n`` of the gold solution; a bare number counts as the answer too."""
        answer = row["answer"]
        return extract_strict(answer) or normalize_number(answer)
