"""genssd: student-aware chain-of-thought distillation (Gen-SSD)."""

from genssd.config import EvalConfig, SearchConfig, TrainConfig

__all__ = ["EvalConfig", "SearchConfig", "TrainConfig"]
__version__ = "0.1.0"
