"""From captured attention to match maps: normalisation, object scale, centres, tiles.

Numpy in, numpy out (the torch parts live in :mod:`.attention`).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

#: Normalised autocorrelation of a disk of diameter d falls to one half at r = 0.404 d.
DISK_HALF_RADIUS = 0.404


def normalise01(arr: np.ndarray) -> np.ndarray:
    """Min-max to [0, 1] (a constant map becomes zeros); float32."""
    a = np.asarray(arr, dtype=np.float32)
    lo, hi = float(np.min(a)), float(np.max(a))
    if not np.isfinite(lo) or not np.isfinite(hi) or hi - lo <= 1e-12 * max(1.0, abs(hi)):
        return np.zeros_like(a)
    return ((a - lo) / (hi - lo)).astype(np.float32)


def rgb01(image: np.ndarray) -> np.ndarray:
    """Normalised ``(H, W)`` or ``(H, W, C)`` image -> ``(H, W, 3)`` float32 clipped to [0, 1].

    Grey is replicated to RGB; two channels get an empty third; extra channels are dropped.
    """
    img = np.clip(np.nan_to_num(np.asarray(image, np.float32)), 0.0, 1.0)
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    if img.ndim == 2:
        return np.repeat(img[..., None], 3, axis=-1)
    if img.shape[-1] == 2:
        img = np.concatenate([img, np.zeros_like(img[..., :1])], axis=-1)
    return np.ascontiguousarray(img[..., :3])


def attention_profile(self_attn, hw: tuple[int, int], weights: np.ndarray, radius: int,
                      max_sources: int = 1024) -> np.ndarray:
    """Mean self-attention as a function of offset: ``P[dy, dx] = E_p[S[p, p + (dy, dx)]]``.

    Parameters
    ----------
    self_attn : ndarray or Tensor, (N, N)
        Row-stochastic self-attention over the ``h x w`` latent grid (a tensor stays
        on its device: one gather of ``(2 radius + 1)**2 x N`` values).
    hw : tuple of int
    weights : ndarray, (h, w)
        Weight of each source pixel ``p`` (e.g. the foreground map).
    radius : int
        Largest offset, in latent pixels.
    max_sources : int
        Only the ``max_sources`` source pixels of largest weight are used.

    Returns
    -------
    ndarray, (2 radius + 1, 2 radius + 1); offsets falling outside the grid are ignored.
    """
    import torch

    h, w = hw
    s = torch.as_tensor(self_attn)
    dev = s.device
    wflat = torch.as_tensor(np.asarray(weights, np.float64).reshape(-1), device=dev)
    keep = torch.argsort(wflat, descending=True)[:max_sources]
    wflat = wflat[keep]
    yy, xx = (keep // w).reshape(1, -1), (keep % w).reshape(1, -1)
    off = torch.arange(-radius, radius + 1, device=dev)
    dy, dx = torch.meshgrid(off, off, indexing="ij")
    ty, tx = yy + dy.reshape(-1, 1), xx + dx.reshape(-1, 1)  # (n_off, N)
    ok = (ty >= 0) & (ty < h) & (tx >= 0) & (tx < w)
    target = (ty.clamp(0, h - 1) * w + tx.clamp(0, w - 1))
    source = keep.reshape(1, -1).expand_as(target)
    vals = s[source, target].double()
    wts = wflat.reshape(1, -1) * ok
    prof = (vals * wts).sum(1) / wts.sum(1).clamp_min(1e-12)
    return prof.reshape(2 * radius + 1, 2 * radius + 1).cpu().numpy()


def half_max_radius(profile: np.ndarray) -> float:
    """Radius (pixels) where the radial mean of a centred profile falls half-way to its floor."""
    r0 = profile.shape[0] // 2
    yy, xx = np.mgrid[-r0:r0 + 1, -r0:r0 + 1]
    rr = np.sqrt(yy ** 2 + xx ** 2)
    radii = np.arange(0, r0 + 1)
    radial = np.array([profile[(rr >= r - 0.5) & (rr < r + 0.5)].mean() for r in radii])
    floor = radial.min()
    half = floor + 0.5 * (radial[0] - floor)
    below = np.nonzero(radial <= half)[0]
    if radial[0] <= floor or below.size == 0:
        return float(r0)
    i = int(below[0])
    if i == 0:
        return 0.5
    # linear interpolation between radii i-1 and i
    a, b = radial[i - 1], radial[i]
    return float(i - 1 + (a - half) / max(a - b, 1e-12))


def estimate_scale(self_attn: np.ndarray, hw: tuple[int, int], foreground: np.ndarray,
                   input_per_latent: float, radius: int | None = None) -> float:
    """Typical object diameter in input pixels, from the self-attention's local extent.

    Self-attention rows of object pixels concentrate on their own object; the mean
    row around its pixel (:func:`attention_profile`, weighted by the foreground)
    then looks like the autocorrelation of one object. For a disk of diameter ``d``
    that falls to half at ``0.404 d``, so ``d = r_half / 0.404``.

    Parameters
    ----------
    self_attn : ndarray or Tensor, (N, N)
    hw : tuple of int
        Latent grid.
    foreground : ndarray, (h, w)
        Weights of the source pixels (values in [0, 1]).
    input_per_latent : float
        Input-image pixels per latent pixel.
    radius : int, optional
        Largest offset considered (default: a quarter of the latent side, >= 2).

    Returns
    -------
    float, > 0
    """
    h, w = hw
    radius = radius or max(2, min(h, w) // 4)
    fg = np.asarray(foreground, dtype=np.float64)
    weights = np.clip(fg - np.median(fg), 0, None)
    if weights.sum() <= 0:
        weights = np.ones_like(fg)
    prof = attention_profile(self_attn, hw, weights, radius)
    diameter = max(half_max_radius(prof), 0.5) / DISK_HALF_RADIUS
    return float(diameter * input_per_latent)


def center_map(foreground: np.ndarray, diameter_latent: float) -> np.ndarray:
    """Object-centre evidence: foreground smoothed by a Gaussian of a quarter diameter, in [0, 1]."""
    sigma = max(0.5, 0.25 * float(diameter_latent))
    return normalise01(ndimage.gaussian_filter(np.asarray(foreground, np.float32), sigma, mode="nearest"))
