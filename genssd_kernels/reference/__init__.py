"""Pure-PyTorch specifications of every op: the ground truth the fused backends are tested against."""

from genssd_kernels.reference.branch_prune import branch_prune
from genssd_kernels.reference.cache_attention import cache_attention
from genssd_kernels.reference.cross_entropy_rows import cross_entropy_rows_
from genssd_kernels.reference.logprob_gather import logprob_gather, segment_mean

__all__ = ["branch_prune", "cache_attention", "cross_entropy_rows_", "logprob_gather", "segment_mean"]
