"""Analytic segmentation head: synthetic images, low-resolution maps, one real image."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi
from test_classic_engine import bbox, make_disks

from mm_core.engines.base import MatchMaps
from mm_core.engines.classic import ClassicEngine
from mm_core.heads.segmentation import instances_from_maps
from mm_core.evaluation.metrics import average_precision
from mm_core.transforms import normalize, resize_map


def ap50(gt, pred):
    return float(average_precision(gt, pred)["ap"][0])


@pytest.fixture(scope="module")
def engine():
    return ClassicEngine()


@pytest.mark.parametrize("dark", [False, True])
def test_disks_automatic(engine, dark):
    img, gt = make_disks(seed=10, dark=dark)
    labels = instances_from_maps(engine.match(img), img)
    assert labels.shape == img.shape and labels.dtype == np.int32
    assert ap50(gt, labels) >= 0.9


def test_disks_exemplar(engine):
    img, gt = make_disks(seed=11)
    labels = instances_from_maps(engine.match(img, np.array([bbox(gt, 3)], np.float32)), img)
    assert ap50(gt, labels) >= 0.9


def test_touching_objects_are_split(engine):
    size = 160
    yy, xx = np.mgrid[:size, :size]
    gt = np.zeros((size, size), np.int32)
    pairs = [(40, 40), (40, 58), (110, 80), (110, 98)]  # two touching pairs (diameter 20)
    single = [(30, 120), (80, 30), (140, 30), (70, 130)]
    for i, (cy, cx) in enumerate(pairs + single, 1):
        gt[((yy - cy) ** 2 + (xx - cx) ** 2 <= 100) & (gt == 0)] = i
    img = normalize((0.2 + 0.6 * (gt > 0) + np.random.default_rng(0).normal(0, 0.05, gt.shape)).astype(np.float32))
    labels = instances_from_maps(engine.match(img), img)
    assert len(np.unique(labels[labels > 0])) == 8
    assert ap50(gt, labels) >= 0.75


def test_holes_filled_and_specks_dropped():
    size = 96
    yy, xx = np.mgrid[:size, :size]
    ring = ((yy - 48) ** 2 + (xx - 48) ** 2 <= 400) & ((yy - 48) ** 2 + (xx - 48) ** 2 > 25)
    fg = ring.astype(np.float32)
    fg[5:7, 5:7] = 1.0  # a 4-pixel speck
    dt = ndi.distance_transform_edt(ndi.binary_fill_holes(ring))
    maps = MatchMaps(foreground=fg, centers=(dt / dt.max()).astype(np.float32), scale=40.0,
                     image_shape=(size, size), engine="test", mode="automatic", conditioning="")
    labels = instances_from_maps(maps)
    assert labels.max() == 1
    assert labels[48, 48] == 1  # the hole is filled
    assert labels[5, 5] == 0  # the speck is dropped


def low_res_maps(gt: np.ndarray, diameter: float, side: int = 64) -> MatchMaps:
    """Maps at 64x64 as the LDM engine returns them: blurred foreground and centre blobs."""
    fg = resize_map(ndi.gaussian_filter((gt > 0).astype(np.float32), 1.5), (side, side))
    ce = np.zeros(gt.shape, np.float32)
    for i in range(1, gt.max() + 1):
        cy, cx = ndi.center_of_mass(gt == i)
        ce[round(cy), round(cx)] = 1.0
    ce = ndi.gaussian_filter(ce, diameter / 4)
    ce = resize_map(ce / ce.max(), (side, side))
    return MatchMaps(foreground=np.clip(fg, 0, 1), centers=np.clip(ce, 0, 1), scale=diameter,
                     image_shape=gt.shape, engine="ldm", mode="automatic", conditioning="fake")


def test_low_resolution_maps_from_another_engine():
    img, gt = make_disks(n=20, size=256, diameter=24, seed=12)
    maps = low_res_maps(gt, 24.0)
    labels = instances_from_maps(maps, img)
    assert labels.shape == (256, 256) and labels.dtype == np.int32
    assert ap50(gt, labels) >= 0.8


def test_empty_foreground_gives_no_objects():
    maps = MatchMaps(foreground=np.zeros((32, 32), np.float32), centers=np.zeros((32, 32), np.float32),
                     scale=10.0, image_shape=(100, 120), engine="test", mode="automatic", conditioning="")
    labels = instances_from_maps(maps)
    assert labels.shape == (100, 120) and labels.max() == 0


#: AP50 measured on the StarDist example image with this engine on the dev box: 0.80
#: exemplar, 0.53 automatic; the floors leave a margin for platform noise.
STARDIST_FLOORS = {"exemplar": 0.70, "automatic": 0.45}


@pytest.mark.parametrize("mode", ["automatic", "exemplar"])
def test_real_stardist_image(shared_data, engine, mode):
    import tifffile

    root = shared_data / "seg" / "stardist_dsb2018_example"
    if not root.is_dir():
        pytest.skip("StarDist example not in the dev data")
    img = tifffile.imread(root / "images" / "img2d.tif")
    gt = tifffile.imread(root / "masks" / "img2d.tif").astype(np.int32)
    box = None
    if mode == "exemplar":  # the benchmark's choice: seeded pick among median-sized objects
        ids, areas = np.unique(gt[gt > 0], return_counts=True)
        lo, hi = np.percentile(areas, [25, 75])
        box = np.array([bbox(gt, np.random.default_rng(0).choice(ids[(areas >= lo) & (areas <= hi)]))], np.float32)
    x = normalize(img)
    labels = instances_from_maps(engine.match(x, box), x)
    assert ap50(gt, labels) >= STARDIST_FLOORS[mode]
