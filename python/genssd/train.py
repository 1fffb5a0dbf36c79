"""Thin SFT loop: fine-tune the student on trajectories with a completion-only loss.

Each training row becomes ``prompt + completion + EOS``: the prompt is the task's prompt (or the
bare question without a task), or the question under the model's chat template when its
tokenizer has one (``TrainConfig.chat_template``, ``genssd.prompts``); the completion is the
first trajectory of a ``genssd search`` row or the ``answer`` of a plain question/answer row.
Only completion tokens (EOS included) are trained. The loss goes through
``genssd_kernels.linear_cross_entropy`` on the model's final hidden states and its LM-head
weight, so the ``[tokens, vocab]`` logits never exist.

The loss of an optimizer step is the sum over its completion tokens divided by their number,
counted over every micro-batch of the step on every rank before the first backward pass, so
``batch_size * grad_accum * world_size`` examples give the same update however they are split.

Data order is a seeded permutation per epoch, so a run resumed from a checkpoint mid-epoch
sees exactly the examples the uninterrupted run would have seen.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import load_file
from torch import nn
from tqdm.auto import tqdm

from genssd.config import TrainConfig
from genssd.errors import UsageError
from genssd.models import completion_eos_id, eos_token_ids, linear_head_weight, pad_token_id, resolve_device
from genssd.prompts import PromptFormat
from genssd_kernels import linear_cross_entropy

IGNORE_INDEX = -100
CHECKPOINT_PREFIX = "checkpoint-"
STATE_FILE = "trainer_state.json"
LOG_FILE = "train_log.jsonl"
# Config keys that may change between a run and its resumption (they do not change the math).
RESUMABLE_CHANGES = frozenset({"save_every", "log_every", "keep_checkpoints"})

logger = logging.getLogger("genssd.train")


# --------------------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Example:
    """One tokenized training sequence: ``input_ids[:num_prompt]`` is the prompt."""

    input_ids: tuple[int, ...]
    num_prompt: int

    @property
    def num_completion(self) -> int:
        """Trained tokens: the completion and its EOS (what the loss is normalized by)."""
        return len(self.input_ids) - self.num_prompt


def completion_text(row: dict, where: str = "row") -> str:
    """The text a row teaches: ``trajectories[0].text`` of a search row, else ``answer``.

    A search row's text may be empty: a sampled teacher can end its answer at once (its EOS is
    then the whole trajectory, and the row teaches just that, as plain sampling would).
    """
    if "trajectories" in row:
        trajectories = row["trajectories"]
        first = trajectories[0] if isinstance(trajectories, list) and trajectories else None
        if not isinstance(first, dict) or not isinstance(first.get("text"), str):
            raise UsageError(f"{where}: the row has no trajectory text (trajectories[0].text)")
        return first["text"]
    answer = row.get("answer")
    if not isinstance(answer, str) or not answer:
        raise UsageError(f"{where}: a training row needs trajectories[0].text (search output) or an 'answer'")
    return answer


def trajectory_row(row: dict, index: int, task) -> dict:
    """Search row ``row`` narrowed to its trajectory ``index`` (uid ``<uid>/<index>``), with that
    trajectory's own extracted answer and ``correct`` verdict: one training example's row."""
    text = row["trajectories"][index]["text"]
    return {
        **row,
        "uid": f"{row['uid']}/{index}",
        "trajectories": [row["trajectories"][index]],
        "predicted_answer": task.extract_answer(text),
        "correct": bool(task.is_correct(text, row)),
    }


def prompt_text(row: dict, task=None, where: str = "row") -> str:
    """The task's prompt for the row, or its bare question when no task is given."""
    question = row.get("question")
    if not isinstance(question, str) or not question.strip():
        raise UsageError(f"{where}: a training row needs a non-empty 'question'")
    return task.prompt(row) if task is not None else question


def _where(row: dict, index: int) -> str:
    return f"row {index + 1}" + (f" (uid {row['uid']})" if "uid" in row else "")


def select_rows(rows: Sequence[dict], *, only_correct: bool = False, task=None) -> list[dict]:
    """The rows to train on, each checked to have a prompt and a completion.

    Rows a search pruned early are incomplete and always left out; with ``only_correct``,
    rows whose answer is wrong are left out too (rejection sampling). A row's correctness is its
    ``correct`` field, else ``task.is_correct`` of its completion.
    """
    kept = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise UsageError(f"row {i + 1}: expected a JSON object, got {type(row).__name__}")
        if row.get("pruned_early"):
            continue
        where = _where(row, i)
        prompt_text(row, task, where)
        completion = completion_text(row, where)
        if only_correct:
            correct = row.get("correct")
            if correct is None:
                if task is None:
                    raise UsageError(
                        f"{where}: only_correct needs a 'correct' field or a task to check answers"
                    )
                correct = task.is_correct(completion, row)
            if not correct:
                continue
        kept.append(row)
    if not kept:
        raise UsageError("no training rows: the data is empty or every row was filtered out")
    return kept


def build_examples(
    rows: Sequence[dict], tokenizer, max_length: int, *, task=None, prompt_format: PromptFormat | None = None
) -> list[Example]:
    """Tokenize rows into ``prompt ids + completion ids + [eos]``, cut to ``max_length``.

    Prompt and completion are tokenized separately, so the boundary is exact and matches how a
    model generating after the prompt sees it. A completion that does not fit is truncated
    (losing its EOS; a warning counts them); a prompt that encodes to no tokens, or
    leaves no room for one completion token, is an error.
    """
    eos = completion_eos_id(tokenizer)
    examples, truncated = [], 0
    for i, row in enumerate(rows):
        where = _where(row, i)
        raw = prompt_text(row, task, where)
        message = task.user_message(row) if task is not None else raw
        prompt_ids = (prompt_format or PromptFormat()).encode(tokenizer, raw, message)
        completion_ids = tokenizer(completion_text(row, where), add_special_tokens=False)["input_ids"] + [eos]
        if not prompt_ids:
            # The first completion token needs a position before it to be predicted from.
            raise UsageError(f"{where}: the prompt encodes to no tokens")
        if len(prompt_ids) >= max_length:
            raise UsageError(
                f"{where}: the prompt is {len(prompt_ids)} tokens, which leaves no room for the completion "
                f"within max_length={max_length}; raise max_length"
            )
        ids = (prompt_ids + completion_ids)[:max_length]
        truncated += len(prompt_ids) + len(completion_ids) > max_length
        examples.append(Example(tuple(ids), len(prompt_ids)))
    if truncated:
        logger.warning(
            "%d of %d examples were longer than max_length=%d and lost their end",
            truncated,
            len(rows),
            max_length,
        )
    return examples


def prepare_examples(rows: Sequence[dict], tokenizer, config: TrainConfig, *, task=None) -> list[Example]:
    """:func:`select_rows` then :func:`build_examples`: the training set ``train`` runs on.

    Useful to check the data (and fail fast) before loading a large model.
    """
    return build_examples(
        select_rows(rows, only_correct=config.only_correct, task=task),
        tokenizer,
        config.max_length,
        task=task,
        prompt_format=config.prompt_format_for(task),
    )


def collate(examples: Sequence[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch tensors.

    Returns ``input_ids [B, T]`` int64, ``attention_mask [B, T]`` int64, ``labels [B, T]``
    int64 (the token id on completion positions, ``IGNORE_INDEX`` on prompt and padding
    positions) and ``completion_positions [n]`` int64 (:func:`completion_positions`, found here
    on the host so that :class:`CompletionLoss` never reads the labels back from the GPU). Labels
    come from the lengths, never from comparing ids with ``pad_id``, so an EOS that doubles as
    padding is still trained.
    """
    width = max(len(e.input_ids) for e in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    for b, example in enumerate(examples):
        ids = torch.tensor(example.input_ids, dtype=torch.long)
        input_ids[b, : len(ids)] = ids
        attention_mask[b, : len(ids)] = 1
        labels[b, example.num_prompt : len(ids)] = ids[example.num_prompt :]
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "labels": labels,
        "completion_positions": completion_positions(labels),
    }


def completion_positions(labels: torch.Tensor) -> torch.Tensor:
    """``[n]`` int64: the flat indices into ``[B, T-1]`` of the positions ``t`` whose next label
    ``labels[:, t+1]`` is not ``IGNORE_INDEX`` (``labels [B, T]``; on a GPU tensor this waits for
    the device)."""
    return (labels[:, 1:] != IGNORE_INDEX).flatten().nonzero().squeeze(1)


def epoch_order(num_examples: int, seed: int, epoch: int) -> list[int]:
    """The example order of ``epoch``: a permutation that depends only on ``(seed, epoch)``."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(num_examples, generator=generator).tolist()


# --------------------------------------------------------------------------------------- loss


class CompletionLoss(nn.Module):
    """Summed next-token cross-entropy over completion tokens, without materializing logits.

    Wraps a Hugging Face causal LM. ``forward`` runs the base model (not the LM head) and feeds
    the hidden states of labelled positions with the LM-head weight to
    ``linear_cross_entropy``. It is the module DDP wraps, so gradient synchronization sees the
    whole computation.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        linear_head_weight(model)
        self.model = model

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor,
        completion_positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Args: ``input_ids``, ``attention_mask``, ``labels``: ``[B, T]`` int64;
        ``completion_positions``: ``[n]`` int64 on their device, the flat indices into ``[B, T-1]``
        of the labelled positions (:func:`collate` gives them). Only those rows reach the kernel,
        so prompt and padding cost no vocabulary work; without them every position does (ignored
        rows add nothing to the loss). Finding them here would read the labels back from the GPU,
        a sync that leaves the GPU idle while the host launches the backward: with it the
        Qwen2-0.5B-shaped step with activation checkpointing ran at 0.85-0.92x HF's speed on an
        H200 (three runs), without it 1.02-1.04x (two; ``benchmarks/README.md``).

        Returns: the fp32 scalar sum of ``-log p(labels[:, t+1] | input_ids[:, :t+1])`` over
        positions whose label is not ``IGNORE_INDEX``.
        """
        outputs = self.model.base_model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        hidden = outputs[0][:, :-1]  # [B, T-1, d]: position t predicts token t+1
        hidden = hidden.reshape(-1, hidden.shape[-1])  # [B * (T-1), d]
        targets = labels[:, 1:].reshape(-1)  # [B * (T-1)]
        if completion_positions is not None:
            hidden, targets = hidden[completion_positions], targets[completion_positions]  # [n, d], [n]
        weight = self.model.get_output_embeddings().weight  # [V, d]
        # Under autocast the op casts both to the autocast dtype, as the LM-head matmul would be.
        hidden = hidden.to(weight.dtype)
        # The value checks run on the device without a host sync (docs/design.md §2), so the hot
        # loop keeps them.
        return linear_cross_entropy(hidden, weight, targets, reduction="sum")


# --------------------------------------------------------------------------------- distributed


def dist_info() -> tuple[int, int]:
    """``(rank, world_size)``; ``(0, 1)`` without an initialized process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def setup_distributed(device: str | None = None) -> torch.device:
    """Join the ``torchrun`` process group when ``WORLD_SIZE > 1`` and pick this rank's device.

    NCCL on CUDA, gloo on CPU. Without torchrun: ``device`` (``resolve_device``'s rule: checked,
    None is CUDA when available, else CPU).
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    device = resolve_device(device)
    use_cuda = torch.device(device).type == "cuda"
    if world_size > 1:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        if use_cuda:
            torch.cuda.set_device(local_rank)
            return torch.device("cuda", local_rank)
        return torch.device("cpu")
    return torch.device(device)


def _barrier() -> None:
    if dist_info()[1] > 1:
        dist.barrier()


def _all_reduce_sum(value: torch.Tensor) -> torch.Tensor:
    if dist_info()[1] > 1:
        dist.all_reduce(value)
    return value


# -------------------------------------------------------------------------------- checkpoints


def checkpoints(out_dir: str | Path) -> list[Path]:
    """The complete checkpoints in ``out_dir``, oldest first (a half-written one is ignored)."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return []
    found = []
    for path in out_dir.glob(f"{CHECKPOINT_PREFIX}*"):
        suffix = path.name[len(CHECKPOINT_PREFIX) :]
        if suffix.isdigit() and (path / STATE_FILE).is_file():
            found.append((int(suffix), path))
    return [path for _, path in sorted(found)]


def _save_checkpoint(
    out_dir: Path, step: int, state: dict, model, tokenizer, optimizer, scheduler, keep: int
) -> None:
    """Write ``checkpoint-<step>`` atomically: everything goes to a temporary folder that is
    renamed once complete, so a run killed while saving leaves the previous checkpoint intact.
    Rank 0 writes the model, optimizer and scheduler; every rank writes its own RNG state.
    """
    rank, world = dist_info()
    final = out_dir / f"{CHECKPOINT_PREFIX}{step}"
    tmp = out_dir / f".tmp-{CHECKPOINT_PREFIX}{step}"
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    _barrier()
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    torch.save(rng, tmp / f"rng_state_rank{rank}.pt")
    _barrier()
    if rank == 0:
        (tmp / STATE_FILE).write_text(json.dumps({**state, "world_size": world}, indent=2))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        if keep > 0:
            for old in checkpoints(out_dir)[:-keep]:
                shutil.rmtree(old, ignore_errors=True)
    _barrier()


def _load_weights(model: nn.Module, checkpoint: Path) -> None:
    """Load a checkpoint's safetensors into ``model`` in place (tied weights are saved once)."""
    files = sorted(checkpoint.glob("*.safetensors"))
    if not files:
        raise UsageError(f"{checkpoint} holds no .safetensors weights")
    state = {}
    for file in files:
        state.update(load_file(str(file)))
    missing, unexpected = model.load_state_dict(state, strict=False)
    loaded_storage = {t.data_ptr() for k, t in model.state_dict().items() if k in state}
    untied = [k for k in missing if model.state_dict()[k].data_ptr() not in loaded_storage]
    if unexpected or untied:
        raise UsageError(
            f"{checkpoint} does not match the model: missing {untied[:5]}, unexpected {unexpected[:5]}"
        )


def _resume(checkpoint: Path, config: TrainConfig, model, optimizer, scheduler, device: torch.device) -> dict:
    """Restore weights, optimizer, scheduler and RNG from ``checkpoint``; return its state."""
    rank, world = dist_info()
    state = json.loads((checkpoint / STATE_FILE).read_text())
    saved, current = state["config"], dataclasses.asdict(config)
    changed = sorted(k for k in current if k not in RESUMABLE_CHANGES and saved.get(k) != current[k])
    if changed:
        diffs = ", ".join(f"{k}: {saved.get(k)!r} -> {current[k]!r}" for k in changed)
        raise UsageError(f"cannot resume from {checkpoint}: the config changed ({diffs})")
    if state["world_size"] != world:
        raise UsageError(
            f"cannot resume from {checkpoint}: it ran on {state['world_size']} processes, this run on {world}"
        )
    _load_weights(model, checkpoint)
    optimizer.load_state_dict(torch.load(checkpoint / "optimizer.pt", map_location=device, weights_only=True))
    scheduler.load_state_dict(torch.load(checkpoint / "scheduler.pt", weights_only=True))
    rng = torch.load(checkpoint / f"rng_state_rank{rank}.pt", weights_only=True)
    torch.set_rng_state(rng["cpu"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return state


# ------------------------------------------------------------------------------------ the loop


def _optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (norm weights and biases are not decayed)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": config.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=config.lr)


def set_activation_checkpointing(model: nn.Module, enabled: bool) -> None:
    """Activation (gradient) checkpointing on or off, by the name this transformers release uses
    (``activation_checkpointing_*`` since 5.2x; ``gradient_checkpointing_*`` before)."""
    if enabled:
        kwargs = {"use_reentrant": False}  # non-reentrant: works under DDP and with frozen inputs
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    elif hasattr(model, "activation_checkpointing_disable"):
        model.activation_checkpointing_disable()
    else:
        model.gradient_checkpointing_disable()


def _autocast(device: torch.device, config: TrainConfig):
    if config.bf16 and device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _accumulate_gradients(
    loss_module: nn.Module,
    step_examples: Sequence[Example],
    step_tokens: int,
    config: TrainConfig,
    pad_id: int,
    device: torch.device,
) -> tuple[torch.Tensor, int]:
    """Forward and backward this rank's share of one optimizer step, ``grad_accum`` micro-batches.

    Each micro-batch's summed loss is divided by ``step_tokens``, the completion tokens of the
    whole step on all ranks, so the gradients add up to those of the step's mean token loss.
    Returns this rank's summed loss (a detached scalar) and the tokens it processed.
    """
    rank, world = dist_info()
    mine = step_examples[rank::world]
    loss_sum = torch.zeros((), device=device)
    tokens = 0
    for k in range(config.grad_accum):
        batch = collate(mine[k * config.batch_size : (k + 1) * config.batch_size], pad_id)
        tokens += int(batch["attention_mask"].sum())  # counted on the host: no sync
        batch = {name: t.to(device) for name, t in batch.items()}
        # DDP all-reduces gradients on the last micro-batch only.
        last = k == config.grad_accum - 1
        with contextlib.nullcontext() if last or world == 1 else loss_module.no_sync():
            with _autocast(device, config):
                micro_sum = loss_module(**batch)
            # DDP averages gradients over ranks; scaling by world_size turns that into a sum.
            (micro_sum * (world / step_tokens)).backward()
        loss_sum += micro_sum.detach()
    return loss_sum, tokens


def train(
    model: nn.Module,
    tokenizer,
    data: Sequence[dict] | Sequence[Example],
    config: TrainConfig,
    out_dir: str | Path | None = None,
    *,
    task=None,
    resume: bool = False,
    device: str | torch.device | None = None,
    callback: Callable[[int, float], None] | None = None,
    progress: bool = True,
) -> dict:
    """Fine-tune ``model`` (a Hugging Face causal LM, trained in place) on ``data``.

    Args:
        model, tokenizer: the student and its tokenizer.
        data: ``genssd search`` output rows or plain ``question``/``answer`` rows, or the
            examples :func:`prepare_examples` made of them.
        config: the training settings; ``batch_size`` is per process and per micro-batch.
        out_dir: where checkpoints (every ``save_every`` steps) and the final model go; None
            trains without writing anything.
        task: a task from ``genssd.tasks.get_task``; its prompt format is used. None: the bare question.
        resume: continue from the latest checkpoint in ``out_dir`` (a fresh start when none).
        device: where to train; default the model's device.
        callback: called as ``callback(step, loss)`` after every optimizer step (and checkpoint).
        progress: show a progress bar on rank 0.

    Returns:
        ``{"steps", "epochs", "losses" (per step, this run), "tokens", "seconds"}``.
    """
    rank, world = dist_info()
    device = torch.device(device) if device is not None else next(model.parameters()).device
    out_dir = Path(out_dir) if out_dir is not None else None
    if config.save_every and out_dir is None:
        raise UsageError("save_every needs an output directory")
    if out_dir is not None and not resume and checkpoints(out_dir):
        raise UsageError(
            f"{out_dir} already holds checkpoints; pass --resume to continue or choose another --out"
        )

    if data and all(isinstance(item, Example) for item in data):
        examples = list(data)
    else:
        examples = prepare_examples(data, tokenizer, config, task=task)
    vocab_size = model.get_output_embeddings().weight.shape[0]
    if examples and max(max(e.input_ids) for e in examples) >= vocab_size:
        raise UsageError(f"the data holds token ids outside the model's vocabulary of {vocab_size}")
    global_batch = config.batch_size * config.grad_accum * world
    steps_per_epoch = len(examples) // global_batch
    if steps_per_epoch == 0:
        raise UsageError(
            f"{len(examples)} training examples are fewer than one step's batch of {global_batch} "
            f"(batch_size {config.batch_size} x grad_accum {config.grad_accum} x {world} processes)"
        )
    total_steps = config.max_steps or config.epochs * steps_per_epoch
    pad_id = pad_token_id(tokenizer, eos_token_ids(model, tokenizer))

    model.to(device)
    model.train()
    if config.gradient_checkpointing:
        set_activation_checkpointing(model, True)
    loss_module: nn.Module = CompletionLoss(model)
    if world > 1:
        loss_module = nn.parallel.DistributedDataParallel(
            loss_module, device_ids=[device.index] if device.type == "cuda" else None
        )
    optimizer = _optimizer(model, config)
    from transformers import get_cosine_schedule_with_warmup  # heavy: on first use (genssd.models)

    scheduler = get_cosine_schedule_with_warmup(
        optimizer, math.ceil(config.warmup_ratio * total_steps), total_steps
    )

    step = 0
    latest = checkpoints(out_dir)[-1] if resume and out_dir is not None and checkpoints(out_dir) else None
    if latest is not None:
        step = _resume(latest, config, model, optimizer, scheduler, device)["step"]
    else:
        torch.manual_seed(config.seed)

    bar = None
    if progress and rank == 0:
        bar = tqdm(total=total_steps, initial=step, desc="train", unit="step", dynamic_ncols=True)
    losses: list[float] = []
    tokens_seen, started = 0, time.perf_counter()
    order_epoch, order = -1, []
    while step < total_steps:
        epoch, index = divmod(step, steps_per_epoch)
        if epoch != order_epoch:
            order_epoch, order = epoch, epoch_order(len(examples), config.seed, epoch)
        step_examples = [examples[i] for i in order[index * global_batch : (index + 1) * global_batch]]
        # Every rank knows the whole step's examples, so the normalizer needs no communication.
        step_tokens = sum(e.num_completion for e in step_examples)
        loss_sum, tokens = _accumulate_gradients(
            loss_module, step_examples, step_tokens, config, pad_id, device
        )
        tokens_seen += tokens
        if config.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        loss = float(_all_reduce_sum(loss_sum)) / step_tokens
        losses.append(loss)

        if out_dir is not None and rank == 0 and (step % config.log_every == 0 or step == total_steps):
            record = {
                "step": step,
                "epoch": epoch,
                "loss": loss,
                "lr": scheduler.get_last_lr()[0],
                "tokens_per_s": tokens_seen * world / (time.perf_counter() - started),
            }
            out_dir.mkdir(parents=True, exist_ok=True)
            with (out_dir / LOG_FILE).open("a") as f:
                f.write(json.dumps(record) + "\n")
        if config.save_every and step % config.save_every == 0:
            state = {
                "step": step,
                "epoch": step // steps_per_epoch,
                "loss": loss,
                "config": dataclasses.asdict(config),
            }
            _save_checkpoint(
                out_dir, step, state, model, tokenizer, optimizer, scheduler, config.keep_checkpoints
            )
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
        if callback is not None:
            callback(step, loss)
    if bar is not None:
        bar.close()
    if config.gradient_checkpointing:
        set_activation_checkpointing(model, False)

    if out_dir is not None:
        if rank == 0:
            model.save_pretrained(out_dir)
            if tokenizer is not None:
                tokenizer.save_pretrained(out_dir)
        _barrier()
    return {
        "steps": step,
        "epochs": step / steps_per_epoch,
        "losses": losses,
        "tokens": tokens_seen * world,
        "seconds": time.perf_counter() - started,
    }


__all__ = [
    "CompletionLoss",
    "Example",
    "build_examples",
    "checkpoints",
    "collate",
    "completion_text",
    "epoch_order",
    "prepare_examples",
    "prompt_text",
    "select_rows",
    "setup_distributed",
    "train",
]
