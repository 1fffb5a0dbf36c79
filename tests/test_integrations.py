"""``apply_genssd_loss``: a Hugging Face causal LM patched with the fused loss trains exactly as the
unpatched one inside ``transformers.Trainer`` and TRL's ``SFTTrainer`` (gradient accumulation's
normalization included), never holds or returns the logits when given labels, takes the autocast
dtype, refuses what it cannot honour and can be undone."""

from __future__ import annotations

import pytest
import torch
from genssd.errors import UsageError
from genssd.integrations import apply_genssd_loss, remove_genssd_loss
from genssd.tasks import get_task
from genssd.tasks.arith import generate_problems
from search_fixtures import bpe_tokenizer, tiny_lm  # noqa: F401
from transformers import Trainer, TrainingArguments

from genssd_kernels import linear_cross_entropy

pytestmark = pytest.mark.usefixtures("one_thread")

VOCAB = 300


class PromptCompletionRows(torch.utils.data.Dataset):
    """Random token rows whose first 2-9 tokens are the prompt (labels -100 there): completions
    of different lengths, so each batch holds a different number of labelled tokens."""

    def __init__(self, count: int = 16, length: int = 14, seed: int = 0):
        gen = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(3, VOCAB, (count, length), generator=gen)
        prompt = torch.randint(2, 10, (count,), generator=gen)
        self.labels = torch.where(torch.arange(length)[None, :] < prompt[:, None], -100, self.ids)

    def __len__(self) -> int:
        return self.ids.shape[0]

    def __getitem__(self, i: int) -> dict:
        ids = self.ids[i]
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": self.labels[i]}


def _settings(out, grad_accum: int) -> dict:
    """The training arguments of every run here (``TrainingArguments`` or TRL's ``SFTConfig``)."""
    return dict(
        output_dir=str(out),
        per_device_train_batch_size=2,
        gradient_accumulation_steps=grad_accum,
        max_steps=3,
        # SGD: Adam divides by the gradient's own scale, so on entries whose gradient is ~0 it
        # turns rounding-level differences (1e-9) into steps of the learning rate.
        optim="sgd",
        learning_rate=0.5,
        lr_scheduler_type="constant",
        logging_steps=1,
        report_to=[],
        use_cpu=True,
        seed=0,
        save_strategy="no",
        disable_tqdm=True,
    )


def _losses_and_weights(trainer, model) -> tuple[list[float], dict]:
    """Train; each step's logged loss and the final weights (checking the run moved them)."""
    head_before = model.lm_head.weight.detach().clone()
    trainer.train()
    assert not torch.equal(model.lm_head.weight, head_before)
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return losses, {name: value.detach().clone() for name, value in model.state_dict().items()}


def _train(kind: str, patched: bool, grad_accum: int, out) -> tuple[list[float], dict]:
    model = tiny_lm(kind, VOCAB, seed=3)
    if patched:
        apply_genssd_loss(model)
    args = TrainingArguments(**_settings(out, grad_accum))
    return _losses_and_weights(Trainer(model=model, args=args, train_dataset=PromptCompletionRows()), model)


def test_patched_forward_returns_no_logits_with_labels_and_is_undone():
    model = tiny_lm("qwen3", VOCAB, seed=4)
    batch = PromptCompletionRows(count=3)[0]
    inputs = {k: v[None] for k, v in batch.items()}
    reference = model(**inputs)
    apply_genssd_loss(model)
    apply_genssd_loss(model)  # applying twice is applying once
    fused = model(**inputs)
    assert fused.logits is None
    torch.testing.assert_close(fused.loss, reference.loss, rtol=1e-5, atol=1e-6)
    without_labels = model(input_ids=inputs["input_ids"])
    torch.testing.assert_close(without_labels.logits, reference.logits)
    summed = model(**inputs, num_items_in_batch=torch.tensor(7))
    count = int((inputs["labels"][:, 1:] != -100).sum())
    torch.testing.assert_close(summed.loss, reference.loss * count / 7, rtol=1e-5, atol=1e-6)
    remove_genssd_loss(model)
    assert model(**inputs).logits is not None


def test_unsupported_models_and_heads_are_refused():
    gpt2 = tiny_lm("gpt2", VOCAB, layers=1, tie=True)
    with pytest.raises(UsageError, match="model type 'gpt2'"):
        apply_genssd_loss(gpt2)
    model = tiny_lm("llama", VOCAB, seed=5)
    model.lm_head.bias = torch.nn.Parameter(torch.zeros(VOCAB))
    with pytest.raises(UsageError, match="has a bias"):
        apply_genssd_loss(model)


def test_a_copy_of_a_patched_model_runs_on_its_own_weights():
    import copy

    model = apply_genssd_loss(tiny_lm("llama", VOCAB, seed=6))
    inputs = {k: v[None] for k, v in PromptCompletionRows(count=2)[1].items()}
    twin = copy.deepcopy(model)
    with torch.no_grad():
        twin.lm_head.weight.mul_(2.0)
    assert not torch.allclose(twin(**inputs).loss, model(**inputs).loss)
    assert model(**inputs, return_dict=False)[0] == model(**inputs).loss


def _sft_train(kind: str, patched: bool, grad_accum: int, out) -> tuple[list[float], dict]:
    datasets = pytest.importorskip("datasets")
    trl = pytest.importorskip("trl")
    arith = get_task("arith")
    rows = [{"prompt": arith.prompt(r), "completion": r["answer"]} for r in generate_problems(24, seed=2)]
    tokenizer = bpe_tokenizer(VOCAB)
    model = tiny_lm(kind, len(tokenizer), seed=3)
    if patched:
        apply_genssd_loss(model)
    args = trl.SFTConfig(**_settings(out, grad_accum), completion_only_loss=True)
    dataset = datasets.Dataset.from_list(rows)
    trainer = trl.SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    return _losses_and_weights(trainer, model)


@pytest.mark.parametrize("run", [_train, _sft_train], ids=["Trainer", "SFTTrainer"])
@pytest.mark.parametrize("kind", ["llama", "qwen2"])
@pytest.mark.parametrize("grad_accum", [1, 4])
def test_training_gives_the_same_losses_and_weights_patched_or_not(run, kind, grad_accum, tmp_path):
    """``Trainer`` takes the patched loss; TRL's SFTTrainer (completion-only) computes its loss
    with its own fused LM head, so there the patch must neither break nor change anything."""
    plain_losses, plain_weights = run(kind, False, grad_accum, tmp_path / "plain")
    patched_losses, patched_weights = run(kind, True, grad_accum, tmp_path / "patched")
    assert len(patched_losses) == 3
    assert patched_losses == pytest.approx(plain_losses, rel=1e-5, abs=1e-5)
    for name, value in plain_weights.items():
        torch.testing.assert_close(patched_weights[name], value, rtol=1e-5, atol=1e-5, msg=name)


class LargestTensor(torch.utils._python_dispatch.TorchDispatchMode):
    """Records the element count of the largest tensor any op creates while active."""

    def __init__(self):
        super().__init__()
        self.numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in torch.utils._pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.numel = max(self.numel, t.numel())
        return out


def test_patched_training_step_never_holds_the_full_logits():
    """A training step (forward and backward) at a vocabulary where ``[tokens, V]`` logits are the
    largest tensor by far: unpatched, that tensor exists; patched, the largest one is a chunk of
    at most half of it (the CPU chunk budget is 64 MiB; these logits take 128 MiB in fp32)."""
    vocab, tokens = 65536, 512
    model = tiny_lm("qwen2", vocab, seed=8, hidden=32, layers=1)
    ids = torch.randint(3, vocab, (1, tokens), generator=torch.Generator().manual_seed(0))
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}

    def largest_in_step() -> int:
        with LargestTensor() as seen:
            model(**inputs).loss.backward()
        model.zero_grad(set_to_none=True)
        return seen.numel

    assert largest_in_step() >= tokens * vocab
    apply_genssd_loss(model)
    assert largest_in_step() <= tokens * vocab // 2


def test_patched_loss_under_autocast_takes_the_autocast_dtype():
    """Under ``Trainer(bf16=True)`` the body runs under autocast over an fp32 head: the patched loss
    is then that of the bf16 head (as the unpatched ``lm_head`` matmul would be), not an fp32 one."""
    model = apply_genssd_loss(tiny_lm("llama", VOCAB, seed=9))
    inputs = {k: v[None] for k, v in PromptCompletionRows(count=2)[0].items()}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(**inputs).loss
        hidden = model.model(input_ids=inputs["input_ids"]).last_hidden_state[0, :-1]
    weight = model.lm_head.weight
    targets = inputs["labels"][0, 1:]
    expected = linear_cross_entropy(hidden.bfloat16(), weight.bfloat16(), targets)
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-6)
    fp32 = linear_cross_entropy(hidden.float(), weight, targets)
    assert not torch.allclose(loss, fp32, rtol=1e-5, atol=0)
