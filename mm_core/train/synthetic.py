"""Domain-randomised synthetic training images (the SynthSeg idea, for microscopy).

A label map (procedural shapes, or a real ``train/`` mask) is rendered with random
intensities per object, texture, halos, membranes, blur, noise, polarity and stain-like
colours, so that the network learns shapes and boundaries rather than one kind of
microscopy. Label maps come from :func:`label_map`; :func:`render` draws a new picture of one
label map each time it is called (the targets depend on the labels only, so they are
computed once per label map).

Every function takes a ``numpy.random.Generator``: the same seed gives the same data.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from skimage.draw import ellipse

KINDS = ("nuclei", "rods", "cells", "tissue", "large")


def _smooth_noise(shape, sigma: float, rng: np.random.Generator) -> np.ndarray:
    n = ndi.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
    return (n - n.mean()) / (n.std() + 1e-8)


def _ellipses(shape, n: int, radius: tuple[float, float], elong: tuple[float, float],
              rng: np.random.Generator, overlap: bool) -> np.ndarray:
    """Up to ``n`` random ellipses; ``overlap=False`` skips ones that would cover another."""
    lab = np.zeros(shape, np.int32)
    k = 0
    for _ in range(n):
        r = float(np.exp(rng.uniform(*np.log(radius))))
        e = float(rng.uniform(*elong))
        cy, cx = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
        rr, cc = ellipse(cy, cx, r, r * e, shape=shape, rotation=rng.uniform(0, np.pi))
        if len(rr) < 6:
            continue
        if not overlap and np.any(lab[rr, cc] > 0):
            continue
        k += 1
        lab[rr, cc] = k
    return lab


def _wobble(lab: np.ndarray, rng: np.random.Generator, amount: float) -> np.ndarray:
    """Irregular outlines: each object's pixels displaced by a smooth random field."""
    if amount <= 0:
        return lab
    h, w = lab.shape
    dy = _smooth_noise(lab.shape, 6, rng) * amount
    dx = _smooth_noise(lab.shape, 6, rng) * amount
    yy, xx = np.indices(lab.shape)
    return ndi.map_coordinates(lab, [np.clip(yy + dy, 0, h - 1), np.clip(xx + dx, 0, w - 1)], order=0)


def _voronoi(shape, n: int, rng: np.random.Generator, gap: int) -> np.ndarray:
    """Space-filling cells (tissue, membranes): a Voronoi tessellation with ``gap``-pixel walls."""
    pts = np.stack([rng.uniform(0, shape[0], n), rng.uniform(0, shape[1], n)], 1)
    seeds = np.zeros(shape, np.int32)
    seeds[pts[:, 0].astype(int), pts[:, 1].astype(int)] = np.arange(1, n + 1)
    _, (iy, ix) = ndi.distance_transform_edt(seeds == 0, return_indices=True)
    lab = seeds[iy, ix]
    lab = _wobble(lab, rng, 2.0)
    if gap > 0:
        edge = ndi.morphological_gradient(lab, size=3) > 0
        if gap >= 2:
            edge = ndi.binary_dilation(edge, iterations=gap // 2)
        lab[edge] = 0
    return lab


def label_map(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """A random instance label map ``(size, size)`` int32 of one ``kind`` (see :data:`KINDS`)."""
    shape = (size, size)
    if kind == "nuclei":
        r = float(np.exp(rng.uniform(np.log(5), np.log(22))))
        n = int(rng.uniform(0.2, 0.9) * size * size / (np.pi * r * r))
        lab = _ellipses(shape, n, (r * 0.7, r * 1.3), (0.6, 1.0), rng, overlap=bool(rng.random() < 0.4))
        return _wobble(lab, rng, rng.uniform(0, 1.5))
    if kind == "rods":
        r = float(rng.uniform(3, 7))
        n = int(rng.uniform(0.3, 1.2) * size * size / (np.pi * r * r * 4))
        return _ellipses(shape, n, (r * 0.8, r * 1.2), (2.5, 6.0), rng, overlap=bool(rng.random() < 0.6))
    if kind == "cells":
        n = int(rng.uniform(8, 40))
        lab = _voronoi(shape, n, rng, gap=int(rng.integers(0, 3)))
        blob = _smooth_noise(shape, size / 10, rng) > rng.uniform(-0.6, 0.4)
        lab = np.where(blob, lab, 0)
        return _relabel(lab)
    if kind == "tissue":
        n = int(rng.uniform(20, 120))
        return _relabel(_voronoi(shape, n, rng, gap=int(rng.integers(2, 6))))
    r = float(rng.uniform(25, 60))
    n = int(rng.uniform(0.2, 0.7) * size * size / (np.pi * r * r))
    return _wobble(_ellipses(shape, max(n, 1), (r * 0.8, r * 1.2), (0.6, 1.0), rng, overlap=False), rng, 3.0)


def _relabel(lab: np.ndarray) -> np.ndarray:
    """Connected pieces as separate objects, tiny pieces dropped, ids 1..n."""
    from skimage.measure import label as cc_label

    out = cc_label(lab, connectivity=1, background=0)
    out[(np.bincount(out.ravel()) < 12)[out]] = 0
    return np.unique(out, return_inverse=True)[1].reshape(out.shape).astype(np.int32)


def render(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random picture ``(H, W, 3)`` float32 in [0, 1] of the objects of ``labels``.

    Per-object brightness, inner texture, optional halo (phase-contrast-like), optional dark
    membranes between objects (EM-like), background texture, blur, noise, polarity and a
    stain-like colour mapping (two random colours for background and objects).
    """
    lab = np.asarray(labels)
    h, w = lab.shape
    fg = lab > 0
    n = int(lab.max())
    level = rng.uniform(0.35, 1.0, n + 1)
    level[0] = 0.0
    x = rng.uniform(0.0, 0.3) + level[lab] * rng.uniform(0.4, 1.0)
    if rng.random() < 0.7:  # texture inside objects
        x = x * (1 + rng.uniform(0.05, 0.5) * _smooth_noise(lab.shape, rng.uniform(0.7, 3), rng) * fg)
    if rng.random() < 0.5:  # brighter or darker rims
        edt = ndi.distance_transform_edt(fg)
        x = x + rng.uniform(-0.4, 0.4) * fg * np.exp(-edt / rng.uniform(1, 4))
    if rng.random() < 0.3:  # halo outside objects
        out_d = ndi.distance_transform_edt(~fg)
        x = x + rng.uniform(0.2, 0.8) * (~fg) * np.exp(-out_d / rng.uniform(1.5, 5))
    if rng.random() < 0.25:  # membranes between touching objects
        edge = (ndi.morphological_gradient(lab, size=3) > 0)
        x = np.where(edge, x * rng.uniform(0.0, 0.4), x)
    x = x + rng.uniform(0, 0.25) * _smooth_noise(lab.shape, rng.uniform(2, 30), rng)
    x = ndi.gaussian_filter(x, rng.uniform(0, 2.0))
    if rng.random() < 0.4:
        x = 1.0 - x
    x = x + rng.uniform(0, 0.12) * rng.standard_normal(lab.shape)
    x = (x - np.percentile(x, 1)) / max(np.percentile(x, 99.5) - np.percentile(x, 1), 1e-6)
    x = np.clip(x, 0, 1)
    if rng.random() < 0.5:
        return np.repeat(x[..., None], 3, -1).astype(np.float32)
    c0, c1 = rng.uniform(0, 1, 3), rng.uniform(0, 1, 3)
    return np.clip(c0 + (c1 - c0) * x[..., None], 0, 1).astype(np.float32)
