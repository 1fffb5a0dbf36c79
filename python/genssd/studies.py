"""The demo's compared methods, grouped in studies (docs/design.md §5).

A study is one question the demo can answer; ``study_methods`` lists its methods (a table row
each), every one a configuration of the same search engine (``config.METHOD_PRESETS``) plus a
rule for which of its trajectories are trained on:

- ``main``: Gen-SSD against its baselines, each as usually run (the README's first table);
- ``equal-data-M``: every method trains on at most M correct trajectories per problem, so the
  methods differ only in *which* right answers they keep (``equal_data_methods``);
- ``presets``: Gen-SSD (ours), the paper's rule (``gen-ssd-paper``), MoRSD, rejection sampling and
  Standard KD at (about) the same teacher-token budget, with and without the answer check;
- ``iterative``: one search with the cold-started student against three rounds, each searched
  with the student the last round trained, at the same number of SFT steps;
- ``sweeps``: Gen-SSD with one setting changed at a time: the margin, K (candidates per chunk),
  the chunk (a line, or 16 / 32 tokens) and the score's scope (trajectory or chunk).

Several studies in one run share the methods they have in common (same key, same settings), and
methods whose searches are the same run that search once (``Method.shares_search``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from genssd.errors import UsageError

# The embedded tasks' solution lines are their reasoning steps; a line is one chunk.
LINE_CHUNKS = {"step_delimiter": "\n"}

# Iterative Gen-SSD's rounds in the ``iterative`` study: three blocks of the problems, each
# searched with the student the previous block trained (docs/design.md §3.2).
ITERATIVE_ROUNDS = 3


@dataclass(frozen=True)
class Method:
    """One row of a table: a search preset with overrides, and how its data is used.

    Attributes:
        key: the row's name (and its folder in a seed's run).
        label: the row's text in the table.
        preset: the search preset (``config.METHOD_PRESETS``).
        overrides: SearchConfig keys over the preset's.
        train_on, per_problem: which trajectories are trained on (``DistillPlan.train_on``).
        only_correct: train only on trajectories with a right answer.
        rounds: iterative Gen-SSD's rounds (``DistillPlan.rounds``); the SFT steps are split
            evenly between them (``train_steps // rounds`` each: 3,000 -> 3 x 1,000, a remainder
            dropped), so every method trains for the same number of steps.
        budget_of: spend as many teacher tokens as this method's search did (drawing problems from
            the larger pool) instead of searching the usual problems.
    """

    key: str
    label: str
    preset: str
    overrides: dict = field(default_factory=dict)
    train_on: str = "best"
    only_correct: bool = False
    per_problem: int = 1
    rounds: int = 1
    budget_of: str | None = None

    @property
    def shares_search(self) -> bool:
        """Whether another method of the seed with the same search settings may run this one's
        search for it (not with rounds, which search with their own students, nor with a budget)."""
        return self.rounds == 1 and self.budget_of is None


def _rejection(n: int) -> Method:
    return Method(
        "rejection",
        f"rejection sampling (n={n})",
        "standard",
        {"num_candidates": n, "beam_width": n},
        train_on="all",
        only_correct=True,
    )


def _gen_ssd(n: int, checked: bool = False) -> Method:
    # docs/design.md §3's optional last step: the same search, then only right answers are trained on.
    if checked:
        return Method("gen-ssd-checked", "Gen-SSD + answer check", "gen-ssd", _search(n), only_correct=True)
    return Method("gen-ssd", "Gen-SSD", "gen-ssd", _search(n))


def _search(n: int, **changes) -> dict:
    """Gen-SSD's search overrides in the demo: n candidates a chunk, a chunk a line."""
    return {"num_candidates": n, **LINE_CHUNKS, **changes}


STANDARD = Method("standard", "standard KD", "standard")
STANDARD_BUDGET = Method("standard-budget", "standard KD, Gen-SSD's budget", "standard", budget_of="gen-ssd")


def main_methods(n: int, equal_budget: bool) -> list[Method]:
    """The usual table (docs/design.md §3's methods), in table order."""
    rows = [
        STANDARD,
        _rejection(n),
        Method("best-of-n", f"post-hoc student selection (best of {n})", "best-of-n", {"num_candidates": n}),
        _gen_ssd(n),
        _gen_ssd(n, checked=True),
        Method("random", "random-scorer ablation", "random", _search(n)),
    ]
    return rows + [STANDARD_BUDGET] if equal_budget else rows


def equal_data_methods(n: int, m: int) -> list[Method]:
    """The equal-data protocol: every method keeps at most ``m`` trajectories with a correct
    answer per problem, so the comparison is of *which* right answers are trained on. Rejection
    sampling keeps m of its n samples' correct ones at random, post-hoc selection the m the
    student finds likeliest, Gen-SSD its m best correct beams (``beam_width = m``), MoRSD the m
    the student follows to the answer best (``genssd.morsd``).

    With m < n, Gen-SSD also runs with n beams and keeps its m best correct ones: m beams find a
    right answer for fewer problems than n samples do (on arith's full preset one beam for 61%
    of them, four samples for 95%), so this row trains on about as many problems as the others.
    """
    samples = {"num_candidates": n, "beam_width": n}
    keep = {"per_problem": m}
    rows = [
        Method("standard-correct", "standard KD, correct only", "standard", train_on="likeliest-correct"),
        Method(f"rejection-m{m}", f"rejection sampling ({m} of n={n}, random)", "standard", samples,
               train_on="random-correct", **keep),
        Method(f"post-hoc-m{m}", f"post-hoc student selection ({m} of n={n})", "standard", samples,
               train_on="likeliest-correct", **keep),
        Method(f"gen-ssd-m{m}", f"Gen-SSD ({m} best beam{'s' * (m > 1)})", "gen-ssd",
               _search(n, beam_width=m), train_on="likeliest-correct", **keep),
        Method(f"morsd-m{m}", f"MoRSD ({m} of n={n})", "standard", samples, train_on="morsd", **keep),
    ]  # fmt: skip
    if m < n:
        rows.append(
            Method(f"gen-ssd-n{n}-m{m}", f"Gen-SSD ({m} best correct of {n} beams)", "gen-ssd",
                   _search(n, beam_width=n), train_on="likeliest-correct", **keep)
        )  # fmt: skip
    return rows


def preset_methods(n: int) -> list[Method]:
    """Ours, the paper's rule and MoRSD against rejection sampling and Standard KD, each spending
    about n teacher samples a problem (Standard KD through Gen-SSD's budget)."""
    paper = _search(n)
    return [
        STANDARD_BUDGET,
        _rejection(n),
        # MoRSD picks one rationale a problem out of the same n samples (its paper keeps a subset).
        Method("morsd-m1", f"MoRSD (1 of n={n})", "standard", {"num_candidates": n, "beam_width": n},
               train_on="morsd"),
        _gen_ssd(n),
        _gen_ssd(n, checked=True),
        Method("gen-ssd-paper", "Gen-SSD, the paper's rule", "gen-ssd-paper", paper),
        Method("gen-ssd-paper-checked", "Gen-SSD, the paper's rule + answer check", "gen-ssd-paper", paper,
               only_correct=True),
    ]  # fmt: skip


def iterative_methods(n: int) -> list[Method]:
    """One-shot Gen-SSD against ``ITERATIVE_ROUNDS`` rounds, with and without the answer check."""
    rounds = ITERATIVE_ROUNDS
    return [
        _gen_ssd(n),
        _gen_ssd(n, checked=True),
        Method(f"gen-ssd-r{rounds}", f"Gen-SSD, {rounds} rounds", "gen-ssd", _search(n), rounds=rounds),
        Method(f"gen-ssd-r{rounds}-checked", f"Gen-SSD, {rounds} rounds + answer check", "gen-ssd",
               _search(n), only_correct=True, rounds=rounds),
    ]  # fmt: skip


# The sweeps' settings (the issue's grid): one changed at a time from the demo's Gen-SSD
# (margin 0.5, K = n, a line a chunk, the trajectory's score).
SWEEP_MARGINS = (0.25, 1.0, 2.0, float("inf"))
SWEEP_CANDIDATES = (2, 8)
SWEEP_CHUNK_TOKENS = (16, 32)


def sweep_methods(n: int) -> list[Method]:
    """Gen-SSD with one search setting changed at a time."""
    rows = [_gen_ssd(n)]
    rows += [
        Method(
            f"gen-ssd-margin-{margin:g}", f"Gen-SSD, margin {margin:g}", "gen-ssd", _search(n, margin=margin)
        )
        for margin in SWEEP_MARGINS
    ]
    rows += [
        Method(f"gen-ssd-k{k}", f"Gen-SSD, K = {k}", "gen-ssd", _search(k))
        for k in SWEEP_CANDIDATES
        if k != n
    ]
    rows += [
        Method(f"gen-ssd-chunk{tokens}", f"Gen-SSD, chunks of {tokens} tokens", "gen-ssd",
               {"num_candidates": n, "step_delimiter": None, "chunk_tokens": tokens})
        for tokens in SWEEP_CHUNK_TOKENS
    ]  # fmt: skip
    rows.append(
        Method(
            "gen-ssd-chunk-scope", "Gen-SSD, the chunk's score", "gen-ssd", _search(n, score_scope="chunk")
        )
    )
    return rows


STUDIES = ("main", "equal-data-M", "presets", "iterative", "sweeps")
_EQUAL_DATA = re.compile(r"equal-data-(\d+)")


def study_methods(name: str, n: int, equal_budget: bool = False) -> list[Method]:
    """The methods of study ``name`` (``STUDIES``) with n candidates a problem."""
    equal = _EQUAL_DATA.fullmatch(name) if isinstance(name, str) else None
    if equal is not None:
        m = int(equal.group(1))
        if not 1 <= m <= n:
            raise UsageError(f"equal-data-M needs M (trajectories a problem) in 1..{n} (n), got {name!r}")
        return equal_data_methods(n, m)
    builders = {
        "main": lambda: main_methods(n, equal_budget),
        "presets": lambda: preset_methods(n),
        "iterative": lambda: iterative_methods(n),
        "sweeps": lambda: sweep_methods(n),
    }
    if name not in builders:
        raise UsageError(f"unknown study {name!r}; choose from {', '.join(STUDIES)} (M in 1..{n})")
    return builders[name]()


def methods_of(studies: tuple[str, ...], n: int, equal_budget: bool = False) -> list[Method]:
    """The methods of several studies, in study order, each once: a method two studies share
    (same key) is run once, and must be the same in both. ``UsageError`` unless ``studies`` names
    at least one study (``STUDIES``, M in 1..n), none twice."""
    if not studies:
        raise UsageError(f"name at least one study ({', '.join(STUDIES)})")
    if len(set(studies)) != len(studies):
        raise UsageError(f"a study is named twice in {list(studies)}")
    chosen: dict[str, Method] = {}
    for name in studies:
        for method in study_methods(name, n, equal_budget):
            if chosen.setdefault(method.key, method) != method:
                raise UsageError(f"method {method.key!r} differs between studies")  # a definition bug
    budget_sources = {m.budget_of for m in chosen.values()} - {None}
    missing = sorted(budget_sources - set(chosen))
    if missing:
        raise UsageError(f"a budget row needs the method(s) {', '.join(missing)} in the same run")
    return list(chosen.values())


__all__ = [
    "ITERATIVE_ROUNDS",
    "STUDIES",
    "Method",
    "equal_data_methods",
    "iterative_methods",
    "main_methods",
    "methods_of",
    "preset_methods",
    "study_methods",
    "sweep_methods",
]
