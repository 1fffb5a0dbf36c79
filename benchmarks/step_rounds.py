"""One row per variant from its alternating timing rounds (``bench_train.py``, ``bench_trainer.py``)."""

from __future__ import annotations

import statistics


def median_of_rounds(rounds: list[dict]) -> dict:
    """A variant's row from its rounds' rows (each with ``ms_per_step``, ``batch``, ``seq`` and
    ``*_mib`` memory fields, or a ``note``): the first round's other fields, the median step time
    (and its tokens/s), the rounds' sorted times, the largest of each memory field (None where no
    round measured it); a failed round's row as it is."""
    failed = [r for r in rounds if "note" in r]
    if failed:
        return failed[0]
    ms = sorted(r["ms_per_step"] for r in rounds)
    median = statistics.median(ms)
    first = rounds[0]
    memory = {}
    for key in (k for k in first if k.endswith("_mib")):
        measured = [r[key] for r in rounds if r[key] is not None]
        memory[key] = max(measured) if measured else None
    return {
        **first,
        "tokens_per_s": first["batch"] * first["seq"] / (median / 1000),
        "ms_per_step": median,
        "ms_per_step_rounds": ms,
        **memory,
    }
