"""Hugging Face models and tokenizers: loading, tokenizer pairing, and the internals the search uses.

The search calls models through their ``forward`` with an explicit ``DynamicCache``. The name of
that argument changed between transformers releases (``past_key_values`` in 5.17, ``cache`` in
5.24, which still accepts the old name with a deprecation warning), so it is read from the
signature once per model instead of relying on the deprecated alias.

transformers is imported inside the functions that load or build things with it: every
``genssd`` command imports the library to build its parser and runs its argument checks before
any model loads, and transformers would add most of a second to each of them (the same in
``evaluate``, ``train`` and ``integrations``).
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import torch

from genssd.errors import UsageError

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def check_device(name: str) -> torch.device:
    """``name`` parsed as a torch device; a usage error if torch does not know it or it is a CUDA
    device on a machine without CUDA."""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"unknown device {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device {name!r} asked for but CUDA is not available")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UsageError(f"device {name!r} asked for but only {torch.cuda.device_count()} GPU(s) are visible")
    return device


def resolve_device(device: str | None) -> str:
    """``device`` checked (cpu or cuda[:K]); None: CUDA when available, else CPU."""
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if check_device(device).type not in ("cpu", "cuda"):
        raise UsageError(f"device must be cpu or cuda, got {device!r}")
    return device


# Training loads the weights in float32 (the master weights); bfloat16 comes from autocast on CUDA.
TRAIN_DTYPE = "float32"


def inference_dtype(device: str | torch.device, dtype: str | torch.dtype | None = None) -> torch.dtype:
    """The dtype models run in for search and evaluation: ``dtype`` when given (not ``"auto"``),
    else bfloat16 on CUDA and float32 elsewhere."""
    chosen = resolve_dtype(dtype)
    if chosen is not None:
        return chosen
    return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32


def quiet_transformers() -> None:
    """Hide the Hugging Face loading and saving bars (for --no-progress and worker processes)."""
    from transformers.utils import logging as hf_logging  # heavy: imported on first use (module docstring)

    hf_logging.disable_progress_bar()


def resolve_dtype(name: str | torch.dtype | None) -> torch.dtype | None:
    """``"bf16"``/``"bfloat16"``/... -> ``torch.dtype``; None and ``"auto"`` -> None (the checkpoint's)."""
    if name is None or isinstance(name, torch.dtype):
        return name
    if name == "auto":
        return None
    if name not in DTYPES:
        raise UsageError(f"unknown dtype {name!r}; choose one of auto, {', '.join(DTYPES)}")
    return DTYPES[name]


# What a Hugging Face Hub id can look like: "name" or "org/name".
_HUB_ID = re.compile(r"\w[\w.-]*(/\w[\w.-]*)?")


def check_source(source) -> str:
    """``source`` as a string; a ``UsageError`` ("no such folder") when it is neither an existing
    path nor something that could be a Hub id, instead of a Hub connection error later."""
    text = str(source)
    path = Path(text)
    if path.exists():
        return text
    # "org/name" is a Hub id unless "org" is a local folder (then "org/name" was meant as a path).
    if _HUB_ID.fullmatch(text) is None or (len(path.parts) > 1 and Path(path.parts[0]).is_dir()):
        raise UsageError(f"no such folder: {text}")
    return text


def check_model_folder(path, role: str) -> Path:
    """``path`` as a ``Path`` when it is a local folder, else a ``UsageError`` ("no such folder"),
    for the model folders a command must read and write locally (``role``: whose it is)."""
    folder = Path(path)
    if not folder.is_dir():
        raise UsageError(f"the {role} model: no such folder: {path}")
    return folder


def load_model(
    model_or_path,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    device_map: str | None = None,
    trust_remote_code: bool = False,
):
    """A causal LM in eval mode: an ``nn.Module`` is returned as it is, a path is loaded.

    Args:
        model_or_path: a ``PreTrainedModel`` or a directory/hub name for ``AutoModelForCausalLM``.
        device: where to put a loaded model (ignored with ``device_map``).
        dtype: weights dtype for a loaded model (None keeps the checkpoint's).
        device_map: passed to ``from_pretrained`` (e.g. ``"auto"``, which needs accelerate).
        trust_remote_code: off unless the user asks; remote code is arbitrary code.
    """
    if isinstance(model_or_path, torch.nn.Module):
        return model_or_path.eval()
    from transformers import AutoModelForCausalLM  # heavy: imported on first use (module docstring)

    kwargs = {"trust_remote_code": trust_remote_code}
    torch_dtype = resolve_dtype(dtype)
    if torch_dtype is not None:
        kwargs["dtype"] = torch_dtype
    if device_map is not None:
        kwargs["device_map"] = device_map
    source = check_source(model_or_path)
    try:
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot load a causal LM from {model_or_path}: {_first_line(exc)}") from None
    if device_map is None and device is not None:
        model = model.to(device)
    return model.eval()


def load_tokenizer(tokenizer_or_path, *, trust_remote_code: bool = False):
    """A tokenizer object is returned as it is; a path is loaded with ``AutoTokenizer``."""
    if tokenizer_or_path is None or not isinstance(tokenizer_or_path, (str, Path)):
        return tokenizer_or_path
    from transformers import AutoTokenizer  # heavy: imported on first use (module docstring)

    source = check_source(tokenizer_or_path)
    try:
        return AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot load a tokenizer from {tokenizer_or_path}: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def same_vocabulary(teacher_tokenizer, student_tokenizer) -> bool:
    """True when token ids mean the same strings in both tokenizers (ids can pass straight through)."""
    if student_tokenizer is None or student_tokenizer is teacher_tokenizer:
        return True
    return teacher_tokenizer.get_vocab() == student_tokenizer.get_vocab()


def input_device(model) -> torch.device:
    """The device of the input embeddings: where input ids must live (also under a device map)."""
    return model.get_input_embeddings().weight.device


def cache_argument(module) -> str:
    """The name under which ``module.forward`` takes its KV cache (``cache`` or ``past_key_values``)."""
    params = inspect.signature(module.forward).parameters
    if "cache" in params:
        return "cache"
    if "past_key_values" in params:
        return "past_key_values"
    raise UsageError(f"{type(module).__name__}.forward takes neither `cache` nor `past_key_values`")


def new_cache(model):
    """An empty ``DynamicCache`` laid out for ``model`` (its config decides full vs sliding layers)."""
    from transformers import DynamicCache  # heavy: imported on first use (module docstring)

    try:
        return DynamicCache(config=model.config)
    except TypeError:  # releases whose DynamicCache takes no config
        return DynamicCache()


def linear_head_weight(model) -> torch.Tensor:
    """The LM head weight ``[V, d]`` of a model whose logits are exactly ``hidden @ weight.T``.

    The fused kernels (scoring and the training loss) compute the logits that way, so a head
    with a bias, soft-capped logits or a logit scale is refused (``UsageError``): the one rule
    for both.
    """
    head = model.get_output_embeddings()
    if head is None or not isinstance(getattr(head, "weight", None), torch.Tensor):
        raise UsageError(f"{type(model).__name__} has no linear LM head (output embedding weight)")
    if getattr(head, "bias", None) is not None:
        raise UsageError(f"{type(model).__name__}'s LM head has a bias; the fused kernels do not support it")
    # Soft-capping, and the logit multipliers of Cohere, Granite, Falcon-H1 and others.
    scaling = (
        "final_logit_softcapping",
        "logit_scale",
        "output_multiplier_scale",
        "output_multiplier",
        "logits_scaling",
        "lm_head_multiplier",
    )
    for attribute in scaling:
        if getattr(model.config, attribute, None) not in (None, 1, 1.0):
            raise UsageError(
                f"{type(model).__name__} transforms its logits ({attribute}); "
                "the fused kernels do not support it"
            )
    return head.weight


def decoder_and_head(model) -> tuple[torch.nn.Module, torch.Tensor]:
    """The base decoder (final hidden states, no logits) and the LM head weight ``[V, d]``
    (``linear_head_weight``'s rule): scoring feeds the decoder's hidden states with this weight
    to ``logprob_gather``, so the student's ``[N, V]`` logits are never materialized."""
    weight = linear_head_weight(model)
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model.base_model
    if decoder is None or decoder is model:
        decoder = model.base_model
    if decoder is model:
        raise UsageError(f"cannot find the base decoder of {type(model).__name__}")
    return decoder, weight


_NO_EOS = "the tokenizer has no EOS token; set eos_token in its tokenizer_config.json"


def eos_token_ids(model, tokenizer, *, required: bool = False) -> list[int]:
    """End-of-sequence ids: the model's generation config's and the tokenizer's, together (a
    sequence ends at either; the generation config's come first). ``required``: a
    ``UsageError`` when there are none."""
    generation_config = getattr(model, "generation_config", None)
    eos = getattr(generation_config, "eos_token_id", None) if generation_config is not None else None
    ids = [int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos]) if e is not None]
    token = getattr(tokenizer, "eos_token_id", None)
    if token is not None and int(token) not in ids:
        ids.append(int(token))
    if required and not ids:
        raise UsageError(_NO_EOS)
    return ids


def completion_eos_id(tokenizer, model=None) -> int:
    """The id a finished completion ends with where genssd writes it itself: in training examples
    and in the student's re-tokenized text. The tokenizer's EOS (always one of ``eos_token_ids``,
    so search and evaluation stop where the trained student learned to), else ``model``'s first."""
    ids = eos_token_ids(model, tokenizer, required=True)
    token = getattr(tokenizer, "eos_token_id", None)
    return int(token) if token is not None else ids[0]


def pad_token_id(tokenizer, eos_ids: list[int]) -> int:
    """The id written into padded positions (masked out, so any valid id works)."""
    pad = getattr(tokenizer, "pad_token_id", None)
    if pad is not None:
        return int(pad)
    return eos_ids[0] if eos_ids else 0


__all__ = [
    "TRAIN_DTYPE",
    "cache_argument",
    "check_model_folder",
    "check_source",
    "completion_eos_id",
    "decoder_and_head",
    "eos_token_ids",
    "inference_dtype",
    "resolve_device",
    "input_device",
    "linear_head_weight",
    "load_model",
    "load_tokenizer",
    "new_cache",
    "pad_token_id",
    "resolve_dtype",
    "same_vocabulary",
]
