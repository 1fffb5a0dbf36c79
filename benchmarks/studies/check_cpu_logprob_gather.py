"""Manual check of the cpp backend's CPU logprob_gather against the reference: time and peak memory.

    python benchmarks/studies/check_cpu_logprob_gather.py [--threads 2] [--shape 512 256 32000]

The target (N=512, d=256, V=32000 on 2 cores): cpp faster than reference, with at most 1/8 of
its peak memory. Each (dtype, mode, backend) runs in a fresh process: a warm-up call, then the
peak resident set is reset (/proc/self/clear_refs, Linux) and one call measures the peak above
the resident set before it; then the best of 5 timed calls. A fixed malloc mmap threshold makes
every buffer of 64 KiB or more its own mapping, so freed buffers leave the resident set at once
and a call cannot hide its peak in memory recycled from the warm-up. Timings on a shared machine
are noisy: pin the cores (``taskset -c 0,1``) where possible.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

CHILD = r"""
import json, sys, time, torch
from genssd_kernels import ops

backend, mode, dtype = sys.argv[1], sys.argv[2], getattr(torch, sys.argv[3])
n, d, v = map(int, sys.argv[4:7])

def status(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) * 1024

gen = torch.Generator().manual_seed(0)
hidden = torch.randn(n, d, generator=gen).to(dtype)
weight = (torch.randn(v, d, generator=gen) * d**-0.5).to(dtype)
targets = torch.randint(0, v, (n,), generator=gen)
if mode != "fwd":
    hidden.requires_grad_()
    weight.requires_grad_()
phases = {"fwd": 0.0, "bwd": 0.0}

def call():
    hidden.grad = weight.grad = None
    start = time.perf_counter()
    if mode.startswith("loss"):
        recompute = mode == "loss-recompute"
        out = ops.linear_cross_entropy(hidden, weight, targets, backend=backend, recompute=recompute)
    else:
        entropy = mode == "fwd"
        out = ops.logprob_gather(hidden, weight, targets, backend=backend, return_entropy=entropy)[0].sum()
    middle = time.perf_counter()
    if mode != "fwd":
        out.backward()
    phases["fwd"], phases["bwd"] = middle - start, time.perf_counter() - middle

call()
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
before = status("VmRSS:")
call()
peak = status("VmHWM:")
times = []
for _ in range(5):
    call()
    times.append((phases["fwd"] + phases["bwd"], phases["fwd"], phases["bwd"]))
best = min(times)
print(json.dumps({"peak_mb": (peak - before) / 2**20, "ms": 1e3 * best[0], "fwd_ms": 1e3 * best[1],
                  "bwd_ms": 1e3 * best[2]}))
"""


def measure(backend: str, mode: str, dtype: str, shape: list[int], threads: int) -> dict:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": str(threads)}
    args = [sys.executable, "-c", CHILD, backend, mode, dtype, *map(str, shape)]
    out = subprocess.run(args, capture_output=True, text=True, check=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--shape", type=int, nargs=3, default=[512, 256, 32000], metavar=("N", "d", "V"))
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    args = parser.parse_args()
    print(f"N, d, V = {args.shape}; {args.threads} threads")
    for dtype in args.dtypes:
        for mode in ("fwd", "fwd+bwd"):
            ref = measure("reference", mode, dtype, args.shape, args.threads)
            cpp = measure("cpp", mode, dtype, args.shape, args.threads)
            print(
                f"{dtype:9s} {mode:8s} reference {ref['ms']:7.1f} ms {ref['peak_mb']:7.1f} MB | "
                f"cpp {cpp['ms']:7.1f} ms {cpp['peak_mb']:6.1f} MB | speedup {ref['ms'] / cpp['ms']:.2f}x, "
                f"memory {cpp['peak_mb'] / max(ref['peak_mb'], 1e-9):.3f} of reference",
                flush=True,
            )
        # The training loss: gradient in the forward (default) against the recomputing backward.
        for mode in ("loss-recompute", "loss"):
            row = measure("cpp", mode, dtype, args.shape, args.threads)
            print(
                f"{dtype:9s} {mode:14s} cpp forward {row['fwd_ms']:7.1f} ms, "
                f"backward {row['bwd_ms']:7.1f} ms, total {row['ms']:7.1f} ms, {row['peak_mb']:6.1f} MB",
                flush=True,
            )


if __name__ == "__main__":
    main()
