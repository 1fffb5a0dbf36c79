"""Compile genssd's Triton kernels for an H100 (sm_90a) on a machine without a GPU.

``python benchmarks/studies/compile_kernels.py`` compiles every kernel at every tile configuration of
``genssd_kernels/triton/logprob_gather.py`` (and ``branch_prune``) and prints, per kernel, the
registers a thread, the local-memory stack (non-zero means spills), the shared memory and the
number of wgmma instructions. It catches compile errors before a GPU run and checks the occupancy
assumptions of the tile table (two programs per SM need <= 128 registers at 8 warps and
<= ~113 KiB of shared memory each). Needs only triton (its bundled cuobjdump reads the cubin).
Compiled as for contiguous inputs: unit inner strides; pointers, sizes and row strides divisible by
16 (as Triton specializes them at the benchmark shapes).
"""

from __future__ import annotations

import inspect
import os
import re
import subprocess
import tempfile

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from genssd_kernels.triton import branch_prune as triton_prune
from genssd_kernels.triton import logprob_gather as triton_gather
from genssd_kernels.triton import value_checks

TARGET = GPUTarget("cuda", 90, 64)
H100_SMS = 132
CUOBJDUMP = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
TRITON_TYPES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}
# Argument name -> Triton type; "*x" is a pointer to the input dtype.
ARG_TYPES = {
    "h_ptr": "*x",
    "w_ptr": "*x",
    "gz_ptr": "*x",
    "part_ptr": "*fp32",
    "t_ptr": "*i64",
    "g_ptr": "*fp32",
    "max_ptr": "*fp32",
    "log2sum_ptr": "*fp32",
    "logp_ptr": "*fp32",
    "ent_ptr": "*fp32",
    "cu_ptr": "*i64",
    "out_ptr": "*fp32",
    "scores_ptr": "*fp32",
    "offsets_ptr": "*i64",
    "keep_ptr": "*u8",
    "kept_idx_ptr": "*i64",
    "kept_count_ptr": "*i32",
    "mean_ptr": "*fp32",
    "verdict_ptr": "*i32",
    "targets_ptr": "*i64",
    "scale": "fp32",
    "inv_temperature": "fp32",
    "margin": "fp32",
    "min_score": "fp32",
}
UNIT_STRIDES = ("stride_hd", "stride_wd", "stride_s", "stride_o", "stride_t")
DIVISIBLE = (
    "h_ptr",
    "w_ptr",
    "gz_ptr",
    "part_ptr",
    "N",
    "V",
    "D",
    "col_start",
    "width",
    "stride_hn",
    "stride_wv",
    "stride_gz",
)


def compile_kernel(kernel, dtype, constexprs, options, descriptors=None):
    """Compile ``kernel`` for sm_90a; returns the compiled kernel. ``descriptors`` maps TMA
    descriptor arguments to their block shapes; the others present are passed as None."""
    names = list(inspect.signature(kernel.fn).parameters)
    descriptors = descriptors or {}
    constexprs = {
        **constexprs,
        **{name: 1 for name in UNIT_STRIDES if name in names},
        **{name: None for name in ("h_desc", "w_desc") if name in names and name not in descriptors},
    }
    signature = {}
    for name in names:
        if name in constexprs:
            signature[name] = "constexpr"
        elif name in descriptors:
            signature[name] = f"tensordesc<{TRITON_TYPES[dtype]}{list(descriptors[name])}>"
        else:
            kind = ARG_TYPES.get(name, "i32")
            signature[name] = kind.replace("x", TRITON_TYPES[dtype]) if kind == "*x" else kind
    attrs = {
        (names.index(name),): [["tt.divisibility", 16]]
        for name in DIVISIBLE
        if name in signature and signature[name] != "constexpr"
    }
    source = ASTSource(
        fn=kernel,
        signature=signature,
        constexprs={(names.index(name),): value for name, value in constexprs.items()},
        attrs=attrs,
    )
    return triton.compile(source, target=TARGET, options=options)


def resources(compiled) -> str:
    """Registers, stack bytes, shared memory and wgmma count of a compiled kernel."""
    with tempfile.NamedTemporaryFile("wb", suffix=".cubin", delete=False) as handle:
        handle.write(compiled.asm["cubin"])
    try:
        usage = subprocess.run(
            [CUOBJDUMP, "--dump-resource-usage", handle.name], capture_output=True, text=True, check=True
        ).stdout
    finally:
        os.unlink(handle.name)
    registers = re.search(r"REG:(\d+)", usage).group(1)
    stack = re.search(r"STACK:(\d+)", usage).group(1)
    wgmma = compiled.asm["ptx"].count("wgmma.mma_async")
    return f"regs={registers:>3} stack={stack:>3} smem={compiled.metadata.shared // 1024:>3}KiB wgmma={wgmma}"


def tile_constexprs(config):
    return dict(
        BLOCK_N=config.block_n,
        BLOCK_V=config.block_v,
        BLOCK_D=config.block_d,
        GROUP_ROWS=config.group_rows,
        EVEN_D=True,
        TMA=config.tma,
        INTERP_BF16=False,
    )


def tile_descriptors(config):
    """The TMA descriptor block shapes of a logit-tile kernel at ``config`` (none without TMA)."""
    if not config.tma:
        return None
    return {"h_desc": (config.block_n, config.block_d), "w_desc": (config.block_v, config.block_d)}


def jobs():
    """(label, kernel, dtype, constexprs, launch options) for every kernel and configuration."""
    for name, config in triton_gather.FORWARD_CONFIGS.items():
        dtype = torch.float32 if name == "fp32" else torch.bfloat16
        for entropy in (False, True):
            yield (
                f"forward partials [{name}] entropy={entropy}",
                triton_gather._forward_partials_kernel,
                dtype,
                dict(tile_constexprs(config), RETURN_ENTROPY=entropy, FLATTEN_TILES=config.flatten_tiles),
                config.launch_options(),
                tile_descriptors(config),
            )
    for name, config in triton_gather.BACKWARD_CONFIGS.items():
        dtype = torch.float32 if name == "fp32" else torch.bfloat16
        yield (
            f"grad logits [{name}]",
            triton_gather._grad_logits_kernel,
            dtype,
            dict(
                tile_constexprs(config),
                EPILOGUE_PARTS=config.epilogue_parts,
                PERSISTENT_PROGRAMS=H100_SMS * config.programs_per_sm if config.persistent else 0,
            ),
            config.launch_options(),
            tile_descriptors(config),
        )
    for entropy in (False, True):
        yield (
            f"combine entropy={entropy}",
            triton_gather._combine_kernel,
            torch.bfloat16,
            dict(
                RETURN_ENTROPY=entropy,
                BLOCK_R=triton_gather.COMBINE_ROWS,
                BLOCK_S=triton_gather.COMBINE_SPLITS,
                BLOCK_D=triton_gather.COMBINE_D,
            ),
            dict(num_warps=4),
            None,
        )
    yield (
        "segment mean",
        triton_gather._segment_mean_kernel,
        torch.float32,
        dict(BLOCK=triton_gather.BLOCK_SEG),
        dict(num_warps=4),
        None,
    )
    for check in (False, True):
        # Checked: the offsets' device assert compiled in (debug mode without the overflow sanitizer).
        yield (
            f"branch prune check_values={check}",
            triton_prune._branch_prune_kernel,
            torch.float32,
            dict(
                BLOCK=triton_prune.BLOCK,
                PAIR=triton_prune.PAIR,
                CHECK=check,
                MESSAGE=triton_prune.MESSAGE,
                WRITE_VERDICT=False,
            ),
            dict(num_warps=triton_prune.NUM_WARPS, **(value_checks.DEBUG_ONLY_ASSERTS if check else {})),
            None,
        )
    yield (
        "value checks (targets + offsets)",
        value_checks._check_values_kernel,
        torch.float32,
        dict(
            CHECK_TARGETS=True,
            CHECK_OFFSETS=True,
            TARGETS_MESSAGE=value_checks.targets_message("logprob_gather"),
            OFFSETS_MESSAGE=value_checks.offsets_message("logprob_gather", "cu_seqlens", "N"),
            WRITE_VERDICT=False,
            BLOCK=value_checks.BLOCK,
        ),
        dict(num_warps=4, **value_checks.DEBUG_ONLY_ASSERTS),
        None,
    )


def main():
    for label, kernel, dtype, constexprs, options, descriptors in jobs():
        compiled = compile_kernel(kernel, dtype, constexprs, options, descriptors)
        print(f"{label:48s} {TRITON_TYPES[dtype]:5s} {options}  {resources(compiled)}", flush=True)


if __name__ == "__main__":
    main()
