"""The student's running log-likelihood of every live beam, computed incrementally.

Per live row the tracker keeps the student's KV cache of the prompt and the completion so far,
the final hidden state of the row's last token (which predicts the next token) and the running
sum and count of the completion's token log-probs. Scoring a round forks the rows to the
candidates, runs only the new tokens through the student's base decoder, and turns the hidden
states into log-probs with ``genssd_kernels.logprob_gather`` and the LM head weight: the
student's logits are never materialized.

Token ids pass straight through when teacher and student share a vocabulary (the fast path:
no host work, no host synchronization). Otherwise (the text path) the student tokenizes the
prompt and, separately, the completion's text; as the text grows, the re-tokenization may change
the last few student tokens, so each candidate keeps the longest common prefix with its parent's
tokens, turns the rest into cache holes, takes their log-probs out of the running sum and
re-runs from the last kept token (``drop_last`` on the runner: rolled-back tokens are always
the row's last ones). Either way the score of a completion is exactly the from-scratch
mean log-prob of ``student_tokens(prompt) + student_tokens(completion)`` over the completion.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

import genssd_kernels
from genssd.engine.runners import HFRunner, StaticRunner
from genssd.errors import UsageError
from genssd.models import completion_eos_id, decoder_and_head, eos_token_ids, input_device, pad_token_id
from genssd.teacher import Chunk

IGNORE = -100


@dataclass
class StudentScores:
    """Per-candidate student statistics of one round (``C`` candidates).

    Attributes:
        trajectory: ``[C]`` fp32 mean log-prob of the whole completion so far.
        chunk: ``[C]`` fp32 mean log-prob of the tokens new this round.
        total: ``[C]`` fp64 running sum of the completion's token log-probs.
        count: ``[C]`` int64 number of completion tokens in ``total``.
        fed: ``[C]`` int64 tokens run through the student this round.
    """

    trajectory: torch.Tensor
    chunk: torch.Tensor
    total: torch.Tensor
    count: torch.Tensor
    fed: torch.Tensor


@dataclass
class _TextState:
    """Host-side token bookkeeping of one row on the text path."""

    tokens: list[int]  # prompt + completion, student ids
    prompt_len: int
    logprobs: list[float]  # one per completion token


@dataclass
class _TextPlan:
    """A candidate's student tokens on the text path: its parent row, its tokens, where the
    re-run starts (``start``) and how many of the parent's tokens it keeps (``keep``)."""

    row: int
    tokens: list[int]
    start: int
    keep: int


@dataclass
class _Feed:
    """What a round runs through the student (``C`` candidates, ``L`` columns).

    Attributes:
        ids, valid: ``[C, L]`` int64 student ids and their (prefix) validity.
        first_scored: ``[C]`` bool, whether column 0 is scored (not on a text-path re-run).
        dropped_sum, dropped_count: ``[C]`` log-prob sum and count of rolled-back tokens (0 on
            the shared-vocabulary path).
        plan: the text path's per-candidate plans (None on the shared-vocabulary path).
    """

    ids: torch.Tensor
    valid: torch.Tensor
    first_scored: torch.Tensor
    dropped_sum: torch.Tensor | float = 0.0
    dropped_count: torch.Tensor | int = 0
    plan: list[_TextPlan] | None = None


@dataclass
class _Pending:
    """A scored round, kept until ``commit`` picks the survivors (``C`` candidates).

    Attributes:
        total, count: ``[C]`` running log-prob sum (fp64) and token count.
        last_hidden: ``[C, d]`` hidden state of each candidate's last token.
        token_logprobs, scored: ``[C, L]`` the round's token log-probs and which were scored.
        plan: the text path's plans (None on the shared-vocabulary path).
    """

    total: torch.Tensor
    count: torch.Tensor
    last_hidden: torch.Tensor
    token_logprobs: torch.Tensor
    scored: torch.Tensor
    plan: list[_TextPlan] | None


class _Retokenizer:
    """The text path: the student's own tokens of each row's text, with rollbacks (module docstring)."""

    def __init__(self, tokenizer, *, eos_id: int | None, pad_id: int, vocab: int):
        self.tokenizer = tokenizer
        self.eos_id = eos_id
        self.pad_id = pad_id
        self.vocab = vocab
        self.rows: list[_TextState] = []

    def check_vocab(self, ids: list[int]) -> None:
        """Refuse student token ids past the LM head's rows, up front and naming the tokenizer
        (the kernel's own value check would only name the out-of-range target, and on CUDA only
        at the next synchronizing point)."""
        if ids and max(ids) >= self.vocab:
            raise UsageError(
                f"the student tokenizer produced token id {max(ids)}, but the student's LM head has "
                f"only {self.vocab} rows; use the tokenizer the student was trained with"
            )

    def start(self, prompt_ids: list[list[int]]) -> None:
        """Start one row per prompt from the student's ids of it."""
        for seq in prompt_ids:
            self.check_vocab(seq)
        self.rows = [_TextState(list(seq), len(seq), []) for seq in prompt_ids]

    def feed(
        self, parent_rows: list[int], texts: list[str], ended: list[bool], device
    ) -> tuple[_Feed, list[int]]:
        """Plan each candidate's student tokens (host work); the feed and, per candidate, how
        many of its parent's last tokens the cache must drop."""
        plans, feeds, firsts, dropped, drop_sum, drop_count = [], [], [], [], [], []
        for r, text, end in zip(parent_rows, texts, ended):
            old = self.rows[r]
            completion = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            if end and self.eos_id is not None:
                completion = completion + [self.eos_id]
            self.check_vocab(completion)
            new = old.tokens[: old.prompt_len] + completion
            keep = _common_prefix(old.tokens, new)
            # Re-run from the last kept token when tokens are rolled back: its hidden state
            # (which predicts new[keep]) was not kept.
            start = keep if keep == len(old.tokens) else keep - 1
            feeds.append(new[start:])
            firsts.append(start == keep)
            dropped.append(len(old.tokens) - start)
            drop_sum.append(sum(old.logprobs[keep - old.prompt_len :]))
            drop_count.append(len(old.tokens) - keep)
            plans.append(_TextPlan(r, new, start, keep))
        width = max(1, max(len(f) for f in feeds))
        ids = torch.full((len(feeds), width), self.pad_id, dtype=torch.long)
        valid = torch.zeros(len(feeds), width, dtype=torch.bool)
        for c, f in enumerate(feeds):
            ids[c, : len(f)] = torch.tensor(f, dtype=torch.long)
            valid[c, : len(f)] = True
        feed = _Feed(
            ids=ids.to(device),
            valid=valid.to(device),
            first_scored=torch.tensor(firsts, dtype=torch.bool, device=device),
            dropped_sum=torch.tensor(drop_sum, dtype=torch.float64, device=device),
            dropped_count=torch.tensor(drop_count, dtype=torch.long, device=device),
            plan=plans,
        )
        return feed, dropped

    def commit(self, plans: list[_TextPlan], index_list: list[int], logprobs, scored) -> None:
        """The kept candidates' rows: ``logprobs``/``scored`` are their ``[R', L]`` rows as lists."""
        rows = []
        for c, lps, flags in zip(index_list, logprobs, scored):
            plan = plans[c]
            old = self.rows[plan.row]
            new_lps = [lp for lp, flag in zip(lps, flags) if flag]
            rows.append(
                _TextState(plan.tokens, old.prompt_len, old.logprobs[: plan.keep - old.prompt_len] + new_lps)
            )
        self.rows = rows


class StudentTracker:
    """Incremental student likelihood of the live beams (see the module docstring).

    Args:
        student: the student causal LM.
        tokenizer: the student's tokenizer (used on the text path and for the prompts).
        shared_vocab: True when teacher token ids are student token ids (the fast path).
        backend: ``genssd_kernels`` backend (None chooses).
        engine: ``"static"`` (the compact forward over a static cache) or ``"hf"``.
    """

    def __init__(
        self, student, tokenizer, *, shared_vocab: bool, backend: str | None = None, engine: str = "hf"
    ):
        decoder, self.weight = decoder_and_head(student)
        self.device = input_device(student)
        self.runner = StaticRunner(student) if engine == "static" else HFRunner(decoder, self.device)
        self.shared_vocab = shared_vocab
        self.backend = backend
        eos = eos_token_ids(student, tokenizer)
        self.pad_id = pad_token_id(tokenizer, eos)
        # A finished completion ends with the EOS that training appends (nothing without any EOS).
        end = completion_eos_id(tokenizer, student) if eos else None
        self.retokenizer = (
            None
            if shared_vocab
            else _Retokenizer(tokenizer, eos_id=end, pad_id=self.pad_id, vocab=self.weight.shape[0])
        )
        self._pending: _Pending | None = None

    @property
    def cache_bytes(self) -> int:
        return self.runner.nbytes

    @torch.no_grad()
    def start(self, prompt_ids: list[list[int]], *, rows: int = 0, columns: int = 0) -> None:
        """Encode the prompts (the student's own ids of each): one live row per prompt (``rows`` x
        ``columns`` sizes a static cache)."""
        if self.retokenizer is not None:
            self.retokenizer.start(prompt_ids)
        self.last_hidden = self.runner.prefill(prompt_ids, self.pad_id, rows=rows, columns=columns)
        self.total = torch.zeros(len(prompt_ids), dtype=torch.float64, device=self.device)
        self.count = torch.zeros(len(prompt_ids), dtype=torch.long, device=self.device)

    @torch.no_grad()
    def score(
        self,
        parent: torch.Tensor,
        chunk: Chunk,
        *,
        parent_rows: list[int] | None = None,
        texts: list[str] | None = None,
        ended: list[bool] | None = None,
    ) -> StudentScores:
        """Score every candidate; the candidates become pending until ``commit``.

        Args:
            parent: ``[C]`` int64, the live row each candidate continues.
            chunk: the candidates' new teacher tokens (used as they are on the fast path).
            parent_rows, texts, ended: text path only: ``parent`` as a list, each candidate's
                whole completion text, and whether it ended with end-of-sequence.
        """
        self.runner.reindex(parent)
        prev_hidden = self.last_hidden[parent]
        if self.retokenizer is None:
            ones = torch.ones(parent.numel(), dtype=torch.bool, device=self.device)
            feed = _Feed(ids=chunk.ids, valid=chunk.mask, first_scored=ones)
        else:
            feed, dropped = self.retokenizer.feed(parent_rows, texts, ended, self.device)
            if any(dropped):
                self.runner.drop_last(torch.tensor(dropped, dtype=torch.long, device=self.device))
        hidden = self.runner.extend(feed.ids, feed.valid)  # [C, L, d]
        rows, width = feed.ids.shape

        # Position j is predicted by the hidden state before it: the row's last hidden state for
        # j = 0, else the new hidden state j - 1. On the text path a re-run token (the last one
        # kept after a rollback) is only there to produce a hidden state and is not scored.
        predictors = torch.cat([prev_hidden[:, None], hidden[:, :-1]], dim=1)
        scored = feed.valid.clone()
        scored[:, 0] &= feed.first_scored
        targets = torch.where(scored, feed.ids, IGNORE)
        token_logprobs, _, _ = genssd_kernels.logprob_gather(
            predictors.reshape(rows * width, -1),
            self.weight,
            targets.reshape(-1),
            backend=self.backend,
        )
        token_logprobs = token_logprobs.view(rows, width)
        new_sum = token_logprobs.sum(1, dtype=torch.float64)
        new_count = scored.sum(1)
        total = self.total[parent] - feed.dropped_sum + new_sum
        count = self.count[parent] - feed.dropped_count + new_count
        fed = feed.valid.sum(1)
        last = hidden[torch.arange(rows, device=self.device), (fed - 1).clamp_min(0)]
        self._pending = _Pending(
            total=total,
            count=count,
            last_hidden=torch.where((fed > 0)[:, None], last, prev_hidden),
            token_logprobs=token_logprobs,
            scored=scored,
            plan=feed.plan,
        )
        # A completion with no token yet (a stop string cut its first chunk to nothing) is never
        # preferred: -inf, where a mean of nothing would read 0.0, the best score there is.
        trajectory = torch.where(count > 0, total / count.clamp_min(1), float("-inf"))
        chunk_mean = torch.where(new_count > 0, new_sum / new_count.clamp_min(1), trajectory)
        return StudentScores(
            trajectory=trajectory.float(), chunk=chunk_mean.float(), total=total, count=count, fed=fed
        )

    @torch.no_grad()
    def commit(self, index: torch.Tensor, index_list: list[int], *, longest: int | None = None) -> None:
        """Keep pending candidates ``index`` (``[R']`` int64; ``index_list`` the same on the host).

        ``longest``: the teacher tokens of the longest kept row (prompt + completion), which are
        the student's too when ids pass straight through; on the text path its own rows say.
        """
        pending, self._pending = self._pending, None
        if self.retokenizer is None:
            self.runner.reindex(index, longest=longest)
        else:
            self.runner.reindex(index)
        self.total = pending.total[index]
        self.count = pending.count[index]
        self.last_hidden = pending.last_hidden[index]
        if self.retokenizer is not None:
            logprobs = pending.token_logprobs[index].tolist()
            scored = pending.scored[index].tolist()
            self.retokenizer.commit(pending.plan, index_list, logprobs, scored)
            self.runner.reindex_bound(max((len(row.tokens) for row in self.retokenizer.rows), default=0))


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n
