"""Training of the learned heads on frozen match maps (``python -m mm_core.train``)."""

from mm_core.train.cache import EngineCache
from mm_core.train.loop import FitConfig, fit

__all__ = ["EngineCache", "FitConfig", "fit"]
