"""Loads the compiled extension ``genssd_kernels._C`` once and remembers why it failed.

Importing ``_C`` registers the ``torch.ops.genssd.*`` operators (CPU, and CUDA where built).
"""

from __future__ import annotations

import functools


@functools.cache
def load_extension():
    """Return ``(module, None)`` when ``genssd_kernels._C`` imports, else ``(None, reason)``."""
    try:
        import torch  # noqa: F401 - torch must be loaded before the extension's symbols resolve

        from genssd_kernels import _C
    except ImportError as exc:
        return (
            None,
            f"genssd_kernels._C did not load ({exc}); reinstall with `pip install --no-build-isolation .`",
        )
    return _C, None


def cuda_ops_built() -> bool:
    """True when the extension was compiled with its CUDA kernels."""
    module, _ = load_extension()
    return bool(module is not None and module.build_info().get("cuda", False))
