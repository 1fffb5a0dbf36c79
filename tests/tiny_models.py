"""Tiny models and tokenizers for CPU tests: built from configs, nothing downloaded."""

from __future__ import annotations

import contextlib

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

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


FAMILIES = {
    "llama": (LlamaConfig, LlamaForCausalLM),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM),
    "qwen3": (Qwen3Config, Qwen3ForCausalLM),
    "mistral": (MistralConfig, MistralForCausalLM),
    # Not a static-engine family: the tests of what runs on the hf engine only, or is refused.
    "gpt2": (GPT2Config, GPT2LMHeadModel),
}
# (pad, bos, eos) of the search tests' BPE tokenizers; byte_tokenizer's are (0, 2, 1).
BPE_SPECIALS = (0, 1, 2)
BYTE_SPECIALS = (0, 2, 1)


def tiny_lm(
    kind: str,
    vocab_size: int,
    *,
    seed: int = 0,
    hidden: int = 32,
    layers: int = 2,
    tie: bool = False,
    specials: tuple[int, int, int] = BPE_SPECIALS,
    eos: list[int] | None = None,
    **overrides,
):
    """The one tiny-model builder: a randomly initialized causal LM of family ``kind`` (a key of
    ``FAMILIES``) with ``hidden`` width and ``layers`` layers, fp32, in eval mode.

    ``specials`` are the (pad, bos, eos) ids; ``eos`` sets the generation config's end-of-sequence
    ids (several make endings frequent); ``overrides`` replace or add config fields. GPT-2's config
    reads the common names (``hidden_size`` is its ``n_embd``, ...) and ignores the fields it lacks.
    """
    pad, bos, eos_id = specials
    config_cls, model_cls = FAMILIES[kind]
    defaults = dict(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=tie,
        pad_token_id=pad,
        bos_token_id=bos,
        eos_token_id=eos_id,
    )
    config = config_cls(**{**defaults, **overrides})
    torch.manual_seed(seed)
    model = model_cls(config).eval()
    model.generation_config.eos_token_id = eos if eos is not None else eos_id
    model.generation_config.pad_token_id = pad
    return model


def tiny_llama(vocab_size: int, **kwargs):
    """``tiny_lm("llama", ...)`` with ``byte_tokenizer``'s special ids."""
    return tiny_lm("llama", vocab_size, specials=BYTE_SPECIALS, **kwargs)


@contextlib.contextmanager
def single_thread():
    """Tiny models run fastest on one thread; two threads on a loaded 2-core machine thrash."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
