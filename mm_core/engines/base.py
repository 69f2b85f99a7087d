"""The matching interface shared by every engine.

An engine takes a *normalised* image and optional exemplar boxes and returns
:class:`MatchMaps`. Task heads read only this structure, so they never know which
engine produced it.

Conventions
-----------
- ``image``: float32, shape ``(H, W)`` (one channel) or ``(H, W, 3)`` (RGB), already
  passed through :func:`mm_core.transforms.normalize` (1st/99.8th percentile -> 0/1,
  not clipped).
- ``boxes``: ``None`` (automatic mode) or float array ``(N, 4)`` of
  ``x0, y0, x1, y1`` in input-image pixels, ``x1``/``y1`` exclusive, already clipped
  and validated by :func:`mm_core.transforms.prepare_boxes`.
- Maps may be at any resolution (the LDM engine works at 64x64); heads bring them to
  the input size with :meth:`MatchMaps.at_input`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np


@dataclass
class MatchMaps:
    """What an engine found in one image.

    Attributes
    ----------
    foreground : ndarray, (h, w) float32 in [0, 1]
        Probability that a pixel belongs to a target (matching) object.
    centers : ndarray, (h, w) float32 in [0, 1]
        Evidence that a pixel is the centre of a target object.
    scale : float
        Typical object diameter, in pixels of the *input* image.
    image_shape : tuple of int
        ``(H, W)`` of the input image.
    engine : str
        ``"classic"`` or ``"ldm"``.
    mode : str
        ``"automatic"`` or ``"exemplar"``.
    conditioning : str
        Human-readable description of what the match was conditioned on.
    features : ndarray or None, (C, h', w') float32
        Per-pixel descriptors (filter bank or UNet features) for tracking
        similarity and learned heads.
    display : dict of str to ndarray
        Extra (h, w) maps worth showing to a user (attention, self-cross ...).
    info : dict
        Anything else the engine wants to report (polarity, timings ...).
    """

    foreground: np.ndarray
    centers: np.ndarray
    scale: float
    image_shape: tuple[int, int]
    engine: str
    mode: str
    conditioning: str
    features: np.ndarray | None = None
    display: dict[str, np.ndarray] = field(default_factory=dict)
    info: dict = field(default_factory=dict)

    def at_input(self, name: str = "foreground") -> np.ndarray:
        """Return map ``name`` (an attribute or a ``display`` key) at input size."""
        from mm_core.transforms import resize_map

        arr = getattr(self, name, None) if name in ("foreground", "centers") else self.display[name]
        return resize_map(arr, self.image_shape)


@runtime_checkable
class Engine(Protocol):
    """Anything with a ``name`` and a ``match`` method is an engine.

    An engine whose automatic mode can be told the object size sets ``takes_diameter = True``
    and accepts ``match(image, None, diameter=d)`` (used when tracking drifts off scale).
    """

    name: str

    def match(self, image: np.ndarray, boxes: np.ndarray | None = None) -> MatchMaps:
        """Match ``boxes`` (or repeated structures when ``None``) in ``image``."""
        ...
