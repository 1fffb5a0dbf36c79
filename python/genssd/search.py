"""The Gen-SSD search engine (docs/design.md §3): the teacher proposes, a scorer scores, the selector prunes.

Per prompt the engine keeps up to ``beam_width`` live beams. Each round every live beam is
forked into ``num_candidates`` candidates, the teacher samples a chunk for each
(``teacher.TeacherSampler``), the student's incremental likelihood is updated
(``student.StudentTracker``), the scorer turns the batch into one score per candidate and
``genssd_kernels.branch_prune`` selects per prompt. Survivors that emitted EOS or reached
``max_new_tokens`` are finished trajectories; the others become the next round's beams, and
both KV caches are index-selected to them.

Between the student's forward pass and the selection nothing waits for the device: scores,
pruning and the index tensors stay there; the host reads the round's results once, after
``branch_prune``.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

import genssd_kernels
from genssd.config import SearchConfig, search_config_for
from genssd.engine import kv_cache_bytes, resolve_engine
from genssd.engine.decode import StaticTeacherSampler, row_bucket
from genssd.errors import UsageError
from genssd.models import check_source, input_device, load_model, load_tokenizer, same_vocabulary
from genssd.prompts import PromptFormat
from genssd.sampling import combine, text_key
from genssd.scorers import CandidateBatch, RandomScorer, Scorer, StudentLikelihoodScorer
from genssd.student import StudentScores, StudentTracker
from genssd.teacher import Chunk, TeacherSampler


@dataclass
class ChunkRecord:
    """One round in the history of a trajectory.

    Attributes:
        candidate_scores: the scores of every candidate of the prompt's group that round.
        chosen: the index in ``candidate_scores`` of the candidate this trajectory continued.
        num_candidates: the group's size (live beams x ``num_candidates``).
        num_tokens: teacher tokens in the chosen chunk.
        candidates: the candidates' chunk texts (only with ``record_candidates``).
    """

    candidate_scores: list[float]
    chosen: int
    num_candidates: int
    num_tokens: int
    candidates: list[str] | None = None

    def to_dict(self) -> dict:
        out = {
            # null for a candidate with no token to score (a stop string at its very start):
            # JSON has no -inf.
            "candidate_scores": [score if math.isfinite(score) else None for score in self.candidate_scores],
            "chosen": self.chosen,
            "num_candidates": self.num_candidates,
            "num_tokens": self.num_tokens,
        }
        if self.candidates is not None:
            out["candidates"] = self.candidates
        return out


@dataclass
class Trajectory:
    """A finished completion: its text, teacher token ids and the student's mean log-prob."""

    text: str
    token_ids: list[int]
    student_score: float
    num_tokens: int
    chunks: list[ChunkRecord]

    def to_dict(self) -> dict:
        return {
            "text": self.text,
            "student_score": self.student_score,
            "num_tokens": self.num_tokens,
            "chunks": [c.to_dict() for c in self.chunks],
        }


@dataclass
class SearchResult:
    """The outcome for one prompt.

    Attributes:
        trajectories: finished trajectories, best student score first (at most ``beam_width``).
        pruned_early: the prompt stopped because no candidate survived a selection.
        teacher_tokens: teacher tokens sampled for this prompt, over all candidates.
        student_tokens: tokens the student ran for this prompt's candidates.
    """

    prompt: str
    trajectories: list[Trajectory]
    pruned_early: bool
    teacher_tokens: int
    student_tokens: int

    @property
    def best(self) -> Trajectory | None:
        return self.trajectories[0] if self.trajectories else None

    def to_dict(self) -> dict:
        return {
            "trajectories": [t.to_dict() for t in self.trajectories],
            "pruned_early": self.pruned_early,
            "teacher_tokens": self.teacher_tokens,
            "student_tokens": self.student_tokens,
        }


@dataclass
class _Beam:
    """A live row: its prompt (index in the batch), rank among the prompt's beams, and history."""

    prompt: int
    rank: int
    ids: list[int]
    chunks: list[ChunkRecord]


@dataclass
class _PromptState:
    key: int
    prompt_len: int  # teacher tokens of the prompt
    finished: list[Trajectory] = field(default_factory=list)
    pruned: bool = False
    teacher_tokens: int = 0
    student_tokens: int = 0


@dataclass
class _Proposal:
    """One round's candidates after the teacher's proposal (``C`` candidates, ``G`` prompt groups).

    Attributes:
        beams: the live beams the round started from.
        parent_rows: ``C`` indices into ``beams`` (host); ``parent`` the same, ``[C]`` on the device.
        keys: ``[C]`` int64 random keys of the candidates.
        groups: ``G`` pairs (prompt, candidates); ``offsets_host`` their ``G+1`` offsets, ``offsets``
            the same ``[G+1]`` on the device.
        chunk: the candidates' new tokens; ``host`` its host copy (read when first needed).
    """

    round_index: int
    beams: list[_Beam]
    parent_rows: list[int]
    parent: torch.Tensor
    keys: torch.Tensor
    groups: list[tuple[int, int]]
    offsets_host: list[int]
    offsets: torch.Tensor
    chunk: Chunk
    host: _HostChunk


def _has_tokenizer(path) -> bool:
    """Whether ``path`` is a local checkpoint folder saved with its tokenizer."""
    if not isinstance(path, (str, os.PathLike)) or not os.path.isdir(path):
        return False
    return any(
        os.path.isfile(os.path.join(path, name)) for name in ("tokenizer.json", "tokenizer_config.json")
    )


def default_scorer(config: SearchConfig) -> Scorer:
    """The scorer a config names: the student's likelihood in its scope, or random."""
    if config.scorer == "random":
        return RandomScorer(config.seed)
    return StudentLikelihoodScorer(config.score_scope)


class Searcher:
    """Chunked teacher sampling with student-in-the-loop selection.

    Args:
        teacher, student: Hugging Face causal LMs, or paths to load them from.
        tokenizer: the teacher's tokenizer or its path (None: load it from the teacher's path).
        student_tokenizer: the student's (None: the one saved with a student path, else the
            teacher's). With the same vocabulary token ids pass straight through; otherwise the
            student re-tokenizes the text.
        config: search settings (``SearchConfig``; a method preset via ``search_config_for``).
        scorer: overrides the config's scorer (anything with ``score(batch) -> Tensor[C]``).
        device, dtype: placement of models loaded from paths.
        trust_remote_code: allow model code from the checkpoint (off by default).
        backend: ``genssd_kernels`` backend for the student's log-probs and the pruning.

    ``config.engine`` picks each model's decode engine; ``engine_lines`` (``engine_line``: one
    line) say which runs and why.
    """

    def __init__(
        self,
        teacher,
        student,
        tokenizer=None,
        student_tokenizer=None,
        config: SearchConfig | None = None,
        scorer: Scorer | None = None,
        *,
        device=None,
        dtype=None,
        trust_remote_code: bool = False,
        backend: str | None = None,
    ):
        if student is None:
            raise UsageError("a student model is required (it scores the candidates)")
        # Every path is checked before any model loads: a missing student fails in a second, not
        # after the teacher has loaded.
        for source in (teacher, student, tokenizer, student_tokenizer):
            if isinstance(source, (str, os.PathLike)):
                check_source(source)
        self.config = config if config is not None else SearchConfig()
        if tokenizer is None and isinstance(teacher, (str, os.PathLike)):
            tokenizer = teacher
        self.tokenizer = load_tokenizer(tokenizer, trust_remote_code=trust_remote_code)
        if self.tokenizer is None:
            raise UsageError("the teacher's tokenizer is required when the teacher is not a path")
        if student_tokenizer is None and _has_tokenizer(student):
            student_tokenizer = student
        student_tokenizer = load_tokenizer(student_tokenizer, trust_remote_code=trust_remote_code)
        self.student_tokenizer = student_tokenizer if student_tokenizer is not None else self.tokenizer
        self.teacher = load_model(teacher, device=device, dtype=dtype, trust_remote_code=trust_remote_code)
        self.student = load_model(student, device=device, dtype=dtype, trust_remote_code=trust_remote_code)
        self.device = input_device(self.teacher)
        student_device = input_device(self.student)
        if student_device != self.device:
            raise UsageError(
                f"teacher and student must be on the same device; the teacher's inputs are on "
                f"{self.device} but the student is on {student_device}"
            )
        self.backend = backend
        if scorer is not None and not isinstance(scorer, Scorer):
            raise UsageError(f"scorer must have a score(batch) method, got {type(scorer).__name__}")
        self.scorer = scorer if scorer is not None else default_scorer(self.config)
        shared = same_vocabulary(self.tokenizer, self.student_tokenizer)
        student_vocab = self.student.get_output_embeddings().weight.shape[0]
        teacher_engine, teacher_line = resolve_engine(self.teacher, self.config.engine, "teacher")
        student_engine, student_line = resolve_engine(self.student, self.config.engine, "student")
        self.engine_lines = [teacher_line, student_line]
        sampling = dict(
            temperature=self.config.temperature,
            top_p=self.config.top_p,
            step_delimiter=self.config.step_delimiter,
            vocab_limit=student_vocab if shared else None,
        )
        if teacher_engine == "static":
            graphs = self.config.cuda_graphs and self.device.type == "cuda"
            self.sampler = StaticTeacherSampler(self.teacher, self.tokenizer, graphs=graphs, **sampling)
        else:
            self.sampler = TeacherSampler(self.teacher, self.tokenizer, **sampling)
        self.tracker = StudentTracker(
            self.student, self.student_tokenizer, shared_vocab=shared, backend=backend, engine=student_engine
        )

    @classmethod
    def from_pretrained(
        cls,
        teacher,
        student,
        *,
        method: str = "gen-ssd",
        device=None,
        dtype=None,
        trust_remote_code: bool = False,
        scorer: Scorer | None = None,
        **config,
    ) -> Searcher:
        """A searcher over checkpoint folders (or hub names, or loaded models) with their own
        tokenizers, set up as ``method``'s preset with ``config`` (``SearchConfig`` keys) on top.

        ``Searcher.from_pretrained("Qwen2.5-7B-Instruct", "Qwen2.5-0.5B", num_candidates=4,
        margin=0.5, device="cuda", dtype="bf16")``
        """
        return cls(
            teacher,
            student,
            config=search_config_for(method, **config),
            scorer=scorer,
            device=device,
            dtype=dtype,
            trust_remote_code=trust_remote_code,
        )

    @property
    def engine_line(self) -> str:
        return "; ".join(self.engine_lines)

    def run(
        self,
        prompts: Sequence[str],
        *,
        uids: Sequence[str] | None = None,
        messages: Sequence[str] | None = None,
        prompt_format: PromptFormat | None = None,
        progress: bool = False,
    ) -> list[SearchResult]:
        """Search every prompt; one ``SearchResult`` per prompt, in order.

        ``uids`` (one per prompt) key the random draws; without them the prompt text does. Either
        way a prompt's result does not depend on the batch it ran in. A model whose tokenizer has
        a chat template (and ``config.chat_template="auto"``) is prompted with the user turn
        ``messages[i]`` (default: the prompt itself) under its template; the others with the
        prompt text (``genssd.prompts``). Teacher and student are prompted each their own way.
        ``prompt_format`` renders them instead of ``config.prompt_format``: the config's with a
        task's few-shot examples, ``config.prompt_format_for(task)``.
        """
        return list(
            self.iter_results(
                prompts, uids=uids, messages=messages, prompt_format=prompt_format, progress=progress
            )
        )

    def iter_results(
        self,
        prompts: Sequence[str],
        *,
        uids: Sequence[str] | None = None,
        messages: Sequence[str] | None = None,
        prompt_format: PromptFormat | None = None,
        progress: bool = False,
    ) -> Iterator[SearchResult]:
        """Like ``run``, yielding results in order as each batch of prompts finishes."""
        prompts = list(prompts)
        messages = prompts if messages is None else list(messages)
        for i, prompt in enumerate(prompts):
            if not isinstance(prompt, str) or not prompt.strip():
                raise UsageError(f"prompt {i} is empty or not a string")
        if uids is not None and len(uids) != len(prompts):
            raise UsageError(f"got {len(uids)} uids for {len(prompts)} prompts")
        if len(messages) != len(prompts):
            raise UsageError(f"got {len(messages)} messages for {len(prompts)} prompts")
        names = [str(u) for u in uids] if uids is not None else prompts
        keys = [combine(self.config.seed, text_key(name)) for name in names]
        fmt = prompt_format if prompt_format is not None else self.config.prompt_format
        teacher_ids = self._encode(fmt, self.tokenizer, prompts, messages, "")
        student_ids = self._encode(fmt, self.student_tokenizer, prompts, messages, "student ")
        self._check_fits(teacher_ids, student_ids)
        meter = _Progress(len(prompts), enabled=progress)
        size = self.config.batch_size
        try:
            for start in range(0, len(prompts), size):
                batch = slice(start, start + size)
                yield from self._search_batch(
                    prompts[batch], teacher_ids[batch], student_ids[batch], keys[batch], meter
                )
        finally:
            meter.close()

    def _encode(
        self, fmt: PromptFormat, tokenizer, prompts: list[str], messages: list[str], whose: str
    ) -> list[list[int]]:
        """Each prompt's ids for ``tokenizer``'s model (its chat template or the raw prompt)."""
        encoded = [fmt.encode(tokenizer, p, m) for p, m in zip(prompts, messages)]
        for prompt, ids in zip(prompts, encoded):
            if not ids:
                raise UsageError(f"prompt {prompt[:40]!r} encodes to no {whose}tokens")
        return encoded

    def _cache_shape(self, prompts: int, longest_prompt: int) -> tuple[int, int]:
        """Rows and columns the caches of a batch of ``prompts`` need at most: every live beam
        forked K times, and the longest prompt plus the whole answer, plus one chunk of slack.

        The slack: a round reserves the longest live row plus the round's largest chunk budget,
        and those can belong to different rows (the longest one may have less budget left), so
        without it a static cache could double in the last rounds.
        """
        cfg = self.config
        chunk = (
            cfg.chunk_tokens if cfg.chunk_tokens is not None and cfg.chunk_tokens < cfg.max_new_tokens else 0
        )
        return prompts * cfg.beam_width * cfg.num_candidates, longest_prompt + cfg.max_new_tokens + chunk + 1

    def _check_fits(self, teacher_ids: list[list[int]], student_ids: list[list[int]]) -> None:
        """Refuse, before any model runs, prompts past a model's context and caches past free memory."""
        new = self.config.max_new_tokens
        models = [("teacher", self.teacher, teacher_ids)] + (
            [("student", self.student, student_ids)] if self.tracker.shared_vocab else []
        )
        for role, model, ids in models:
            longest = max(range(len(ids)), key=lambda i: len(ids[i]))
            need = len(ids[longest]) + new
            context = getattr(model.config, "max_position_embeddings", None)
            if context is not None and need > context:
                raise UsageError(
                    f"prompt {longest} has {len(ids[longest])} tokens; with max_new_tokens={new} "
                    f"it needs {need} positions, past the {role}'s context of {context}"
                )
        if self.device.type != "cuda":
            return
        batch = min(self.config.batch_size, len(teacher_ids))
        longest = max(len(ids) for ids in teacher_ids + student_ids)
        rows, columns = self._cache_shape(batch, longest)
        need = kv_cache_bytes(self.teacher, row_bucket(rows), columns) + kv_cache_bytes(
            self.student, rows, columns
        )
        free, _ = torch.cuda.mem_get_info(self.device)
        if need > free:
            raise UsageError(
                f"the KV caches of a batch need {need / 2**30:.1f} GiB ({rows} rows x {columns} columns) but "
                f"{free / 2**30:.1f} GiB is free on {self.device}; "
                f"lower batch_size ({self.config.batch_size}) "
                f"or max_new_tokens"
            )

    @torch.no_grad()
    def _search_batch(
        self,
        prompts: list[str],
        teacher_ids: list[list[int]],
        student_ids: list[list[int]],
        keys: list[int],
        meter: _Progress,
    ) -> list[SearchResult]:
        rows, columns = self._cache_shape(
            len(teacher_ids), max(len(ids) for ids in teacher_ids + student_ids)
        )
        self.sampler.start(teacher_ids, rows=rows, columns=columns)
        self.tracker.start(student_ids, rows=rows, columns=columns)
        states = [_PromptState(key, len(ids)) for key, ids in zip(keys, teacher_ids)]
        beams = [_Beam(p, 0, [], []) for p in range(len(prompts))]
        round_index = 0
        while beams:
            beams = self._round(round_index, prompts, beams, states, meter)
            round_index += 1
            meter.round(
                live=len(beams),
                states=states,
                cache_bytes=self.sampler.cache_bytes + self.tracker.cache_bytes,
            )
        meter.prompts_done(len(prompts), states)
        results = []
        for prompt, state in zip(prompts, states):
            trajectories = sorted(state.finished, key=lambda t: -t.student_score)
            results.append(
                SearchResult(prompt, trajectories, state.pruned, state.teacher_tokens, state.student_tokens)
            )
        return results

    def _round(
        self,
        round_index: int,
        prompts: list[str],
        beams: list[_Beam],
        states: list[_PromptState],
        meter: _Progress,
    ) -> list[_Beam]:
        """Propose, score, select, advance; returns the next round's live beams."""
        proposal = self._propose(round_index, beams, states)
        batch, student = self._score(proposal, prompts)
        scores, kept_idx, kept_count = self._select(batch, proposal.offsets)
        return self._advance(proposal, student, (scores, kept_idx, kept_count), states, meter)

    def _propose(self, round_index: int, beams: list[_Beam], states: list[_PromptState]) -> _Proposal:
        """Fork every live beam into its candidates and sample a chunk for each."""
        cfg, device = self.config, self.device
        # Without selection candidates are never compared: the first round draws the beams, after
        # which every beam continues on its own (num_candidates = beam_width = n: n samples).
        k = cfg.num_candidates if cfg.select or round_index == 0 else 1
        chunk_cap = cfg.chunk_tokens or cfg.max_new_tokens
        parent_rows = [b for b in range(len(beams)) for _ in range(k)]
        parent = torch.arange(len(beams), device=device).repeat_interleave(k)
        keys = torch.tensor(
            [combine(states[b.prompt].key, round_index, b.rank, j) for b in beams for j in range(k)],
            dtype=torch.long,
            device=device,
        )
        left = [cfg.max_new_tokens - len(b.ids) for b in beams for _ in range(k)]
        chunk = self.sampler.propose(
            parent, keys, [min(chunk_cap, n) for n in left], [chunk_cap >= n for n in left]
        )
        groups, offsets_host = _groups(beams, k)
        host = _HostChunk(chunk)
        if cfg.stop_strings:
            previous = [beams[b].ids for b in parent_rows]
            chunk = host.cut(self.tokenizer, previous, cfg.stop_strings, self.sampler.pad_id)
        return _Proposal(
            round_index=round_index,
            beams=beams,
            parent_rows=parent_rows,
            parent=parent,
            keys=keys,
            groups=groups,
            offsets_host=offsets_host,
            offsets=torch.tensor(offsets_host, dtype=torch.long, device=device),
            chunk=chunk,
            host=host,
        )

    def _score(self, proposal: _Proposal, prompts: list[str]) -> tuple[CandidateBatch, StudentScores]:
        """The student's likelihood of every candidate, and the batch the scorer sees."""
        beams, parent_rows, host = proposal.beams, proposal.parent_rows, proposal.host

        def completions() -> list[str]:
            return [
                self.tokenizer.decode(beams[b].ids + ids, skip_special_tokens=True)
                for b, ids in zip(parent_rows, host.ids)
            ]

        if self.tracker.shared_vocab:
            student = self.tracker.score(proposal.parent, proposal.chunk)
        else:
            student = self.tracker.score(
                proposal.parent,
                proposal.chunk,
                parent_rows=parent_rows,
                texts=completions(),
                ended=host.ended,
            )
        batch = CandidateBatch(
            round=proposal.round_index,
            group_offsets=proposal.offsets,
            parent=proposal.parent,
            keys=proposal.keys,
            chunk_ids=proposal.chunk.ids,
            chunk_mask=proposal.chunk.mask,
            student_trajectory_scores=student.trajectory,
            student_chunk_scores=student.chunk,
            decode=lambda: ([prompts[beams[b].prompt] for b in parent_rows], completions()),
        )
        return batch, student

    def _advance(
        self,
        proposal: _Proposal,
        student: StudentScores,
        selection: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
        states: list[_PromptState],
        meter: _Progress,
    ) -> list[_Beam]:
        """Read the round back (once), finish or continue the kept candidates, and move both
        caches to the survivors; returns the next round's live beams."""
        cfg, host = self.config, proposal.host
        # The one host read of the round, after the selection (the chunk too, unless stop
        # strings, the text path or the scorer needed it earlier).
        fetched = _fetch(*selection, student.total, student.count, student.fed, *host.pending())
        host.receive(fetched[6:])
        scores_h, kept_idx_h, kept_count_h, total_h, count_h, fed_h = (t.tolist() for t in fetched[:6])
        meter.teacher_tokens(sum(host.lengths))

        next_beams: list[_Beam] = []
        index: list[int] = []
        offsets = proposal.offsets_host
        for g, (p, _) in enumerate(proposal.groups):
            lo, hi = offsets[g], offsets[g + 1]
            state = states[p]
            state.teacher_tokens += sum(host.lengths[lo:hi])
            state.student_tokens += int(sum(fed_h[lo:hi]))
            quota = cfg.beam_width - len(state.finished)
            if cfg.select:
                kept = kept_idx_h[g][: min(int(kept_count_h[g]), quota)]
            else:  # no selection: the candidates in order
                kept = list(range(lo, hi))[:quota]
            if not kept:
                state.pruned = True
                continue
            texts = None
            if cfg.record_candidates:
                texts = [self.tokenizer.decode(ids, skip_special_tokens=True) for ids in host.ids[lo:hi]]
            rank = 0
            for c in kept:
                beam = proposal.beams[proposal.parent_rows[c]]
                ids = beam.ids + host.ids[c]
                chunks = beam.chunks + [ChunkRecord(scores_h[lo:hi], c - lo, hi - lo, host.lengths[c], texts)]
                if host.stopped[c] and not ids:  # a stop string at the very start: nothing to keep
                    continue
                if host.ended[c] or host.stopped[c] or len(ids) >= cfg.max_new_tokens:
                    score = total_h[c] / count_h[c] if count_h[c] else 0.0
                    text = self.tokenizer.decode(ids, skip_special_tokens=True)
                    state.finished.append(Trajectory(text, ids, score, len(ids), chunks))
                else:
                    next_beams.append(_Beam(p, rank, ids, chunks))
                    index.append(c)
                    rank += 1
        index_t = torch.tensor(index, dtype=torch.long, device=self.device)
        # Every token of a live row went through both models, so the host knows the longest row.
        longest = max((states[b.prompt].prompt_len + len(b.ids) for b in next_beams), default=0)
        self.sampler.select(index_t, longest=longest)
        self.tracker.commit(index_t, index, longest=longest)
        return next_beams

    def _select(self, batch: CandidateBatch, offsets: torch.Tensor):
        """Scores ``[C]`` fp32 and, with selection on, ``branch_prune``'s kept indices and counts."""
        scores = self.scorer.score(batch)
        count = batch.parent.numel()
        if not isinstance(scores, torch.Tensor) or scores.shape != (count,):
            shape = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
            raise ValueError(f"{self.scorer!r}.score returned {shape}; expected a tensor of shape ({count},)")
        scores = scores.to(device=self.device, dtype=torch.float32)
        if not self.config.select:
            return scores, torch.empty(0, device=self.device), torch.empty(0, device=self.device)
        _, kept_idx, kept_count, _ = genssd_kernels.branch_prune(
            scores,
            offsets,
            margin=self.config.margin,
            k=self.config.beam_width,
            min_score=self.config.min_score,
            backend=self.backend,
        )
        return scores, kept_idx, kept_count


def _groups(beams: list[_Beam], k: int) -> tuple[list[tuple[int, int]], list[int]]:
    """The round's prompt groups ``(prompt, candidates)`` in beam order, and their offsets ``[G+1]``."""
    groups: list[tuple[int, int]] = []
    for beam in beams:
        if groups and groups[-1][0] == beam.prompt:
            groups[-1] = (beam.prompt, groups[-1][1] + k)
        else:
            groups.append((beam.prompt, k))
    offsets = [0]
    for _, size in groups:
        offsets.append(offsets[-1] + size)
    return groups, offsets


class _HostChunk:
    """The round's chunk on the host, read once: early when stop strings, the text path or a
    scorer need the texts, else together with the selection's results."""

    def __init__(self, chunk: Chunk):
        self.chunk = chunk
        self._ids: list[list[int]] | None = None
        # Candidates a stop string ended (not EOS: the student scores no end-of-sequence token).
        self.stopped = [False] * chunk.ids.shape[0]

    def pending(self) -> tuple[torch.Tensor, ...]:
        """The tensors still to read (none once read)."""
        return () if self._ids is not None else (self.chunk.ids, self.chunk.lengths, self.chunk.ended)

    def receive(self, tensors) -> None:
        """Take the host copies of ``pending()``'s tensors (ignored once read)."""
        if self._ids is None:
            ids, lengths, ended = tensors
            self._lengths = lengths.tolist()
            self._ids = [row[:n] for row, n in zip(ids.tolist(), self._lengths)]
            self._ended = [bool(e) for e in ended.tolist()]

    def _read(self) -> None:
        if self._ids is None:
            self.receive(_fetch(*self.pending()))

    def cut(self, tokenizer, previous: list[list[int]], stop_strings: Sequence[str], pad_id: int) -> Chunk:
        """End candidates whose text now contains a stop string, before the token holding its
        first character; the chunk with those candidates shortened (``stopped`` marks them).

        ``previous`` holds each candidate's completion ids before this chunk (no stop string in
        their text: it would have ended the trajectory). A stop string that begins in
        ``previous``'s text ends the trajectory at the chunk boundary (committed tokens stay).
        """
        self._read()
        changed = False
        for c, (before, new) in enumerate(zip(previous, self._ids)):
            keep = _stop_prefix(tokenizer, before, new, stop_strings)
            if keep is not None:
                self._ids[c], self._lengths[c], self.stopped[c] = new[:keep], keep, True
                changed = True
        if not changed:
            return self.chunk
        device = self.chunk.ids.device
        lengths = torch.tensor(self._lengths, dtype=torch.long, device=device)
        mask = torch.arange(self.chunk.ids.shape[1], device=device)[None, :] < lengths[:, None]
        self.chunk = Chunk(
            ids=self.chunk.ids.masked_fill(~mask, pad_id),
            mask=mask,
            lengths=lengths,
            ended=self.chunk.ended,
        )
        return self.chunk

    @property
    def ids(self) -> list[list[int]]:
        """Each candidate's new token ids."""
        self._read()
        return self._ids

    @property
    def ended(self) -> list[bool]:
        """Whether each candidate emitted end-of-sequence."""
        self._read()
        return self._ended

    @property
    def lengths(self) -> list[int]:
        """Each candidate's number of new tokens."""
        self._read()
        return self._lengths


def _stop_prefix(tokenizer, before: list[int], new: list[int], stop_strings: Sequence[str]) -> int | None:
    """How many of ``new`` to keep when ``before + new`` spells a stop string that ``before``
    does not: the tokens before the one holding the stop string's first character (None: no stop)."""
    text = tokenizer.decode(before + new, skip_special_tokens=True)
    start = len(tokenizer.decode(before, skip_special_tokens=True))
    found = [text.find(stop, max(0, start - len(stop) + 1)) for stop in stop_strings]
    found = [at for at in found if at >= 0]
    if not found:
        return None
    cut, keep = min(found), 0
    for n in range(1, len(new) + 1):
        if len(tokenizer.decode(before + new[:n], skip_special_tokens=True)) > cut:
            break
        keep = n
    return keep


def _fetch(*tensors: torch.Tensor) -> list[torch.Tensor]:
    """Copy tensors to the host with one synchronization (packed as float64; ids < 2**53 are exact)."""
    flat = [t.reshape(-1).to(torch.float64) for t in tensors]
    host = torch.cat(flat).cpu() if flat else torch.empty(0, dtype=torch.float64)
    out, start = [], 0
    for t, f in zip(tensors, flat):
        piece = host[start : start + f.numel()].reshape(t.shape)
        out.append(piece if t.is_floating_point() else piece.to(torch.long))
        start += f.numel()
    return out


class _Progress:
    """A tqdm bar: prompts done, live beams, the share of prompts pruned early, teacher tokens/s."""

    def __init__(self, total: int, *, enabled: bool):
        self.bar = tqdm(total=total, unit="prompt", desc="search", disable=not enabled, dynamic_ncols=True)
        self.start = time.perf_counter()
        self.tokens = 0
        self.done = 0
        self.pruned = 0
        self.cache_bytes = 0

    def teacher_tokens(self, count: int) -> None:
        self.tokens += count

    def _postfix(self, live: int, pruned: int, done: int) -> dict:
        rate = self.tokens / max(time.perf_counter() - self.start, 1e-9)
        share = pruned / done if done else 0.0
        return {
            "live": live,
            "pruned": f"{share:.0%}",
            "teacher tok/s": f"{rate:,.0f}",
            "kv": f"{self.cache_bytes / 2**30:.2f} GiB",
        }

    def round(self, *, live: int, states: list[_PromptState], cache_bytes: int) -> None:
        self.cache_bytes = cache_bytes
        batch_pruned = sum(s.pruned for s in states)
        self.bar.set_postfix(
            self._postfix(live, self.pruned + batch_pruned, self.done + len(states)), refresh=False
        )
        self.bar.refresh()

    def prompts_done(self, count: int, states: list[_PromptState]) -> None:
        self.done += count
        self.pruned += sum(s.pruned for s in states)
        self.bar.set_postfix(self._postfix(0, self.pruned, self.done), refresh=False)
        self.bar.update(count)

    def close(self) -> None:
        self.bar.close()


__all__ = ["ChunkRecord", "SearchResult", "Searcher", "Trajectory", "default_scorer"]
