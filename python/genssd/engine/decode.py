"""The teacher's chunk sampling on the static engine: one decode step, replayed without the host.

A decode step samples each row's next token from its kept logits (keyed, so draws depend only on
(seed, uid, round, beam, candidate, step)), records it, updates the row's stop flags (EOS, the
step delimiter, its token budget) and runs the token through the compact forward, all on the
device with fixed shapes. On CUDA the step is captured once per (row bucket, attention span)
as a CUDA graph and replayed ``chunk_tokens`` times; the host enqueues the replays and never
waits inside a chunk. It only polls, without blocking, whether every row has stopped (an event
query on a flag copied to pinned memory) to skip the rest of a chunk whose rows all ended early.
On CPU the same step runs eagerly.

Row buckets (like vLLM's capture sizes): a batch of ``C`` candidates runs as the smallest bucket
``>= C``; the padding rows start stopped. Attention spans are rounded up to ``SPAN_STEP``
columns, so a 512-token search captures a handful of graphs per bucket, each reused for every
chunk whose rows fit.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from genssd.engine.runners import StaticRunner
from genssd.teacher import Chunk, ChunkSampler

# Steps replayed between two non-blocking "all rows stopped?" polls.
POLL_EVERY = 4


def row_bucket(rows: int) -> int:
    """The captured batch size for ``rows`` candidates: powers of two to 32, then steps of 32."""
    if rows <= 32:
        return 1 << max(rows - 1, 0).bit_length()
    return -(-rows // 32) * 32


@dataclass
class _StepState:
    """The decode step's inputs and outputs, in buffers whose addresses a graph keeps.

    Attributes:
        logits: ``[R, V]`` next-token logits of each row: fp32 with the token rules applied, or
            the model's raw logits (its dtype) when the draw is the fused kernel, which applies
            the rules as it reads them.
        keys: ``[R]`` int64 random keys; budget ``[R]`` int64 tokens allowed this chunk;
            final ``[R]`` bool, reaching the budget ends the trajectory.
        done, ended: ``[R]`` bool, the row stopped / emitted EOS this chunk.
        ids, mask: ``[R, W]`` the chunk's tokens and their validity.
        step: ``[1]`` int64, the step about to run.
    """

    logits: torch.Tensor
    keys: torch.Tensor
    budget: torch.Tensor
    final: torch.Tensor
    done: torch.Tensor
    ended: torch.Tensor
    ids: torch.Tensor
    mask: torch.Tensor
    step: torch.Tensor
    graphs: dict = field(default_factory=dict)

    @classmethod
    def allocate(cls, rows: int, width: int, vocab: int, logits_dtype: torch.dtype, device) -> _StepState:
        def zeros(*shape, dtype):
            return torch.zeros(*shape, dtype=dtype, device=device)

        return cls(
            logits=zeros(rows, vocab, dtype=logits_dtype),
            keys=zeros(rows, dtype=torch.long),
            budget=zeros(rows, dtype=torch.long),
            final=zeros(rows, dtype=torch.bool),
            done=zeros(rows, dtype=torch.bool),
            ended=zeros(rows, dtype=torch.bool),
            ids=zeros(rows, width, dtype=torch.long),
            mask=zeros(rows, width, dtype=torch.bool),
            step=zeros(1, dtype=torch.long),
        )

    @property
    def rows(self) -> int:
        return self.keys.shape[0]

    @property
    def width(self) -> int:
        return self.ids.shape[1]

    def mutable(self) -> list[torch.Tensor]:
        return [self.logits, self.done, self.ended, self.ids, self.mask, self.step]


class StaticTeacherSampler(ChunkSampler):
    """``TeacherSampler``'s interface on the static engine (see the module docstring).

    Args:
        model: the teacher, of a family the compact forward supports.
        tokenizer: its tokenizer.
        graphs: capture the step as CUDA graphs (None: on CUDA devices).
        backend: the compact forward's (``CompactDecoder``); None picks triton on CUDA.
        settings: ``ChunkSampler``'s (temperature, top_p, step_delimiter, vocab_limit).
    """

    def __init__(
        self, model, tokenizer, *, graphs: bool | None = None, backend: str | None = None, **settings
    ):
        super().__init__(model, tokenizer, **settings)
        # The teacher is never trained during a search: its q/k/v weights can be read once.
        self.runner = StaticRunner(model, backend, fuse_qkv=True)
        self.decoder = self.runner.decoder
        self.graphs = self.device.type == "cuda" if graphs is None else graphs
        self.vocab = model.get_output_embeddings().weight.shape[0]
        # On the triton backend a draw is one kernel over the raw logits (the hash, the Gumbel
        # noise, the banned ids and the argmax in registers) instead of ~20 passes over [R, V]
        # in int64 and fp32; nucleus sampling (top_p < 1) sorts, and stays on the torch path.
        self.fused_draw = self.decoder.backend == "triton" and self.top_p >= 1.0
        if self.fused_draw:
            from genssd_kernels.triton.keyed_sample import keyed_sample  # triton: optional

            self._keyed_sample = keyed_sample
        self.logits_dtype = self.decoder.dtype if self.fused_draw else torch.float32
        self._states: dict[int, _StepState] = {}
        on_cuda = self.device.type == "cuda"
        self._poll = torch.zeros(1, dtype=torch.bool, pin_memory=True) if on_cuda else None
        # One memory pool for all of this sampler's graphs: they replay one after another on one
        # stream, and a step keeps nothing in the pool between replays (its results go to the
        # state's buffers), so their temporaries can share memory. Per graph at 256 rows and a
        # 152k vocabulary they are ~1.5 GB by count (logits and the int64 sampling hashes).
        self._pool = self._new_pool()

    def _new_pool(self) -> torch.cuda.MemPool | None:
        """The graphs' memory pool, referenced for as long as the sampler uses it. A bare
        ``graph_pool_handle()`` id is not: once every graph captured into it was freed, a capture
        into the same id failed the allocator's ``use_count > 0`` assert while the pool still held
        cached blocks (H200, torch 2.11, the demo's ledger searches)."""
        if not self.graphs:
            return None
        with torch.cuda.device(self.device):  # a pool belongs to the device current at its creation
            return torch.cuda.MemPool()

    @property
    def cache_bytes(self) -> int:
        return self.runner.nbytes

    @torch.no_grad()
    def start(self, prompt_ids: list[list[int]], *, rows: int = 0, columns: int = 0) -> None:
        """Encode the prompts: one live row per prompt; the cache is sized for ``rows`` x ``columns``."""
        rows = row_bucket(max(rows, 1))
        if not self.runner.fits(*self.runner.prefill_shape(prompt_ids, rows, columns)):
            # New buffers: the graphs captured on the old ones are stale, and they hold memory
            # (a new pool: the old one is freed with its last graph).
            for state in self._states.values():
                state.graphs.clear()
            self._pool = self._new_pool()
        hidden = self.runner.prefill(prompt_ids, self.pad_id, rows=rows, columns=columns)
        self.next_logits = self._kept_logits(self.decoder.logits(hidden))

    @torch.no_grad()
    def propose(
        self, parent: torch.Tensor, keys: torch.Tensor, budget: list[int], final: list[bool]
    ) -> Chunk:
        """Sample one chunk for every candidate (arguments and result as ``TeacherSampler.propose``)."""
        count, steps = parent.numel(), max(budget)
        logits = self.next_logits[parent]
        self.runner.reindex(parent)
        self.runner.apply_pending()
        cache = self.runner.cache
        rows = row_bucket(count) if self.graphs else count
        span = self.runner.make_room(rows, steps)
        state = self._state(rows, steps)
        state.logits[:count] = logits
        state.keys[:count] = keys
        state.budget[:count] = torch.tensor(budget, device=self.device)
        state.final[:count] = torch.tensor(final, device=self.device)
        state.done.zero_()
        state.done[count:] = True
        state.ended.zero_()
        state.ids.fill_(self.pad_id)
        state.mask.zero_()
        state.step.zero_()
        graph = self._graph(state, span) if self.graphs else None
        used = self._run_steps(state, steps, span, graph)
        cache.columns_bound += used
        self.next_logits = state.logits[:count].clone()
        mask = state.mask[:count, :used].clone()
        return Chunk(
            ids=state.ids[:count, :used].clone(),
            mask=mask,
            lengths=mask.sum(1),
            ended=state.ended[:count].clone(),
        )

    def select(self, index: torch.Tensor, *, longest: int | None = None) -> None:
        """Keep candidates ``index`` (``[R']`` int64) as the next round's live rows; ``longest``:
        the longest kept row (prompt + completion), when known."""
        self.runner.reindex(index, longest=longest)
        self.next_logits = self.next_logits[index]

    def _state(self, rows: int, steps: int) -> _StepState:
        state = self._states.get(rows)
        if state is None or state.width < steps:
            state = _StepState.allocate(rows, steps, self.vocab, self.logits_dtype, self.device)
            self._states[rows] = state
        return state

    def _run_steps(self, state: _StepState, steps: int, span: int, graph: torch.cuda.CUDAGraph | None) -> int:
        """Run up to ``steps`` decode steps (replays of ``graph`` when given, else eagerly); the
        number of columns the chunk used. On CUDA nothing here waits for the device."""
        step = graph.replay if graph is not None else (lambda: self._step(state, span))
        if self.device.type != "cuda":  # a CPU "sync" is free: stop as soon as every row has
            for t in range(steps):
                step()
                if bool(state.done.all()):
                    return t + 1
            return steps
        polled_at, event = None, None
        for t in range(steps):
            if event is not None and event.query():
                if bool(self._poll.item()):
                    return polled_at
                event = None
            step()
            if event is None and (t + 1) % POLL_EVERY == 0 and t + 1 < steps:
                self._poll.copy_(state.done.all()[None], non_blocking=True)
                event = torch.cuda.Event()
                event.record()
                polled_at = t + 1
        return steps

    def _graph(self, state: _StepState, span: int) -> torch.cuda.CUDAGraph:
        """The captured step for ``state``'s rows and ``span`` columns (captured on first use)."""
        cache = self.runner.cache
        key = (span, cache.generation)
        graph = state.graphs.get(key)
        if graph is not None:
            return graph
        state.graphs = {k: g for k, g in state.graphs.items() if k[1] == cache.generation}  # free stale ones
        saved = [t.clone() for t in state.mutable() + [cache.length]]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # a warm-up run initializes libraries outside the capture
            self._step(state, span)
        torch.cuda.current_stream().wait_stream(side)
        for tensor, value in zip(state.mutable() + [cache.length], saved):
            tensor.copy_(value)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool.id):
            self._step(state, span)
        state.graphs[key] = graph
        return graph

    def _step(self, state: _StepState, span: int) -> None:
        """One decode step over all ``state.rows`` rows, in place (nothing read back)."""
        rows, cache = state.rows, self.runner.cache
        active = ~state.done
        if self.fused_draw:
            drawn = self._keyed_sample(
                state.logits, state.keys, state.step, temperature=self.temperature, banned=self.rules.banned
            )
            token = torch.where(active, drawn, self.pad_id)
        else:
            token = self._draw(state.logits, state.keys, state.step, active)
        column = state.step.expand(rows)[:, None]
        state.ids.scatter_(1, column, token[:, None])
        state.mask.scatter_(1, column, active[:, None])
        is_end, stops, feed = self._stop_tests(token, active, state.budget <= state.step + 1, state.final)
        state.ended.logical_or_(is_end)
        state.done.logical_or_(stops)
        # Every row writes its token's K/V at its length; rows that do not feed keep their
        # length, so the next real token overwrites that column.
        hidden = self.decoder.forward(token[:, None], cache, span)[:, 0]
        cache.length[:rows] += feed
        torch.where(
            feed[:, None], self._kept_logits(self.decoder.logits(hidden)), state.logits, out=state.logits
        )
        state.step += 1

    def _kept_logits(self, raw: torch.Tensor) -> torch.Tensor:
        """What a row keeps of its raw ``[R, V]`` logits for its next draw (``_StepState.logits``)."""
        return raw if self.fused_draw else self.rules.logits(raw)
