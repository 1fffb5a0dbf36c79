"""Configuration dataclasses with YAML loading and ``key=value`` overrides.

Unknown keys are errors (a typo in a config must not silently run the default).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from genssd.errors import UsageError
from genssd.prompts import PromptFormat, task_shots


@dataclass
class PromptSettings:
    """How every config renders prompts (``genssd.prompts.PromptFormat``): ``chat_template``
    ``"auto"`` (a model's chat template when its tokenizer has one) or ``"none"`` (the task's raw
    prompt), an optional ``system_prompt``, ``chat_template_kwargs`` passed to the template
    (e.g. ``{enable_thinking: false}`` for Qwen3), and ``few_shot`` worked examples before the
    question: the first k the task ships, or of ``few_shot_file`` (JSONL of question and answer
    in the task's format; its name, not its content, is hashed)."""

    chat_template: str = "auto"
    system_prompt: str | None = None
    chat_template_kwargs: dict | None = None
    few_shot: int = 0
    few_shot_file: str | None = None

    def prompt_format_for(self, task) -> PromptFormat:
        """The prompt format with the task's few-shot examples (``task`` may be None when
        ``few_shot`` is 0); ``UsageError`` when the task or file has fewer than ``few_shot``."""
        shots = task_shots(task, self.few_shot, self.few_shot_file)
        return PromptFormat(self.chat_template, self.system_prompt, self.chat_template_kwargs, shots)

    @property
    def prompt_format(self) -> PromptFormat:
        """The prompt format where no task is at hand (refused with few-shot examples, which need
        one: ``prompt_format_for``)."""
        return self.prompt_format_for(None)

    def raise_first_failed(self, checks: list[tuple[bool, str]]) -> None:
        """Raise ``UsageError`` with the message of the first failed ``(ok, message)`` check, then
        for bad prompt settings: every config's validation."""
        few_shot_ok = (
            isinstance(self.few_shot, int) and not isinstance(self.few_shot, bool) and self.few_shot >= 0
        )
        checks = [
            *checks,
            (few_shot_ok, f"few_shot must be an integer >= 0, got {self.few_shot!r}"),
            (
                self.few_shot_file is None or (isinstance(self.few_shot_file, str) and self.few_shot_file),
                f"few_shot_file must be a file name or null, got {self.few_shot_file!r}",
            ),
            # A file with few_shot 0 would silently use none of it: a forgotten count, not a choice.
            (
                self.few_shot_file is None or not few_shot_ok or self.few_shot >= 1,
                "few_shot_file needs few_shot >= 1 (how many of its examples to use)",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise UsageError(message)
        PromptFormat(self.chat_template, self.system_prompt, self.chat_template_kwargs)  # checks the rest


@dataclass
class SearchConfig(PromptSettings):
    """Gen-SSD search settings (docs/design.md §3). ``method`` names the preset these came from.

    ``chunk_tokens=None`` makes one chunk the whole answer (up to ``max_new_tokens``).
    ``select=False`` compares nothing: the first round's first ``beam_width`` candidates become the
    beams and each continues on its own, so ``num_candidates = beam_width = n`` draws n plain
    samples per prompt (rejection sampling then keeps the correct ones).
    ``scorer`` is ``"student"`` (likelihood in ``score_scope``) or ``"random"``.
    ``stop_strings`` end a trajectory where its text first contains one (the tokens from the one
    holding its first character on are dropped); None takes the task's (``Task.stop_strings``).
    ``engine`` picks the decode engine (``auto``: static where the model's family is supported);
    engines give the same results, so it is not hashed. ``cuda_graphs`` replays the static engine's
    decode step as CUDA graphs (speed only, not hashed; off saves the graphs' memory pools at
    ~2.5x the time per step; see ``genssd.engine.decode``).
    """

    method: str = "gen-ssd"
    num_candidates: int = 4
    beam_width: int = 1
    chunk_tokens: int | None = 32
    step_delimiter: str | None = None
    margin: float = 0.5
    max_ppl: float | None = None
    score_scope: str = "trajectory"
    max_new_tokens: int = 256
    temperature: float = 0.7
    top_p: float = 1.0
    # How many prompts share a batch: speed only (results do not depend on it), so not hashed.
    batch_size: int = field(default=8, metadata={"hash": False})
    seed: int = 0
    record_candidates: bool = False
    select: bool = True
    scorer: str = "student"
    stop_strings: list[str] | None = None
    engine: str = field(default="auto", metadata={"hash": False})
    cuda_graphs: bool = field(default=True, metadata={"hash": False})

    def __post_init__(self) -> None:
        checks = [
            (self.num_candidates >= 1, f"num_candidates must be >= 1, got {self.num_candidates}"),
            (self.beam_width >= 1, f"beam_width must be >= 1, got {self.beam_width}"),
            (
                self.chunk_tokens is None or self.chunk_tokens >= 1,
                f"chunk_tokens must be >= 1 or null, got {self.chunk_tokens}",
            ),
            (self.margin >= 0, f"margin must be >= 0, got {self.margin}"),
            (self.max_ppl is None or self.max_ppl > 1, f"max_ppl must be > 1 or null, got {self.max_ppl}"),
            (
                self.score_scope in ("trajectory", "chunk"),
                f"score_scope must be 'trajectory' or 'chunk', got {self.score_scope!r}",
            ),
            (self.max_new_tokens >= 1, f"max_new_tokens must be >= 1, got {self.max_new_tokens}"),
            (self.temperature >= 0, f"temperature must be >= 0, got {self.temperature}"),
            (0 < self.top_p <= 1, f"top_p must be in (0, 1], got {self.top_p}"),
            (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
            (
                self.scorer in ("student", "random"),
                f"scorer must be 'student' or 'random', got {self.scorer!r}",
            ),
            (
                self.step_delimiter is None or (isinstance(self.step_delimiter, str) and self.step_delimiter),
                f"step_delimiter must be a non-empty string or null, got {self.step_delimiter!r}",
            ),
            (
                self.stop_strings is None
                or (
                    isinstance(self.stop_strings, (list, tuple))
                    and all(isinstance(x, str) and x for x in self.stop_strings)
                ),
                f"stop_strings must be a list of non-empty strings or null, got {self.stop_strings!r}",
            ),
            (
                self.engine in ("auto", "static", "hf"),
                f"engine must be auto, static or hf, got {self.engine!r}",
            ),
        ]
        self.raise_first_failed(checks)

    def for_task(self, task) -> SearchConfig:
        """This config with the task's stop strings where it names none (before hashing)."""
        if self.stop_strings is not None:
            return self
        return dataclasses.replace(self, stop_strings=list(task.stop_strings))

    @property
    def min_score(self) -> float:
        """The absolute floor on a candidate's mean log-prob implied by ``max_ppl``."""
        return float("-inf") if self.max_ppl is None else -math.log(self.max_ppl)


# docs/design.md §3: every baseline is a configuration of the same engine. Best-of-n samples
# ``num_candidates`` whole answers and keeps the one the student likes best (no margin pruning).
METHOD_PRESETS: dict[str, dict[str, Any]] = {
    "gen-ssd": {},
    "standard": {"num_candidates": 1, "beam_width": 1, "select": False},
    "best-of-n": {
        "beam_width": 1,
        "chunk_tokens": None,
        "step_delimiter": None,
        "margin": float("inf"),
        "max_ppl": None,
    },
    "random": {"scorer": "random"},
    # The paper's rule as far as it is known (docs/design.md §3.2): per chunk the student keeps its
    # likeliest candidate (lowest chunk perplexity), and a trajectory stops when even that one's
    # chunk perplexity exceeds a ceiling. The ceiling is not published; 10 is our default.
    "gen-ssd-paper": {"beam_width": 1, "margin": float("inf"), "score_scope": "chunk", "max_ppl": 10.0},
    "token-level": {"chunk_tokens": 1, "step_delimiter": None},
}


@dataclass
class TrainConfig(PromptSettings):
    """Supervised fine-tuning of the student on trajectories (docs/design.md §4)."""

    lr: float = 5e-5
    epochs: int = 1
    max_steps: int | None = None
    batch_size: int = 8
    grad_accum: int = 1
    max_length: int = 1024
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    seed: int = 0
    save_every: int = 0
    bf16: bool = True
    gradient_checkpointing: bool = False
    log_every: int = 10
    max_grad_norm: float = 1.0  # 0 turns clipping off
    keep_checkpoints: int = 2  # the newest checkpoints kept in the output folder; 0 keeps all
    only_correct: bool = False  # train only on rows whose answer is correct (rejection sampling)

    def __post_init__(self) -> None:
        checks = [
            (self.lr > 0, f"lr must be > 0, got {self.lr}"),
            (self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}"),
            (
                self.max_steps is None or self.max_steps >= 1,
                f"max_steps must be >= 1 or null, got {self.max_steps}",
            ),
            (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
            (self.grad_accum >= 1, f"grad_accum must be >= 1, got {self.grad_accum}"),
            (self.max_length >= 2, f"max_length must be >= 2, got {self.max_length}"),
            (0 <= self.warmup_ratio < 1, f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}"),
            (self.save_every >= 0, f"save_every must be >= 0, got {self.save_every}"),
            (self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}"),
            (self.log_every >= 1, f"log_every must be >= 1, got {self.log_every}"),
            (self.max_grad_norm >= 0, f"max_grad_norm must be >= 0, got {self.max_grad_norm}"),
            (self.keep_checkpoints >= 0, f"keep_checkpoints must be >= 0, got {self.keep_checkpoints}"),
        ]
        self.raise_first_failed(checks)


@dataclass
class EvalConfig(PromptSettings):
    """Accuracy of a model on a task split.

    ``engine``: ``static`` generates through the search's decode engine (greedy output equals
    ``generate``'s when the model does not pick a special token other than EOS, which the engine
    never draws; samples are keyed by (seed, prompt, sample index), so they do not depend on the
    batch), ``hf`` through ``model.generate`` (samples seeded once per run), ``auto`` static where
    the model's family is supported.
    """

    batch_size: int = 16
    max_new_tokens: int = 256
    num_samples: int = 1
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    engine: str = "auto"

    def __post_init__(self) -> None:
        checks = [
            (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
            (self.max_new_tokens >= 1, f"max_new_tokens must be >= 1, got {self.max_new_tokens}"),
            (
                self.engine in ("auto", "static", "hf"),
                f"engine must be auto, static or hf, got {self.engine!r}",
            ),
            (self.num_samples >= 1, f"num_samples must be >= 1, got {self.num_samples}"),
            (self.temperature >= 0, f"temperature must be >= 0, got {self.temperature}"),
            (0 < self.top_p <= 1, f"top_p must be in (0, 1], got {self.top_p}"),
            (
                self.num_samples == 1 or self.temperature > 0,
                f"num_samples={self.num_samples} needs temperature > 0 (greedy decoding gives one answer)",
            ),
        ]
        self.raise_first_failed(checks)


def _coerce(value: str, current: Any, name: str) -> Any:
    """Parse an override string with YAML, checking it against the field's current type."""
    parsed = yaml.safe_load(value)
    if isinstance(current, bool) and not isinstance(parsed, bool):
        raise UsageError(f"{name} takes true or false, got {value!r}")
    if isinstance(current, float) and isinstance(parsed, int) and not isinstance(parsed, bool):
        parsed = float(parsed)
    if isinstance(parsed, str) and parsed.lower() in (".inf", "inf", "+inf"):
        parsed = float("inf")
    return _float_field(parsed, current, name)


def _float_field(value: Any, current: Any, name: str) -> Any:
    """YAML 1.1 reads ``2e-5`` (no dot) as a string; a float field takes it as the number."""
    if isinstance(current, float) and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            raise UsageError(f"{name} takes a number, got {value!r}") from None
    return value


def load_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """The mapping a YAML config file holds (``UsageError`` when missing, invalid or not a mapping)."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"config file not found: {path}")
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UsageError(f"config file {path} is not valid YAML: {exc}") from None
    if not isinstance(loaded, dict):
        raise UsageError(f"config file {path} must hold a mapping of keys to values")
    return loaded


def build_config(
    cls,
    *,
    yaml_path: str | Path | None = None,
    mapping: dict[str, Any] | None = None,
    overrides: list[str] | None = None,
    **base: Any,
):
    """Build ``cls`` from keyword defaults, then a YAML file (or an already loaded ``mapping``),
    then ``key=value`` overrides."""
    names = {f.name: f for f in dataclasses.fields(cls)}
    values: dict[str, Any] = dict(base)
    loaded = load_yaml_mapping(yaml_path) if yaml_path is not None else (mapping or {})
    if not isinstance(loaded, dict):
        raise UsageError(f"{cls.__name__} settings must be a mapping of keys to values, got {loaded!r}")
    for key, value in loaded.items():
        default = names[key].default if key in names else None
        # The value so far gives the type where the field has no default (a demo Preset's).
        values[key] = _float_field(value, values.get(key, default), key)
    for item in overrides or []:
        if "=" not in item:
            raise UsageError(f"--set takes key=value, got {item!r}")
        key, raw = item.split("=", 1)
        key = key.strip()
        if key not in names:
            raise UsageError(
                f"unknown config key {key!r} for {cls.__name__}; known keys: {', '.join(sorted(names))}"
            )
        default = names[key].default if names[key].default is not dataclasses.MISSING else None
        values[key] = _coerce(raw, values.get(key, default), key)
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise UsageError(
            f"unknown config key(s) {', '.join(map(repr, unknown))} for {cls.__name__}; "
            f"known keys: {', '.join(sorted(names))}"
        )
    try:
        return cls(**values)
    except TypeError as exc:
        raise UsageError(f"bad {cls.__name__}: {exc}") from None


def search_config_for(
    method: str,
    *,
    yaml_path: str | Path | None = None,
    mapping: dict[str, Any] | None = None,
    overrides: list[str] | None = None,
    **fields: Any,
) -> SearchConfig:
    """The one way a ``SearchConfig`` is built (library, CLI, pipeline, demo).

    Layers, each over the last: ``method``'s preset, ``fields``, a YAML file or loaded
    ``mapping`` of SearchConfig keys, then ``key=value`` ``overrides`` (``--set``). The method is
    chosen by ``method`` alone: a file that names another one is refused.
    """
    if method not in METHOD_PRESETS:
        raise UsageError(f"unknown method {method!r}; choose one of {', '.join(METHOD_PRESETS)}")
    config = build_config(
        SearchConfig,
        yaml_path=yaml_path,
        mapping=mapping,
        overrides=overrides,
        **{**METHOD_PRESETS[method], **fields, "method": method},
    )
    if config.method != method:
        raise UsageError(f"the config sets method {config.method!r}; choose the method with --method")
    return config


def config_hash(config: Any) -> str:
    """A short stable hash of a config dataclass (recorded with every output row).

    Fields marked ``metadata={"hash": False}`` (settings that cannot change results) are left out.
    """
    fields = [f for f in dataclasses.fields(config) if f.metadata.get("hash", True)]
    values = {f.name: getattr(config, f.name) for f in fields}
    payload = json.dumps(values, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


__all__ = [
    "EvalConfig",
    "METHOD_PRESETS",
    "SearchConfig",
    "TrainConfig",
    "build_config",
    "load_yaml_mapping",
    "config_hash",
    "search_config_for",
]
