"""Prompts as each model expects them: the task's raw text, or its question under the model's chat
template.

An instruct or reasoning model (Qwen2.5-Instruct, Qwen3, DeepSeek-R1-Distill) answers well only
when prompted through its chat template; a base model has none and reads the task's raw prompt
("Question: ...\\nAnswer:"). Each model gets its own: the teacher generates under its template,
the student scores the same response text under its own (so a student's score is the likelihood
of the response given the prompt as *it* will see it at training and evaluation time).

Few-shot examples (``Shot``: a solved problem of the task) go before the question in both forms:
in the raw text as earlier question/answer items, under a template as earlier user/assistant
turns, so a base model and an instruct model see the same examples, each in its own format.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from genssd.errors import UsageError

CHAT_TEMPLATES = ("auto", "none")
# Between raw few-shot items: a blank line, as lm-eval's chain-of-thought prompts have. A base model
# that goes on past its answer then starts the next item, which the task's stop strings cut.
SHOT_SEPARATOR = "\n\n"


@dataclass(frozen=True)
class Shot:
    """One few-shot example: the task's raw ``prompt`` and user ``message`` for its question, and
    the worked ``answer`` (a solution in the task's format, ending in its final-answer line)."""

    prompt: str
    message: str
    answer: str


def task_shots(task, count: int, path: str | None = None) -> tuple[Shot, ...]:
    """The first ``count`` few-shot examples: those ``task`` ships (``Task.few_shot_examples``),
    or the rows of the JSONL file ``path`` (question and answer, read and checked as the task's
    data is), rendered with the task's prompt and user message."""
    if count == 0:
        return ()
    if task is None:
        raise UsageError(f"few_shot={count} needs a task: the examples are rendered in its prompt format")
    if path is not None and not Path(path).is_file():
        raise UsageError(f"few_shot_file not found: {path}")
    rows = task.load(path) if path is not None else [task.normalize(row) for row in task.few_shot_examples]
    if len(rows) < count:
        source = path if path is not None else f"the {task.name} task"
        raise UsageError(f"few_shot={count}, but {source} has {len(rows)} few-shot example(s)")
    return tuple(Shot(task.prompt(row), task.user_message(row), row["answer"]) for row in rows[:count])


@dataclass(frozen=True)
class PromptFormat:
    """How prompts are rendered for a model.

    Attributes:
        chat_template: ``"auto"``: through the tokenizer's chat template when it has one, else the
            raw prompt; ``"none"``: always the raw prompt.
        system_prompt: a system message put before the question (templated prompts only).
        template_kwargs: extra arguments of ``apply_chat_template`` (e.g. Qwen3's
            ``{"enable_thinking": False}``).
        shots: few-shot examples put before the question, in order (``task_shots``).
    """

    chat_template: str = "auto"
    system_prompt: str | None = None
    template_kwargs: dict | None = None
    shots: tuple[Shot, ...] = ()

    def __post_init__(self) -> None:
        if self.chat_template not in CHAT_TEMPLATES:
            choices = ", ".join(CHAT_TEMPLATES)
            raise UsageError(f"chat_template must be one of {choices}, got {self.chat_template!r}")
        if self.system_prompt is not None and not isinstance(self.system_prompt, str):
            raise UsageError(f"system_prompt must be a string or null, got {self.system_prompt!r}")
        if self.template_kwargs is not None and not isinstance(self.template_kwargs, dict):
            raise UsageError(f"chat_template_kwargs must be a mapping or null, got {self.template_kwargs!r}")

    def templated(self, tokenizer) -> bool:
        """Whether prompts for ``tokenizer``'s model go through its chat template."""
        return self.chat_template == "auto" and bool(getattr(tokenizer, "chat_template", None))

    def text(self, tokenizer, raw: str, message: str) -> str:
        """The prompt text: ``raw`` (the task's prompt) after the shots as raw items, or ``message``
        (the user's turn) after the shots as user/assistant turns under the chat template, ending
        where the assistant's answer starts."""
        if not self.templated(tokenizer):
            return "".join(f"{shot.prompt}{shot.answer}{SHOT_SEPARATOR}" for shot in self.shots) + raw
        messages = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        for shot in self.shots:
            messages.append({"role": "user", "content": shot.message})
            messages.append({"role": "assistant", "content": shot.answer})
        messages.append({"role": "user", "content": message})
        return tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True, **(self.template_kwargs or {})
        )

    def encode(self, tokenizer, raw: str, message: str) -> list[int]:
        """The prompt's token ids; a rendered template already holds its special tokens (a BOS
        added again would be a second one)."""
        text = self.text(tokenizer, raw, message)
        return tokenizer(text, add_special_tokens=not self.templated(tokenizer))["input_ids"]
