"""Pure-PyTorch specifications of every op: the ground truth the fused backends are tested against."""

from genssd_kernels.reference.branch_prune import branch_prune
from genssd_kernels.reference.cache_attention import cache_attention
from genssd_kernels.reference.logprob_gather import logprob_gather, segment_mean

__all__ = ["branch_prune", "cache_attention", "logprob_gather", "segment_mean"]
