"""Training-step speed and memory: genssd's fused completion loss against Hugging Face's default loss.

The student is shaped like Qwen2-0.5B (24 layers, d=896, vocabulary 151936, tied embeddings),
random weights, fp32 master weights under bf16 autocast (as ``genssd train`` runs on CUDA),
AdamW. A batch is ``--batch`` sequences of ``--seq`` tokens whose first ``--prompt`` tokens are
prompt (not trained). One step is forward, backward and the optimizer step:

- ``fused``: ``genssd.train.CompletionLoss`` (the base model's hidden states of completion
  positions, whose indices come with the batch as ``collate`` gives them, into
  ``genssd_kernels.linear_cross_entropy``; no ``[tokens, vocab]`` logits, no host sync);
- ``hf``: ``model(input_ids, attention_mask, labels=labels).loss``, the same loop with the
  model's default loss (full logits, upcast to fp32 in the loss).

Both run in the same process on the same model, with and without gradient checkpointing, in
``--rounds`` alternating rounds (each variant: 2 warm-up and 5 timed steps a round); a row's time
is the median of its rounds, with their range beside it. One round per variant swung by up to 17%
between two runs on the same card (HF's loss with checkpointing: 207.5 and 171.6 ms a step on an
H200), so one round is not enough. Peak memory is ``torch.cuda.max_memory_allocated`` over the
timed steps (weights, gradients and optimizer state included; the largest of the rounds); "step
MiB" is that peak minus what was resident before the step.

Entry points: ``pytest benchmarks/bench_train.py`` (skipped without CUDA), or
``python benchmarks/bench_train.py --json benchmarks/results/train.json`` for the table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from step_rounds import median_of_rounds  # noqa: E402

MiB = 2**20


def qwen2_half_b():
    """A randomly initialized Qwen2-0.5B-shaped causal LM in fp32 on CUDA."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=151936,
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        max_position_embeddings=32768,
        rope_theta=1_000_000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        attn_implementation="sdpa",
    )
    torch.manual_seed(0)
    return Qwen2ForCausalLM(config).cuda()


def make_batch(batch: int, seq: int, prompt: int, vocab: int) -> dict[str, torch.Tensor]:
    """Random ``input_ids``, full ``attention_mask`` and ``labels`` (``-100`` on the prompt),
    each ``[batch, seq]``, and ``completion_positions`` as ``genssd train``'s ``collate`` gives them
    (found once here, before the timed steps)."""
    from genssd.train import completion_positions

    gen = torch.Generator(device="cuda").manual_seed(1)
    input_ids = torch.randint(0, vocab, (batch, seq), device="cuda", generator=gen)
    labels = input_ids.clone()
    labels[:, :prompt] = -100
    return {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "labels": labels,
        "completion_positions": completion_positions(labels),
    }


def hf_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The batch as the Hugging Face model takes it."""
    return {name: batch[name] for name in ("input_ids", "attention_mask", "labels")}


def step_fn(model, optimizer, batch, loss_kind: str):
    """One optimizer step with ``loss_kind`` ("fused" or "hf"); returns a closure giving the loss."""
    from genssd.train import CompletionLoss

    fused = CompletionLoss(model)
    count = batch["completion_positions"].numel()  # the labelled positions

    def step() -> torch.Tensor:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            if loss_kind == "fused":
                loss = fused(**batch) / count
            else:
                loss = model(**hf_inputs(batch), use_cache=False).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    return step


def measure(
    model, optimizer, batch, loss_kind: str, checkpointing: bool, *, warmup: int = 2, steps: int = 5
) -> dict:
    from genssd.train import set_activation_checkpointing

    set_activation_checkpointing(model, checkpointing)
    step = step_fn(model, optimizer, batch, loss_kind)
    row = {
        "loss": loss_kind,
        "grad_ckpt": checkpointing,
        "batch": batch["input_ids"].shape[0],
        "seq": batch["input_ids"].shape[1],
    }
    try:
        for _ in range(warmup):
            step()
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        resident = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
    except torch.OutOfMemoryError:
        optimizer.zero_grad(set_to_none=True)
        torch.cuda.empty_cache()
        return {**row, "note": "out of memory"}
    peak = torch.cuda.max_memory_allocated()
    tokens = batch["input_ids"].numel() * steps
    return {
        **row,
        "tokens_per_s": tokens / elapsed,
        "ms_per_step": 1000 * elapsed / steps,
        "peak_mib": peak / MiB,
        "step_mib": (peak - resident) / MiB,
    }


@torch.no_grad()
def loss_agreement(model, batch) -> dict:
    """Both losses of one batch on the same weights under bf16 autocast (a correctness check)."""
    from genssd.train import CompletionLoss

    count = batch["completion_positions"].numel()  # the labelled positions
    with torch.autocast("cuda", dtype=torch.bfloat16):
        fused = float(CompletionLoss(model)(**batch)) / count
        hf = float(model(**hf_inputs(batch), use_cache=False).loss)
    return {"fused": fused, "hf": hf}


def run(batch: int = 8, seq: int = 1024, prompt: int = 128, rounds: int = 3) -> dict:
    from genssd_kernels.dispatch import resolve_backend

    model = qwen2_half_b()
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    data = make_batch(batch, seq, prompt, model.config.vocab_size)
    agreement = loss_agreement(model, data)
    print(json.dumps({"loss_check": agreement}), flush=True)
    variants = [(ckpt, loss_kind) for ckpt in (False, True) for loss_kind in ("fused", "hf")]
    measured = {variant: [] for variant in variants}
    for _ in range(rounds):
        # Alternating the variants spreads the card's drift (clocks, temperature) over all of them.
        for checkpointing, loss_kind in variants:
            row = measure(model, optimizer, data, loss_kind, checkpointing)
            measured[checkpointing, loss_kind].append(row)
            print(json.dumps(row), flush=True)
    rows = [median_of_rounds(measured[variant]) for variant in variants]
    return {
        "card": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "backend": resolve_backend(None, torch.device("cuda"), op="linear_cross_entropy"),
        "loss_check": agreement,
        "rounds": rounds,
        "rows": rows,
    }


def ratios(result: dict) -> list[dict]:
    """Per gradient-checkpointing setting: fused / hf for tokens/s and peak memory."""
    out = []
    for checkpointing in (False, True):
        pair = {r["loss"]: r for r in result["rows"] if r["grad_ckpt"] == checkpointing and "peak_mib" in r}
        if {"fused", "hf"} <= pair.keys():
            out.append(
                {
                    "grad_ckpt": checkpointing,
                    "speed": pair["fused"]["tokens_per_s"] / pair["hf"]["tokens_per_s"],
                    "peak_memory": pair["fused"]["peak_mib"] / pair["hf"]["peak_mib"],
                }
            )
    return out


def markdown(result: dict) -> str:
    check = result["loss_check"]
    header = (
        f"Card: {result['card']}, torch {result['torch']}, kernel backend {result['backend']}; "
        f"loss on the same weights: fused {check['fused']:.5f}, hf {check['hf']:.5f}"
    )
    lines = [
        header,
        "",
        "| loss | grad ckpt | batch x seq | tokens/s | ms/step (median; range of the rounds) | peak MiB "
        "| step MiB |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        shape = f"{r['batch']} x {r['seq']}"
        if "note" in r:
            lines.append(f"| {r['loss']} | {r['grad_ckpt']} | {shape} | {r['note']} | | | |")
            continue
        lines.append(
            f"| {r['loss']} | {r['grad_ckpt']} | {shape} | {r['tokens_per_s']:.0f} | {r['ms_per_step']:.1f} "
            f"({min(r['ms_per_step_rounds']):.1f}-{max(r['ms_per_step_rounds']):.1f}) "
            f"| {r['peak_mib']:.0f} | {r['step_mib']:.0f} |"
        )
    for ratio in ratios(result):
        lines.append(
            f"\nfused / hf (grad ckpt {ratio['grad_ckpt']}): tokens/s x{ratio['speed']:.2f}, "
            f"peak memory x{ratio['peak_memory']:.2f}"
        )
    return "\n".join(lines)


@pytest.mark.cuda
def test_train_step_fused_vs_hf_default_loss():
    result = run()
    print(markdown(result))
    assert all("note" not in r for r in result["rows"]), result["rows"]
    check = result["loss_check"]
    # Same weights, same batch: the two losses agree to bf16 accuracy.
    assert abs(check["fused"] - check["hf"]) < 1e-2 * check["hf"], check


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per variant")
    parser.add_argument("--json", type=Path, help="save the rows here")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("bench_train needs a CUDA GPU")
    result = run(args.batch, args.seq, args.prompt, args.rounds)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({**result, "ratios": ratios(result)}, indent=1))
    print(markdown(result))


if __name__ == "__main__":
    main()
