"""A preallocated KV cache whose rows carry their own lengths.

Per layer one key and one value buffer ``[rows, kv_heads, capacity, head_dim]``. Row ``r`` holds
its tokens in columns ``0 .. length[r]-1`` in order (column = position: no left padding, no
holes), so a new token of row ``r`` is written at column ``length[r]`` and attends to the
columns up to it. Nothing is concatenated per step: the buffers keep their addresses, which is
what lets a CUDA graph replay the decode step.

Forking and selecting rows is one gather into the buffers per round (``reindex``); dropping the
last tokens of a row is a change of its length (``truncate``). When a run needs more rows or
columns than the buffers hold, they grow by doubling (``reserve``), never truncating silently.
"""

from __future__ import annotations

import itertools

import torch

# Every allocation of buffers gets a new number: a CUDA graph captured on buffers is valid only
# while they live, also across caches (a new search batch allocates anew).
_ALLOCATIONS = itertools.count()


class StaticKVCache:
    """Per-layer K/V buffers with per-row lengths (see the module docstring).

    Attributes:
        keys, values: per layer ``[rows, kv_heads, capacity, head_dim]`` in the model's dtype.
        length: ``[rows]`` int64, the number of tokens of each row (its next position).
        columns_bound: a host-side upper bound on ``length.max()`` (how many columns a gather
            must copy and attention must read), kept without reading the device.
    """

    def __init__(
        self,
        *,
        layers: int,
        kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device,
        rows: int = 1,
        capacity: int = 64,
    ):
        self.shape = (kv_heads, head_dim)
        self.layers = layers
        self.dtype = dtype
        self.device = torch.device(device)
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.length = torch.zeros(0, dtype=torch.long, device=self.device)
        self.columns_bound = 0
        self._allocate(rows, capacity)

    @staticmethod
    def bytes_for(
        *, layers: int, kv_heads: int, head_dim: int, dtype: torch.dtype, rows: int, capacity: int
    ) -> int:
        """Bytes of the K and V buffers of a cache of this size."""
        element = torch.empty(0, dtype=dtype).element_size()
        return 2 * layers * rows * kv_heads * capacity * head_dim * element

    @property
    def rows(self) -> int:
        return self.length.shape[0]

    @property
    def capacity(self) -> int:
        return self.keys[0].shape[2]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.keys + self.values)

    def _allocate(self, rows: int, capacity: int) -> None:
        old_keys, old_values, old_length = self.keys, self.values, self.length
        shape = (rows, self.shape[0], capacity, self.shape[1])
        # Zeros, not empty: attention reads masked columns too, and garbage bits can be NaN,
        # which a masked score (NaN - inf) or a zero weight (0 * NaN) would carry into the output.
        self.keys = [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in range(self.layers)]
        self.values = [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in range(self.layers)]
        self.length = torch.zeros(rows, dtype=torch.long, device=self.device)
        if old_keys:
            keep_rows = min(rows, old_length.shape[0])
            keep_cols = min(capacity, old_keys[0].shape[2], self.columns_bound)
            for new, old in zip(self.keys + self.values, old_keys + old_values):
                new[:keep_rows, :, :keep_cols] = old[:keep_rows, :, :keep_cols]
            self.length[:keep_rows] = old_length[:keep_rows]
        self.generation = next(_ALLOCATIONS)  # graphs captured on older buffers are stale

    def reserve(self, rows: int, columns: int) -> None:
        """Make room for ``rows`` rows of ``columns`` columns each (doubling what falls short)."""
        new_rows, new_capacity = self.rows, self.capacity
        while new_rows < rows:
            new_rows *= 2
        while new_capacity < columns:
            new_capacity *= 2
        if (new_rows, new_capacity) != (self.rows, self.capacity):
            self._allocate(new_rows, new_capacity)

    def reindex(self, index: torch.Tensor) -> None:
        """Rows ``0 .. n-1`` become the current rows ``index`` (``[n]`` int64; repeats fork a row).

        Rows past ``n`` keep whatever they held, with length 0.
        """
        count = index.shape[0]
        self.reserve(count, self.columns_bound)
        columns = self.columns_bound
        for buffer in self.keys + self.values:
            buffer[:count, :, :columns] = buffer[index, :, :columns]
        lengths = self.length[index]
        self.length.zero_()
        self.length[:count] = lengths

    def truncate(self, rows: int, drop: torch.Tensor) -> None:
        """Forget the last ``drop[r]`` tokens of each of the first ``rows`` rows (``[rows]`` int64)."""
        self.length[:rows] -= drop
