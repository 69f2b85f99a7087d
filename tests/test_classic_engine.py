"""The weight-free classic engine on small synthetic images (and one real one)."""

from __future__ import annotations

import numpy as np
import pytest

from mm_core.engines.base import MatchMaps
from mm_core.engines.classic import ClassicEngine
from mm_core.transforms import normalize


def make_disks(n=25, size=192, diameter=16.0, seed=0, dark=False, noise=0.08, shape="disk"):
    """Non-overlapping objects (disks or squares) on a flat background + Gaussian noise.

    Returns the normalised image and the ground-truth labels.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    labels = np.zeros((size, size), np.int32)
    r = diameter / 2
    centres = []
    for _ in range(2000):
        if len(centres) == n:
            break
        c = rng.uniform(r + 2, size - r - 2, 2)
        if all(np.hypot(*(c - p)) > diameter + 3 for p in centres):
            centres.append(c)
    for i, (cy, cx) in enumerate(centres, 1):
        if shape == "disk":
            m = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        else:
            m = (np.abs(yy - cy) <= r) & (np.abs(xx - cx) <= r)
        labels[m] = i
    img = 0.2 + 0.6 * (labels > 0) + rng.normal(0, noise, labels.shape)
    if dark:
        img = 1.0 - img
    return normalize(img.astype(np.float32)), labels


def bbox(labels, i):
    rr, cc = np.nonzero(labels == i)
    return [cc.min(), rr.min(), cc.max() + 1, rr.max() + 1]


@pytest.fixture(scope="module")
def engine():
    return ClassicEngine()


def check_maps(m: MatchMaps, shape):
    assert isinstance(m, MatchMaps)
    assert m.engine == "classic"
    assert m.image_shape == shape
    assert m.foreground.ndim == 2 and m.foreground.shape == m.centers.shape
    for arr in (m.foreground, m.centers):
        assert arr.dtype == np.float32
        assert np.isfinite(arr).all() and arr.min() >= 0 and arr.max() <= 1
    assert m.features is not None and m.features.shape[1:] == m.foreground.shape
    assert m.at_input("foreground").shape == shape


def test_automatic_maps_valid_and_scale(engine):
    img, gt = make_disks(diameter=16)
    m = engine.match(img)
    check_maps(m, img.shape)
    assert m.mode == "automatic"
    assert 16 / 1.5 <= m.scale <= 16 * 1.5
    fg = m.at_input("foreground")
    assert fg[gt > 0].mean() > 0.8 and fg[gt == 0].mean() < 0.1


@pytest.mark.parametrize("diameter", [10.0, 30.0])
def test_scale_follows_object_size(engine, diameter):
    img, _ = make_disks(n=12, size=256, diameter=diameter, seed=1)
    assert diameter / 1.5 <= engine.match(img).scale <= diameter * 1.5


def test_dark_objects_on_bright_background(engine):
    img, gt = make_disks(dark=True, seed=2)
    m = engine.match(img)
    assert m.info["polarity"] == -1
    fg = m.at_input("foreground")
    assert fg[gt > 0].mean() > 0.8 and fg[gt == 0].mean() < 0.1


def test_exemplar_mode_valid(engine):
    img, gt = make_disks(seed=3)
    m = engine.match(img, np.array([bbox(gt, 1), bbox(gt, 2)], np.float32))
    check_maps(m, img.shape)
    assert m.mode == "exemplar" and "2 exemplar" in m.conditioning
    assert 16 / 1.5 <= m.scale <= 16 * 1.5
    fg = m.at_input("foreground")
    assert fg[gt > 0].mean() > 0.7 and fg[gt == 0].mean() < 0.15


def test_a_box_on_an_object_the_edge_cuts_reads_the_whole_object(engine):
    """A user boxes a cell half outside the image: the scale is the whole cell's, not the half's,
    so the other cells are not cut in pieces (Fluo-N2DH-SIM+ with such a box lost most of its TRA)."""
    import mm_core

    img, gt = make_disks(n=14, size=192, diameter=24, seed=5)
    cx = round(np.nonzero(gt == 1)[1].mean())
    cut, g = img[:, cx:], gt[:, cx:]  # the image's left edge runs through disk 1's centre
    assert 0.4 < (g == 1).sum() / (gt == 1).sum() < 0.6
    box = np.array([bbox(g, 1)], np.float32)
    assert box[0, 2] - box[0, 0] < 0.75 * (box[0, 3] - box[0, 1])  # a narrow box: half a disk
    m = engine.match(cut, box)
    assert 24 / 1.3 <= m.scale <= 24 * 1.3
    whole = len(np.unique(g[g > 0]))
    found = mm_core.Matcher("classic", head="analytic").segment(cut, boxes=box).labels.max()
    assert whole - 1 <= found <= whole + 1


def two_kinds(seed=4):
    """Large disks (diameter 22) and small squares (side 7) of the same brightness."""
    _, gb = make_disks(n=8, size=224, diameter=22, seed=seed, noise=0.0)
    rng = np.random.default_rng(seed + 1)
    img = np.where(gb > 0, 0.8, 0.2).astype(np.float32)
    small = np.zeros_like(gb)
    k = 0
    for _ in range(400):
        y, x = rng.integers(6, 214, 2)
        win = (slice(y - 6, y + 10), slice(x - 6, x + 10))
        if (gb[win] == 0).all() and (small[win] == 0).all():
            k += 1
            small[y:y + 7, x:x + 7] = k
        if k == 20:
            break
    img[small > 0] = 0.8
    img += rng.normal(0, 0.05, img.shape).astype(np.float32)
    return normalize(img), gb, small


def test_exemplar_picks_out_its_object_type(engine):
    img, big, small = two_kinds()
    m_big = engine.match(img, np.array([bbox(big, 1)], np.float32))
    fg = m_big.at_input("foreground")
    ce = m_big.at_input("centers")
    assert fg[big > 0].mean() > fg[small > 0].mean() + 0.2
    assert ce[big > 0].max(initial=0) > ce[small > 0].max(initial=0)
    m_small = engine.match(img, np.array([bbox(small, 1)], np.float32))
    fs = m_small.at_input("foreground")
    # the small-square exemplar matches squares better than it matches the disks' scale
    assert m_small.scale < 12 < m_big.scale
    assert fs[small > 0].mean() > 0.5


def test_constant_and_rgb_images(engine):
    m = engine.match(np.zeros((64, 80), np.float32))
    check_maps(m, (64, 80))
    img, gt = make_disks(seed=5)
    rgb = np.stack([img, 0.5 * img, np.random.default_rng(0).normal(0, 0.05, img.shape)], -1)
    m = engine.match(normalize(rgb.astype(np.float32)))
    check_maps(m, img.shape)
    assert m.at_input("foreground")[gt > 0].mean() > 0.7


def test_through_public_api():
    import mm_core

    img, gt = make_disks(seed=6)
    res = mm_core.segment(img, engine="classic")
    assert res.maps.engine == "classic" and res.labels.shape == img.shape
    assert abs(res.n_objects - gt.max()) <= 3
