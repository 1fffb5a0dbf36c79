"""A tiny teacher/student pair for the ``arith`` (or ``ledger``) pipeline tests, saved as model folders.

The tokenizer is character-level (built with ``tokenizers``, like the shipped demo's). The
teacher is a 2-layer Llama fine-tuned for a few seconds on given problems' solutions in the
mixed style, so it samples mostly correct answers to those problems (the rejection filter and
answer accuracy then have something to count); the student is a smaller Llama at its random
initialization.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch
from genssd.config import TrainConfig
from genssd.tasks import arith, get_task, ledger
from genssd.train import train
from tiny_models import tiny_llama
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

CHARACTERS = "0123456789 +-=#?:\nWhatisQuestionAnswer"
# ledger's stories and its products, beyond arith's characters.
LEDGER_CHARACTERS = "".join(ledger.NAMES + ledger.ITEMS) + "buysbagsofgetsgivesawaylosesHowmanynow.*"


def char_tokenizer(extra: str = "") -> PreTrainedTokenizerFast:
    """One token per character of the arith prompts and solutions (and of ``extra``);
    ``<pad>``=0, ``<eos>``=1."""
    alphabet = sorted(set(CHARACTERS + extra))
    vocab = {token: i for i, token in enumerate(["<pad>", "<eos>", "<unk>", *alphabet])}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    core.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>"
    )


def _llama(tokenizer, hidden: int, layers: int, seed: int) -> LlamaForCausalLM:
    model = tiny_llama(
        len(tokenizer),
        seed=seed,
        hidden=hidden,
        layers=layers,
        tie=True,
        num_key_value_heads=4,
        max_position_embeddings=256,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def arith_models(root: Path, rows: list[dict], *, steps: int = 250, task: str = "arith") -> Path:
    """Write ``root/teacher`` (fitted to ``rows`` of ``task``: arith or ledger) and ``root/student``,
    each with the tokenizer."""
    rng = random.Random(0)
    if task == "ledger":
        tokenizer = char_tokenizer(LEDGER_CHARACTERS)
        data = [dict(r, answer=ledger.render_solution(r, "mixed", rng)) for r in rows]
    else:
        tokenizer = char_tokenizer()
        data = [dict(r, answer=arith.render_solution(r["numbers"], r["ops"], "mixed", rng)) for r in rows]
    teacher = _llama(tokenizer, hidden=64, layers=2, seed=1)
    config = TrainConfig(
        lr=5e-3, max_steps=steps, batch_size=16, warmup_ratio=0.05, bf16=False, max_length=256
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(teacher, tokenizer, data, config, task=get_task(task), progress=False)
    finally:
        torch.set_num_threads(threads)
    student = _llama(tokenizer, hidden=32, layers=1, seed=2)
    for name, model in (("teacher", teacher.eval()), ("student", student)):
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    return root
