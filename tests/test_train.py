"""The SFT loop: masking, the fused loss, normalization across accumulation, resume, learning."""

import random

import pytest
import torch
from genssd.config import EvalConfig, TrainConfig
from genssd.errors import UsageError
from genssd.evaluate import evaluate
from genssd.tasks import get_task
from genssd.tasks.arith import generate_problems
from genssd.train import (
    IGNORE_INDEX,
    CompletionLoss,
    Example,
    build_examples,
    checkpoints,
    collate,
    select_rows,
    train,
)
from safetensors.torch import load_file
from tiny_models import byte_tokenizer, tiny_llama  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")

TASK = get_task("arith")


def search_rows(n, seed):
    """Rows shaped like ``genssd search`` output: the trajectory differs from the gold answer."""
    rows = generate_problems(n, seed)
    for row in rows:
        row["trajectories"] = [
            {"text": f"{row['question']} is easy.\n{row['answer']}", "student_score": -1.0}
        ]
    return rows


def weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_weights(a, b, atol):
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=atol, rtol=0, msg=lambda m, key=key: f"{key}: {m}")


# ------------------------------------------------------------------------------------ masking


@pytest.mark.parametrize("pad_is_eos", [False, True])
@pytest.mark.parametrize("add_bos", [False, True])
def test_examples_are_prompt_then_completion_then_eos(pad_is_eos, add_bos):
    tokenizer = byte_tokenizer(pad_is_eos=pad_is_eos, add_bos=add_bos)
    rows = search_rows(5, seed=random.randrange(1000))
    examples = build_examples(rows, tokenizer, max_length=512, task=TASK)
    for row, example in zip(rows, examples):
        prompt = tokenizer(TASK.prompt(row))["input_ids"]
        completion = tokenizer(row["trajectories"][0]["text"], add_special_tokens=False)["input_ids"]
        assert list(example.input_ids) == prompt + completion + [tokenizer.eos_token_id]
        assert example.num_prompt == len(prompt)
        assert (prompt[0] == tokenizer.bos_token_id) == add_bos


@pytest.mark.parametrize("pad_is_eos", [False, True])
def test_labels_ignore_prompt_and_padding_and_keep_eos(pad_is_eos):
    tokenizer = byte_tokenizer(pad_is_eos=pad_is_eos)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    rng = random.Random()
    examples = []
    for _ in range(4):
        prompt = [rng.randrange(3, 259) for _ in range(rng.randint(1, 6))]
        completion = [rng.randrange(3, 259) for _ in range(rng.randint(1, 6))] + [eos]
        examples.append(Example(tuple(prompt + completion), len(prompt)))
    batch = collate(examples, pad)
    width = max(len(e.input_ids) for e in examples)
    for b, e in enumerate(examples):
        length = len(e.input_ids)
        expected = (
            [IGNORE_INDEX] * e.num_prompt
            + list(e.input_ids[e.num_prompt :])
            + [IGNORE_INDEX] * (width - length)
        )
        assert batch["labels"][b].tolist() == expected
        assert batch["input_ids"][b].tolist() == list(e.input_ids) + [pad] * (width - length)
        assert batch["attention_mask"][b].tolist() == [1] * length + [0] * (width - length)
        # The EOS is trained even when it is also the padding id.
        assert batch["labels"][b, length - 1].item() == eos
    # completion_positions: the flat [B, T-1] index of every position whose next token is labelled.
    expected_positions = [
        b * (width - 1) + t
        for b in range(len(examples))
        for t in range(width - 1)
        if batch["labels"][b, t + 1] != IGNORE_INDEX
    ]
    assert batch["completion_positions"].tolist() == expected_positions


def test_long_completions_are_cut_and_short_max_length_is_an_error():
    tokenizer = byte_tokenizer()
    rows = search_rows(3, seed=0)
    prompt_len = len(tokenizer(TASK.prompt(rows[0]))["input_ids"])
    examples = build_examples(rows[:1], tokenizer, max_length=prompt_len + 3, task=TASK)
    assert len(examples[0].input_ids) == prompt_len + 3 and examples[0].num_completion == 3
    with pytest.raises(UsageError, match="max_length"):
        build_examples(rows[:1], tokenizer, max_length=prompt_len, task=TASK)


def test_a_prompt_that_encodes_to_no_tokens_is_an_error():
    """Its first completion token would have no position to be predicted from."""

    class DropsQuestions:
        """Encodes a text to byte ids, except a text ending in "?", which gives none."""

        eos_token_id = 1

        def __call__(self, text, add_special_tokens=True):
            return {"input_ids": [] if text.endswith("?") else [3 + b for b in text.encode()]}

    rows = [{"question": "Why?", "answer": "Because."}]
    with pytest.raises(UsageError, match="prompt encodes to no tokens"):
        build_examples(rows, DropsQuestions(), max_length=64)


def test_plain_rows_use_the_answer_and_the_bare_question_without_a_task():
    tokenizer = byte_tokenizer()
    row = {"question": "Why?", "answer": "Because."}
    (example,) = build_examples([row], tokenizer, max_length=64)
    assert tokenizer.decode(example.input_ids[: example.num_prompt]) == "Why?"
    assert tokenizer.decode(example.input_ids[example.num_prompt : -1]) == "Because."


def test_a_teacher_that_stopped_at_once_teaches_its_eos():
    # Plain sampling can end at the first token: the row's text is empty, not missing.
    tokenizer = byte_tokenizer()
    (row,) = search_rows(1, seed=3)
    row["trajectories"][0]["text"] = ""
    (example,) = build_examples([row], tokenizer, max_length=512, task=TASK)
    assert example.input_ids[example.num_prompt :] == (tokenizer.eos_token_id,)
    del row["trajectories"][0]["text"]
    with pytest.raises(UsageError, match="no trajectory text"):
        build_examples([row], tokenizer, max_length=512, task=TASK)


def test_pruned_rows_are_dropped_and_only_correct_keeps_right_answers():
    rows = search_rows(6, seed=random.randrange(1000))
    rows[0]["pruned_early"] = True
    rows[1]["trajectories"][0]["text"] = "#### -1"  # wrong, judged by the task
    rows[2]["correct"] = False  # wrong, as the search recorded it
    assert select_rows(rows) == rows[1:]
    assert select_rows(rows, only_correct=True, task=TASK) == rows[3:]
    with pytest.raises(UsageError, match="only_correct needs"):
        select_rows(rows, only_correct=True)
    with pytest.raises(UsageError, match="no training rows"):
        select_rows(rows[:1])


# --------------------------------------------------------------------------------------- loss


@pytest.mark.parametrize("tie", [False, True])
def test_fused_loss_and_gradients_match_cross_entropy_on_logits(tie):
    tokenizer = byte_tokenizer()
    examples = build_examples(search_rows(4, seed=random.randrange(1000)), tokenizer, 256, task=TASK)
    batch = collate(examples, tokenizer.pad_token_id)
    model = tiny_llama(len(tokenizer), seed=random.randrange(1000), tie=tie)

    fused = CompletionLoss(model)(**batch)
    fused.backward()
    fused_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    # Without completion_positions every position reaches the kernel, ignored rows adding nothing.
    every_position = CompletionLoss(model)(**{k: v for k, v in batch.items() if k != "completion_positions"})
    torch.testing.assert_close(every_position, fused, atol=1e-5, rtol=1e-5)

    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    reference = torch.nn.CrossEntropyLoss(reduction="sum")(
        logits[:, :-1].reshape(-1, logits.shape[-1]), batch["labels"][:, 1:].reshape(-1)
    )
    reference.backward()
    torch.testing.assert_close(fused, reference, atol=1e-5, rtol=1e-5)
    # Gradients are sums over every labelled position in another order than autograd's: one
    # element in 8288 of a tied embedding's gradient (~0.5) differed by 1.9e-5 in a full-suite run.
    for name, param in model.named_parameters():
        torch.testing.assert_close(
            fused_grads[name], param.grad, atol=5e-5, rtol=1e-4, msg=lambda m, n=name: f"{n}: {m}"
        )


# --------------------------------------------------------------------------- the optimizer step


def test_one_batch_of_8_equals_4_accumulated_micro_batches_of_2():
    tokenizer = byte_tokenizer()
    rows = search_rows(16, seed=random.randrange(1000))
    seed = random.randrange(1000)
    results = {}
    for batch_size, grad_accum in [(8, 1), (2, 4)]:
        model = tiny_llama(len(tokenizer), seed=seed)
        config = TrainConfig(
            lr=1e-3, batch_size=batch_size, grad_accum=grad_accum, max_steps=2, max_length=256, seed=3
        )
        history = train(model, tokenizer, rows, config, task=TASK, progress=False)
        results[batch_size] = (weights(model), history["losses"])
    # Completion lengths differ between examples, so averaging per micro-batch would not match.
    assert len({len(r["trajectories"][0]["text"]) for r in rows}) > 1
    assert_same_weights(results[8][0], results[2][0], atol=1e-5)
    torch.testing.assert_close(results[8][1], results[2][1], atol=1e-5, rtol=0)
    initial = weights(tiny_llama(len(tokenizer), seed=seed))
    assert any((initial[k] - v).abs().max() > 1e-4 for k, v in results[8][0].items())


def test_training_changes_the_weights_and_lowers_the_loss():
    tokenizer = byte_tokenizer()
    model = tiny_llama(len(tokenizer), seed=1)
    before = weights(model)
    config = TrainConfig(lr=3e-3, batch_size=8, max_steps=30, max_length=256)
    history = train(model, tokenizer, search_rows(32, seed=1), config, task=TASK, progress=False)
    assert history["steps"] == 30 and len(history["losses"]) == 30
    assert sum(history["losses"][-5:]) < 0.7 * sum(history["losses"][:5])
    assert any(not torch.equal(before[k], v) for k, v in weights(model).items())


def test_gradient_checkpointing_gives_the_same_weights():
    tokenizer = byte_tokenizer()
    rows = search_rows(8, seed=random.randrange(1000))
    results = []
    for checkpointing in (False, True):
        model = tiny_llama(len(tokenizer), seed=4)
        config = TrainConfig(
            lr=1e-3, batch_size=4, max_steps=2, max_length=256, gradient_checkpointing=checkpointing
        )
        train(model, tokenizer, rows, config, task=TASK, progress=False)
        assert not any(getattr(m, "gradient_checkpointing", False) for m in model.modules())
        results.append(weights(model))
    assert_same_weights(*results, atol=1e-6)


@pytest.mark.cuda
def test_bf16_autocast_on_cuda_matches_the_logits_loss_and_learns():
    tokenizer = byte_tokenizer()
    rows = search_rows(16, seed=random.randrange(1000))
    model = tiny_llama(len(tokenizer), seed=2).cuda()
    batch = {k: v.cuda() for k, v in collate(build_examples(rows, tokenizer, 256, task=TASK), 0).items()}
    with torch.autocast("cuda", dtype=torch.bfloat16):
        fused = CompletionLoss(model)(**batch)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    reference = torch.nn.functional.cross_entropy(
        logits[:, :-1].float().reshape(-1, logits.shape[-1]),
        batch["labels"][:, 1:].reshape(-1),
        reduction="sum",
    )
    torch.testing.assert_close(fused, reference, rtol=2e-2, atol=0)
    config = TrainConfig(lr=3e-3, batch_size=8, max_steps=40, max_length=256)
    history = train(model, tokenizer, rows, config, task=TASK, device="cuda", progress=False)
    assert sum(history["losses"][-5:]) < 0.7 * sum(history["losses"][:5])


# ------------------------------------------------------------------------------------- resume


class Interrupt(Exception):
    pass


def test_interrupted_and_resumed_run_equals_an_uninterrupted_one(tmp_path):
    tokenizer = byte_tokenizer()
    rows = search_rows(24, seed=random.randrange(1000))
    # 6 steps per epoch, 10 steps: the run is cut mid-epoch and resumes across an epoch boundary.
    config = TrainConfig(
        lr=2e-3, batch_size=4, max_steps=10, max_length=256, save_every=2, keep_checkpoints=0, seed=5
    )

    full = tiny_llama(len(tokenizer), seed=7)
    train(full, tokenizer, rows, config, tmp_path / "full", task=TASK, progress=False)

    def stop_at_5(step, loss):
        if step == 5:
            raise Interrupt

    cut = tiny_llama(len(tokenizer), seed=7)
    with pytest.raises(Interrupt):
        train(cut, tokenizer, rows, config, tmp_path / "cut", task=TASK, progress=False, callback=stop_at_5)
    assert [p.name for p in checkpoints(tmp_path / "cut")] == ["checkpoint-2", "checkpoint-4"]

    resumed = tiny_llama(len(tokenizer), seed=7)  # fresh weights: everything must come from the checkpoint
    history = train(
        resumed, tokenizer, rows, config, tmp_path / "cut", task=TASK, resume=True, progress=False
    )
    assert len(history["losses"]) == 6  # steps 5..10
    assert_same_weights(weights(full), weights(resumed), atol=0)
    saved = load_file(str(tmp_path / "cut" / "model.safetensors"))
    assert_same_weights(saved, {k: v for k, v in weights(full).items() if k in saved}, atol=0)


def test_resume_refuses_a_changed_config_and_a_fresh_run_refuses_old_checkpoints(tmp_path):
    tokenizer = byte_tokenizer()
    rows = search_rows(8, seed=0)
    config = TrainConfig(batch_size=4, max_steps=2, max_length=256, save_every=1)
    train(tiny_llama(len(tokenizer)), tokenizer, rows, config, tmp_path, task=TASK, progress=False)
    assert [p.name for p in checkpoints(tmp_path)] == ["checkpoint-1", "checkpoint-2"]
    with pytest.raises(UsageError, match="already holds checkpoints"):
        train(tiny_llama(len(tokenizer)), tokenizer, rows, config, tmp_path, task=TASK, progress=False)
    changed = TrainConfig(batch_size=4, max_steps=2, max_length=256, save_every=1, lr=1e-3)
    with pytest.raises(UsageError, match="config changed.*lr"):
        train(
            tiny_llama(len(tokenizer)),
            tokenizer,
            rows,
            changed,
            tmp_path,
            task=TASK,
            resume=True,
            progress=False,
        )


def test_only_the_newest_checkpoints_are_kept(tmp_path):
    tokenizer = byte_tokenizer()
    config = TrainConfig(batch_size=4, max_steps=5, max_length=256, save_every=1, keep_checkpoints=2)
    train(
        tiny_llama(len(tokenizer)),
        tokenizer,
        search_rows(8, seed=0),
        config,
        tmp_path,
        task=TASK,
        progress=False,
    )
    assert [p.name for p in checkpoints(tmp_path)] == ["checkpoint-4", "checkpoint-5"]
    assert not list(tmp_path.glob(".tmp-*"))


# ------------------------------------------------------------------------------------ learning


@pytest.mark.slow
def test_training_on_gold_solutions_beats_the_untrained_model_on_held_out_problems():
    problems = generate_problems(
        600, seed=random.randrange(1000), num_operands=(2, 3), max_operand=9, max_value=18
    )
    train_rows, held_out = problems[:500], problems[500:]
    tokenizer = byte_tokenizer()
    model = tiny_llama(len(tokenizer), seed=random.randrange(1000), hidden=64)
    eval_config = EvalConfig(batch_size=50, max_new_tokens=48)
    before = evaluate(model, tokenizer, TASK, held_out, eval_config, progress=False)["accuracy"]
    config = TrainConfig(lr=3e-3, batch_size=16, max_steps=600, max_length=128, warmup_ratio=0.05)
    train(model, tokenizer, train_rows, config, task=TASK, progress=False)
    after = evaluate(model, tokenizer, TASK, held_out, eval_config, progress=False)["accuracy"]
    assert after >= before + 0.2, (before, after)
