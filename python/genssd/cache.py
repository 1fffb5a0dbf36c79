"""A batch of token sequences that share one KV cache, with per-row holes.

All rows of a ``DynamicCache`` have the same number of columns. ``mask [B, T]`` marks which
columns hold a real token of each row; every other column is a *hole*: left padding of a short
prompt, the padding of a row that stopped early inside a chunk, or tokens that were rolled back.
Positions count real tokens only, so a row is computed exactly as its real tokens would be
without the holes (attention gives masked columns zero weight).

Forking and selecting rows are both a gather along the batch; the gather is deferred to the next
forward so that "select the survivors" followed by "fork each survivor K times" copies the cache
once per round, not twice.
"""

from __future__ import annotations

import torch

from genssd.models import cache_argument, new_cache


class BatchedCache:
    """Rows of sequences in one ``DynamicCache`` (see the module docstring).

    Attributes:
        mask: ``[B, T]`` int64, 1 where column ``t`` holds a real token of row ``b``.
        length: ``[B]`` int64, the number of real tokens of each row (the next position id).
    """

    def __init__(self, module: torch.nn.Module, rows: int, device: torch.device):
        self.module = module
        self.cache = new_cache(module)
        self._cache_kw = cache_argument(module)
        self.mask = torch.zeros(rows, 0, dtype=torch.long, device=device)
        self.length = torch.zeros(rows, dtype=torch.long, device=device)
        self._pending: torch.Tensor | None = None  # a gather not yet applied to the cache tensors

    @property
    def rows(self) -> int:
        return self.mask.shape[0]

    def reindex(self, index: torch.Tensor) -> None:
        """Keep rows ``index`` (``[B']`` int64 on the cache device; repeats fork a row)."""
        self.mask = self.mask[index]
        self.length = self.length[index]
        self._pending = index if self._pending is None else self._pending[index]

    @property
    def nbytes(self) -> int:
        """Bytes held by the cached keys and values."""
        total = 0
        for layer in getattr(self.cache, "layers", []):
            for tensor in (getattr(layer, "keys", None), getattr(layer, "values", None)):
                if isinstance(tensor, torch.Tensor):
                    total += tensor.numel() * tensor.element_size()
        return total

    def drop_last(self, counts: torch.Tensor) -> None:
        """Turn the last ``counts[b]`` real tokens of each row ``b`` into holes (``[B]`` int64)."""
        from_right = self.mask.flip(1).cumsum(1).flip(1)  # real tokens at or after each column
        drop = (self.mask == 1) & (from_right <= counts[:, None])
        self.mask = self.mask.masked_fill(drop, 0)
        self.length = self.length - counts

    def extend(self, ids: torch.Tensor, valid: torch.Tensor, **forward_kwargs):
        """Run the module on new columns and append them to the cache.

        Args:
            ids: ``[B, L]`` int64 token ids (anything where ``valid`` is False).
            valid: ``[B, L]`` bool, False for padding (those columns become holes).
            forward_kwargs: passed to the module (e.g. ``logits_to_keep=1``).
        Returns:
            the module's output for the ``L`` new positions.
        """
        if self._pending is not None:
            self.cache.batch_select_indices(self._pending)
            self._pending = None
        valid = valid.to(torch.long)
        positions = (self.length[:, None] + valid.cumsum(1) - 1).clamp_min(0)
        mask = torch.cat([self.mask, valid], dim=1)
        out = self.module(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            **{self._cache_kw: self.cache},
            **forward_kwargs,
        )
        self.mask = mask
        self.length = self.length + valid.sum(1)
        return out
