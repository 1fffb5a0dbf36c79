"""Tiny models and tokenizers for CPU tests: built from configs, nothing downloaded."""

from __future__ import annotations

import contextlib

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

SPECIALS = ["<pad>", "<eos>", "<bos>"]


def byte_tokenizer(*, pad_is_eos: bool = False, add_bos: bool = False) -> PreTrainedTokenizerFast:
    """A byte-level tokenizer (one token per byte, so any text round-trips).

    Ids 0-2 are ``<pad>``, ``<eos>``, ``<bos>``; bytes follow. With ``pad_is_eos`` the pad token
    is the EOS token, as in many released models. With ``add_bos`` every encoding starts with
    ``<bos>``.
    """
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {token: i for i, token in enumerate(SPECIALS + sorted(alphabet))}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    if add_bos:
        from tokenizers.processors import TemplateProcessing

        core.post_processor = TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 2)])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        eos_token="<eos>",
        bos_token="<bos>",
        pad_token="<eos>" if pad_is_eos else "<pad>",
    )
    return tokenizer


def tiny_llama(
    vocab_size: int, *, seed: int = 0, hidden: int = 32, layers: int = 2, tie: bool = False, **overrides
):
    """A randomly initialized Llama with ``hidden`` width, fp32, in eval mode; ``overrides`` replace
    or add ``LlamaConfig`` fields."""
    defaults = dict(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=tie,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
    )
    config = LlamaConfig(**{**defaults, **overrides})
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval()


@contextlib.contextmanager
def single_thread():
    """Tiny models run fastest on one thread; two threads on a loaded 2-core machine thrash."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def one_thread():
    """Every test of a module that imports this fixture runs on one thread."""
    with single_thread():
        yield
