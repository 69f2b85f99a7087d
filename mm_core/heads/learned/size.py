"""A learned object-size model: the typical object diameter of an image, read from its scale profile.

Cellpose estimates the object size with a regression trained on its corpus; this is the
same idea for any microscopy kind, on classical features only. An image's *scale
profile* (:func:`scale_profile`) is a few statistics of the scale-normalised
Laplacian-of-Gaussian and gradient responses at ``BINS_PER_OCTAVE`` log-spaced scales.
Rescaling the image shifts the profile along the scale axis, so a small 1-D
convolutional network over that axis (:class:`SizeModel`), trained on ``train/``
(``python -m mm_core.train size``), scores each scale as "the objects' diameter" and is
right at any size by construction. It tells texture inside big cells (phase contrast,
EM) from the cells themselves, which the engine's hand-made estimate
(:func:`mm_core.engines.classic.scale.estimate_scale`) cannot.
"""

from __future__ import annotations

import warnings
from itertools import pairwise
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi
from torch import nn

from mm_core.heads.learned.base import LearnedHead
from mm_core.transforms import resize_map

#: Scales per octave of the profile.
BINS_PER_OCTAVE = 4
#: Smallest and largest Gaussian sigma of the profile, in profile-image pixels.
SIGMA_MIN, SIGMA_MAX = 0.5, 48.0
#: Longest side of the image the profile is computed on (larger images are shrunk).
PROFILE_SIDE = 512
#: Diameter of a disk whose scale-normalised LoG peaks at sigma.
DIAMETER_PER_SIGMA = 2.0 * np.sqrt(2.0)
#: Statistics per scale (the channels of the profile).
CHANNELS = ("log+ p50", "log+ p90", "log+ p99", "log- p90", "log- p99", "|log| mean", "grad mean", "grad p90")


def sigmas() -> np.ndarray:
    """The profile's Gaussian sigmas (profile-image pixels), ``BINS_PER_OCTAVE`` per octave."""
    n = round(float(np.log2(SIGMA_MAX / SIGMA_MIN)) * BINS_PER_OCTAVE) + 1
    return SIGMA_MIN * 2.0 ** (np.arange(n) / BINS_PER_OCTAVE)


def profile_image(gray: np.ndarray, max_side: int = PROFILE_SIDE) -> tuple[np.ndarray, float]:
    """``gray`` shrunk (antialiased) so its longest side is at most ``max_side``: ``(image, factor)``."""
    g = np.asarray(gray, np.float32)
    f = min(1.0, max_side / max(g.shape))
    if f < 1.0:
        shape = (max(8, round(g.shape[0] * f)), max(8, round(g.shape[1] * f)))
        g = resize_map(ndi.gaussian_filter(g, 0.5 / f), shape)
    return g, f


def scale_profile(img: np.ndarray) -> np.ndarray:
    """``(len(CHANNELS), len(sigmas()))`` float32 scale profile of a 2-D image.

    The image is standardised (zero mean, unit deviation), so the profile does not
    depend on contrast. Large sigmas are evaluated on a 2x-per-octave pyramid (the
    scale-normalised responses do not change with it) and percentiles on at most
    ~256^2 pixels, so the cost stays close to a few filterings of the image.
    """
    x = np.asarray(img, np.float32)
    x = (x - x.mean()) / max(float(x.std()), 1e-6)
    levels = [x]
    cols = []
    for s in sigmas():
        k = max(0, int(np.floor(np.log2(s))))
        while len(levels) <= k:
            levels.append(ndi.gaussian_filter(levels[-1], 0.8)[::2, ::2])
        im, sk = levels[k], s / 2 ** k
        if min(im.shape) < 4:
            cols.append(np.zeros(len(CHANNELS)))
            continue
        lap = -(sk ** 2) * ndi.gaussian_laplace(im, sk)
        grad = sk * ndi.gaussian_gradient_magnitude(im, sk)
        step = max(1, min(im.shape) // 256)  # percentiles of at most ~256^2 pixels
        p = np.percentile(lap[::step, ::step], [1, 10, 50, 90, 99])
        g = np.percentile(grad[::step, ::step], 90)
        cols.append([p[2], p[3], p[4], -p[1], -p[0], np.abs(lap).mean(), grad.mean(), g])
    return np.asarray(cols, np.float32).T


def diameter_to_bin(diameter: float) -> float:
    """Fractional profile bin of an object diameter (profile-image pixels)."""
    return float(np.log2(diameter / DIAMETER_PER_SIGMA / SIGMA_MIN) * BINS_PER_OCTAVE)


def bin_to_diameter(b: float) -> float:
    """Inverse of :func:`diameter_to_bin`."""
    return float(DIAMETER_PER_SIGMA * SIGMA_MIN * 2.0 ** (b / BINS_PER_OCTAVE))


class SizeModel(LearnedHead):
    """1-D CNN over the scale axis of :func:`scale_profile`: one logit per scale.

    The diameter is read at the best-scoring scale, refined by the score-weighted mean
    of its neighbours (``peak_halfwidth`` bins either side). ``config``: ``width``,
    ``kernel``, ``layers``.
    """

    head_type = "size"
    defaults: ClassVar[dict] = {"width": 32, "kernel": 5, "layers": 3, "peak_halfwidth": 2}

    def __init__(self, engine: str = "classic", n_features: int = 0, **config):
        super().__init__(engine, 0, **config)
        c = self.config
        w, k, n = int(c["width"]), int(c["kernel"]), int(c["layers"])
        chans = [len(CHANNELS)] + [w] * (n - 1)
        self.convs = nn.ModuleList([nn.Conv1d(a, b, k, padding=k // 2) for a, b in pairwise(chans)])
        self.out = nn.Conv1d(chans[-1], 1, k, padding=k // 2)

    @staticmethod
    def features(profile: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Network input from ``(C, K)`` or ``(B, C, K)`` profiles (a signed log compresses the range)."""
        t = torch.as_tensor(profile, dtype=torch.float32)
        return torch.asinh(10.0 * t)

    def forward(self, profile: torch.Tensor, feats: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, C, K)`` profiles -> ``(B, K)`` logits."""
        x = self.features(profile)
        for conv in self.convs:
            x = F.gelu(conv(x))
        return self.out(x)[:, 0]

    @staticmethod
    def loss(logits: torch.Tensor, target_bin: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        """Cross-entropy against a Gaussian (1 bin wide) around each image's true diameter bin."""
        k = torch.arange(logits.shape[1], dtype=torch.float32)
        soft = torch.exp(-0.5 * (k[None] - target_bin[:, None]) ** 2)
        soft = soft / soft.sum(1, keepdim=True).clamp(min=1e-8)
        ce = -(soft * F.log_softmax(logits, 1)).sum(1)
        w = torch.ones_like(ce) if weight is None else weight
        return (ce * w).sum() / w.sum().clamp(min=1e-8)

    def read_bin(self, logits: np.ndarray) -> float:
        """Fractional bin of the diameter from one image's logits."""
        p = np.exp(logits - logits.max())
        k = int(np.argmax(p))
        h = int(self.config["peak_halfwidth"])
        lo, hi = max(0, k - h), min(len(p), k + h + 1)
        return float(np.sum(np.arange(lo, hi) * p[lo:hi]) / np.sum(p[lo:hi]))

    @torch.no_grad()
    def estimate(self, gray: np.ndarray) -> float:
        """Typical object diameter of a 2-D grey image, in its own pixels."""
        img, f = profile_image(gray)
        self.eval()
        logits = self(torch.as_tensor(scale_profile(img))[None])[0].numpy()
        return bin_to_diameter(self.read_bin(logits)) / f

    def describe(self) -> str:
        name = self.config["info"].get("name") or self.head_type
        return f"learned object-size model '{name}' (scale profile, 1-D CNN)"


def load_size_model(name: str) -> SizeModel | None:
    """The size model ``name`` (folder or shipped name); ``None`` for ``""``.

    A missing or unreadable checkpoint, or one that is not a size model, warns and
    gives ``None`` (the caller falls back to the engine's scale).
    """
    if not name:
        return None
    from mm_core.errors import MMError
    from mm_core.heads.learned.base import load_head

    why = None
    try:
        model = load_head(name)
        if model.head_type != "size":
            why = f"{name} is a {model.head_type} head, not an object-size model"
    except MMError as exc:
        why = f"object-size model unavailable ({exc})"
    if why:
        warnings.warn(f"{why}; the size search starts at the engine's scale", stacklevel=3)
        return None
    return model
