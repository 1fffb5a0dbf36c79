"""Rows of token sequences run through a model with a KV cache: the two engines' common surface.

Both the teacher and the student keep one cache row per live beam or candidate and need the same
four things from it: encode prompts (``prefill``), run new tokens after each row (``extend``),
fork/select rows (``reindex``) and forget each row's last tokens (``drop_last``, the student's
re-tokenizing path). ``StaticRunner`` does them with the compact forward over a
``StaticKVCache``; ``HFRunner`` with the model's own forward over a ``BatchedCache`` (any
causal LM). Both return final hidden states.
"""

from __future__ import annotations

import torch
from torch.nn.utils.rnn import pad_sequence

from genssd.cache import BatchedCache
from genssd.engine.compact import CompactDecoder
from genssd.engine.static_cache import StaticKVCache

# Attention spans are rounded up to this many columns, so that a search sees few distinct
# attention shapes (one CUDA graph each on the teacher's side). The masked columns read cost 64
# on average: at 256 rows of a 7B's 28 layers x 4 KV heads of 128 (bf16), 0.94 GB, ~0.2 ms of a
# ~10 ms step at 4.8 TB/s; a 512-token search then captures ~5 spans per row bucket.
SPAN_STEP = 128


def _padded(sequences: list[list[int]], pad_id: int, side: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``[B, T]`` int64 ids padded on ``side`` and ``[B]`` int64 lengths (on the CPU)."""
    rows = [torch.tensor(s, dtype=torch.long) for s in sequences]
    ids = pad_sequence(rows, batch_first=True, padding_value=pad_id, padding_side=side)
    return ids, torch.tensor([len(s) for s in sequences], dtype=torch.long)


def left_pad(
    sequences: list[list[int]], pad_id: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """``[B, T]`` int64 ids and ``[B, T]`` bool validity of left-padded sequences."""
    ids, lengths = _padded(sequences, pad_id, "left")
    valid = torch.arange(ids.shape[1]) >= ids.shape[1] - lengths[:, None]
    return ids.to(device), valid.to(device)


def right_pad(
    sequences: list[list[int]], pad_id: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """``[B, T]`` int64 ids and ``[B]`` int64 lengths of right-padded sequences."""
    ids, lengths = _padded(sequences, pad_id, "right")
    return ids.to(device), lengths.to(device)


class _Runner:
    """What both engines share: the cache they run over (None before the first ``prefill``)."""

    cache = None

    @property
    def nbytes(self) -> int:
        """Bytes the cache's buffers take (0 without one)."""
        return 0 if self.cache is None else self.cache.nbytes


class HFRunner(_Runner):
    """Today's engine: the Hugging Face forward of ``module`` over a ``DynamicCache`` with holes.

    Args:
        module: the base decoder (returns ``last_hidden_state``).
        device: where its inputs go.
    """

    def __init__(self, module: torch.nn.Module, device: torch.device):
        self.module = module
        self.device = device
        self.cache: BatchedCache | None = None

    def prefill(
        self, prompts: list[list[int]], pad_id: int, *, rows: int = 0, columns: int = 0
    ) -> torch.Tensor:
        """Encode prompts (one row each); ``[B, d]`` hidden state of each prompt's last token."""
        ids, valid = left_pad(prompts, pad_id, self.device)
        self.cache = BatchedCache(self.module, len(prompts), self.device)
        return self.cache.extend(ids, valid).last_hidden_state[:, -1]

    def extend(self, ids: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Run ``ids [B, L]`` (``valid [B, L]`` a prefix mask) after rows ``0..B-1``; ``[B, L, d]``."""
        return self.cache.extend(ids, valid).last_hidden_state

    def reindex(self, index: torch.Tensor, *, longest: int | None = None) -> None:
        """Keep rows ``index`` (``longest``, the longest kept row, matters to the static engine only)."""
        self.cache.reindex(index)

    def reindex_bound(self, longest: int) -> None:
        """Nothing to do: a ``DynamicCache`` is as wide as its widest row anyway."""

    def drop_last(self, counts: torch.Tensor) -> None:
        self.cache.drop_last(counts)


class StaticRunner(_Runner):
    """The static engine: ``CompactDecoder`` over a ``StaticKVCache`` (any supported family;
    ``backend`` and ``fuse_qkv`` as ``CompactDecoder``'s).

    Forks and selections are composed on the host side and gathered into the buffers once, at
    the next forward (a round's "select survivors, then fork each K times" is one copy).
    """

    def __init__(self, model, backend: str | None = None, *, fuse_qkv: bool = False):
        self.decoder = CompactDecoder(model, backend, fuse_qkv=fuse_qkv)
        self.device = self.decoder.device
        self.cache: StaticKVCache | None = None
        self._pending: torch.Tensor | None = None

    def prefill(
        self, prompts: list[list[int]], pad_id: int, *, rows: int = 0, columns: int = 0
    ) -> torch.Tensor:
        """Encode prompts (one row each, no padding in the cache); ``[B, d]`` last hidden states.

        ``rows``/``columns`` size the cache for the whole search up front (it still grows by
        doubling if a run needs more).
        """
        ids, lengths = right_pad(prompts, pad_id, self.device)
        batch, width = ids.shape
        rows, columns = self.prefill_shape(prompts, rows, columns)
        if self.fits(rows, columns):
            # A new batch reuses the buffers (rows start empty): graphs captured on them stay
            # valid, and a search of many batches captures its decode steps once.
            self.cache.length.zero_()
        else:
            self.cache = None  # the previous batch's buffers go before the new ones are allocated
            self.cache = self.decoder.new_cache(rows, columns)
        self._pending = None
        hidden = self.decoder.forward(ids, self.cache, span=width)
        self.cache.length[:batch] = lengths
        self.cache.columns_bound = width
        return hidden[torch.arange(batch, device=self.device), lengths - 1]

    @staticmethod
    def prefill_shape(prompts: list[list[int]], rows: int, columns: int) -> tuple[int, int]:
        """The rows and columns ``prefill`` needs for ``prompts`` with the asked-for room."""
        return max(len(prompts), rows), max(max(map(len, prompts)), columns)

    def fits(self, rows: int, columns: int) -> bool:
        """Whether the current cache holds ``rows`` rows of ``columns`` columns."""
        return self.cache is not None and self.cache.rows >= rows and self.cache.capacity >= columns

    def apply_pending(self) -> None:
        """Gather the rows that ``reindex`` calls asked for since the last forward."""
        if self._pending is not None:
            self.cache.reindex(self._pending)
            self._pending = None

    def make_room(self, rows: int, length: int) -> int:
        """Room for ``length`` more tokens in each of ``rows`` rows; the attention span to read
        (the columns needed, rounded up to ``SPAN_STEP``, within the capacity)."""
        needed = self.cache.columns_bound + length
        self.cache.reserve(rows, needed)
        return min(-(-needed // SPAN_STEP) * SPAN_STEP, self.cache.capacity)

    def extend(self, ids: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Run ``ids [B, L]`` (``valid [B, L]`` a prefix mask) after rows ``0..B-1``; ``[B, L, d]``."""
        self.apply_pending()
        batch, length = ids.shape
        hidden = self.decoder.forward(ids, self.cache, span=self.make_room(batch, length))
        self.cache.length[:batch] += valid.sum(1)
        self.cache.columns_bound += length
        return hidden

    def reindex(self, index: torch.Tensor, *, longest: int | None = None) -> None:
        """Keep rows ``index`` (gathered at the next forward); ``longest``, when the caller knows
        it, is the kept rows' longest length (see ``reindex_bound``)."""
        self._pending = index if self._pending is None else self._pending[index]
        if longest is not None:
            self.reindex_bound(longest)

    def reindex_bound(self, longest: int) -> None:
        """Tighten the cache's column bound to ``longest``, the longest live row. Without it the
        bound grows each round by the round's longest chunk, which with ragged chunks (a step
        delimiter) ran to 277 columns for rows of at most 170 and doubled the cache."""
        if self.cache is not None:
            self.cache.columns_bound = min(self.cache.columns_bound, longest)

    def drop_last(self, counts: torch.Tensor) -> None:
        self.apply_pending()
        self.cache.truncate(counts.shape[0], counts)
