"""Where the whole fused loss spends its time: each kernel's device time inside one fwd+bwd.

``fused_loss_parts.py`` times each part alone; this study runs the whole
``linear_cross_entropy`` forward and backward (mean, bf16, the default call and the chunk step
it did not pick) under ``torch.profiler`` and sums each kernel's device time per call, so that a
gap between the parts and the whole shows up as either a slower kernel in place or idle time
(the call's device-side median from ``do_bench`` minus the kernels' sum). Ratios are to the bf16
cuBLAS ``hidden @ weight.T`` of the same shape, timed in the same process.

Usage: ``python benchmarks/studies/fused_loss_profile.py --json out.json [--shapes A,B,C]``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_kernels import make_inputs  # noqa: E402
from kernel_providers import SHAPES, train_providers  # noqa: E402

PROFILED_CALLS = 3
NAME_WIDTH = 70


# The study's variant -> the kernel benchmark's provider of the same closure.
VARIANTS = {
    "default": "genssd",
    "cuBLAS + row step": "genssd (cuBLAS + row step)",
    "logits kernel": "genssd (logits kernel)",
}


def variants(h, w, t):
    """name -> closure running one fwd+bwd."""
    providers = train_providers()
    return {variant: providers[provider](h, w, t, None) for variant, provider in VARIANTS.items()}


def kernel_times(fn) -> dict[str, tuple[float, float]]:
    """Kernel name -> (launches per call, device ms per call) over ``PROFILED_CALLS`` calls."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(PROFILED_CALLS):
            fn()
        torch.cuda.synchronize()
    per_name = defaultdict(lambda: [0, 0.0])
    for event in prof.events():
        if event.device_type != torch.autograd.DeviceType.CUDA:
            continue
        entry = per_name[event.name[:NAME_WIDTH]]
        entry[0] += 1
        entry[1] += event.device_time_total / 1000.0
    return {name: (n / PROFILED_CALLS, ms / PROFILED_CALLS) for name, (n, ms) in per_name.items()}


def profile_shape(shape_name: str) -> list[dict]:
    from triton.testing import do_bench

    h, w, t, _ = make_inputs(SHAPES[shape_name], requires_grad=True)
    floor = do_bench(lambda: h @ w.T, warmup=100, rep=1000, return_mode="median")
    rows = []
    for variant, fn in variants(h, w, t).items():
        wall = do_bench(fn, warmup=100, rep=1000, return_mode="median")
        kernels = kernel_times(fn)
        total = sum(ms for _, ms in kernels.values())
        print(f"{shape_name} {variant}: {wall / floor:.2f}x the matmul, kernels {total / floor:.2f}x, "
              f"idle {(wall - total) / floor:.2f}x")  # fmt: skip
        for name, (count, ms) in sorted(kernels.items(), key=lambda item: -item[1][1]):
            if ms / floor >= 0.005:
                print(f"    {ms / floor:5.3f}x  {count:5.1f} launches  {name}")
        rows.append(
            {
                "shape": shape_name,
                "variant": variant,
                "floor_ms": floor,
                "wall_ms": wall,
                "kernels_ms": total,
                "kernels": [
                    {"name": name, "launches": count, "ms": ms, "x_floor": ms / floor}
                    for name, (count, ms) in sorted(kernels.items(), key=lambda item: -item[1][1])
                ],
            }
        )
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="A,B,C")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("this study needs CUDA")
    rows = [row for name in args.shapes.split(",") for row in profile_shape(name)]
    if args.json:
        args.json.write_text(json.dumps({"card": torch.cuda.get_device_name(), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
