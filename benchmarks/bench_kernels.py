"""Kernel speed and memory on a GPU: genssd's fused ops against the matmul floor and the peers.

Two entry points over the same measurements:
- ``pytest benchmarks/bench_kernels.py --benchmark-only`` (pytest-benchmark; the device-side
  median from ``triton.testing.do_bench`` goes into each row's ``extra_info``);
- ``python benchmarks/bench_kernels.py --json benchmarks/results/kernels.json`` prints the
  tables of benchmarks/README.md and saves every row as JSON; ``--quick`` times only the
  matmul floor and genssd with fewer repetitions;
- ``python benchmarks/bench_kernels.py --sweep forward --json ...`` (or ``--sweep backward``;
  ``--sweep parts`` times the backward's parts) times the Triton tile configurations of
  ``sweep_configs`` against the matmul floor, to pick the entries of ``FORWARD_CONFIGS`` /
  ``BACKWARD_CONFIGS`` in ``genssd_kernels/triton/logprob_gather.py``.
Times are medians on random data (weight std d**-0.5); ratios are to the bf16 cuBLAS product
``hidden @ weight.T`` measured in the same process on the same card.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kernel_providers import SHAPES, forward_providers, prune_providers, train_providers  # noqa: E402

MiB = 2**20


def make_inputs(shape, *, requires_grad=False, segments=64, seed=0):
    """bf16 ``hidden [N, d]``, ``weight [V, d]``, ``targets [N]`` and ``cu_seqlens [segments+1]`` on CUDA."""
    n, d, v = shape
    gen = torch.Generator(device="cuda").manual_seed(seed)
    hidden = torch.randn(n, d, device="cuda", generator=gen).to(torch.bfloat16)
    weight = (torch.randn(v, d, device="cuda", generator=gen) * d**-0.5).to(torch.bfloat16)
    targets = torch.randint(0, v, (n,), device="cuda", generator=gen)
    cu_seqlens = torch.linspace(0, n, segments + 1, device="cuda").long()
    hidden.requires_grad_(requires_grad)
    weight.requires_grad_(requires_grad)
    return hidden, weight, targets, cu_seqlens


# do_bench budgets in ms (warm-up, measured repetitions); --quick lowers them. do_bench repeats a
# call for `rep` ms: 1000 ms gives >= 16 repetitions of the slowest op here (fwd+bwd at C, ~60 ms a
# call); at 100 ms it got 1-2 and the medians moved by up to 10% between runs.
TIMING = {"warmup": 100, "rep": 1000}


def device_median_ms(fn, *, warmup=None, rep=None):
    from triton.testing import do_bench

    return do_bench(fn, warmup=warmup or TIMING["warmup"], rep=rep or TIMING["rep"], return_mode="median")


def extra_memory_mib(fn, *, output_bytes=0, release=None):
    """Peak memory allocated while ``fn`` runs beyond what existed before, minus its outputs.

    ``release`` frees what a previous call left behind (e.g. ``.grad``), so that the baseline
    holds only the inputs and ``fn``'s own outputs are counted once, through ``output_bytes``.
    """
    fn()
    if release is not None:
        release()
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return max(0, torch.cuda.max_memory_allocated() - base - output_bytes) / MiB


def measure_matmul_op(op, shape_name, provider):
    """One row: time, ratio inputs and extra memory of ``provider`` for ``op`` at a shape."""
    shape = SHAPES[shape_name]
    n, d, v = shape
    train = op == "linear_cross_entropy_fwd_bwd"
    providers = train_providers() if train else forward_providers()
    hidden, weight, targets, cu = make_inputs(shape, requires_grad=train and provider != "matmul")
    fn = providers[provider](hidden, weight, targets, cu)
    if fn is None:
        return None
    if train or provider == "matmul":
        grad_bytes = (
            (hidden.numel() + weight.numel()) * hidden.element_size() if train and provider != "matmul" else 0
        )
        output_bytes = grad_bytes + (n * v * 2 if provider == "matmul" else 0)
    else:
        output_bytes = n * 4 * 2

    def release():
        hidden.grad = weight.grad = None

    try:
        with torch.no_grad() if not train else torch.enable_grad():
            memory = extra_memory_mib(fn, output_bytes=output_bytes, release=release if train else None)
            ms = device_median_ms(fn)
    except torch.OutOfMemoryError:
        return {"op": op, "shape": shape_name, "provider": provider, "ms": None, "note": "out of memory"}
    finally:
        torch.cuda.empty_cache()
    flops = 2 * n * d * v * (3 if train and provider != "matmul" else 1)
    return {
        "op": op,
        "shape": shape_name,
        "N": n,
        "d": d,
        "V": v,
        "provider": provider,
        "ms": ms,
        "tflops": flops / ms / 1e9,
        "extra_mib": memory,
    }


def measure_prune(provider, *, groups=4096, candidates=64, k=4, margin=0.5, graph=False):
    gen = torch.Generator(device="cuda").manual_seed(0)
    scores = torch.randn(groups * candidates, device="cuda", generator=gen)
    offsets = torch.arange(0, groups * candidates + 1, candidates, device="cuda")
    fn = prune_providers()[provider](scores, offsets, k, margin)
    try:
        fn()
    except RuntimeError as exc:
        return {"op": "branch_prune", "provider": provider, "ms": None, "note": str(exc)[:120]}
    if graph:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            fn()
        torch.cuda.current_stream().wait_stream(stream)
        cuda_graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(cuda_graph):
            fn()
        fn = cuda_graph.replay
    ms = device_median_ms(fn, warmup=50, rep=300)
    return {
        "op": "branch_prune" + (" (graph)" if graph else ""),
        "shape": f"P={groups} C/P={candidates} k={k}",
        "provider": provider,
        "ms": ms,
    }


def _tile(
    block_n,
    block_v,
    block_d,
    warps,
    stages,
    group_rows,
    per_sm,
    max_registers=None,
    tma=False,
    parts=1,
    persistent=False,
    flatten=False,
):
    from genssd_kernels.triton.logprob_gather import TileConfig

    return TileConfig(
        block_n,
        block_v,
        block_d,
        num_warps=warps,
        num_stages=stages,
        group_rows=group_rows,
        programs_per_sm=per_sm,
        max_registers=max_registers,
        tma=tma,
        epilogue_parts=parts,
        persistent=persistent,
        flatten_tiles=flatten,
    )


def sweep_configs(kind):
    """name -> TileConfig candidates for ``--sweep forward|backward`` (none spills for sm_90 with
    Triton 3.6; ``benchmarks/studies/compile_kernels.py`` gives the registers). The earlier candidates and
    their timings are in NOTES.md and ``benchmarks/results/sweep-*.json``."""
    tile = functools.partial(_tile, 128, 256, 64, 8, 3, 16, 1)
    if kind == "forward":
        # The first entry is the default, with and without entropy.
        return {
            "128x256x64 w8 s3 g16 tma, fused tile loop": tile(tma=True, flatten=True),
            "128x256x64 w8 s3 g16 tma": tile(tma=True),
            "128x256x64 w8 s3 g16 pointer loads": tile(),
        }
    # The first entry is the default.
    return {
        "128x256x64 w8 s3 g16 tma, 4 slices, persistent": tile(tma=True, parts=4, persistent=True),
        "128x256x64 w8 s3 g16 tma, 8 slices, persistent": tile(tma=True, parts=8, persistent=True),
        "128x256x64 w8 s3 g16 tma, 4 slices": tile(tma=True, parts=4),
        "128x256x64 w8 s3 g8 pointer loads, 1 slice (before)": _tile(128, 256, 64, 8, 3, 8, 1),
    }


BACKWARD_PARTS = {
    "grad-logits kernel only": (False, False),
    "+ grad_z @ W (grad_hidden)": (True, False),
    "+ grad_z.T @ H (grad_weight)": (False, True),
    "whole backward": (True, True),
}


def sweep(kind, shape_name):
    """Rows timing each ``sweep_configs(kind)`` entry at one shape, plus the matmul floor.

    ``forward`` times the no-grad forward with entropy off and on; ``backward`` times only the
    backward (grad-logits kernel + the cuBLAS products) from saved forward statistics; ``parts``
    times the default backward with and without each of its two products.
    """
    from genssd_kernels.triton import logprob_gather as triton_gather

    shape = SHAPES[shape_name]
    hidden, weight, targets, cu = make_inputs(shape)
    op = f"sweep_{kind}"
    rows = [
        {
            "op": op,
            "shape": shape_name,
            "provider": "matmul",
            "ms": device_median_ms(lambda: hidden @ weight.T),
        }
    ]
    with torch.no_grad():
        stats = triton_gather.forward(hidden, weight, targets, cu)
        grad_logp = torch.full_like(stats[0], -1.0 / shape[0])
        if kind == "parts":
            # The backward's parts by difference: the grad-logits kernel alone (no product asked
            # for), then with grad_z @ W (grad_hidden) or grad_z.T @ H (grad_weight), then both.
            for name, (need_hidden, need_weight) in BACKWARD_PARTS.items():
                ms = device_median_ms(
                    lambda need_hidden=need_hidden, need_weight=need_weight: triton_gather.backward(
                        grad_logp,
                        hidden,
                        weight,
                        targets,
                        stats[3],
                        stats[4],
                        temperature=1.0,
                        ignore_index=-100,
                        need_hidden=need_hidden,
                        need_weight=need_weight,
                    )
                )
                rows.append({"op": op, "shape": shape_name, "provider": name, "ms": ms})
                print(json.dumps(rows[-1]), flush=True)
        else:
            for name, config in sweep_configs(kind).items():
                if kind == "forward":
                    variants = {"": False, " +entropy": True}
                    for suffix, entropy in variants.items():
                        ms = device_median_ms(
                            lambda entropy=entropy, config=config: triton_gather.forward(
                                hidden, weight, targets, cu, return_entropy=entropy, config=config
                            )
                        )
                        rows.append({"op": op, "shape": shape_name, "provider": name + suffix, "ms": ms})
                else:
                    ms = device_median_ms(
                        lambda config=config: triton_gather.backward(
                            grad_logp,
                            hidden,
                            weight,
                            targets,
                            stats[3],
                            stats[4],
                            temperature=1.0,
                            ignore_index=-100,
                            config=config,
                        )
                    )
                    rows.append({"op": op, "shape": shape_name, "provider": name, "ms": ms})
                print(json.dumps(rows[-1]), flush=True)
    torch.cuda.empty_cache()
    return rows


FORWARD_PROVIDERS = list(forward_providers())
TRAIN_PROVIDERS = list(train_providers())


@pytest.mark.cuda
@pytest.mark.parametrize("provider", FORWARD_PROVIDERS)
@pytest.mark.parametrize("shape_name", list(SHAPES))
def bench_logprob_gather_forward(benchmark, shape_name, provider):
    row = measure_matmul_op("logprob_gather_fwd", shape_name, provider)
    if row is None:
        pytest.skip(f"{provider} is not importable")
    benchmark.extra_info.update(row)
    benchmark.pedantic(lambda: None, rounds=1)


@pytest.mark.cuda
@pytest.mark.parametrize("provider", TRAIN_PROVIDERS)
@pytest.mark.parametrize("shape_name", list(SHAPES))
def bench_linear_cross_entropy_train(benchmark, shape_name, provider):
    row = measure_matmul_op("linear_cross_entropy_fwd_bwd", shape_name, provider)
    if row is None:
        pytest.skip(f"{provider} is not importable")
    benchmark.extra_info.update(row)
    benchmark.pedantic(lambda: None, rounds=1)


@pytest.mark.cuda
@pytest.mark.parametrize("graph", [False, True])
@pytest.mark.parametrize("provider", list(prune_providers()))
def bench_branch_prune(benchmark, provider, graph):
    row = measure_prune(provider, graph=graph)
    benchmark.extra_info.update(row)
    benchmark.pedantic(lambda: None, rounds=1)


MATMUL_AFTER = "matmul (again, after the providers)"


def _with_ratios(rows):
    """Each row's ``ratio_to_matmul``: its time over the mean of the floor's timings at its op and shape."""
    timings = {}
    for r in rows:
        if r.get("provider") in ("matmul", MATMUL_AFTER) and r.get("ms"):
            timings.setdefault((r["op"], r["shape"]), []).append(r["ms"])
    floor = {key: sum(ms) / len(ms) for key, ms in timings.items()}
    for r in rows:
        base = floor.get((r["op"], r.get("shape")))
        if base and r.get("ms"):
            r["ratio_to_matmul"] = r["ms"] / base
    return rows


def markdown(rows, card):
    lines = [f"Card: {card}", ""]
    lines.append("| op | shape | provider | ms | x matmul | TFLOP/s | extra MiB |")
    lines.append("|---|---|---|---|---|---|---|")
    for r in rows:
        ms = f"{r['ms']:.3f}" if r.get("ms") else r.get("note", "-")
        ratio = f"{r['ratio_to_matmul']:.2f}" if r.get("ratio_to_matmul") else "-"
        tflops = f"{r['tflops']:.0f}" if r.get("tflops") else "-"
        mib = f"{r['extra_mib']:.0f}" if r.get("extra_mib") is not None else "-"
        lines.append(
            f"| {r['op']} | {r.get('shape', '-')} | {r['provider']} | {ms} | {ratio} | {tflops} | {mib} |"
        )
    return "\n".join(lines)


def measure_providers(shapes, ops, wanted):
    """Rows for every provider (or those in ``wanted``; the matmul floor always) of ``ops``."""
    rows = []
    for shape_name in shapes:
        for op, names in (
            ("logprob_gather_fwd", FORWARD_PROVIDERS),
            ("linear_cross_entropy_fwd_bwd", TRAIN_PROVIDERS),
        ):
            if ("fwd" if op.endswith("fwd") else "train") not in ops:
                continue
            for provider in names:
                if wanted and provider not in wanted and provider != "matmul":
                    continue
                row = measure_matmul_op(op, shape_name, provider)
                if row is not None:
                    rows.append(row)
                    print(json.dumps(row), flush=True)
            # The floor again after the providers: ratios use the mean of both, and the two
            # together show how far the card's speed moved meanwhile (the noise of the ratios).
            row = dict(measure_matmul_op(op, shape_name, "matmul"), provider=MATMUL_AFTER)
            rows.append(row)
            print(json.dumps(row), flush=True)
    if "prune" in ops:
        for provider in prune_providers():
            for graph in (False, True):
                row = measure_prune(provider, graph=graph)
                rows.append(row)
                print(json.dumps(row), flush=True)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--shapes", default=",".join(SHAPES))
    parser.add_argument("--ops", default="fwd,train,prune")
    parser.add_argument("--providers", default=None, help="comma-separated subset of providers")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="matmul + genssd providers only (unless --providers), shorter timing budgets",
    )
    parser.add_argument(
        "--sweep",
        choices=("forward", "backward", "parts"),
        default=None,
        help="time the Triton tile configurations (forward, backward) or the backward's "
        "parts (parts) instead of the providers",
    )
    args = parser.parse_args(argv)
    card = torch.cuda.get_device_name()
    if args.quick:
        TIMING.update(warmup=25, rep=200)
        args.providers = args.providers or "genssd,genssd+entropy"
    shapes = args.shapes.split(",")
    if args.sweep:
        rows = [row for shape_name in shapes for row in sweep(args.sweep, shape_name)]
    else:
        wanted = set(args.providers.split(",")) if args.providers else None
        rows = measure_providers(shapes, args.ops.split(","), wanted)
    rows = _with_ratios(rows)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"card": card, "torch": torch.__version__, "rows": rows}, indent=1))
    print(markdown(rows, card))


if __name__ == "__main__":
    main()
