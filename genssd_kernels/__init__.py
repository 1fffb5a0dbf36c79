"""genssd_kernels: fused student log-prob gathering and grouped branch pruning.

Backends: ``reference`` (PyTorch), ``cpp`` (the compiled extension; CPU, and CUDA where built)
and ``triton`` (CUDA, or the CPU interpreter under ``TRITON_INTERPRET=1``).
"""

from genssd_kernels.dispatch import available_backends
from genssd_kernels.ops import branch_prune, linear_cross_entropy, logprob_gather

__all__ = ["available_backends", "branch_prune", "linear_cross_entropy", "logprob_gather"]
__version__ = "0.1.0"
