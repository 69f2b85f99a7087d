"""Learned counting head: a density regressor on match maps; the count is the density's sum.

Layout as in the paper: the fused maps are brought to 1/8 resolution (three strided
convolutions here, where the LDM engine's maps already are 1/8), then three conv
layers each followed by LeakyReLU and a 2x bilinear upsampling, and a final conv +
LeakyReLU give the density at full working resolution. Trained with MSE against dot
maps blurred by a Gaussian.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi
from skimage.feature import peak_local_max
from torch import nn

from mm_core.engines.base import MatchMaps
from mm_core.heads.learned.base import LearnedHead, to_input_size
from mm_core.heads.learned.layers import FusionStem


class CountingHead(LearnedHead):
    """Density regressor (``config``: ``stem``, ``width``, ``target_diameter``, ``sigma_frac``,
    ``density_scale`` (targets are multiplied by it while training), ``tile``, ``tile_overlap``,
    ``fg_gate``: multiply the density by the engine's foreground, dilated by a quarter diameter)."""

    head_type = "counting"
    n_outputs = 1
    defaults: ClassVar[dict] = {"stem": 16, "width": 32, "target_diameter": 16.0, "sigma_frac": 0.25, "density_scale": 100.0,
                "tile": 256, "tile_overlap": 32, "size_multiple": 8, "fg_gate": False}

    def __init__(self, engine: str, n_features: int = 0, **config):
        super().__init__(engine, n_features, **config)
        c, w = self.config["stem"], self.config["width"]
        self.stem = FusionStem(n_features, c)
        act = nn.LeakyReLU(0.1)
        self.down = nn.Sequential(nn.Conv2d(c, w, 3, stride=2, padding=1), act,
                                  nn.Conv2d(w, w, 3, stride=2, padding=1), act,
                                  nn.Conv2d(w, w, 3, stride=2, padding=1), act)
        up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        self.regressor = nn.Sequential(
            nn.Conv2d(w, w, 3, padding=1), nn.LeakyReLU(0.1), up,
            nn.Conv2d(w, w // 2, 3, padding=1), nn.LeakyReLU(0.1), up,
            nn.Conv2d(w // 2, w // 4, 3, padding=1), nn.LeakyReLU(0.1), up,
            nn.Conv2d(w // 4, 1, 3, padding=1), nn.LeakyReLU(0.01))

    def forward(self, base: torch.Tensor, feats: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, 3, H, W)`` (+ features) -> ``(B, 1, H, W)`` scaled density."""
        h, w = base.shape[-2:]
        ph, pw = (-h) % 8, (-w) % 8
        x = self.stem(base, feats)
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="replicate")
        out = self.regressor(self.down(x))[..., :h, :w]
        if self.config["fg_gate"]:  # density only near what the engine calls foreground
            k = 2 * int(self.config["target_diameter"] // 4) + 1
            out = out * F.max_pool2d(base[:, 1:2].clamp(0, 1), k, stride=1, padding=k // 2)
        return out

    # ------------------------------------------------------------------ training
    def targets(self, points: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
        """``(1, H, W)`` target: dots at ``points`` (row, col) blurred, times ``density_scale``."""
        return dot_density(points, shape, self.config["sigma_frac"] * self.config["target_diameter"],
                           self.config["density_scale"])[None]

    @staticmethod
    def loss(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Pixel-wise MSE between predicted and target (scaled) densities."""
        return F.mse_loss(out, target)

    # ------------------------------------------------------------------ inference
    def predict(self, maps: MatchMaps, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Density ``(H, W)`` float32 (sum = count) and centres ``(N, 2)`` ``(row, col)``."""
        inp = self.inputs(maps, image)
        raw, f = self.predict_dense(inp)
        dens = np.maximum(raw[0], 0.0) / self.config["density_scale"]
        density = to_input_size(dens[None], inp.shape, keep_sum=True)[0]
        density = np.maximum(density, 0.0)
        total = float(dens.sum())
        if density.sum() > 0:
            density *= total / float(density.sum())
        return density.astype(np.float32), density_peaks(density, int(round(total)),
                                                         self.config["target_diameter"] / f)


def dot_density(points: np.ndarray, shape: tuple[int, int], sigma: float, scale: float = 1.0) -> np.ndarray:
    """Dot map of ``points`` (row, col; fractional ones rounded) blurred by a Gaussian, times ``scale``.

    Reflecting borders keep each dot's mass inside the map (sum = ``len(points) * scale``).
    """
    dots = np.zeros(shape, np.float32)
    pts = np.asarray(points, float).reshape(-1, 2)
    if len(pts):
        r = np.clip(np.rint(pts[:, 0]).astype(int), 0, shape[0] - 1)
        c = np.clip(np.rint(pts[:, 1]).astype(int), 0, shape[1] - 1)
        np.add.at(dots, (r, c), 1.0)
    dens = ndi.gaussian_filter(dots, max(0.5, sigma), mode="reflect")
    return (dens * scale).astype(np.float32)


def density_peaks(density: np.ndarray, n: int, diameter: float) -> np.ndarray:
    """The ``n`` strongest local maxima of ``density``, at least ``diameter / 3`` apart."""
    if n <= 0:
        return np.zeros((0, 2), float)
    md = max(1, int(round(diameter / 3)))
    pts = peak_local_max(density, min_distance=md, num_peaks=n, exclude_border=False,
                         threshold_abs=1e-6)
    return pts.reshape(-1, 2).astype(float)
