"""A Hugging Face ``Trainer`` step: genssd's fused loss against the unpatched model and Liger-Kernel.

The model is shaped like Qwen2-0.5B (24 layers, d=896, vocabulary 151936, tied embeddings),
random weights (``torch.manual_seed(0)``), fp32 master weights under ``bf16=True`` (autocast), AdamW,
gradient accumulation 1. The data are ``batch`` rows of ``seq`` random tokens whose first ``prompt``
tokens are labelled -100 (a prompt), the same rows in every variant (a fixed generator). Variants:

- ``unpatched``: the model as Hugging Face builds it (its loss over the full ``[tokens, vocab]``
  logits, upcast to fp32);
- ``genssd``: ``genssd.integrations.apply_genssd_loss(model)``;
- ``liger``: ``liger_kernel.transformers.apply_liger_kernel_to_qwen2(model=model)`` with its
  defaults: fused linear cross-entropy and Liger's RoPE, RMSNorm and SwiGLU kernels;
- ``liger-loss``: the same with only its fused linear cross-entropy (like for like with genssd);
- ``genssd+liger-layers``: Liger's RoPE, RMSNorm and SwiGLU with genssd's loss (they compose).

Each variant runs in its own process: peak memory starts clean, and Liger's patches are partly
global (it replaces ``modeling_qwen2``'s RoPE function and module classes), so they cannot leak into
the next row. A variant is ``warmup`` Trainer steps (compilation, autotuning, the optimizer state's
allocation) and then ``steps`` timed ones: the time from the end of the last warm-up step to the
end of the last step (the device synchronized at both), so tokens/s counts everything a Trainer
step does (data loading, forward, backward, optimizer, logging). Peak memory is
``torch.cuda.max_memory_allocated`` over the timed steps. The variants run in ``rounds``
alternating rounds (a fresh process each time); a row's time is the median of its rounds, their
range beside it: one process per variant left 7% between two runs of the same row on an H200
(unpatched: 133.6 and 142.9 ms a step). The Liger rows are left out, with a note, where
``liger_kernel`` is not importable.

Entry points:
``python benchmarks/bench_trainer.py --json benchmarks/results/trainer-<card>.json`` (the table),
``python benchmarks/bench_trainer.py --tiny`` (a small model on the CPU in seconds: checks the
script end to end; no peak memory there), ``pytest benchmarks/bench_trainer.py`` (needs CUDA).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from step_rounds import median_of_rounds  # noqa: E402

MiB = 2**20
VARIANTS = ("unpatched", "genssd", "liger", "liger-loss", "genssd+liger-layers")
NEEDS_LIGER = ("liger", "liger-loss", "genssd+liger-layers")


@dataclasses.dataclass(frozen=True)
class Shape:
    """The model (a Qwen2 config's sizes) and one Trainer step's batch: ``batch`` x ``seq`` tokens,
    the first ``prompt`` of each row unlabelled."""

    vocab: int
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    batch: int
    seq: int
    prompt: int


SHAPES = {
    "qwen2-0.5b": Shape(151936, 896, 4864, 24, 14, 2, batch=8, seq=1024, prompt=128),
    # --tiny: seconds on a CPU, the same code path.
    "tiny": Shape(2048, 64, 128, 2, 4, 2, batch=2, seq=64, prompt=8),
}


def build_model(shape: Shape):
    """A randomly initialized Qwen2 causal LM of ``shape``, fp32 on the CPU (the same weights in
    every process: the seed is fixed and the CPU generator does not depend on the card)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=shape.vocab,
        hidden_size=shape.hidden,
        intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
        max_position_embeddings=max(32768, shape.seq),
        rope_theta=1_000_000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        attn_implementation="sdpa",
    )
    torch.manual_seed(0)
    return Qwen2ForCausalLM(config)


class RandomRows(torch.utils.data.Dataset):
    """``count`` rows of ``seq`` random token ids; ``labels`` are the ids with the first ``prompt``
    set to -100. Item ``i`` is ``{"input_ids", "attention_mask", "labels"}``, each ``[seq]`` int64."""

    def __init__(self, shape: Shape, count: int):
        gen = torch.Generator().manual_seed(1)
        self.ids = torch.randint(0, shape.vocab, (count, shape.seq), generator=gen)
        self.labels = self.ids.clone()
        self.labels[:, : shape.prompt] = -100

    def __len__(self) -> int:
        return self.ids.shape[0]

    def __getitem__(self, i: int) -> dict:
        return {
            "input_ids": self.ids[i],
            "attention_mask": torch.ones_like(self.ids[i]),
            "labels": self.labels[i],
        }


def patch(model, variant: str):
    """``model`` with ``variant``'s kernels applied (in place, as each library documents)."""
    if variant in ("genssd", "genssd+liger-layers"):
        from genssd.integrations import apply_genssd_loss

        apply_genssd_loss(model)
    if variant in NEEDS_LIGER:
        from liger_kernel.transformers import apply_liger_kernel_to_qwen2

        layers = variant != "liger-loss"
        apply_liger_kernel_to_qwen2(
            rope=layers,
            rms_norm=layers,
            swiglu=layers,
            # genssd's loss is the forward already; Liger must not replace it.
            fused_linear_cross_entropy=variant != "genssd+liger-layers",
            model=model,
        )
    return model


def _synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _step_timer(warmup: int):
    """A ``TrainerCallback`` that times the steps after the first ``warmup`` and resets the peak
    memory statistics where the timing starts."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        start = end = None

        def on_step_end(self, args, state, control, **kwargs):
            _synchronize()  # the step's kernels are done: the clock reads the device's time
            now = time.perf_counter()
            if state.global_step == warmup:
                if torch.cuda.is_available():
                    torch.cuda.reset_peak_memory_stats()
                self.start = now
            self.end = now

    return StepTimer()


def measure(variant: str, shape: Shape, *, warmup: int, steps: int, cpu: bool) -> dict:
    """One variant's Trainer run in this process: tokens/s, ms/step and peak MiB of the timed
    steps, each step's logged loss, and a checksum of the initial weights (the same in every row)."""
    from transformers import Trainer, TrainingArguments

    row = {"variant": variant, "batch": shape.batch, "seq": shape.seq}
    model = build_model(shape)
    row["weights_checksum"] = float(sum(p.detach().double().sum() for p in model.parameters()))
    patch(model, variant)
    timer = _step_timer(warmup)
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out,
            per_device_train_batch_size=shape.batch,
            gradient_accumulation_steps=1,
            max_steps=warmup + steps,
            bf16=True,
            optim="adamw_torch",
            learning_rate=1e-5,
            lr_scheduler_type="constant",
            logging_steps=1,
            save_strategy="no",
            report_to="none",
            disable_tqdm=True,
            use_cpu=cpu,
            seed=0,
            dataloader_num_workers=0,
        )
        dataset = RandomRows(shape, shape.batch * (warmup + steps))
        trainer = Trainer(model=model, args=args, train_dataset=dataset, callbacks=[timer])
        try:
            trainer.train()
        except torch.OutOfMemoryError:
            return {**row, "note": "out of memory"}
    elapsed = timer.end - timer.start
    row["losses"] = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    row["tokens_per_s"] = steps * shape.batch * shape.seq / elapsed
    row["ms_per_step"] = 1000 * elapsed / steps
    row["peak_mib"] = torch.cuda.max_memory_allocated() / MiB if torch.cuda.is_available() else None
    return row


def run_variant(variant: str, shape_name: str, *, warmup: int, steps: int, cpu: bool) -> dict:
    """``measure`` in a fresh Python process (this file with ``--child``); its row, or a note."""
    if variant in NEEDS_LIGER and importlib.util.find_spec("liger_kernel") is None:
        return {"variant": variant, "note": "skipped: liger_kernel is not importable"}
    argv = [sys.executable, __file__, "--child", variant, "--shape", shape_name]
    argv += ["--warmup", str(warmup), "--steps", str(steps)] + (["--cpu"] if cpu else [])
    done = subprocess.run(argv, capture_output=True, text=True)
    rows = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not rows:
        lines = done.stderr.strip().splitlines() or ["no output"]
        return {"variant": variant, "note": f"failed (exit {done.returncode}): {lines[-1][:200]}"}
    return json.loads(rows[-1])


def environment(cpu: bool) -> dict:
    import transformers

    from genssd_kernels.dispatch import resolve_backend

    device = torch.device("cpu" if cpu else "cuda")
    liger = None
    if importlib.util.find_spec("liger_kernel") is not None:
        from importlib.metadata import PackageNotFoundError, version

        try:
            liger = version("liger_kernel")
        except PackageNotFoundError:  # importable from a folder, not installed
            liger = "unknown version"
    return {
        "card": "CPU" if cpu else torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "liger_kernel": liger,
        "genssd_backend": resolve_backend(None, device, op="linear_cross_entropy"),
    }


def run(
    shape_name: str = "qwen2-0.5b",
    variants=VARIANTS,
    *,
    warmup: int = 3,
    steps: int = 10,
    rounds: int = 2,
    cpu=False,
) -> dict:
    result = {**environment(cpu), "shape": {"name": shape_name, **dataclasses.asdict(SHAPES[shape_name])}}
    result.update(warmup=warmup, steps=steps, rounds=rounds, rows=[])
    measured = {variant: [] for variant in variants}
    for _ in range(rounds):
        for variant in variants:
            row = run_variant(variant, shape_name, warmup=warmup, steps=steps, cpu=cpu)
            measured[variant].append(row)
            print(json.dumps(row), flush=True)
    result["rows"] = [median_of_rounds(measured[variant]) for variant in variants]
    return result


def ratios(result: dict) -> dict:
    """Each measured variant over ``unpatched`` (tokens/s and peak memory), and genssd over each
    Liger row (tokens/s: above 1 is faster)."""
    rows = {r["variant"]: r for r in result["rows"] if "tokens_per_s" in r}
    out = {}
    base = rows.get("unpatched")
    for name, r in rows.items():
        if base is not None and name != "unpatched":
            peak = r["peak_mib"] / base["peak_mib"] if r["peak_mib"] and base["peak_mib"] else None
            out[f"{name} / unpatched"] = {
                "speed": r["tokens_per_s"] / base["tokens_per_s"],
                "peak_memory": peak,
            }
    if "genssd" in rows:
        for name in NEEDS_LIGER:
            if name in rows and name != "genssd+liger-layers":
                out[f"genssd / {name}"] = {
                    "speed": rows["genssd"]["tokens_per_s"] / rows[name]["tokens_per_s"]
                }
    return out


def markdown(result: dict) -> str:
    shape = result["shape"]
    lines = [
        f"Card: {result['card']}, torch {result['torch']}, transformers {result['transformers']}, "
        f"liger_kernel {result['liger_kernel'] or '-'}, genssd backend {result['genssd_backend']}; "
        f"{shape['name']} shape, {shape['batch']} x {shape['seq']} tokens a step, "
        f"{result['warmup']} warm-up + {result['steps']} timed Trainer steps per variant and round, "
        f"{result['rounds']} alternating rounds",
        "",
        "| variant | tokens/s | ms/step (median; range of the rounds) | peak MiB | first loss | last loss |",
        "|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        if "note" in r:
            lines.append(f"| {r['variant']} | {r['note']} | | | | |")
            continue
        peak = "-" if r["peak_mib"] is None else f"{r['peak_mib']:.0f}"
        lines.append(
            f"| {r['variant']} | {r['tokens_per_s']:.0f} | {r['ms_per_step']:.1f} "
            f"({min(r['ms_per_step_rounds']):.1f}-{max(r['ms_per_step_rounds']):.1f}) | {peak} "
            f"| {r['losses'][0]:.4f} | {r['losses'][-1]:.4f} |"
        )
    lines.append("")
    for name, ratio in ratios(result).items():
        memory = "" if ratio.get("peak_memory") is None else f", peak memory x{ratio['peak_memory']:.2f}"
        lines.append(f"- {name}: tokens/s x{ratio['speed']:.2f}{memory}")
    return "\n".join(lines)


@pytest.mark.cuda
def test_trainer_step_genssd_vs_unpatched_vs_liger():
    result = run()
    print(markdown(result))
    measured = {r["variant"]: r for r in result["rows"] if "tokens_per_s" in r}
    assert {"unpatched", "genssd"} <= measured.keys(), result["rows"]
    # Same weights and data in every process; the first step's loss agrees to bf16 accuracy.
    assert len({r["weights_checksum"] for r in measured.values()}) == 1
    first = measured["unpatched"]["losses"][0]
    assert all(abs(r["losses"][0] - first) < 1e-2 * first for r in measured.values()), result["rows"]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="a small model on the CPU (checks the script)")
    parser.add_argument("--shape", choices=sorted(SHAPES), help="(default qwen2-0.5b; tiny with --tiny)")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--warmup", type=int, help="untimed steps per variant (default 3; 1 with --tiny)")
    parser.add_argument("--steps", type=int, help="timed steps per variant (default 10; 3 with --tiny)")
    parser.add_argument("--rounds", type=int, help="alternating rounds (default 2; 1 with --tiny)")
    parser.add_argument("--cpu", action="store_true", help="run on the CPU (implied by --tiny)")
    parser.add_argument("--json", type=Path, help="save the rows here")
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)  # one variant, this process
    args = parser.parse_args(argv)
    shape = args.shape or ("tiny" if args.tiny else "qwen2-0.5b")
    warmup = args.warmup if args.warmup is not None else (1 if args.tiny else 3)
    steps = args.steps if args.steps is not None else (3 if args.tiny else 10)
    rounds = args.rounds if args.rounds is not None else (1 if args.tiny else 2)
    cpu = args.cpu or args.tiny
    if warmup < 1 or steps < 1 or rounds < 1:
        raise SystemExit("--warmup, --steps and --rounds must be >= 1")
    if not cpu and not torch.cuda.is_available():
        raise SystemExit("bench_trainer needs a CUDA GPU (or --tiny / --cpu)")
    if args.child:
        print(json.dumps(measure(args.child, SHAPES[shape], warmup=warmup, steps=steps, cpu=cpu)), flush=True)
        return
    result = run(shape, args.variants, warmup=warmup, steps=steps, rounds=rounds, cpu=cpu)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({**result, "ratios": ratios(result)}, indent=1))
    print(markdown(result))


if __name__ == "__main__":
    main()
