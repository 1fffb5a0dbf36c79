"""Scorers: what the search ranks candidates by.

A scorer is anything with ``score(batch: CandidateBatch) -> Tensor[C]`` (float, on the batch's
device, higher is better). The engine always tracks the student's likelihood (it is recorded with
every trajectory), so the default ``StudentLikelihoodScorer`` only picks the configured scope
out of the batch; ``RandomScorer`` is the ablation; a process reward model can be plugged in by
reading ``batch.prompt_texts()`` and ``batch.completion_texts()``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch

from genssd.sampling import combine, mix, uniform


@dataclass
class CandidateBatch:
    """One round's candidates. ``C`` = sum over the live prompts of (live beams x num_candidates).

    Candidates of one prompt are contiguous: prompt group ``g`` is
    ``group_offsets[g]:group_offsets[g+1]``.

    Attributes:
        round: the round number (0 for the first chunk).
        group_offsets: ``[G+1]`` int64 on the device.
        parent: ``[C]`` int64, the live beam each candidate continues.
        keys: ``[C]`` int64 random keys (deterministic per prompt, round, beam and candidate).
        chunk_ids: ``[C, L]`` int64 teacher token ids of the new chunk (pad where not ``chunk_mask``).
        chunk_mask: ``[C, L]`` bool.
        student_trajectory_scores: ``[C]`` fp32 student mean log-prob of the completion so far.
        student_chunk_scores: ``[C]`` fp32 student mean log-prob of the new tokens.
    """

    round: int
    group_offsets: torch.Tensor
    parent: torch.Tensor
    keys: torch.Tensor
    chunk_ids: torch.Tensor
    chunk_mask: torch.Tensor
    student_trajectory_scores: torch.Tensor
    student_chunk_scores: torch.Tensor
    decode: Callable[[], tuple[list[str], list[str]]] = field(repr=False)
    _texts: tuple[list[str], list[str]] | None = field(default=None, repr=False)

    def _decoded(self) -> tuple[list[str], list[str]]:
        if self._texts is None:
            self._texts = self.decode()
        return self._texts

    def prompt_texts(self) -> list[str]:
        """``C`` prompts, one per candidate (decoding costs a host synchronization)."""
        return self._decoded()[0]

    def completion_texts(self) -> list[str]:
        """``C`` completions so far, each ending with the candidate's new chunk."""
        return self._decoded()[1]


@runtime_checkable
class Scorer(Protocol):
    def score(self, batch: CandidateBatch) -> torch.Tensor:
        """``[C]`` float scores on the batch's device, higher is better."""


class StudentLikelihoodScorer:
    """The student's mean next-token log-prob (Gen-SSD's default).

    Args:
        scope: ``"trajectory"`` (everything generated so far, including the candidate) or
            ``"chunk"`` (the candidate's new tokens only).
    """

    def __init__(self, scope: str = "trajectory"):
        if scope not in ("trajectory", "chunk"):
            raise ValueError(f"scope must be 'trajectory' or 'chunk', got {scope!r}")
        self.scope = scope

    def score(self, batch: CandidateBatch) -> torch.Tensor:
        if self.scope == "trajectory":
            return batch.student_trajectory_scores
        return batch.student_chunk_scores

    def __repr__(self) -> str:
        return f"StudentLikelihoodScorer(scope={self.scope!r})"


class RandomScorer:
    """Uniform random scores in (0, 1): the random-selection ablation.

    Seeded, and keyed by each candidate's key, so a prompt's scores do not depend on its batch.
    """

    def __init__(self, seed: int = 0):
        self.seed = seed
        self._salt = combine(seed, 0x5C0E)

    def score(self, batch: CandidateBatch) -> torch.Tensor:
        return uniform(mix(batch.keys ^ self._salt))

    def __repr__(self) -> str:
        return f"RandomScorer(seed={self.seed})"


__all__ = ["CandidateBatch", "RandomScorer", "Scorer", "StudentLikelihoodScorer"]
