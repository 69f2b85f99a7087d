"""LDM engine end to end on a tiny random-weight pipeline loaded with from_pretrained."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mm_core.engines.base import Engine, MatchMaps
from mm_core.engines.ldm import LDMEngine
from mm_core.engines.ldm.maps import estimate_scale, rgb01
from mm_core.transforms.tiles import tile_starts
from mm_core.engines.ldm.testing import TINY_SIZE, tiny_pipeline_dir
from mm_core.errors import InputError

BOXES = [[10, 12, 40, 44], [60, 50, 95, 80]]


@pytest.fixture(scope="module")
def engine():
    return LDMEngine.from_pretrained(tiny_pipeline_dir(), device="cpu", dtype=torch.float32, size=TINY_SIZE)


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:100, 0:120]
    img = 0.2 * rng.random((100, 120))
    for cy, cx in [(25, 25), (65, 78), (30, 90), (75, 30)]:
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < 100] += 0.8
    return img.astype(np.float32)


def _check(m: MatchMaps, mode: str, shape):
    assert isinstance(m, MatchMaps) and m.engine == "ldm" and m.mode == mode
    assert m.image_shape == shape
    for arr in (m.foreground, m.centers, m.display["cross_attention"], m.display["self_cross"]):
        assert arr.shape == (16, 16) and arr.dtype == np.float32
        assert np.isfinite(arr).all() and arr.min() >= 0 and arr.max() <= 1 and arr.max() > 0
    assert m.features.ndim == 3 and m.features.shape[1:] == (16, 16) and np.isfinite(m.features).all()
    assert np.isfinite(m.scale) and m.scale > 0
    assert m.at_input().shape == shape and m.at_input("self_cross").shape == shape


def test_automatic_mode(engine, image):
    assert isinstance(engine, Engine) and engine.name == "ldm"
    m = engine.match(image)
    _check(m, "automatic", (100, 120))
    assert m.conditioning == 'text template "repetitive objects"'
    assert m.info["conditioning_kind"] == "text" and m.info["timestep"] == 20


def test_exemplar_mode_without_trained_projector(engine, image):
    m = engine.match(image, BOXES)
    _check(m, "exemplar", (100, 120))
    assert m.info["conditioning_kind"] == "self-attention"
    assert "projector not trained" in m.conditioning and "2 box(es)" in m.conditioning
    auto = engine.match(image)
    assert not np.allclose(m.foreground, auto.foreground)


def test_untrained_exemplar_is_box_self_attention(engine, image):
    engine.sharpen = False
    try:
        m = engine.match(image, [BOXES[0]])
        sa = engine.store.self_attention()[0].numpy()
    finally:
        engine.sharpen = True
    # latent pixels (16x16 grid over a 128 square) whose centres fall inside the box
    fy, fx = TINY_SIZE / 100, TINY_SIZE / 120
    x0, y0, x1, y1 = np.array(BOXES[0]) * [fx, fy, fx, fy]
    c = (np.arange(16) + 0.5) * 8
    inside = (((c >= y0) & (c < y1))[:, None] & ((c >= x0) & (c < x1))[None]).ravel()
    query = sa[inside].mean(0)
    expect_cross = (query - query.min()) / (query.max() - query.min())
    np.testing.assert_allclose(m.display["cross_attention"].ravel(), expect_cross, atol=1e-5)
    sc = query @ sa
    np.testing.assert_allclose(m.foreground.ravel(), (sc - sc.min()) / (sc.max() - sc.min()), atol=1e-5)


def test_seeded_runs_are_identical(engine, image):
    a = engine.match(image, BOXES)
    b = engine.match(image, BOXES)
    np.testing.assert_array_equal(a.foreground, b.foreground)
    np.testing.assert_array_equal(a.features, b.features)
    engine.seed = 1
    try:
        c = engine.match(image, BOXES)
    finally:
        engine.seed = 0
    assert not np.array_equal(a.features, c.features)


def test_grey_is_replicated_rgb(engine, image):
    a = engine.match(image)
    b = engine.match(np.repeat(image[..., None], 3, axis=-1))
    np.testing.assert_allclose(a.foreground, b.foreground, atol=1e-6)
    np.testing.assert_array_equal(rgb01(image[..., None]), rgb01(image))
    two = rgb01(np.stack([image, 2 * image], -1))
    assert two.shape == (100, 120, 3) and two.max() <= 1 and not two[..., 2].any()


def test_per_object_maps_in_one_pass(engine, image):
    calls = []
    handle = engine.c.unet.register_forward_hook(lambda *a: calls.append(1))
    try:
        m = engine.match_objects(image, BOXES + [[80, 10, 110, 40]])
    finally:
        handle.remove()
    assert len(calls) == 1
    maps = m.info["object_maps"]
    assert maps.shape == (3, 16, 16) and maps.min() >= 0 and maps.max() <= 1
    top = maps.max(0)
    np.testing.assert_allclose(m.foreground, (top - top.min()) / (top.max() - top.min()), atol=1e-6)


def test_boxes_outside_are_refused_and_partial_clipped(engine, image):
    with pytest.raises(InputError, match="outside"):
        engine.match(image, [[200, 200, 260, 240]])
    m = engine.match(image, [[-20, -10, 30, 30]])
    assert m.mode == "exemplar" and np.isfinite(m.foreground).all()


def test_tiled_inference_blends_tiles(image):
    eng = LDMEngine.from_pretrained(tiny_pipeline_dir(), device="cpu", dtype=torch.float32, size=64,
                                    tile=True, tile_overlap=8, tile_scale=1.0)
    assert tile_starts(120, 64, 16, align=8) == [0, 32, 56] and tile_starts(104, 64, 16, align=8) == [0, 40]
    assert tile_starts(120, 64, 8, align=8) == [0, 56] and tile_starts(64, 64, 8) == [0]
    m = eng.match(image)
    assert m.info["tiles"] == 4
    assert m.foreground.shape == (13, 15) and m.features.shape[1:] == (13, 15)
    assert m.foreground.min() >= 0 and m.foreground.max() == 1 and np.isfinite(m.scale)
    ex = eng.match(image, BOXES)
    assert ex.info["tiles"] == 4 and ex.info["conditioning_kind"] == "self-attention"
    assert np.isfinite(ex.foreground).all() and ex.foreground.max() == 1


def test_scale_from_self_attention_of_disks():
    """Pixels attending uniformly to their own disk: the estimated diameter is the disk's."""
    h = w = 48
    yy, xx = np.mgrid[0:h, 0:w]
    labels = np.zeros((h, w), int)
    d = 10.0
    for i, (cy, cx) in enumerate([(10, 10), (10, 35), (35, 12), (34, 36)], 1):
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 < (d / 2) ** 2] = i
    flat = labels.ravel()
    s = (flat[:, None] == flat[None, :]).astype(np.float32)
    s[flat == 0] = 1.0 / (h * w)
    s /= s.sum(1, keepdims=True)
    got = estimate_scale(s, (h, w), (labels > 0).astype(np.float32), input_per_latent=8.0, radius=12)
    assert abs(got / (d * 8.0) - 1) < 0.2
