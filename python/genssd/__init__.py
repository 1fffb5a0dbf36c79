"""genssd: student-aware chain-of-thought distillation (Gen-SSD)."""

import importlib

from genssd.config import EvalConfig, SearchConfig, TrainConfig

# The search API pulls in transformers; import it on first use so `import genssd` (and every CLI
# command) stays light.
_LAZY = {
    "Searcher": "genssd.search",
    "SearchResult": "genssd.search",
    "StudentLikelihoodScorer": "genssd.scorers",
    "RandomScorer": "genssd.scorers",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'genssd' has no attribute {name!r}")


__all__ = [
    "EvalConfig",
    "RandomScorer",
    "SearchConfig",
    "SearchResult",
    "Searcher",
    "StudentLikelihoodScorer",
    "TrainConfig",
]
__version__ = "0.1.0"
