"""Chat templates: each model is prompted through its own tokenizer's template (``genssd.prompts``)
in the search, in training and in evaluation; ``chat_template="none"`` keeps the raw prompt."""

from __future__ import annotations

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
    """``--chat-template`` / ``--system-prompt`` set the prompt keys, over ``--set``; distill's
    hold for all three stages."""
    from genssd.cli import build_parser
    from genssd.commands import with_prompt_flags
    from genssd.commands.distill import build_plan
    from genssd.tasks.arith import generate_problems, write_problems

    parser = build_parser()
    flags = ["--chat-template", "none", "--system-prompt", "Answer: briefly"]
    args = parser.parse_args(["eval", "--task", "arith", "--data", "x", "--model", "m", *flags])
    config = with_prompt_flags(EvalConfig(chat_template="auto"), args)
    assert (config.chat_template, config.system_prompt) == ("none", "Answer: briefly")
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
        assert (stage.chat_template, stage.system_prompt) == ("none", "Answer: briefly")
