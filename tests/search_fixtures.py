"""Tiny teachers, students and tokenizers for the search tests, and from-scratch reference scores.

Tokenizers are byte-level BPEs trained on a few strings (any text encodes; different vocabulary
sizes give different merges, so a teacher's and a student's tokens of one text differ). Models
are 2-layer Llama/Qwen2 built from configs with random weights.
"""

from __future__ import annotations

import torch
from tiny_models import BPE_SPECIALS, FAMILIES, single_thread, tiny_lm  # noqa: F401  (re-exported)
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

PAD, BOS, EOS = BPE_SPECIALS

CORPUS = [
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May.",
    "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting.",
    "Betty is saving money for a new wallet which costs $100. How much more money does she need?",
    "Step 1: 12 + 7 = 19\nStep 2: 19 * 3 = 57\nStep 3: 57 - 8 = 49\n#### 49",
    "James writes a 3-page letter to 2 different friends twice a week. How many pages a year?",
]

PROMPTS = [
    "Question: Natalia sold 48 clips.\nAnswer:\n",
    "Question: Weng earns $12 an hour. How much did she earn?\nAnswer:\n",
    "Step 1:",
    "Betty",
    "James writes 3 pages to 2 friends twice a week.",
]


def bpe_tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE with ``<pad>``=0, ``<s>``=1, ``</s>``=2 and merges learned from ``CORPUS``."""
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(CORPUS * 4, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )


@torch.no_grad()
def token_logprobs(model, prompt_ids: list[int], completion_ids: list[int]) -> torch.Tensor:
    """``[len(completion_ids)]`` float64 log-probs of the completion after the prompt, by a plain forward."""
    device = model.get_input_embeddings().weight.device
    ids = torch.tensor([prompt_ids + completion_ids], device=device)
    logits = model(input_ids=ids).logits[0].double().cpu()
    logprobs = torch.log_softmax(logits[len(prompt_ids) - 1 : -1], dim=-1)
    return logprobs.gather(1, torch.tensor(completion_ids)[:, None]).squeeze(1)


def letters_tokenizer(letters: str = "thean is") -> PreTrainedTokenizerFast:
    """A character tokenizer over a few letters (anything else is ``<unk>``), no merges.

    A teacher with it writes letter soup such as ``"tha ne si"``, which a BPE student merges
    across chunk boundaries ("th", " the", ...): the student's tokens of the text so far change
    as the text grows.
    """
    alphabet = sorted({"Ġ" if ch == " " else ch for ch in letters})
    vocab = {token: i for i, token in enumerate(["<pad>", "<s>", "</s>", "<unk>", *alphabet])}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
