"""Chat templates: each model is prompted through its own tokenizer's template (``genssd.prompts``)
in the search, in training and in evaluation; ``chat_template="none"`` keeps the raw prompt."""

from __future__ import annotations

import re

import pytest
import torch
from genssd.config import EvalConfig, SearchConfig, TrainConfig
from genssd.errors import UsageError
from genssd.evaluate import generate
from genssd.prompts import PromptFormat
from genssd.search import Searcher
from genssd.train import build_examples
from search_fixtures import EOS, bpe_tokenizer, letters_tokenizer, tiny_lm, token_logprobs

pytestmark = pytest.mark.usefixtures("one_thread")

# The two families' template shapes (ChatML as Qwen's, header blocks as Llama 3's), small enough
# for the test tokenizers.
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% if thinking is defined and not thinking %}"
    "<think></think>{% endif %}{% endif %}"
)
HEADERS = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
QUESTIONS = ["the cat sat on the mat", "a hat is in the sea"]
RAW = [f"Question: {q}\nAnswer:\n" for q in QUESTIONS]


def _templated(tokenizer, template):
    tokenizer.chat_template = template
    return tokenizer


def test_prompt_format_renders_each_tokenizer_its_own_way():
    chatml, headers, plain = (
        _templated(bpe_tokenizer(300), CHATML),
        _templated(bpe_tokenizer(300), HEADERS),
        bpe_tokenizer(300),
    )
    fmt = PromptFormat(system_prompt="Be brief.", template_kwargs={"thinking": False})
    assert fmt.text(chatml, RAW[0], QUESTIONS[0]) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nthe cat sat on the mat<|im_end|>\n"
        "<|im_start|>assistant\n<think></think>"
    )
    assert fmt.text(headers, RAW[0], QUESTIONS[0]).startswith("<s><|start_header_id|>system")
    # The template's own BOS is the only one: no second from the tokenizer.
    ids = fmt.encode(headers, RAW[0], QUESTIONS[0])
    assert ids[0] == 1 and ids[1] != 1
    assert fmt.text(plain, RAW[0], QUESTIONS[0]) == RAW[0]  # no template: the raw prompt
    assert PromptFormat("none").text(chatml, RAW[0], QUESTIONS[0]) == RAW[0]
    with pytest.raises(UsageError, match="chat_template must be one of auto, none"):
        SearchConfig(chat_template="always")
    with pytest.raises(UsageError, match="chat_template_kwargs must be a mapping"):
        TrainConfig(chat_template_kwargs=["thinking"])


@pytest.mark.parametrize("engine", ["hf", "static"])
def test_teacher_and_student_each_score_under_their_own_template(engine):
    """The teacher generates after its ChatML prompt; the student's scores equal a from-scratch
    forward of its own header-style prompt + the response (the re-tokenizing path)."""
    teacher_tokenizer = _templated(letters_tokenizer(), CHATML)
    student_tokenizer = _templated(bpe_tokenizer(420), HEADERS)
    teacher = tiny_lm("llama", len(teacher_tokenizer), seed=41, hidden=48)
    student = tiny_lm("qwen2", len(student_tokenizer), seed=42)
    base = SearchConfig(
        num_candidates=2, chunk_tokens=4, max_new_tokens=12, temperature=1.0, batch_size=2, seed=2,
        system_prompt="Think.", engine=engine,
    )  # fmt: skip
    scores = {}
    for template in ("auto", "none"):
        config = SearchConfig(**{**base.__dict__, "chat_template": template})
        searcher = Searcher(teacher, student, teacher_tokenizer, student_tokenizer, config=config)
        results = searcher.run(RAW, messages=QUESTIONS)
        for raw, question, result in zip(RAW, QUESTIONS, results):
            student_prompt = config.prompt_format.encode(student_tokenizer, raw, question)
            assert (student_prompt == student_tokenizer(raw)["input_ids"]) == (template == "none")
            for trajectory in result.trajectories:
                ended = trajectory.token_ids[-1] == EOS
                completion = student_tokenizer(trajectory.text, add_special_tokens=False)["input_ids"]
                logprobs = token_logprobs(student, student_prompt, completion + ([EOS] if ended else []))
                assert trajectory.student_score == pytest.approx(logprobs.mean().item(), abs=1e-4)
        scores[template] = [t.student_score for r in results for t in r.trajectories]
    assert scores["auto"] != scores["none"]


def test_training_prompts_use_the_models_template():
    tokenizer = _templated(bpe_tokenizer(300), CHATML)
    rows = [{"question": q, "trajectories": [{"text": "the end"}]} for q in QUESTIONS]
    templated = build_examples(rows, tokenizer, 256, prompt_format=TrainConfig().prompt_format)
    raw = build_examples(rows, tokenizer, 256, prompt_format=TrainConfig(chat_template="none").prompt_format)
    for example, plain, question in zip(templated, raw, QUESTIONS):
        prompt = tokenizer.decode(example.input_ids[: example.num_prompt])
        assert prompt.startswith("<|im_start|>user\n" + question) and prompt.endswith(
            "<|im_start|>assistant\n"
        )
        assert tokenizer.decode(plain.input_ids[: plain.num_prompt]) == question
        # The completion tokens are the same either way.
        assert example.input_ids[example.num_prompt :] == plain.input_ids[plain.num_prompt :]


@pytest.mark.parametrize("engine", ["hf", "static"])
def test_eval_generates_after_the_templated_prompt(engine):
    tokenizer = _templated(bpe_tokenizer(300), CHATML)
    model = tiny_lm("llama", len(tokenizer), seed=43)
    config = EvalConfig(max_new_tokens=6, batch_size=2, engine=engine)
    templated = generate(model, tokenizer, RAW, config, messages=QUESTIONS)
    expected = []
    for raw, question in zip(RAW, QUESTIONS):
        ids = config.prompt_format.encode(tokenizer, raw, question)
        out = model.generate(input_ids=torch.tensor([ids]), max_new_tokens=6, do_sample=False, pad_token_id=0)
        expected.append(out[0, len(ids) :].tolist())
    assert templated == [[tokenizer.decode(_until_eos(ids), skip_special_tokens=True)] for ids in expected]
    untemplated = generate(
        model, tokenizer, RAW, EvalConfig(max_new_tokens=6, chat_template="none", engine=engine)
    )
    assert untemplated != templated


def _until_eos(ids: list[int]) -> list[int]:
    return ids[: ids.index(EOS)] if EOS in ids else ids


def test_prompt_flags_of_every_command(tmp_path):
    """``--chat-template`` / ``--system-prompt`` / ``--few-shot`` set the prompt keys, over
    ``--set``; distill's hold for all three stages."""
    from genssd.cli import build_parser
    from genssd.commands import with_prompt_flags
    from genssd.commands.distill import build_plan
    from genssd.tasks.arith import generate_problems, write_problems

    parser = build_parser()
    flags = ["--chat-template", "none", "--system-prompt", "Answer: briefly", "--few-shot", "2"]
    args = parser.parse_args(["eval", "--task", "arith", "--data", "x", "--model", "m", *flags])
    config = with_prompt_flags(EvalConfig(chat_template="auto"), args)
    assert (config.chat_template, config.system_prompt, config.few_shot) == ("none", "Answer: briefly", 2)
    plain = parser.parse_args(["train", "--model", "m", "--data", "x", "--out", "o"])
    assert with_prompt_flags(TrainConfig(system_prompt="kept"), plain).system_prompt == "kept"
    write_problems(tmp_path / "train.jsonl", generate_problems(4, 1))
    for name in ("teacher", "student"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text("{}")
    plan = build_plan(
        parser.parse_args(
            ["distill", "--teacher", str(tmp_path / "teacher"), "--student", str(tmp_path / "student"),
             "--task", "arith", "--data", str(tmp_path / "train.jsonl"), "--out", str(tmp_path / "run"),
             "--set", "chat_template=auto", *flags]
        )
    )  # fmt: skip
    for stage in (plan.search, plan.train, plan.evaluation):
        assert (stage.chat_template, stage.system_prompt, stage.few_shot) == ("none", "Answer: briefly", 2)


# Few-shot examples: the task's worked examples before the question, as raw items or as turns.
ARITH_SHOTS = [
    ("What is 5 + 3 - 2?", "= 8 - 2\n= 6\n#### 6"),
    ("What is 9 - 4 + 6 + 1?", "= 5 + 6 + 1\n= 11 + 1\n= 12\n#### 12"),
]


def test_few_shot_examples_precede_the_question_in_raw_and_templated_prompts():
    from genssd.tasks import get_task

    task = get_task("arith")
    row = {"question": QUESTIONS[0]}
    fmt = TrainConfig(few_shot=2, system_prompt="Be brief.").prompt_format_for(task)
    raw_items = "".join(f"Q: {q}\nA:\n{a}\n\n" for q, a in ARITH_SHOTS)
    assert fmt.text(bpe_tokenizer(300), task.prompt(row), task.user_message(row)) == (
        raw_items + f"Q: {QUESTIONS[0]}\nA:\n"
    )
    turns = "".join(
        f"<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n{a}<|im_end|>\n" for q, a in ARITH_SHOTS
    )
    chatml = _templated(bpe_tokenizer(300), CHATML)
    assert fmt.text(chatml, task.prompt(row), task.user_message(row)) == (
        f"<|im_start|>system\nBe brief.<|im_end|>\n{turns}<|im_start|>user\n{QUESTIONS[0]}<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    headers = _templated(bpe_tokenizer(300), HEADERS)
    turns = "".join(
        f"<|start_header_id|>user<|end_header_id|>\n\n{q}<|eot_id|>"
        f"<|start_header_id|>assistant<|end_header_id|>\n\n{a}<|eot_id|>"
        for q, a in ARITH_SHOTS[:1]
    )
    one_shot = TrainConfig(few_shot=1).prompt_format_for(task)
    assert one_shot.text(headers, task.prompt(row), task.user_message(row)) == (
        f"<s>{turns}<|start_header_id|>user<|end_header_id|>\n\n{QUESTIONS[0]}<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    # No examples asked for: the prompt of before.
    assert TrainConfig().prompt_format_for(task) == PromptFormat()


def test_every_task_ships_few_shot_examples_its_own_checks_accept():
    from genssd.prompts import task_shots
    from genssd.tasks import TASK_NAMES, get_task
    from genssd.tasks.arith import problem_split

    for name in TASK_NAMES:
        task = get_task(name)
        shots = task_shots(task, len(task.few_shot_examples))
        assert len(shots) >= 4, name
        for example, shot in zip(task.few_shot_examples, shots):
            assert task.is_correct(shot.answer, example), (name, shot.answer)
            assert shot.prompt == task.prompt(example) and shot.message == task.user_message(example)
    # arith's examples are train-split problems: never a held-out question.
    assert {problem_split(e["question"]) for e in get_task("arith").few_shot_examples} == {"train"}


def test_few_shot_settings_are_checked(tmp_path):
    from genssd.tasks import get_task

    task = get_task("arith")
    with pytest.raises(UsageError, match="needs a task"):
        EvalConfig(few_shot=1).prompt_format  # noqa: B018
    with pytest.raises(UsageError, match="few_shot=5, but the arith task has 4"):
        EvalConfig(few_shot=5).prompt_format_for(task)
    with pytest.raises(UsageError, match="few_shot must be an integer >= 0"):
        SearchConfig(few_shot=-1)
    with pytest.raises(UsageError, match="few_shot_file needs few_shot >= 1"):
        TrainConfig(few_shot_file="shots.jsonl")
    # From a file: its first k rows, read and checked as the task's data is.
    shots = tmp_path / "shots.jsonl"
    shots.write_text(
        '{"question": "What is 1 + 1?", "answer": "= 2\\n#### 2"}\n'
        '{"question": "What is 2 + 2?", "answer": "= 4\\n#### 4"}\n'
    )
    fmt = EvalConfig(few_shot=1, few_shot_file=str(shots)).prompt_format_for(task)
    assert (
        fmt.text(bpe_tokenizer(300), "Q: x\nA:\n", "x") == "Q: What is 1 + 1?\nA:\n= 2\n#### 2\n\nQ: x\nA:\n"
    )
    with pytest.raises(UsageError, match="few_shot=3, but .*shots.jsonl has 2"):
        EvalConfig(few_shot=3, few_shot_file=str(shots)).prompt_format_for(task)
    shots.write_text('{"question": "What is 1 + 1?", "answer": "two"}\n')
    with pytest.raises(UsageError, match="no final answer"):
        EvalConfig(few_shot=1, few_shot_file=str(shots)).prompt_format_for(task)


@pytest.mark.parametrize("engine", ["hf", "static"])
@pytest.mark.parametrize("template", ["auto", "none"])
def test_student_scores_equal_a_forward_of_its_own_few_shot_prompt(engine, template):
    """With two examples before each question (turns under the student's header template, raw
    items without one), the student's scores equal a from-scratch forward of that prompt + the
    response, on the re-tokenizing path."""
    from genssd.tasks import get_task

    task = get_task("arith")
    rows = [{"question": q} for q in QUESTIONS]
    raw, messages = [task.prompt(r) for r in rows], [task.user_message(r) for r in rows]
    teacher_tokenizer = _templated(letters_tokenizer(), CHATML)
    student_tokenizer = _templated(bpe_tokenizer(420), HEADERS)
    teacher = tiny_lm("llama", len(teacher_tokenizer), seed=41, hidden=48)
    student = tiny_lm("qwen2", len(student_tokenizer), seed=42)
    config = SearchConfig(
        num_candidates=2, chunk_tokens=4, max_new_tokens=12, temperature=1.0, batch_size=2, seed=2,
        engine=engine, chat_template=template, few_shot=2, stop_strings=["\nQ:"],
    )  # fmt: skip
    searcher = Searcher(teacher, student, teacher_tokenizer, student_tokenizer, config=config)
    with pytest.raises(UsageError, match="needs a task"):
        searcher.run(raw, messages=messages)
    fmt = config.prompt_format_for(task)
    results = searcher.run(raw, messages=messages, prompt_format=fmt)
    zero_shot = SearchConfig(**{**config.__dict__, "few_shot": 0}).prompt_format
    for prompt, message, result in zip(raw, messages, results):
        student_prompt = fmt.encode(student_tokenizer, prompt, message)
        text = student_tokenizer.decode(student_prompt)
        # The examples come first; the zero-shot prompt (its BOS aside) ends it.
        assert text == fmt.text(student_tokenizer, prompt, message)
        assert text.endswith(zero_shot.text(student_tokenizer, prompt, message).removeprefix("<s>"))
        assert all(q in text and a in text for q, a in ARITH_SHOTS)
        for trajectory in result.trajectories:
            ended = trajectory.token_ids[-1] == EOS
            completion = student_tokenizer(trajectory.text, add_special_tokens=False)["input_ids"]
            logprobs = token_logprobs(student, student_prompt, completion + ([EOS] if ended else []))
            assert trajectory.student_score == pytest.approx(logprobs.mean().item(), abs=1e-4)


def test_training_and_eval_prompts_hold_the_few_shot_examples():
    from genssd.evaluate import evaluate
    from genssd.tasks import get_task
    from genssd.train import prepare_examples

    task = get_task("arith")
    tokenizer = _templated(bpe_tokenizer(300), CHATML)
    rows = [{"question": q, "answer": "#### 1", "trajectories": [{"text": "the end"}]} for q in QUESTIONS]
    examples = prepare_examples(rows, tokenizer, TrainConfig(few_shot=2, max_length=512), task=task)
    fmt = TrainConfig(few_shot=2).prompt_format_for(task)
    for example, row in zip(examples, rows):
        prompt_ids = fmt.encode(tokenizer, task.prompt(row), task.user_message(row))
        assert list(example.input_ids[: example.num_prompt]) == prompt_ids
    model = tiny_lm("llama", len(tokenizer), seed=43)
    config = EvalConfig(max_new_tokens=6, batch_size=2, engine="hf", few_shot=2)
    result = evaluate(model, tokenizer, task, rows, config, progress=False)
    messages = [task.user_message(r) for r in rows]
    prompts = [task.prompt(r) for r in rows]
    expected = generate(model, tokenizer, prompts, config, messages=messages, prompt_format=fmt)
    assert [r["predictions"] for r in result["records"]] == expected
    assert expected != generate(
        model, tokenizer, prompts, EvalConfig(max_new_tokens=6, engine="hf"), messages=messages
    )


def test_bad_few_shot_flags_exit_2_before_a_model_loads(tmp_path, capsys):
    from genssd.cli import main
    from genssd.tasks.arith import generate_problems, write_problems

    data, predictions = tmp_path / "test.jsonl", tmp_path / "predictions.jsonl"
    rows = generate_problems(2, 1)
    write_problems(data, rows)
    write_problems(predictions, [{"uid": r["uid"], "prediction": r["answer"]} for r in rows])
    base = ["eval", "--predictions", str(predictions), "--task", "arith", "--data", str(data)]
    assert main([*base, "--few-shot", "4"]) == 0  # the task ships four
    capsys.readouterr()
    for extra, message in [
        (["--few-shot", "5"], "few_shot=5, but the arith task has 4"),
        (["--few-shot", "-1"], "few_shot must be an integer >= 0"),
        (["--few-shot-file", str(data)], "few_shot_file needs few_shot >= 1"),
        (["--few-shot", "1", "--few-shot-file", str(tmp_path / "none.jsonl")], "few_shot_file not found"),
        (["--set", "few_shot=3", "--few-shot-file", str(data)], "few_shot=3, but .*test.jsonl has 2"),
    ]:
        assert main([*base, *extra]) == 2, extra
        assert re.search(message, capsys.readouterr().err), extra
    # The model is never loaded: the check comes first (this folder does not exist).
    argv = ["eval", "--model", str(tmp_path / "absent"), "--task", "arith", "--data", str(data)]
    assert main([*argv, "--few-shot", "9"]) == 2
    assert "few_shot=9" in capsys.readouterr().err
