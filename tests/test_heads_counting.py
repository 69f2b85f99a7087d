"""Analytic counting head: synthetic images, low-resolution maps, one real image."""

from __future__ import annotations

import numpy as np
import pytest
from test_classic_engine import bbox, make_disks
from test_heads_segmentation import low_res_maps

from mm_core.engines.base import MatchMaps
from mm_core.engines.classic import ClassicEngine
from mm_core.heads.counting import component_counts, density_from_maps
from mm_core.transforms import normalize


@pytest.fixture(scope="module")
def engine():
    return ClassicEngine()


def check(density, points, shape):
    assert density.shape == shape and density.dtype == np.float32
    assert density.min() >= 0 and np.isfinite(density).all()
    assert points.ndim == 2 and points.shape[1] == 2
    if len(points):
        assert (points >= 0).all() and (points[:, 0] < shape[0]).all() and (points[:, 1] < shape[1]).all()


@pytest.mark.parametrize("dark", [False, True])
def test_count_disks_automatic(engine, dark):
    img, gt = make_disks(n=30, size=224, seed=20, dark=dark)
    density, points = density_from_maps(engine.match(img), img)
    check(density, points, img.shape)
    n = gt.max()
    assert abs(density.sum() - n) <= 0.1 * n
    assert abs(len(points) - n) <= 0.1 * n
    # every detected centre lies on an object
    assert (gt[points[:, 0].astype(int), points[:, 1].astype(int)] > 0).mean() >= 0.9


def test_count_disks_exemplar(engine):
    img, gt = make_disks(n=30, size=224, seed=21)
    density, _ = density_from_maps(engine.match(img, np.array([bbox(gt, 5)], np.float32)), img)
    assert abs(density.sum() - gt.max()) <= 0.1 * gt.max()


def test_overlapping_objects_counted_by_area():
    """Three centres found in a blob the size of five objects: the area decides."""
    fg = np.zeros((100, 100), bool)
    fg[20:40, 10:90] = True  # area 1600 = 5 disks of diameter ~20 (area 314)
    pts = np.array([[30, 20], [30, 50], [30, 80]])
    _, counts, npts = component_counts(fg, pts, 20.0)
    assert npts[1] == 3
    assert counts[1] == 5
    centers = np.zeros((100, 100), np.float32)
    centers[30, 20] = centers[30, 50] = centers[30, 80] = 1.0
    maps = MatchMaps(foreground=fg.astype(np.float32), centers=centers, scale=20.0, image_shape=(100, 100),
                     engine="test", mode="automatic", conditioning="")
    density, points = density_from_maps(maps)
    assert density.sum() == pytest.approx(5, rel=1e-4)
    assert len(points) == 3
    # but never more than AREA_CAP objects per centre: one centre -> at most 2
    _, capped, _ = component_counts(fg, pts[:1], 20.0)
    assert capped[1] == 2


def test_low_resolution_maps_from_another_engine():
    img, gt = make_disks(n=20, size=256, diameter=24, seed=22)
    density, points = density_from_maps(low_res_maps(gt, 24.0), img)
    check(density, points, (256, 256))
    assert abs(density.sum() - 20) <= 2


def test_empty_maps_count_zero():
    maps = MatchMaps(foreground=np.zeros((16, 16), np.float32), centers=np.zeros((16, 16), np.float32),
                     scale=8.0, image_shape=(50, 40), engine="test", mode="automatic", conditioning="")
    density, points = density_from_maps(maps)
    assert density.shape == (50, 40) and density.sum() == 0 and len(points) == 0


#: Measured on VGG cells image 001 (135 cells) on the dev box: 147 automatic;
#: the bound leaves room for platform noise but fails a centre-only count (113).
def test_real_vgg_image(shared_data, engine):
    import imageio.v3 as iio
    import pandas as pd

    root = shared_data / "count" / "vgg_cells"
    if not (root / "images" / "001.png").is_file():
        pytest.skip("VGG cells not in the dev data")
    img = normalize(iio.imread(root / "images" / "001.png"))
    n = len(pd.read_csv(root / "points" / "001.csv"))
    density, _ = density_from_maps(engine.match(img), img)
    assert abs(density.sum() - n) <= 0.12 * n
