"""Where one decode step of the static engine spends its time (a study, not a maintained suite).

Builds bench_search's 1.1B-shaped teacher (bf16, 256 rows, a 256-column span), captures the
decode step as the search does, then prints: the step's time as a graph replay and eagerly, the
number of kernels it launches, their summed device time, and the kernels that take the most.

    python benchmarks/studies/profile_decode_step.py [--shape 1.1b|7b] [--backend torch|triton]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_search import SHAPES, make_model, make_prompts, make_tokenizer  # noqa: E402
from genssd.engine.decode import StaticTeacherSampler  # noqa: E402


def _replays_ms(fn, reset, count: int = 16, rounds: int = 5) -> float:
    """Median over ``rounds`` of the mean time of ``count`` calls (``reset`` before each round)."""
    times = []
    for _ in range(rounds):
        reset()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(count):
            fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / count)
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="1.1b")
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--backend", choices=["torch", "triton"], default="triton")
    args = parser.parse_args()
    spec = SHAPES[args.shape]
    tokenizer = make_tokenizer(spec["vocab"])
    torch.manual_seed(0)
    teacher = make_model(*spec["teacher"], spec["vocab"])
    prompts = [tokenizer(p)["input_ids"] for p in make_prompts(args.rows, spec["vocab"])]
    sampler = StaticTeacherSampler(
        teacher, tokenizer, backend=args.backend, temperature=0.7, top_p=1.0, step_delimiter=None
    )
    sampler.start(prompts, rows=args.rows, columns=512)
    parent = torch.arange(args.rows, device="cuda")
    keys = parent * 7919
    with torch.no_grad():
        # One 32-token chunk captures the step's graph; the timed replays then run 16 steps at a
        # time from the state after it, with the step counter and the cache lengths put back.
        sampler.propose(parent, keys, [32] * args.rows, [False] * args.rows)
        state = sampler._states[args.rows]
        cache = sampler.runner.cache
        (span, _), graph = next(iter(state.graphs.items()))
        lengths = cache.length.clone()

        def reset():
            state.step.zero_()
            state.done.zero_()
            cache.length.copy_(lengths)

        graph_ms = _replays_ms(graph.replay, reset)
        eager_ms = _replays_ms(lambda: sampler._step(state, span), reset)
        reset()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            sampler._step(state, span)
            torch.cuda.synchronize()
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    total_us = sum(e.time_range.elapsed_us() for e in kernels)
    by_name: dict[str, list[float]] = {}
    for e in kernels:
        by_name.setdefault(e.name, []).append(e.time_range.elapsed_us())
    print(f"{args.shape}, {args.backend}: {args.rows} rows, span {span}, {len(teacher.model.layers)} layers")
    print(f"step as a graph replay {graph_ms:.3f} ms; eager {eager_ms:.3f} ms")
    print(f"kernels a step: {len(kernels)}; their summed device time {total_us / 1e3:.3f} ms")
    print("| kernel | calls | total us | mean us |")
    print("|---|---:|---:|---:|")
    for name, times in sorted(by_name.items(), key=lambda kv: -sum(kv[1]))[:14]:
        print(f"| {name[:70]} | {len(times)} | {sum(times):.0f} | {sum(times) / len(times):.1f} |")


if __name__ == "__main__":
    main()
