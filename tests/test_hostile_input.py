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
