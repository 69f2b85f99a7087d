"""Shared transforms: normalisation, map resizing, exemplar boxes."""

import numpy as np
import pytest

from mm_core.errors import InputError, InputWarning
from mm_core.transforms import normalize, prepare_boxes, resize_map, scale_boxes, to_gray


def test_normalize_maps_percentiles_to_0_and_1():
    rng = np.random.default_rng(0)
    img = rng.uniform(100, 200, size=(64, 64)).astype(np.uint16)
    out = normalize(img, 1, 99.8)
    assert out.dtype == np.float32
    lo, hi = np.percentile(img, [1, 99.8])
    np.testing.assert_allclose(out, (img - lo) / (hi - lo), rtol=1e-5, atol=1e-5)


def test_normalize_is_per_channel():
    img = np.stack([np.linspace(0, 1, 100).reshape(10, 10), np.linspace(0, 1000, 100).reshape(10, 10)], -1)
    out = normalize(img, 0, 100)
    np.testing.assert_allclose(out[..., 0], out[..., 1], atol=1e-6)
    assert out.min() == pytest.approx(0) and out.max() == pytest.approx(1)


@pytest.mark.parametrize("value", [0, 7, 65535])
def test_normalize_constant_image_gives_zeros_not_nan(value):
    out = normalize(np.full((16, 16), value, np.uint16))
    assert np.isfinite(out).all() and (out == 0).all()


def test_normalize_ignores_nan():
    img = np.arange(100, dtype=np.float32).reshape(10, 10)
    img[0, 0] = np.nan
    out = normalize(img)
    assert np.isfinite(out).all() and out[0, 0] == 0


def test_normalize_rejects_bad_arguments():
    with pytest.raises(InputError):
        normalize(np.zeros((4, 4)), 50, 10)
    with pytest.raises(InputError, match="shape"):
        normalize(np.zeros((2, 3, 4, 5)))


def test_to_gray_and_resize_map():
    rgb = np.ones((8, 8, 3), np.float32) * np.array([0, 0.5, 1], np.float32)
    assert to_gray(rgb).shape == (8, 8) and np.allclose(to_gray(rgb), 0.5)
    m = np.zeros((4, 4), np.float32)
    m[1:3, 1:3] = 1
    big = resize_map(m, (16, 16))
    assert big.shape == (16, 16) and 0 <= big.min() and big.max() <= 1 and big[8, 8] == 1
    assert resize_map(np.zeros((3, 4, 4)), (8, 6)).shape == (3, 8, 6)


def test_prepare_boxes_clips_and_orders():
    with pytest.warns(InputWarning, match="swapped"):
        out = prepare_boxes([[-5, 10, 20, 30], [40, 50, 30, 45]], (48, 64))
    np.testing.assert_allclose(out, [[0, 10, 20, 30], [30, 45, 40, 48]])
    assert prepare_boxes(None, (10, 10)) is None and prepare_boxes([], (10, 10)) is None
    assert prepare_boxes([1, 1, 5, 5], (10, 10)).shape == (1, 4)


@pytest.mark.parametrize("box, msg", [
    ([100, 100, 120, 120], "outside"),
    ([5, 5, 5, 9], "empty"),
    ([-10, -10, 0.5, 0.5], "outside|empty"),
    ([1, 2, 3], "x0, y0, x1, y1"),
    ([1, np.nan, 3, 4], "non-numeric"),
])
def test_prepare_boxes_refuses_bad_boxes(box, msg):
    with pytest.raises(InputError, match=msg):
        prepare_boxes(box, (64, 64))


def test_scale_boxes():
    np.testing.assert_allclose(scale_boxes(np.array([[2, 4, 6, 8]]), (0.5, 2.0)), [[4, 2, 12, 4]])


def test_box_diameters_count_objects_the_edge_cuts_whole():
    from mm_core.transforms import box_diameters, boxes_cut_by_edge

    boxes = np.array([[30, 30, 50, 70],  # inside: sqrt(20 * 40)
                      [0, 10, 20, 50],  # on the left edge: 20 wide, 40 tall -> a 40-wide object
                      [80, 0, 100, 10],  # on the top-right corner: a square on the longer side
                      [10, 90, 70, 100]])  # on the bottom edge, wider than tall
    assert boxes_cut_by_edge(boxes, (100, 100)).tolist() == [[False, False], [True, False], [True, True],
                                                              [False, True]]
    np.testing.assert_allclose(box_diameters(boxes, (100, 100)), [np.sqrt(800), 40, 20, 60])
    np.testing.assert_allclose(box_diameters(boxes[:1], (100, 100)), [np.sqrt(800)])
