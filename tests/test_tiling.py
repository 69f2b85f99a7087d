"""One tiler and stitcher: tiles cover the image, objects cut by tile borders stay one object."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.draw import disk

from mm_core.transforms.tiles import LabelStitcher, blend_window, same_objects, stitch_labels, tile_grid, tile_starts


def test_tile_cores_partition_the_image():
    tiles = tile_grid((700, 1000), 256, 64)
    owner = np.zeros((700, 1000), int)
    for t in tiles:
        owner[t.core] += 1
        assert t.y1 - t.y0 <= 256 and t.x1 - t.x0 <= 256
        assert t.y0 <= t.cy0 < t.cy1 <= t.y1 and t.x0 <= t.cx0 < t.cx1 <= t.x1
    assert (owner == 1).all()
    starts = tile_starts(1000, 256, 64)
    assert starts[0] == 0 and starts[-1] == 1000 - 256
    assert all(b - a <= 256 - 64 for a, b in zip(starts, starts[1:]))


def test_blend_weight_ramps_and_stays_positive():
    w = blend_window((64, 80), 16)
    assert w.shape == (64, 80) and (w > 0).all() and w[32, 40] == 1.0 and w[0, 0] < w[8, 8]


def _on_seams(shape, tiles, r):
    """Disks centred on every seam and seam crossing of the grid, well apart."""
    seams_y = sorted({t.cy0 for t in tiles} - {0})
    seams_x = sorted({t.cx0 for t in tiles} - {0})
    centres = [(y, x) for y in seams_y for x in seams_x]  # on crossings (cut into 4)
    centres += [(y, x + 43) for y in seams_y for x in seams_x]  # on horizontal seams
    centres += [(y + 43, x) for y in seams_y for x in seams_x]  # on vertical seams
    centres = [c for c in centres if r <= c[0] < shape[0] - r and r <= c[1] < shape[1] - r]
    truth = np.zeros(shape, np.int32)
    for i, c in enumerate(centres, 1):
        rr, cc = disk(c, r, shape=shape)
        truth[rr, cc] = i
    return truth


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_objects_across_tile_borders_are_one_object_each(seed):
    shape = (420, 430)
    tiles = tile_grid(shape, 160, 48)
    truth = _on_seams(shape, tiles, r=12)
    rng = np.random.default_rng(seed)
    tile_labels = []
    for t in tiles:  # what a head sees in each tile: cut objects, ids in any order
        lab, n = ndi.label(truth[t.window] > 0)
        perm = np.concatenate([[0], rng.permutation(n) + 1 + rng.integers(0, 50)])
        tile_labels.append(perm[lab])
    out = stitch_labels(tiles, tile_labels, shape)
    n_true = int(truth.max())
    assert out.max() == n_true  # never two, and numbered 1..n
    for i in range(1, n_true + 1):
        ids = np.unique(out[truth == i])
        assert len(ids) == 1 and ids[0] > 0
    assert ((out > 0) == (truth > 0)).all()


def test_touching_objects_from_different_tiles_are_not_merged():
    a = np.zeros((10, 10), int)
    b = np.zeros((10, 10), int)
    a[:, :5] = 1
    b[:, 4:] = 7  # one column shared of 5 and 6 pixels: 10/50 < 0.5
    assert same_objects(a, b) == []
    b[:, 2:] = 7
    assert same_objects(a, b) == [(1, 7)]


def test_stitcher_writes_into_a_zarr_array(tmp_path):
    zarr = pytest.importorskip("zarr")
    shape = (300, 300)
    tiles = tile_grid(shape, 128, 40)
    truth = _on_seams(shape, tiles, r=10)
    z = zarr.create_array(str(tmp_path / "l.zarr"), shape=shape, chunks=(64, 64), dtype="uint32", fill_value=0)
    st = LabelStitcher(z, tiles)
    for t in tiles:
        st.add(t, ndi.label(truth[t.window] > 0)[0])
    assert st.finish(block_rows=64) == truth.max()
    assert np.array_equal(np.asarray(z[:]) > 0, truth > 0)


def test_classic_engine_tiled_keeps_seam_objects_whole():
    from mm_core import Matcher
    from mm_core.batching.tiled import segment_large

    shape = (384, 384)
    tiles = tile_grid(shape, 224, 128)
    truth = _on_seams(shape, tiles, r=9)
    rng = np.random.default_rng(0)
    img = np.where(truth > 0, 1000.0, 100.0) + rng.normal(0, 20, shape)
    labels, summary = segment_large(img, Matcher(engine="classic", head="analytic"), tile=224, overlap=128)
    assert summary.tiles == len(tiles) > 1
    for i in range(1, int(truth.max()) + 1):
        ids, n = np.unique(labels[truth == i], return_counts=True)
        big = ids[(ids > 0) & (n >= 0.1 * (truth == i).sum())]
        assert len(big) == 1, f"object {i} came out as {len(big)} objects"


def test_ldm_engine_runs_tile_by_tile(torch_one_thread):
    """The same tiler drives the LDM engine (tiny random-weight pipeline): one match per tile."""
    torch = pytest.importorskip("torch")
    from mm_core.engines.ldm import LDMEngine
    from mm_core.engines.ldm.testing import TINY_SIZE, tiny_pipeline_dir
    from mm_core.models import Matcher
    from mm_core.batching.tiled import segment_large

    eng = LDMEngine.from_pretrained(tiny_pipeline_dir(), device="cpu", dtype=torch.float32, size=TINY_SIZE)
    calls = []

    class Counting:
        name = "ldm"

        def match(self, image, boxes=None):
            calls.append(image.shape)
            return eng.match(image, boxes)

    rng = np.random.default_rng(0)
    img = 0.2 * rng.random((300, 260))
    for c in [(60, 60), (150, 130), (240, 200)]:
        img[disk(c, 12, shape=img.shape)] += 0.8
    labels, summary = segment_large(img, Matcher(engine=Counting(), head="analytic"), tile=128, overlap=48)
    assert summary.tiles == len(tile_grid((300, 260), 128, 48)) and len(calls) == summary.tiles + 1
    assert all(s[0] <= 128 and s[1] <= 128 for s in calls)
    assert labels.shape == (300, 260) and labels.max() == summary.n_objects
    assert set(np.unique(labels)) == set(range(summary.n_objects + 1))


def _disks(shape, seed, n, r, value=1000.0, img=None):
    """Seeded disks of radius ``r`` (no two closer than 2.4 r) on ``img``; returns (img, centres)."""
    rng = np.random.default_rng(seed)
    img = np.full(shape, 100.0) if img is None else img
    centres = []
    while len(centres) < n:
        c = rng.uniform(r + 2, np.array(shape) - r - 2)
        if all(np.hypot(*(c - o)) > 2.4 * r for o in centres):
            centres.append(c)
            img[disk(tuple(c), r, shape=shape)] = value
    return img, np.array(centres)


def _f1(a, b):
    """F1 of one-to-one object matches at IoU > 0.5 between two label images."""
    from mm_core.evaluation.metrics import f1_score

    return float(f1_score(a, b, thresholds=(0.5,))[0])


def test_tiled_result_agrees_with_the_untiled_one_and_fits_once(monkeypatch):
    """Tiles are matched with what was measured once (scale, classifier, ...): the same objects as untiled."""
    from mm_core import Matcher
    from mm_core.engines.classic import ClassicEngine
    from mm_core.batching.tiled import segment_large
    from mm_core.transforms import normalize

    img, _ = _disks((640, 640), 3, 260, 7)
    img = img + np.random.default_rng(1).normal(0, 120, img.shape)
    fits = []
    real_fit = ClassicEngine.fit
    monkeypatch.setattr(ClassicEngine, "fit", lambda self, *a, **k: fits.append(1) or real_fit(self, *a, **k))
    m = Matcher(engine="classic", head="analytic")
    tiled, summary = segment_large(img, m, tile=256)
    x = normalize(img)
    whole = m.head("segment").predict(m.engine.match(x), x)
    assert summary.tiles >= 9 and len(fits) == 1
    assert abs(int(tiled.max()) - int(whole.max())) <= 0.02 * whole.max()
    assert _f1(whole, tiled) >= 0.98


def test_exemplar_boxes_on_a_tiled_image_find_their_kind_in_every_tile():
    from mm_core import Matcher
    from mm_core.batching.tiled import segment_large

    shape = (600, 600)
    img, big = _disks(shape, 0, 30, 12)
    img, small = _disks(shape, 1, 60, 4, value=1000.0, img=img)
    img = img + np.random.default_rng(2).normal(0, 30, shape)
    cy, cx = big[0]
    box = np.array([[cx - 14, cy - 14, cx + 14, cy + 14]])
    labels, summary = segment_large(img, Matcher(engine="classic", head="analytic"), tile=256, boxes=box)
    assert summary.tiles > 1 and summary.n_boxes == 1
    found_big = sum(labels[int(y), int(x)] > 0 for y, x in big)
    found_small = sum(labels[int(y), int(x)] > 0 for y, x in small)
    assert found_big >= 0.9 * len(big) and found_small <= 0.2 * len(small)
    assert len(np.unique(labels[labels > 0])) <= 1.2 * len(big)


def test_tiled_exemplar_boxes_too_far_apart_or_on_an_engine_without_fit_are_refused(monkeypatch):
    from mm_core import Matcher
    from mm_core.batching import tiled as mt
    from mm_core.errors import InputError

    img, _ = _disks((400, 400), 0, 12, 10)
    boxes = np.array([[5, 5, 30, 30], [370, 370, 395, 395]], float)
    monkeypatch.setattr(mt, "FIT_SIDE", 128)
    with pytest.raises(InputError, match="spread over more than 128 pixels"):
        mt.segment_large(img, Matcher(engine="classic", head="analytic"), tile=128, boxes=boxes)

    class NoFit:
        name = "ldm"

        def match(self, image, boxes=None):  # pragma: no cover - refused before any match
            raise AssertionError("not reached")

    with pytest.raises(InputError, match="need the weight-free engine"):
        mt.segment_large(img, Matcher(engine=NoFit(), head="analytic"), tile=128, boxes=boxes[:1])


def test_tiled_count_is_a_whole_number_its_centres_add_up_to():
    from mm_core import Matcher
    from mm_core.io.lazy import LazyImage
    from mm_core.batching.tiled import count_tiled, tile_fn
    from mm_core.transforms import normalize

    img, centres = _disks((600, 600), 4, 120, 8)
    img = img + np.random.default_rng(3).normal(0, 40, img.shape)
    m = Matcher(engine="classic", head="analytic")
    dens = np.zeros(img.shape, np.float32)
    runner = tile_fn(m.engine, m.head("count"), "count")
    summary = count_tiled(LazyImage(img.astype(np.float32), "YX", "t"), dens, runner, tile=256)
    untiled = m.count(normalize(img)).count
    assert summary.tiles > 1 and summary.count == int(summary.count) == summary.points["n"].sum()
    assert abs(summary.count - untiled) <= 0.05 * len(centres)
    assert abs(float(dens.sum()) - summary.count) <= 0.5


def test_tiles_read_by_the_generalist_head_share_one_object_size(monkeypatch):
    """The generalist head (the automatic-mode default before CellMatch) measures the object size
    once for all tiles."""
    from mm_core import Matcher
    from mm_core.batching.tiled import segment_large
    from mm_core.heads.learned.generalist import GeneralistHead
    from mm_core.transforms import normalize

    img, _ = _disks((512, 512), 5, 120, 8)
    img = img + np.random.default_rng(4).normal(0, 60, img.shape)
    m = Matcher(engine="classic", head="generalist-classic")
    head = m.head("segment")
    assert isinstance(head, GeneralistHead)
    calls = []
    real = GeneralistHead.fit_scale
    monkeypatch.setattr(GeneralistHead, "fit_scale", lambda self, *a: calls.append(1) or real(self, *a))
    searched = []
    real_search = GeneralistHead.estimate_scale
    monkeypatch.setattr(GeneralistHead, "estimate_scale", lambda self, inp: searched.append(1) or real_search(self, inp))
    tiled, summary = segment_large(img, m, tile=256)
    assert summary.tiles > 1 and len(calls) == 1 and len(searched) == 1  # no search per tile
    x = normalize(img)
    whole = head.predict(m.engine.match(x), x)
    assert _f1(whole, tiled) >= 0.95


def test_tiles_read_by_the_default_cellmatch_share_one_object_size(monkeypatch):
    """The segmentation default (CellMatch) reads the object size once; the tiles agree with the
    whole image."""
    from mm_core import Matcher
    from mm_core.batching.tiled import segment_large
    from mm_core.heads.learned.cellmatch import CellMatchHead

    img, _ = _disks((512, 512), 5, 120, 8)
    img = img + np.random.default_rng(4).normal(0, 60, img.shape)
    m = Matcher(engine="classic")
    assert isinstance(m.head("segment"), CellMatchHead)
    calls = []
    real = CellMatchHead.fit_scale
    monkeypatch.setattr(CellMatchHead, "fit_scale", lambda self, *a: calls.append(1) or real(self, *a))
    tiled, summary = segment_large(img, m, tile=256)
    assert summary.tiles > 1 and len(calls) == 1
    assert _f1(m.segment(img).labels, tiled) >= 0.95
