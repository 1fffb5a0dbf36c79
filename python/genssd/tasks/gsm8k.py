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


# The eight chain-of-thought exemplars of Wei et al. (2022), the usual GSM8K few-shot prompt, with
# the final line in GSM8K's own "#### n" form so a model prompted with them states its answer the
# way the strict extraction reads it.
FEW_SHOT_EXAMPLES = tuple(
    {"question": question, "answer": answer}
    for question, answer in (
        (
            "There are 15 trees in the grove. Grove workers will plant trees in the grove today. After "
            "they are done, there will be 21 trees. How many trees did the grove workers plant today?",
            "There are 15 trees originally. Then there were 21 trees after some more were planted. So "
            "there must have been 21 - 15 = 6 trees planted.\n#### 6",
        ),
        (
            "If there are 3 cars in the parking lot and 2 more cars arrive, how many cars are in the "
            "parking lot?",
            "There are originally 3 cars. 2 more cars arrive. 3 + 2 = 5.\n#### 5",
        ),
        (
            "Leah had 32 chocolates and her sister had 42. If they ate 35, how many pieces do they have "
            "left in total?",
            "Originally, Leah had 32 chocolates. Her sister had 42. So in total they had 32 + 42 = 74. "
            "After eating 35, they had 74 - 35 = 39.\n#### 39",
        ),
        (
            "Jason had 20 lollipops. He gave Denny some lollipops. Now Jason has 12 lollipops. How many "
            "lollipops did Jason give to Denny?",
            "Jason started with 20 lollipops. Then he had 12 after giving some to Denny. So he gave "
            "Denny 20 - 12 = 8.\n#### 8",
        ),
        (
            "Shawn has five toys. For Christmas, he got two toys each from his mom and dad. How many "
            "toys does he have now?",
            "Shawn started with 5 toys. If he got 2 toys each from his mom and dad, then that is 4 more "
            "toys. 5 + 4 = 9.\n#### 9",
        ),
        (
            "There were nine computers in the server room. Five more computers were installed each "
            "day, from monday to thursday. How many computers are now in the server room?",
            "There were originally 9 computers. For each of 4 days, 5 more computers were added. So "
            "5 * 4 = 20 computers were added. 9 + 20 is 29.\n#### 29",
        ),
        (
            "Michael had 58 golf balls. On tuesday, he lost 23 golf balls. On wednesday, he lost 2 "
            "more. How many golf balls did he have at the end of wednesday?",
            "Michael started with 58 golf balls. After losing 23 on tuesday, he had 58 - 23 = 35. "
            "After losing 2 more, he had 35 - 2 = 33 golf balls.\n#### 33",
        ),
        (
            "Olivia has $23. She bought five bagels for $3 each. How much money does she have left?",
            "Olivia had 23 dollars. 5 bagels for 3 dollars each will be 5 x 3 = 15 dollars. So she "
            "has 23 - 15 dollars left. 23 - 15 is 8.\n#### 8",
        ),
    )
)


class GSM8KTask(Task):
    """GSM8K with flexible extraction (``strict=True``: only ``#### n`` counts)."""

    few_shot_examples = FEW_SHOT_EXAMPLES

    def __init__(self, strict: bool = False):
        self.strict = strict
        self.name = "gsm8k-strict" if strict else "gsm8k"

    def extract_answer(self, text: str) -> str | None:
        return extract_strict(text) if self.strict else extract_flexible(text)

    def gold_answer(self, row: dict) -> str | None:
        """The ``#### n`` of the gold solution; a bare number counts as the answer too."""
        answer = row["answer"]
        return extract_strict(answer) or normalize_number(answer)
