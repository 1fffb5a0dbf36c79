"""The cost of ``return_entropy=True`` in the ``logprob_gather`` forward, timed in alternation.

``python benchmarks/studies/entropy_cost.py --json benchmarks/results/entropy-cost-h100.json``

The provider table times the forward without and then with entropy; the card warms up over a
table (its matmul floor drifts by up to 5% from the first provider to the last), which shows up in
that ratio. Here the two run in turn, ``--rounds`` times at each shape, and the ratio is taken
within each round; the median over rounds is the figure to compare with the 1.03 target. Each
time takes the suite's 1 s ``do_bench`` budget: with 0.3 s the rounds' ratios at A spread from
0.93 to 1.13 on an H100, with 1 s from 1.01 to 1.03.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_kernels import device_median_ms, make_inputs  # noqa: E402
from kernel_providers import SHAPES  # noqa: E402


def entropy_cost(shape_name: str, rounds: int) -> dict:
    """Per-round forward times (ms) without and with entropy at one shape, and their ratios."""
    from genssd_kernels.triton import logprob_gather as triton_gather

    hidden, weight, targets, cu = make_inputs(SHAPES[shape_name])
    times = {False: [], True: []}
    with torch.no_grad():
        for _ in range(rounds):
            for entropy in (False, True):
                times[entropy].append(
                    device_median_ms(
                        lambda entropy=entropy: triton_gather.forward(
                            hidden, weight, targets, cu, return_entropy=entropy
                        )
                    )
                )
    ratios = [with_ / without for without, with_ in zip(times[False], times[True])]
    torch.cuda.empty_cache()
    return {
        "shape": shape_name,
        "ms": times[False],
        "ms_entropy": times[True],
        "ratios": ratios,
        "median_ratio": statistics.median(ratios),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--shapes", default=",".join(SHAPES))
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    rows = [entropy_cost(name, args.rounds) for name in args.shapes.split(",")]
    card = torch.cuda.get_device_name()
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"card": card, "torch": torch.__version__, "rows": rows}, indent=1))
    print(f"{card}: forward time with entropy / without, {args.rounds} alternating rounds")
    for row in rows:
        spread = ", ".join(f"{ratio:.3f}" for ratio in row["ratios"])
        print(f"{row['shape']}: median {row['median_ratio']:.3f} (rounds: {spread})")


if __name__ == "__main__":
    main()
