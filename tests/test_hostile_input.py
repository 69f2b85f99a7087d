"""Issue 13: no silent data loss, limits per request, safe writes, one CLI exit-code rule."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

import mm_core
from mm_core.errors import InputError


def _channels(n=5, shape=(48, 40), seed=0):
    """(H, W, n) uint16 with a different bright square in each channel."""
    rng = np.random.default_rng(seed)
    arr = rng.integers(10, 50, (*shape, n)).astype(np.uint16)
    for c in range(n):
        arr[4 + 8 * c: 10 + 8 * c, 5:15, c] = 4000
    return arr


# --------------------------------------------------------------------------- (2) channels
@pytest.mark.parametrize("extra", [0, 1, 2], ids=["unspecified", "assocalpha", "unassalpha"])
def test_every_contiguous_channel_reaches_the_composite(tmp_path, extra):
    arr = _channels()
    p = tmp_path / "five.tif"
    tifffile.imwrite(p, arr, photometric="minisblack", planarconfig="contig", extrasamples=[extra] * 4)
    img = mm_core.read_image(p)
    assert img.n_channels == 5 and "alpha_dropped" not in img.info
    assert img.data.ndim == 2 and "5" in img.info["composite"]
    for c in range(5):  # each channel's square is visible in the composite
        assert img.data[4 + 8 * c: 10 + 8 * c, 5:15].mean() > 3 * img.data[:, 20:].mean()
    for c in range(5):  # and each one can be picked
        picked = mm_core.read_image(p, channels=[c]).data
        np.testing.assert_array_equal(picked, arr[..., c].astype(np.float32))


@pytest.mark.parametrize("extra", [0, 1, 2], ids=["unspecified", "assocalpha", "unassalpha"])
def test_rgb_plus_extra_sample(tmp_path, extra):
    arr = _channels(4)
    p = tmp_path / "rgbx.tif"
    tifffile.imwrite(p, arr, photometric="rgb", extrasamples=[extra])
    img = mm_core.read_image(p)
    if extra == 0:  # "unspecified" is data: 4 channels, composited, the 4th can be picked
        assert img.n_channels == 4 and img.data.ndim == 2
        np.testing.assert_array_equal(mm_core.read_image(p, channels=3).data, arr[..., 3])
    else:  # a real alpha channel is dropped, as documented
        assert img.n_channels == 3 and img.data.shape == (48, 40, 3) and img.info["alpha_dropped"]


# --------------------------------------------------------------------------- (3) box cap, (8) API values
def _image(shape=(64, 64), seed=0):
    return np.random.default_rng(seed).random(shape).astype(np.float32)


def test_at_most_64_boxes_by_default(monkeypatch):
    from mm_core.transforms import prepare_boxes

    img = _image()
    boxes = [[i % 50, i // 50 * 5, i % 50 + 6, i // 50 * 5 + 6] for i in range(65)]
    with pytest.raises(InputError, match=r"65 exemplar boxes.*at most 64.*MM_MAX_BOXES"):
        mm_core.segment(img, boxes=boxes, engine="classic")
    with pytest.raises(InputError, match="at most 64"):
        mm_core.count(img, boxes=boxes, engine="classic")
    with pytest.raises(InputError, match="at most 64"):
        mm_core.track([img, img], boxes=boxes, engine="classic")
    assert len(prepare_boxes(boxes[:64], img.shape, max_boxes=64)) == 64
    monkeypatch.setenv("MM_MAX_BOXES", "2")
    with pytest.raises(InputError, match="3 exemplar boxes.*at most 2"):
        mm_core.segment(img, boxes=boxes[:3], engine="classic")
    monkeypatch.setenv("MM_MAX_BOXES", "many")
    with pytest.raises(InputError, match="MM_MAX_BOXES"):
        mm_core.segment(img, boxes=boxes[:3], engine="classic")


@pytest.mark.parametrize("boxes", ["abc", b"12", 7, {"a": 1}, object(), [[1, 2, 3, 4], [1, 2]],
                                   [["a", "b", "c", "d"]], [[1j, 0, 5, 5]], [[1, 2, 3]]])
def test_bad_boxes_raise_input_error(boxes):
    with pytest.raises(InputError, match="exemplar box"):
        mm_core.segment(_image(), boxes=boxes, engine="classic")


@pytest.mark.parametrize("engine", [3, None, object(), "bogus"])
def test_bad_engine_raises_input_error(engine):
    with pytest.raises(InputError, match="engine"):
        mm_core.count(_image(), engine=engine)


@pytest.mark.parametrize("head", ["bogus", 3, ["x"]])
def test_bad_head_raises_input_error(head):
    with pytest.raises(InputError):
        mm_core.segment(_image(), engine="classic", head=head)


@pytest.mark.parametrize("channels", ["abc", 1.5, object(), [object()], {"a": 1}, -1, 5, [], True])
def test_bad_channels_raise_input_error(tmp_path, channels):
    p = tmp_path / "x.tif"
    tifffile.imwrite(p, (_image() * 1000).astype(np.uint16))
    with pytest.raises(InputError, match="channel"):
        mm_core.read_image(p, channels=channels)


def test_box_warnings():
    from mm_core.errors import InputWarning
    from mm_core.transforms import prepare_boxes

    with pytest.warns(InputWarning, match="swapped"):
        out = prepare_boxes([[30, 30, 10, 10]], (64, 64))
    np.testing.assert_array_equal(out, [[10, 10, 30, 30]])
    with pytest.warns(InputWarning, match="covers 100% of the 64x64 image"):
        prepare_boxes([[0, 0, 64, 64]], (64, 64))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        prepare_boxes([[10, 10, 30, 30]], (64, 64))
