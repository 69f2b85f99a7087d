"""Weight-free "classic" matching engine: multi-scale filter bank, on-the-fly pixel
classifier (exemplar mode) or unsupervised foreground (automatic mode), centre
evidence from normalised cross-correlation, blob response and distance transform."""

from mm_core.engines.classic.engine import ClassicEngine

__all__ = ["ClassicEngine"]
