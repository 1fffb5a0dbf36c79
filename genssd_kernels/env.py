"""``python -m genssd_kernels.env``: versions, the extension's build info and backend availability."""

from __future__ import annotations

import platform

import torch

from genssd_kernels._ext import load_extension
from genssd_kernels.dispatch import available_backends


def _version(module_name: str) -> str:
    try:
        module = __import__(module_name)
    except ImportError:
        return "not installed"
    return getattr(module, "__version__", "unknown")


def report() -> str:
    """A short multi-line text describing this machine's genssd kernel set-up."""
    lines = [
        f"python        {platform.python_version()}",
        f"torch         {torch.__version__} (cuda {torch.version.cuda or 'none'})",
        f"triton        {_version('triton')}",
        f"transformers  {_version('transformers')}",
    ]
    if torch.cuda.is_available():
        lines.append(f"gpu           {torch.cuda.get_device_name()}")
    extension, error = load_extension()
    lines.append(f"extension     {extension.build_info() if extension is not None else error}")
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        for op in ("logprob_gather", "branch_prune"):
            for name, reason in available_backends(device, op).items():
                status = "available" if reason is None else "unavailable: " + reason
                lines.append(f"{device:5s} {op:15s} {name:10s} {status}")
    return "\n".join(lines)


if __name__ == "__main__":
    print(report())
