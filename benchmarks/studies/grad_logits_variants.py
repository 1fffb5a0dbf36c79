"""Where the backward's grad-logits kernel spends its time: variants timed against the matmul floor.

``python benchmarks/studies/grad_logits_variants.py --json out.json [--shapes A,B,C]`` runs, for each
shape, the matmul floor, the package's grad-logits kernel alone and its whole backward over the
vocabulary chunks, and variants of the kernel (the table in ``variants``) that leave one stage
out or do it another way:

- epilogue: ``full`` (the package's math), ``no-exp2`` (a linear stand-in for the softmax),
  ``row-sums`` (the full math, but only row sums leave the tile: no ``[N, V]`` store),
  ``raw-store`` (the logits rounded and stored: a Triton matmul with a bf16 output, what the
  cuBLAS floor does); the full epilogue on 1, 2, 4 or 8 column slices of the tile in turn;
- loads: pointers (``ptr``), TMA tensor descriptors (``tma``), and TMA with Triton's automatic
  warp specialization of the reduction loop (``tma+ws``);
- stores: pointers (evict-first or not) or TMA descriptors (``tma-store``);
- launch: one program per tile, or persistent (one program per SM) with the tile loop fused
  into the reduction loop or not;
- the backward's cuBLAS products alone (two operand orders for ``grad_weight``), and the whole
  backward with its two products on two streams, pipelined over two chunk buffers, or with
  smaller chunks. ``--package-only`` times just the package rows, these and the products.

Variants that fail to compile are reported with their error. NOTES.md beside the kernels
records what the rows showed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import torch
import triton
import triton.language as tl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_kernels import MATMUL_AFTER, _with_ratios, device_median_ms, make_inputs, markdown  # noqa: E402
from kernel_providers import SHAPES  # noqa: E402

from genssd_kernels.triton import logprob_gather as gather  # noqa: E402
from genssd_kernels.triton.logprob_gather import _column_halves, grad_row_terms  # noqa: E402

EPILOGUES = {"full": 0, "no-exp2": 1, "row-sums": 2, "raw-store": 3}


@triton.jit
def _store_part(
    sub,
    gz_ptr,
    gz_desc,
    row0,
    sub_col0,
    col_start,
    width,
    stride_gz,
    target,
    coef,
    row_max,
    log2_sum,
    scale,
    row_mask,
    BLOCK_N: tl.constexpr,
    WIDTH: tl.constexpr,
    TMA_STORE: tl.constexpr,
    EVICT_FIRST: tl.constexpr,
):
    """The full epilogue on ``sub [BLOCK_N, WIDTH]``, the logits of columns ``sub_col0:`` of the chunk."""
    lanes = tl.arange(0, WIDTH)
    target_lane = tl.where(
        (target >= col_start + sub_col0) & (target < col_start + sub_col0 + WIDTH),
        target - col_start - sub_col0,
        -1,
    ).to(tl.int32)
    p = tl.exp2(tl.fma(sub, scale, -row_max[:, None]) - log2_sum[:, None])
    grad = (coef[:, None] * (tl.where(lanes[None, :] == target_lane[:, None], 1.0, 0.0) - p)).to(
        gz_ptr.dtype.element_ty
    )
    if TMA_STORE:
        # The descriptor's bounds are the chunk's [N, width]: the copy engine clips the edges.
        gz_desc.store([row0.to(tl.int32), sub_col0.to(tl.int32)], grad)
    else:
        out = (
            gz_ptr
            + row0 * stride_gz
            + sub_col0
            + (tl.arange(0, BLOCK_N)[:, None] * stride_gz + lanes[None, :])
        )
        tl.store(
            out,
            grad,
            mask=row_mask[:, None] & (lanes < width - sub_col0)[None, :],
            eviction_policy="evict_first" if EVICT_FIRST else "",
        )


@triton.jit
def _tile_blocks(tile, N, width, BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, GROUP_ROWS: tl.constexpr):
    """int32 row block and column block of tile number ``tile``, numbered as in the package's
    ``grad_tile_origin`` (which returns int64 offsets; the TMA coordinates here stay int32)."""
    n_row_blocks = tl.cdiv(N, BLOCK_N)
    per_group = GROUP_ROWS * tl.cdiv(width, BLOCK_V)
    first_block = (tile // per_group) * GROUP_ROWS
    blocks_here = tl.minimum(n_row_blocks - first_block, GROUP_ROWS)
    local = tile % per_group
    return first_block + local % blocks_here, local // blocks_here


@triton.jit
def _store_parts(
    x,
    gz_ptr,
    gz_desc,
    row0,
    col0,
    col_start,
    width,
    stride_gz,
    target,
    coef,
    row_max,
    log2_sum,
    scale,
    row_mask,
    BLOCK_N: tl.constexpr,
    WIDTH: tl.constexpr,
    PARTS: tl.constexpr,
    TMA_STORE: tl.constexpr,
    EVICT_FIRST: tl.constexpr,
):
    """The full epilogue on ``x [BLOCK_N, WIDTH]`` in ``PARTS`` (1, 2, 4 or 8) column slices."""
    if PARTS == 1:
        _store_part(
            x,
            gz_ptr,
            gz_desc,
            row0,
            col0,
            col_start,
            width,
            stride_gz,
            target,
            coef,
            row_max,
            log2_sum,
            scale,
            row_mask,
            BLOCK_N,
            WIDTH,
            TMA_STORE,
            EVICT_FIRST,
        )
    else:
        left, right = _column_halves(x, BLOCK_N, WIDTH)
        _store_parts(
            left,
            gz_ptr,
            gz_desc,
            row0,
            col0,
            col_start,
            width,
            stride_gz,
            target,
            coef,
            row_max,
            log2_sum,
            scale,
            row_mask,
            BLOCK_N,
            WIDTH // 2,
            PARTS // 2,
            TMA_STORE,
            EVICT_FIRST,
        )
        _store_parts(
            right,
            gz_ptr,
            gz_desc,
            row0,
            col0 + WIDTH // 2,
            col_start,
            width,
            stride_gz,
            target,
            coef,
            row_max,
            log2_sum,
            scale,
            row_mask,
            BLOCK_N,
            WIDTH // 2,
            PARTS // 2,
            TMA_STORE,
            EVICT_FIRST,
        )


@triton.jit
def _variant_kernel(
    h_ptr,
    w_ptr,
    h_desc,
    w_desc,
    gz_desc,
    t_ptr,
    g_ptr,
    max_ptr,
    log2sum_ptr,
    gz_ptr,
    sums_ptr,
    N,
    V,
    D,
    col_start,
    width,
    stride_hn,
    stride_wv,
    stride_gz,
    scale,
    inv_temperature,
    ignore_index,
    BLOCK_N: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_D: tl.constexpr,
    GROUP_ROWS: tl.constexpr,
    EPILOGUE: tl.constexpr,
    PARTS: tl.constexpr,
    TMA: tl.constexpr,
    WS: tl.constexpr,
    TMA_STORE: tl.constexpr,
    EVICT_FIRST: tl.constexpr,
):
    """The package's ``_grad_logits_kernel`` (contiguous bf16 inputs, d a multiple of BLOCK_D) with
    the operand loads (``TMA``, ``WS``), the epilogue (``EPILOGUE``; the full one on ``PARTS``
    column slices of the tile) and the stores (``TMA_STORE``, ``EVICT_FIRST``) chosen."""
    row_block, col_block = _tile_blocks(tl.program_id(0), N, width, BLOCK_N, BLOCK_V, GROUP_ROWS)
    row0 = row_block.to(tl.int64) * BLOCK_N
    local_col0 = col_block.to(tl.int64) * BLOCK_V
    col0 = col_start + local_col0

    acc = tl.zeros((BLOCK_N, BLOCK_V), dtype=tl.float32)
    if TMA:
        for d0 in tl.range(0, D, BLOCK_D, warp_specialize=WS):
            h = h_desc.load([(row_block * BLOCK_N).to(tl.int32), d0])
            w = w_desc.load([(col_start + col_block * BLOCK_V).to(tl.int32), d0])
            acc = tl.dot(h, w.T, acc)
    else:
        r = tl.minimum(tl.arange(0, BLOCK_N), (N - 1 - row0).to(tl.int32))
        c = tl.minimum(tl.arange(0, BLOCK_V), (V - 1 - col0).to(tl.int32))
        k = tl.arange(0, BLOCK_D)
        h_ptrs = h_ptr + row0 * stride_hn + (r[:, None] * stride_hn + k[None, :])
        w_ptrs = w_ptr + col0 * stride_wv + (c[:, None] * stride_wv + k[None, :])
        for _ in range(0, D, BLOCK_D):
            acc = tl.dot(tl.load(h_ptrs), tl.trans(tl.load(w_ptrs)), acc)
            h_ptrs += BLOCK_D
            w_ptrs += BLOCK_D

    rows = row0 + tl.arange(0, BLOCK_N)
    row_mask, target, coef, row_max, log2_sum = grad_row_terms(
        rows, N, t_ptr, g_ptr, max_ptr, log2sum_ptr, 1, inv_temperature, ignore_index
    )
    if EPILOGUE == 0:
        _store_parts(
            acc,
            gz_ptr,
            gz_desc,
            row0,
            local_col0,
            col_start,
            width,
            stride_gz,
            target,
            coef,
            row_max,
            log2_sum,
            scale,
            row_mask,
            BLOCK_N,
            BLOCK_V,
            PARTS,
            TMA_STORE,
            EVICT_FIRST,
        )
    else:
        lanes = tl.arange(0, BLOCK_V)
        if EPILOGUE == 3:
            grad = acc
        else:
            if EPILOGUE == 1:
                p = tl.fma(acc, scale, -row_max[:, None]) - log2_sum[:, None]
            else:
                p = tl.exp2(tl.fma(acc, scale, -row_max[:, None]) - log2_sum[:, None])
            target_lane = tl.where((target >= col0) & (target < col0 + BLOCK_V), target - col0, -1).to(
                tl.int32
            )
            grad = coef[:, None] * (tl.where(lanes[None, :] == target_lane[:, None], 1.0, 0.0) - p)
        if EPILOGUE == 2:
            tl.store(sums_ptr + col_block.to(tl.int64) * N + rows, tl.sum(grad, 1), mask=row_mask)
        else:
            out = (
                gz_ptr
                + row0 * stride_gz
                + local_col0
                + (tl.arange(0, BLOCK_N)[:, None] * stride_gz + lanes[None, :])
            )
            tl.store(
                out,
                grad.to(gz_ptr.dtype.element_ty),
                mask=row_mask[:, None] & (lanes < width - local_col0)[None, :],
            )


@triton.jit
def _persistent_kernel(
    h_desc,
    w_desc,
    t_ptr,
    g_ptr,
    max_ptr,
    log2sum_ptr,
    gz_ptr,
    N,
    D,
    col_start,
    width,
    stride_gz,
    scale,
    inv_temperature,
    ignore_index,
    NUM_PROGRAMS: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_D: tl.constexpr,
    GROUP_ROWS: tl.constexpr,
    PARTS: tl.constexpr,
    FLATTEN: tl.constexpr,
):
    """The grad-logits kernel as one program per SM looping over output tiles (TMA loads, sliced
    epilogue); ``FLATTEN`` lets Triton fuse the tile and reduction loops so the software
    pipeline loads the next tile's operands during a tile's epilogue."""
    n_tiles = tl.cdiv(N, BLOCK_N) * tl.cdiv(width, BLOCK_V)
    for tile in tl.range(tl.program_id(0), n_tiles, NUM_PROGRAMS, flatten=FLATTEN):
        row_block, col_block = _tile_blocks(tile, N, width, BLOCK_N, BLOCK_V, GROUP_ROWS)
        acc = tl.zeros((BLOCK_N, BLOCK_V), dtype=tl.float32)
        for d0 in range(0, D, BLOCK_D):
            h = h_desc.load([row_block * BLOCK_N, d0])
            w = w_desc.load([col_start + col_block * BLOCK_V, d0])
            acc = tl.dot(h, w.T, acc)
        row0 = row_block.to(tl.int64) * BLOCK_N
        local_col0 = col_block.to(tl.int64) * BLOCK_V
        rows = row0 + tl.arange(0, BLOCK_N)
        row_mask, target, coef, row_max, log2_sum = grad_row_terms(
            rows, N, t_ptr, g_ptr, max_ptr, log2sum_ptr, 1, inv_temperature, ignore_index
        )
        _store_parts(
            acc,
            gz_ptr,
            None,
            row0,
            local_col0,
            col_start,
            width,
            stride_gz,
            target,
            coef,
            row_max,
            log2_sum,
            scale,
            row_mask,
            BLOCK_N,
            BLOCK_V,
            PARTS,
            False,
            False,
        )


def persistent_loop(hidden, weight, targets, grad_logp, row_max, log2_sum, *, flatten, parts=4):
    """A closure running ``_persistent_kernel`` over the backward's chunks (one program per SM)."""
    config = dataclasses.replace(gather.backward_config(hidden.dtype), epilogue_parts=parts)
    n, d = hidden.shape
    v = weight.shape[0]
    chunk = gather._chunk_columns(n, v, hidden.element_size())
    buffer = torch.empty(n, chunk, dtype=hidden.dtype, device=hidden.device)
    h_desc, w_desc = gather._operand_descriptors(hidden, weight, config)
    programs = torch.cuda.get_device_properties(hidden.device).multi_processor_count

    def run():
        for c0 in range(0, v, chunk):
            width = min(chunk, v - c0)
            _persistent_kernel[(programs,)](
                h_desc,
                w_desc,
                targets,
                grad_logp,
                row_max,
                log2_sum,
                buffer,
                n,
                d,
                c0,
                width,
                buffer.stride(0),
                gather.LOG2E,
                1.0,
                -100,
                NUM_PROGRAMS=programs,
                BLOCK_N=config.block_n,
                BLOCK_V=config.block_v,
                BLOCK_D=config.block_d,
                GROUP_ROWS=config.group_rows,
                PARTS=parts,
                FLATTEN=flatten,
                **config.launch_options(),
            )

    return run


@dataclasses.dataclass(frozen=True)
class Variant:
    """One grad-logits kernel variant: tiles, epilogue and how operands and results move."""

    config: gather.TileConfig
    epilogue: str = "full"
    parts: int = 1
    tma: bool = False
    ws: bool = False
    tma_store: bool = False
    evict_first: bool = False


def variant_loop(hidden, weight, targets, grad_logp, row_max, log2_sum, variant):
    """A closure running the variant kernel over the backward's chunks (no cuBLAS products)."""
    from triton.tools.tensor_descriptor import TensorDescriptor

    config = variant.config
    n, d = hidden.shape
    v = weight.shape[0]
    chunk = gather._chunk_columns(n, v, hidden.element_size())
    buffer = torch.empty(n, chunk, dtype=hidden.dtype, device=hidden.device)
    sums = torch.empty(triton.cdiv(chunk, config.block_v), n, device=hidden.device)
    h_desc = TensorDescriptor.from_tensor(hidden, [config.block_n, config.block_d]) if variant.tma else None
    w_desc = TensorDescriptor.from_tensor(weight, [config.block_v, config.block_d]) if variant.tma else None
    launches = []
    for c0 in range(0, v, chunk):
        width = min(chunk, v - c0)
        gz_desc = None
        if variant.tma_store:
            gz_desc = TensorDescriptor.from_tensor(
                buffer[:, :width], [config.block_n, config.block_v // variant.parts]
            )
        launches.append((c0, width, gz_desc))

    def run():
        for c0, width, gz_desc in launches:
            grid = (triton.cdiv(n, config.block_n) * triton.cdiv(width, config.block_v),)
            _variant_kernel[grid](
                hidden,
                weight,
                h_desc,
                w_desc,
                gz_desc,
                targets,
                grad_logp,
                row_max,
                log2_sum,
                buffer,
                sums,
                n,
                v,
                d,
                c0,
                width,
                hidden.stride(0),
                weight.stride(0),
                buffer.stride(0),
                gather.LOG2E,
                1.0,
                -100,
                BLOCK_N=config.block_n,
                BLOCK_V=config.block_v,
                BLOCK_D=config.block_d,
                GROUP_ROWS=config.group_rows,
                EPILOGUE=EPILOGUES[variant.epilogue],
                PARTS=variant.parts,
                TMA=variant.tma,
                WS=variant.ws,
                TMA_STORE=variant.tma_store,
                EVICT_FIRST=variant.evict_first,
                **config.launch_options(),
            )

    return run


def backward_on_two_streams(grad_logp, hidden, weight, targets, row_max, log2_sum, *, pipelined, chunk_bytes):
    """The package's backward with a side stream, over chunks of at most ``chunk_bytes``.

    ``pipelined=False``: one chunk buffer; each chunk's ``grad_z @ W`` runs on the side stream
    concurrently with its ``grad_z.T @ H`` (both only read the chunk), so each product fills the
    other's last wave. ``pipelined=True``: two buffers; chunk c+1's grad-logits kernel (current
    stream) runs while chunk c's two products run on the side stream.
    """
    config = gather.backward_config(hidden.dtype)
    n, d = hidden.shape
    v = weight.shape[0]
    chunk = gather._chunk_columns(n, v, hidden.element_size(), chunk_bytes)
    buffers = [
        torch.empty(n, chunk, dtype=hidden.dtype, device=hidden.device) for _ in range(2 if pipelined else 1)
    ]
    acc = torch.zeros(n, d, dtype=torch.float32, device=hidden.device)
    grad_weight = torch.empty_like(weight)
    descriptors = gather._operand_descriptors(hidden, weight, config)
    main, side = torch.cuda.current_stream(), torch.cuda.Stream()
    done = [torch.cuda.Event(), torch.cuda.Event()]
    for i, c0 in enumerate(range(0, v, chunk)):
        width = min(chunk, v - c0)
        grad_logits = buffers[i % len(buffers)][:, :width]
        if pipelined and i >= 2:
            main.wait_event(done[i % 2])  # the products that read this buffer two chunks ago
        gather.launch_grad_logits(
            grad_logits,
            c0,
            grad_logp,
            hidden,
            weight,
            targets,
            row_max,
            log2_sum,
            descriptors,
            temperature=1.0,
            ignore_index=-100,
            config=config,
        )
        side.wait_stream(main)
        with torch.cuda.stream(side):
            gather._accumulate_product(acc, grad_logits, weight[c0 : c0 + width])
            if pipelined:
                torch.mm(grad_logits.t(), hidden, out=grad_weight[c0 : c0 + width])
                done[i % 2].record(side)
        if not pipelined:
            torch.mm(grad_logits.t(), hidden, out=grad_weight[c0 : c0 + width])
            main.wait_stream(side)
    main.wait_stream(side)
    return acc.to(hidden.dtype), grad_weight


def product_loop(hidden, weight, *, product):
    """A closure running one of the backward's cuBLAS products over the chunks on a random chunk."""
    n, d = hidden.shape
    v = weight.shape[0]
    chunk = gather._chunk_columns(n, v, hidden.element_size())
    grad = torch.randn(n, chunk, device=hidden.device).to(hidden.dtype) * 1e-3
    acc = torch.zeros(n, d, dtype=torch.float32, device=hidden.device)
    grad_weight = torch.empty_like(weight)

    def run():
        for c0 in range(0, v, chunk):
            width = min(chunk, v - c0)
            g = grad[:, :width]
            if product == "grad_z @ W (addmm fp32 out)":
                torch.addmm(acc, g, weight[c0 : c0 + width], out_dtype=torch.float32, out=acc)
            elif product == "grad_z.T @ H":
                torch.mm(g.t(), hidden, out=grad_weight[c0 : c0 + width])
            else:
                grad_weight[c0 : c0 + width].copy_(torch.mm(hidden.t(), g).t())

    return run


PRODUCTS = ("grad_z @ W (addmm fp32 out)", "grad_z.T @ H", "(H.T @ grad_z).T + copy")


def measure(shape_name, variants):
    shape = SHAPES[shape_name]
    hidden, weight, targets, cu = make_inputs(shape)
    op = "grad_logits_variants"
    rows = [
        {
            "op": op,
            "shape": shape_name,
            "provider": "matmul",
            "ms": device_median_ms(lambda: hidden @ weight.T),
        }
    ]
    with torch.no_grad():
        stats = gather.forward(hidden, weight, targets, cu)
        grad_logp = torch.full_like(stats[0], -1.0 / shape[0])

        def chunked(mib):
            def run():
                saved = gather.CHUNK_BYTES
                gather.CHUNK_BYTES = mib * 2**20
                try:
                    gather.backward(
                        grad_logp,
                        hidden,
                        weight,
                        targets,
                        stats[3],
                        stats[4],
                        temperature=1.0,
                        ignore_index=-100,
                    )
                finally:
                    gather.CHUNK_BYTES = saved

            return run

        def package(products):
            return lambda: gather.backward(
                grad_logp,
                hidden,
                weight,
                targets,
                stats[3],
                stats[4],
                temperature=1.0,
                ignore_index=-100,
                need_hidden=products,
                need_weight=products,
            )

        def on_streams(pipelined, mib):
            return lambda: backward_on_two_streams(
                grad_logp,
                hidden,
                weight,
                targets,
                stats[3],
                stats[4],
                pipelined=pipelined,
                chunk_bytes=mib * 2**20,
            )

        jobs = [
            ("package kernel", package(False)),
            ("package backward", package(True)),
            ("package backward, products on two streams", on_streams(False, 768)),
            ("package backward, pipelined (2 buffers of 768 MiB)", on_streams(True, 768)),
            ("package backward, pipelined (2 buffers of 384 MiB)", on_streams(True, 384)),
        ]
        for mib in (384, 256):
            jobs.append((f"package backward, chunks of {mib} MiB", chunked(mib)))
        for flatten in (False, True):
            jobs.append(
                (
                    f"persistent tma 4 slices g16{' flattened' if flatten else ''}",
                    persistent_loop(hidden, weight, targets, grad_logp, stats[3], stats[4], flatten=flatten),
                )
            )
        for name, variant in variants.items():
            jobs.append((name, variant_loop(hidden, weight, targets, grad_logp, stats[3], stats[4], variant)))
        for product in PRODUCTS:
            jobs.append((product, product_loop(hidden, weight, product=product)))
        for name, fn in jobs:
            try:
                fn()
                torch.cuda.synchronize()
                row = {"op": op, "shape": shape_name, "provider": name, "ms": device_median_ms(fn)}
            except Exception as exc:  # a variant that does not compile is a result, not a crash
                row = {
                    "op": op,
                    "shape": shape_name,
                    "provider": name,
                    "ms": None,
                    "note": f"{type(exc).__name__}: {str(exc).splitlines()[0][:100] if str(exc) else ''}",
                }
            rows.append(row)
            print(json.dumps(row), flush=True)
    rows.append(
        {
            "op": op,
            "shape": shape_name,
            "provider": MATMUL_AFTER,
            "ms": device_median_ms(lambda: hidden @ weight.T),
        }
    )
    torch.cuda.empty_cache()
    return rows


def variants():
    """name -> Variant. ``g8``/``g16``: row blocks a column panel; slices: the epilogue's column slices."""
    # The grad-logits tiles before this study: 128x256x64, 8 warps, 3 stages, 8 row blocks a panel.
    before = gather.TileConfig(128, 256, 64, num_warps=8, num_stages=3, group_rows=8)
    g16 = dataclasses.replace(before, group_rows=16)
    return {
        "ptr full g8 (before)": Variant(before),
        "ptr no-exp2 g8": Variant(before, "no-exp2"),
        "ptr row-sums g8 (no store)": Variant(before, "row-sums"),
        "ptr raw-store g8 (logits only)": Variant(before, "raw-store"),
        "ptr full g8 evict-first stores": Variant(before, evict_first=True),
        "ptr full g16": Variant(g16),
        "ptr full g32": Variant(dataclasses.replace(before, group_rows=32)),
        "tma row-sums g16 (no store)": Variant(g16, "row-sums", tma=True),
        "tma full g16": Variant(g16, tma=True),
        "tma+ws full g16": Variant(g16, tma=True, ws=True),
        "tma 2 slices g16": Variant(g16, parts=2, tma=True),
        "tma 4 slices g16": Variant(g16, parts=4, tma=True),
        "tma 8 slices g16": Variant(g16, parts=8, tma=True),
        "ptr 4 slices g16": Variant(g16, parts=4),
        "tma 4 slices g16 s4": Variant(dataclasses.replace(g16, num_stages=4), parts=4, tma=True),
        "tma 4 slices g16 tma-store": Variant(g16, parts=4, tma=True, tma_store=True),
        "tma full g16 tma-store": Variant(g16, tma=True, tma_store=True),
        "256x128 tma 4 slices g16": Variant(
            dataclasses.replace(g16, block_n=256, block_v=128), parts=4, tma=True
        ),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--shapes", default=",".join(SHAPES))
    parser.add_argument(
        "--package-only",
        action="store_true",
        help="time only the package's kernel and backward (and its variants) and the products",
    )
    args = parser.parse_args(argv)
    card = torch.cuda.get_device_name()
    table = {} if args.package_only else variants()
    rows = _with_ratios([row for shape in args.shapes.split(",") for row in measure(shape, table)])
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps(
            {"card": card, "torch": torch.__version__, "triton": triton.__version__, "rows": rows}, indent=1
        )
    )
    print(markdown(rows, card))


if __name__ == "__main__":
    main()
