"""genssd's fused training loss inside Hugging Face models: ``Trainer``, TRL's ``SFTTrainer``,
or any loop that calls ``model(input_ids=..., labels=...)``.

``apply_genssd_loss(model)`` replaces the model's forward: without ``labels`` it is the model's
own; with ``labels`` it runs the base decoder and computes the causal-LM loss with
``genssd_kernels.linear_cross_entropy`` from the final hidden states and the LM head weight, so
the ``[tokens, vocab]`` logits are never materialized (``logits`` is None in the output, as with
Liger-Kernel). The loss is Hugging Face's: labels shifted by one (or ``shift_labels`` as given),
-100 ignored, the mean over labelled tokens, or the sum over ``num_items_in_batch`` when the
trainer passes it (gradient accumulation's normalization). ``remove_genssd_loss`` undoes it.
"""

from __future__ import annotations

import functools
import types

import torch
from torch import nn

from genssd.errors import UsageError
from genssd.models import linear_head_weight
from genssd_kernels import linear_cross_entropy

# Causal LMs whose forward is "decoder -> lm_head": the patched forward keeps their outputs.
FAMILIES = ("llama", "mistral", "qwen2", "qwen3")
# Keyword arguments of Hugging Face's loss functions, not of the decoder's forward.
_LOSS_KWARGS = ("num_items_in_batch", "shift_labels", "ignore_index")


def apply_genssd_loss(model: nn.Module) -> nn.Module:
    """Make ``model`` compute its training loss with genssd's fused kernel (module docstring).

    Returns the same model (patched in place). Refuses (``UsageError``) families other than
    ``FAMILIES`` and heads the kernel cannot honour (a bias, soft-capped or scaled logits).
    """
    family = getattr(getattr(model, "config", None), "model_type", None)
    if family not in FAMILIES:
        raise UsageError(f"apply_genssd_loss supports {', '.join(FAMILIES)}; got model type {family!r}")
    linear_head_weight(model)
    # A method bound to the model, not a closure over it: a deepcopy (a reference or EMA model)
    # then runs on the copy's own weights.
    model.forward = types.MethodType(_patched_forward(type(model)), model)
    return model


def remove_genssd_loss(model: nn.Module) -> nn.Module:
    """Undo ``apply_genssd_loss`` (a model never patched is returned as it is)."""
    if "forward" in vars(model):
        del model.forward  # the instance attribute; the class's forward shows again
    return model


@functools.cache
def _patched_forward(cls: type):
    """The patched forward of a model class (one per class, so ``Trainer`` reads the class's own
    signature through ``__wrapped__``: it keeps the batch's columns and passes
    ``num_items_in_batch`` by it)."""

    @functools.wraps(cls.forward)
    def forward(self, *args, labels: torch.Tensor | None = None, **kwargs):
        if labels is None or args:
            return cls.forward(self, *args, labels=labels, **kwargs)
        return _fused_loss_forward(self, labels, kwargs)

    return forward


def _fused_loss_forward(model: nn.Module, labels: torch.Tensor, kwargs: dict):
    """The causal-LM forward with the loss from hidden states; ``labels`` ``[B, T]`` int64."""
    from transformers.modeling_outputs import CausalLMOutputWithPast  # heavy: on first use (genssd.models)

    num_items = kwargs.pop("num_items_in_batch", None)
    shift_labels = kwargs.pop("shift_labels", None)
    ignore_index = kwargs.pop("ignore_index", -100)
    kwargs.pop("logits_to_keep", None)
    return_dict = kwargs.pop("return_dict", None)
    outputs = model.model(**kwargs, return_dict=True)
    hidden = outputs.last_hidden_state  # [B, T, d]
    if shift_labels is None:
        shift_labels = nn.functional.pad(labels, (0, 1), value=ignore_index)[..., 1:]
    targets = shift_labels.reshape(-1).to(hidden.device)
    weight = linear_head_weight(model)
    # Outside autocast the body may end in another dtype than the head's; under autocast the op
    # casts both to the autocast dtype (bf16 under Trainer(bf16=True)), as the head's matmul would be.
    flat = hidden.reshape(-1, hidden.shape[-1]).to(weight.dtype)
    if num_items is None:
        loss = linear_cross_entropy(flat, weight, targets, ignore_index=ignore_index, reduction="mean")
    else:
        loss = linear_cross_entropy(flat, weight, targets, ignore_index=ignore_index, reduction="sum")
        loss = loss / (num_items.to(loss.device) if torch.is_tensor(num_items) else num_items)
    if return_dict is False:
        return (loss, None)
    return CausalLMOutputWithPast(
        loss=loss,
        logits=None,
        past_key_values=getattr(outputs, "past_key_values", None),
        hidden_states=getattr(outputs, "hidden_states", None),
        attentions=getattr(outputs, "attentions", None),
    )


class AutoGenssdModelForCausalLM:
    """``AutoModelForCausalLM.from_pretrained`` with ``apply_genssd_loss`` applied."""

    @classmethod
    def from_pretrained(cls, *args, **kwargs) -> nn.Module:
        from transformers import AutoModelForCausalLM  # heavy: on first use (genssd.models)

        return apply_genssd_loss(AutoModelForCausalLM.from_pretrained(*args, **kwargs))


__all__ = ["FAMILIES", "AutoGenssdModelForCausalLM", "apply_genssd_loss", "remove_genssd_loss"]
