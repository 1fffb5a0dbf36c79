"""Where the time of ``linear_cross_entropy``'s gradient-in-forward path goes, and how accurate
its ``grad_weight`` accumulators are (GPU study).

    python benchmarks/studies/fused_loss_parts.py --json out.json [--shapes A,B,C] [--accuracy]
        [--budgets 256,512,1024]

Times (``do_bench`` medians, bf16) of one chunk's parts scaled to the whole shape: the logits
matmul, the row step (and both as ``cross_entropy_chunk_``), the two gradient matmuls, the
fp32 / bf16 ``grad_weight`` accumulation, next to the bf16 floor ``hidden @ weight.T``.
``--accuracy``: at N=32768, d=896, V=151936 (chunked as ``fused_loss.plan_chunks`` plans), the
largest error of the loss and gradients against float64, for the fused path, the recomputing one
and ``F.cross_entropy`` on bf16 logits (the tolerance rule's bound).
The row step's launch variants (slice width, warps, programs) are timed at each shape's chunk
too. ``--budgets`` (instead of the parts): the whole forward+backward (default call, bf16) and
its extra memory with the chunk budget (``fused_loss.CHUNK_BYTES["cuda"]``) set to each size in
MiB, against the floor.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from triton.testing import do_bench

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from kernel_providers import SHAPES  # noqa: E402

from genssd_kernels import fused_loss, linear_cross_entropy  # noqa: E402
from genssd_kernels.triton.cross_entropy_rows import cross_entropy_chunk_, cross_entropy_rows_  # noqa: E402

# (slice width, warps) of the row step to compare with the default.
# (slice width, warps, programs per SM; 0: one program per row): with one program per SM the
# rows in flight (132 x 297 KiB at V=151936) fit in L2, so the second pass may read from it.
ROW_STEP_VARIANTS = [
    (2048, 4, 0),
    (8192, 8, 0),
    (8192, 16, 0),
    (8192, 16, 1),
    (16384, 16, 1),
    (16384, 32, 1),
    (8192, 8, 2),
]


def inputs(n, d, v, seed=0):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    hidden = torch.randn(n, d, device="cuda", generator=gen).to(torch.bfloat16)
    weight = (torch.randn(v, d, device="cuda", generator=gen) * d**-0.5).to(torch.bfloat16)
    targets = torch.randint(0, v, (n,), device="cuda", generator=gen)
    return hidden, weight, targets


def parts(shape_name):
    n, d, v = SHAPES[shape_name]
    hidden, weight, targets = inputs(n, d, v)
    rows = fused_loss.plan_chunks(n, v, d, torch.bfloat16, hidden.device, need_weight=True).rows
    chunks = -(-n // rows)
    h, t = hidden[:rows], targets[:rows]
    logits = torch.empty(rows, v, dtype=torch.bfloat16, device="cuda")
    scale = torch.full((), 1.0 / n, device="cuda")  # the mean's, as in training
    grad_hidden = torch.empty(rows, d, dtype=torch.bfloat16, device="cuda")
    acc32 = torch.zeros(v, d, device="cuda")
    acc16 = torch.zeros(v, d, dtype=torch.bfloat16, device="cuda")
    torch.mm(h, weight.T, out=logits)
    # The gradient matmuls read what one row step leaves, in a buffer of their own: a matmul's
    # speed depends on its data (tensor cores clock higher on low-entropy operands), and the
    # timings below leave `logits` holding the row step applied many times over (near-uniform
    # values). On those the two products read 0.78-0.87x the floor at B and C (H200, 02f1449)
    # while the whole op sat 0.36-0.52x above its parts.
    grad_logits = logits.clone()
    cross_entropy_rows_(grad_logits, t, scale, -100)
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    timed = {
        "floor (whole shape)": do_bench(lambda: hidden @ weight.T, rep=500) / chunks,
        "logits mm": do_bench(lambda: torch.mm(h, weight.T, out=logits), rep=500),
        "row step": do_bench(lambda: cross_entropy_rows_(logits, t, scale, -100), rep=500),
        # Both of the above in Triton: the forward kernels write the logits, one gradient pass.
        "logits kernel + gradient pass": do_bench(
            lambda: cross_entropy_chunk_(h, weight, t, scale, -100, logits), rep=500
        ),
        **{
            f"row step {block}/{warps}w/{per_sm}": do_bench(
                lambda b=block, w=warps, p=per_sm: cross_entropy_rows_(
                    logits, t, scale, -100, block=b, num_warps=w, programs=p * sms
                ),
                rep=300,
            )
            for block, warps, per_sm in ROW_STEP_VARIANTS
        },
        "grad_hidden mm": do_bench(lambda: torch.mm(grad_logits, weight, out=grad_hidden), rep=500),
        "grad_weight mm (write)": do_bench(lambda: torch.mm(grad_logits.T, h, out=acc16), rep=500),
        "grad_weight += bf16": do_bench(lambda: acc16.addmm_(grad_logits.T, h), rep=500),
        "grad_weight += fp32": do_bench(
            lambda: torch.addmm(acc32, grad_logits.T, h, out_dtype=torch.float32, out=acc32), rep=500
        ),
    }
    floor = timed["floor (whole shape)"]
    return [
        {
            "shape": shape_name,
            "part": name,
            "chunks": chunks,
            "ms_whole_shape": ms * chunks,
            "x_floor": ms / floor,
        }
        for name, ms in timed.items()
    ]


def budgets(shape_name, sizes_mib):
    """The default call's forward+backward time and extra memory for each chunk budget."""
    n, d, v = SHAPES[shape_name]
    hidden, weight, targets = inputs(n, d, v)
    floor = do_bench(lambda: hidden @ weight.T, rep=500)
    hidden.requires_grad_(True)
    weight.requires_grad_(True)

    def step():
        hidden.grad = weight.grad = None
        linear_cross_entropy(hidden, weight, targets).backward()

    grads_mib = (hidden.numel() + weight.numel()) * 2 / 2**20
    saved = dict(fused_loss.CHUNK_BYTES)
    rows = []
    try:
        for size in sizes_mib:
            fused_loss.CHUNK_BYTES["cuda"] = size * 2**20
            step()
            hidden.grad = weight.grad = None
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            step()
            torch.cuda.synchronize()
            extra = (torch.cuda.max_memory_allocated() - base) / 2**20 - grads_mib
            ms = do_bench(step, warmup=50, rep=1000)
            rows.append(
                {
                    "shape": shape_name,
                    "budget_mib": size,
                    **fused_loss.plan_chunks(n, v, d, torch.bfloat16, hidden.device, True)._asdict(),
                    "ms": ms,
                    "x_floor": ms / floor,
                    "extra_mib": extra,
                }
            )
    finally:
        fused_loss.CHUNK_BYTES.update(saved)
    return rows


def accuracy():
    n, d, v = 32768, 896, 151936
    hidden, weight, targets = inputs(n, d, v, seed=1)

    def grads(fn, h, w):
        h = h.detach().clone().requires_grad_(True)
        w = w.detach().clone().requires_grad_(True)
        loss = fn(h, w)
        loss.backward()
        return loss.detach().double(), h.grad.double(), w.grad.double()

    def truth():
        # float64 in row chunks (the [N, V] float64 logits would take 40 GB).
        h64, w64 = hidden.double(), weight.double()
        loss = torch.zeros((), dtype=torch.float64, device="cuda")
        gh = torch.empty_like(h64)
        gw = torch.zeros_like(w64)
        for r0 in range(0, n, 2048):
            z = h64[r0 : r0 + 2048] @ w64.T
            t = targets[r0 : r0 + 2048]
            lse = torch.logsumexp(z, 1)
            loss += (lse - z.gather(1, t[:, None]).squeeze(1)).sum()
            z.sub_(lse[:, None]).exp_()
            z[torch.arange(len(t), device="cuda"), t] -= 1
            z /= n
            gh[r0 : r0 + 2048] = z @ w64
            gw += z.T @ h64[r0 : r0 + 2048]
        return loss / n, gh, gw

    exact = truth()
    results = {}
    results["F.cross_entropy bf16 logits"] = grads(
        lambda h, w: F.cross_entropy((h @ w.T).float(), targets), hidden, weight
    )
    results["fused (the default chunk plan)"] = grads(
        lambda h, w: linear_cross_entropy(h, w, targets, backend="triton"), hidden, weight
    )
    results["recompute path"] = grads(
        lambda h, w: linear_cross_entropy(h, w, targets, backend="triton", recompute=True), hidden, weight
    )
    rows = []
    for name, got in results.items():
        errors = [(a - e).abs().max().item() for a, e in zip(got, exact)]
        rows.append(
            {
                "variant": name,
                "loss_err": errors[0],
                "grad_hidden_err": errors[1],
                "grad_weight_err": errors[2],
            }
        )
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--shapes", default="A,B,C")
    parser.add_argument("--accuracy", action="store_true")
    parser.add_argument("--budgets", help="chunk budgets (MiB, comma-separated): the whole op, not parts")
    args = parser.parse_args()
    out = {"card": torch.cuda.get_device_name(), "parts": [], "accuracy": None, "budgets": None}
    if args.budgets:
        sizes = [int(size) for size in args.budgets.split(",")]
        out["budgets"] = [row for shape in args.shapes.split(",") for row in budgets(shape, sizes)]
        for row in out["budgets"]:
            print(
                f"{row['shape']} budget {row['budget_mib']:>5} MiB ({row['rows']} rows)"
                f"  {row['ms']:8.3f} ms  {row['x_floor']:.2f}x  extra {row['extra_mib']:.0f} MiB"
            )
        torch.cuda.empty_cache()
    for shape_name in [] if args.budgets else args.shapes.split(","):
        out["parts"] += parts(shape_name)
        torch.cuda.empty_cache()
    for row in out["parts"]:
        print(f"{row['shape']} {row['part']:<24} {row['ms_whole_shape']:8.3f} ms  {row['x_floor']:.2f}x")
    if args.accuracy:
        out["accuracy"] = accuracy()
        for row in out["accuracy"]:
            print(row)
    args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
