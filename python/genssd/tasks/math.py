"""MATH: competition problems whose solutions put the final answer in ``\\boxed{...}``.

The answer is the content of the last ``\\boxed{}`` (or ``\\fbox{}``), braces matched so nested
expressions such as ``\\boxed{\\frac{1}{2}}`` come out whole. Two answers are equal when
math-verify finds them mathematically equivalent (``\\frac12`` = ``0.5``, ``x^2+1`` =
``1+x^2``); identical strings (after whitespace removal) match without parsing.

Rows may use the Hendrycks field names ``problem``/``solution``; a row that also has a short
``answer`` (MATH-500) keeps it as ``final_answer``, used when the solution has no box.
"""

from __future__ import annotations

import re
import threading

from math_verify import parse, verify

from genssd.tasks import Task

_BOX_RE = re.compile(r"\\(?:boxed|fbox)\b")
# math-verify times out with SIGALRM, which only the main thread may use.
_TIMEOUT_SECONDS = 5


def last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}``/``\\fbox{...}`` (nested braces matched), or None.

    ``\\boxed 5`` (no braces) gives the token after the space. An unclosed brace gives None.
    """
    starts = [m.end() for m in _BOX_RE.finditer(text)]
    if not starts:
        return None
    i = starts[-1]
    if i < len(text) and text[i] == " ":
        match = re.match(r"\s*([^\s$]+)", text[i:])
        return match.group(1) if match else None
    while i < len(text) and text[i].isspace():
        i += 1
    if i >= len(text) or text[i] != "{":
        return None
    depth = 0
    for j in range(i, len(text)):
        if text[j] == "{" and text[j - 1] != "\\":
            depth += 1
        elif text[j] == "}" and text[j - 1] != "\\":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j].strip()
    return None


def _compact(answer: str) -> str:
    return re.sub(r"\s+", "", answer)


def equivalent(predicted: str, gold: str) -> bool:
    """Whether two LaTeX answers are mathematically equivalent (math-verify), or identical."""
    if _compact(predicted) == _compact(gold):
        return True
    timeout = _TIMEOUT_SECONDS if threading.current_thread() is threading.main_thread() else None
    gold_parsed = parse(f"${gold}$", parsing_timeout=timeout)
    predicted_parsed = parse(f"${predicted}$", parsing_timeout=timeout)
    if not gold_parsed or not predicted_parsed:
        return False
    return bool(verify(gold_parsed, predicted_parsed, timeout_seconds=timeout))


# Minerva's four MATH exemplars (Lewkowycz et al., 2022), the usual few-shot prompt.
FEW_SHOT_EXAMPLES = (
    {
        "question": r"Find the domain of the expression $\frac{\sqrt{x-2}}{\sqrt{5-x}}$.",
        "answer": r"The expressions inside each square root must be non-negative. Therefore, $x-2 \ge 0$, "
        r"so $x\ge2$, and $5 - x \ge 0$, so $x \le 5$. Also, the denominator cannot be equal to zero, "
        r"so $5-x>0$, which gives $x<5$. Therefore, the domain of the expression is $\boxed{[2,5)}$.",
    },
    {
        "question": r"If $\det \mathbf{A} = 2$ and $\det \mathbf{B} = 12,$ then find "
        r"$\det (\mathbf{A} \mathbf{B}).$",
        "answer": r"We have that $\det (\mathbf{A} \mathbf{B}) = (\det \mathbf{A})(\det \mathbf{B}) "
        r"= (2)(12) = \boxed{24}.$",
    },
    {
        "question": "Terrell usually lifts two 20-pound weights 12 times. If he uses two 15-pound weights "
        "instead, how many times must Terrell lift them in order to lift the same total weight?",
        "answer": r"If Terrell lifts two 20-pound weights 12 times, he lifts a total of "
        r"$2\cdot 12\cdot20=480$ pounds of weight. If he lifts two 15-pound weights instead for $n$ "
        r"times, he will lift a total of $2\cdot15\cdot n=30n$ pounds of weight. Equating this to 480 "
        r"pounds, we can solve for $n$: \begin{align*} 30n&=480\\ \Rightarrow\qquad n&=480/30="
        r"\boxed{16} \end{align*}",
    },
    {
        "question": "If the system of equations\n\\begin{align*}\n6x-4y&=a,\\\\\n6y-9x &=b.\n"
        "\\end{align*}has a solution $(x, y)$ where $x$ and $y$ are both nonzero, find $\\frac{a}{b},$ "
        "assuming $b$ is nonzero.",
        "answer": r"If we multiply the first equation by $-\frac{3}{2}$, we obtain $$6y-9x=-\frac{3}{2}a.$$"
        r"Since we also know that $6y-9x=b$, we have $$-\frac{3}{2}a=b\Rightarrow\frac{a}{b}="
        r"\boxed{-\frac{2}{3}}.$$",
    },
)


class MathTask(Task):
    """The MATH benchmark (Hendrycks et al.) and its subsets such as MATH-500."""

    name = "math"
    # Its prompts are "Problem: ... Solution:" items; a base model past its answer starts the next.
    stop_strings = ("\nProblem:",)
    few_shot_examples = FEW_SHOT_EXAMPLES
    question_fields = ("question", "problem")
    answer_fields = ("solution", "answer")

    def normalize(self, raw: dict, where: str = "row") -> dict:
        source = dict(raw)
        short = source.get("answer")
        if isinstance(source.get("solution"), str) and isinstance(short, str) and short != source["solution"]:
            source.setdefault("final_answer", short)
        return super().normalize(source, where)

    def prompt(self, row: dict) -> str:
        return f"Problem: {row['question']}\nGive the final answer in \\boxed{{}}.\nSolution:\n"

    def user_message(self, row: dict) -> str:
        return f"{row['question']}\nGive the final answer in \\boxed{{}}."

    def extract_answer(self, text: str) -> str | None:
        return last_boxed(text)

    def gold_answer(self, row: dict) -> str | None:
        """The boxed answer of the gold solution, else ``final_answer``, else the whole ``answer``."""
        boxed = last_boxed(row["answer"])
        if boxed is not None:
            return boxed
        final = row.get("final_answer")
        return final if isinstance(final, str) and final.strip() else row["answer"].strip()

    def answers_match(self, predicted: str, gold: str) -> bool:
        return equivalent(predicted, gold)
