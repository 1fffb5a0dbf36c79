"""``apply_genssd_loss``: a Hugging Face causal LM patched with the fused loss trains exactly as the
unpatched one inside ``transformers.Trainer`` (gradient accumulation's normalization included),
never returns logits when given labels, refuses what it cannot honour and can be undone."""

from __future__ import annotations

import pytest
import torch
from genssd.errors import UsageError
from genssd.integrations import apply_genssd_loss, remove_genssd_loss
from search_fixtures import tiny_lm  # noqa: F401
from transformers import Trainer, TrainingArguments

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


def _train(kind: str, patched: bool, grad_accum: int, out) -> tuple[list[float], dict]:
    model = tiny_lm(kind, VOCAB, seed=3)
    if patched:
        apply_genssd_loss(model)
    args = TrainingArguments(
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
    trainer = Trainer(model=model, args=args, train_dataset=PromptCompletionRows())
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return losses, {name: value.detach().clone() for name, value in model.state_dict().items()}


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
@pytest.mark.parametrize("grad_accum", [1, 4])
def test_trainer_gives_the_same_losses_and_weights_patched_or_not(kind, grad_accum, tmp_path):
    plain_losses, plain_weights = _train(kind, False, grad_accum, tmp_path / "plain")
    fused_losses, fused_weights = _train(kind, True, grad_accum, tmp_path / "fused")
    assert len(fused_losses) == 3
    assert fused_losses == pytest.approx(plain_losses, rel=1e-5, abs=1e-5)
    for name, value in plain_weights.items():
        torch.testing.assert_close(fused_weights[name], value, rtol=1e-5, atol=1e-5, msg=name)
    # The run moved the weights, so the comparison is not of two untouched models.
    assert not torch.equal(fused_weights["lm_head.weight"], tiny_lm(kind, VOCAB, seed=3).lm_head.weight)


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
