"""The teacher's side of a search round: fork every live beam and sample a chunk per candidate.

One batched sampling loop serves all prompts x beams x candidates. Every row keeps the logits
of its next token, so a round starts by sampling from them without re-encoding anything; a
row that stops early (EOS, the step delimiter, its token budget) is padded with holes while the
others go on.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from genssd.cache import BatchedCache
from genssd.engine.runners import left_pad
from genssd.models import eos_token_ids, input_device, pad_token_id
from genssd.sampling import sample, step_keys


@dataclass
class Chunk:
    """The candidates' new tokens (C candidates, L the longest chunk this round).

    Attributes:
        ids: ``[C, L]`` int64 teacher token ids; the pad id where ``mask`` is False.
        mask: ``[C, L]`` bool, True for real tokens (always a prefix of each row).
        lengths: ``[C]`` int64 real tokens per candidate (>= 1).
        ended: ``[C]`` bool, the candidate emitted an end-of-sequence token (its last token).
    """

    ids: torch.Tensor
    mask: torch.Tensor
    lengths: torch.Tensor
    ended: torch.Tensor


def token_flags(tokenizer, size: int, delimiter: str, device: torch.device) -> torch.Tensor:
    """``[size]`` bool: True for token ids whose text contains ``delimiter``."""
    texts = tokenizer.batch_decode([[i] for i in range(min(size, len(tokenizer)))])
    flags = torch.zeros(size, dtype=torch.bool)
    flags[: len(texts)] = torch.tensor([delimiter in text for text in texts], dtype=torch.bool)
    return flags.to(device)


class TokenRules:
    """Which teacher tokens end a chunk or a trajectory, and which are never sampled.

    Banned: ids past ``vocab_limit`` (the student's vocabulary when ids pass straight through)
    and the tokenizer's special tokens other than end-of-sequence: a sampled BOS or PAD would
    vanish from the decoded text while its log-prob stayed in the student's score.

    Attributes:
        pad_id: the id written where a row has no token.
        is_eos, is_delimiter, banned: ``[V]`` bool over the teacher's LM head rows.
    """

    def __init__(self, model, tokenizer, *, step_delimiter: str | None, vocab_limit: int | None, device):
        eos = eos_token_ids(model, tokenizer)
        self.pad_id = pad_token_id(tokenizer, eos)
        size = model.get_output_embeddings().weight.shape[0]
        self.is_eos = torch.zeros(size, dtype=torch.bool, device=device)
        self.is_eos[[e for e in eos if e < size]] = True
        self.is_delimiter = (
            token_flags(tokenizer, size, step_delimiter, device)
            if step_delimiter
            else torch.zeros(size, dtype=torch.bool, device=device)
        )
        self.banned = torch.zeros(size, dtype=torch.bool, device=device)
        special = [i for i in getattr(tokenizer, "all_special_ids", []) if i < size and i not in eos]
        self.banned[special] = True
        if vocab_limit is not None and vocab_limit < size:
            self.banned[vocab_limit:] = True

    def logits(self, raw: torch.Tensor) -> torch.Tensor:
        """``[R, V]`` float32 next-token logits with the banned ids at -inf."""
        return raw.float().masked_fill(self.banned, float("-inf"))


class ChunkSampler:
    """What the teacher samplers of both engines share: the sampling settings and token rules.

    Args:
        model: the teacher causal LM.
        tokenizer: its tokenizer (prompt encoding, pad/EOS ids, the step delimiter's tokens).
        temperature, top_p: sampling settings (temperature 0 is greedy).
        step_delimiter: end a chunk after a token whose text contains it (None: only the budget).
        vocab_limit: sample only ids below it (the student's vocabulary when ids pass through).
    """

    def __init__(
        self,
        model,
        tokenizer,
        *,
        temperature: float,
        top_p: float,
        step_delimiter: str | None,
        vocab_limit: int | None = None,
    ):
        self.temperature = temperature
        self.top_p = top_p
        self.device = input_device(model)
        self.rules = TokenRules(
            model, tokenizer, step_delimiter=step_delimiter, vocab_limit=vocab_limit, device=self.device
        )
        self.pad_id = self.rules.pad_id
        self.next_logits: torch.Tensor | None = None  # [R, V] fp32

    def _draw(self, logits: torch.Tensor, keys: torch.Tensor, step, active: torch.Tensor) -> torch.Tensor:
        """``[R]`` this step's tokens (``step`` an int or a device scalar): keyed samples of the
        active rows, the pad id elsewhere."""
        token = sample(logits, step_keys(keys, step), temperature=self.temperature, top_p=self.top_p)
        return torch.where(active, token, self.pad_id)

    def _stop_tests(
        self, token: torch.Tensor, active: torch.Tensor, at_budget: torch.Tensor, final: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``[R]`` bool each: the rows whose token is an EOS, the rows this token stops (EOS, the
        step delimiter, the chunk's budget), and the rows whose token goes through the model
        (all active ones, except an EOS or the last token of the trajectory's budget: no future)."""
        is_end = active & self.rules.is_eos[token]
        stops = active & (is_end | self.rules.is_delimiter[token] | at_budget)
        feed = active & ~is_end & ~(at_budget & final)
        return is_end, stops, feed


class TeacherSampler(ChunkSampler):
    """Batched chunk proposals from the teacher on the hf engine, with forked KV caches
    (arguments as ``ChunkSampler``)."""

    def __init__(self, model, tokenizer, **settings):
        super().__init__(model, tokenizer, **settings)
        self.model = model
        self.cache: BatchedCache | None = None

    def start(self, prompt_ids: list[list[int]], *, rows: int = 0, columns: int = 0) -> None:
        """Encode the prompts (left-padded): one live row per prompt."""
        ids, valid = left_pad(prompt_ids, self.pad_id, self.device)
        self.cache = BatchedCache(self.model, len(prompt_ids), self.device)
        out = self.cache.extend(ids, valid, logits_to_keep=1)
        self.next_logits = self._last_logits(out)

    def _last_logits(self, out) -> torch.Tensor:
        return self.rules.logits(out.logits[:, -1, :].to(self.device))

    @property
    def cache_bytes(self) -> int:
        return 0 if self.cache is None else self.cache.nbytes

    @torch.no_grad()
    def propose(
        self, parent: torch.Tensor, keys: torch.Tensor, budget: list[int], final: list[bool]
    ) -> Chunk:
        """Sample one chunk for every candidate.

        Args:
            parent: ``[C]`` int64, the live row each candidate continues (repeats fork the row).
            keys: ``[C]`` int64 random keys of the candidates.
            budget: per candidate, the most tokens this chunk may have (>= 1).
            final: per candidate, True when reaching the budget ends the trajectory
                (``max_new_tokens``), so its last token need not be run through the model.
        Returns:
            the chunk; the cache and next-token logits now hold each candidate's tokens.
        """
        self.cache.reindex(parent)
        logits = self.next_logits[parent]
        rows, steps = parent.numel(), max(budget)
        budget_t = torch.tensor(budget, device=self.device)
        final_t = torch.tensor(final, device=self.device)
        ids = torch.full((rows, steps), self.pad_id, dtype=torch.long, device=self.device)
        mask = torch.zeros(rows, steps, dtype=torch.bool, device=self.device)
        done = torch.zeros(rows, dtype=torch.bool, device=self.device)
        ended = torch.zeros(rows, dtype=torch.bool, device=self.device)
        used = steps
        for t in range(steps):
            active = ~done
            token = self._draw(logits, keys, t, active)
            ids[:, t] = token
            mask[:, t] = active
            is_end, stops, feed = self._stop_tests(token, active, budget_t <= t + 1, final_t)
            ended |= is_end
            done = done | stops
            more, need_forward = torch.stack([(~done).any(), feed.any()]).tolist()
            if need_forward:
                out = self.cache.extend(token[:, None], feed[:, None], logits_to_keep=1)
                logits = torch.where(feed[:, None], self._last_logits(out), logits)
            if not more:
                used = t + 1
                break
        self.next_logits = logits
        mask = mask[:, :used]
        return Chunk(ids=ids[:, :used], mask=mask, lengths=mask.sum(1), ended=ended)

    def select(self, index: torch.Tensor, *, longest: int | None = None) -> None:
        """Keep candidates ``index`` (``[R']`` int64) as the next round's live rows (``longest``
        matters to the static engine only)."""
        self.cache.reindex(index)
        self.next_logits = self.next_logits[index]
