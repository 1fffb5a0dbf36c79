"""Prompts as each model expects them: the task's raw text, or its question under the model's chat
template.

An instruct or reasoning model (Qwen2.5-Instruct, Qwen3, DeepSeek-R1-Distill) answers well only
when prompted through its chat template; a base model has none and reads the task's raw prompt
("Question: ...\\nAnswer:"). Each model gets its own: the teacher generates under its template,
the student scores the same response text under its own (so a student's score is the likelihood
of the response given the prompt as *it* will see it at training and evaluation time).
"""

from __future__ import annotations

from dataclasses import dataclass

from genssd.errors import UsageError

CHAT_TEMPLATES = ("auto", "none")


@dataclass(frozen=True)
class PromptFormat:
    """How prompts are rendered for a model.

    Attributes:
        chat_template: ``"auto"``: through the tokenizer's chat template when it has one, else the
            raw prompt; ``"none"``: always the raw prompt.
        system_prompt: a system message put before the question (templated prompts only).
        template_kwargs: extra arguments of ``apply_chat_template`` (e.g. Qwen3's
            ``{"enable_thinking": False}``).
    """

    chat_template: str = "auto"
    system_prompt: str | None = None
    template_kwargs: dict | None = None

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
        """The prompt text: ``raw`` (the task's prompt), or ``message`` (the user's turn) under the
        chat template, ending where the assistant's answer starts."""
        if not self.templated(tokenizer):
            return raw
        messages = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        messages.append({"role": "user", "content": message})
        return tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True, **(self.template_kwargs or {})
        )

    def encode(self, tokenizer, raw: str, message: str) -> list[int]:
        """The prompt's token ids; a rendered template already holds its special tokens (a BOS
        added again would be a second one)."""
        text = self.text(tokenizer, raw, message)
        return tokenizer(text, add_special_tokens=not self.templated(tokenizer))["input_ids"]
