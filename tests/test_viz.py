"""Pictures of results (mm_core.viz): shapes, colours where they must be, files that open."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from skimage.measure import regionprops

from mm_core import viz
from mm_core.viz import tracks as viz_tracks
from mm_core.engines.base import MatchMaps


def _labels():
    lab = np.zeros((40, 50), np.int32)
    lab[5:15, 5:15] = 1
    lab[20:30, 25:45] = 7
    return lab


def test_to_rgb8_gray_rgb_uint8_and_clipping():
    g = np.array([[-1.0, 0.0], [0.5, 2.0]], np.float32)
    out = viz.to_rgb8(g)
    assert out.shape == (2, 2, 3) and out.dtype == np.uint8
    assert out[0, 0, 0] == 0 and out[0, 1, 0] == 0 and out[1, 1, 0] == 255 and out[1, 0, 0] == 128
    assert (out[..., 0] == out[..., 2]).all()
    rgb = np.zeros((3, 3, 3), np.uint8)
    rgb[..., 1] = 9
    assert (viz.to_rgb8(rgb) == rgb).all()
    assert viz.to_rgb8(np.full((2, 2), np.nan))[0, 0, 0] == 0
    with pytest.raises(ValueError):
        viz.to_rgb8(np.zeros((2, 2, 5)))


def test_label_colors_distinct_and_stable_ids():
    cols = viz.label_colors(50)
    assert cols.shape == (50, 3) and len({tuple(c) for c in cols}) == 50
    a = viz.colors_for_ids(np.array([3, 8, 3]))
    assert (a[0] == a[2]).all() and not (a[0] == a[1]).all()


def test_overlay_labels_blends_fill_and_draws_outlines():
    img = np.full((40, 50), 0.5, np.float32)
    lab = _labels()
    lut = np.zeros((8, 3), np.uint8)
    lut[1] = (255, 0, 0)
    lut[7] = (0, 0, 255)
    out = viz.overlay_labels(img, lab, opacity=0.5, colors=lut)
    assert out.shape == (40, 50, 3)
    assert (out[0, 0] == 128).all()  # background untouched
    assert tuple(out[10, 10]) == (192, 64, 64)  # 0.5 * 128 + 0.5 * (255, 0, 0), rounded
    assert tuple(out[5, 10]) == (255, 0, 0)  # inner boundary at full colour
    no_fill = viz.overlay_labels(img, lab, opacity=0.0, colors=lut)
    assert tuple(no_fill[10, 10]) == (128, 128, 128) and tuple(no_fill[20, 30]) == (0, 0, 255)
    flat = viz.overlay_labels(img, lab, opacity=1.0, outline=False, colors=lut)
    assert tuple(flat[25, 30]) == (0, 0, 255)
    with pytest.raises(ValueError):
        viz.overlay_labels(img, lab[:10])


def test_heat_colors_endpoints_and_monotone_brightness():
    ramp = viz.heat_colors(np.linspace(0, 1, 11))
    assert tuple(ramp[0]) == (0, 0, 4) and tuple(ramp[-1]) == (252, 255, 164)
    assert (np.diff(ramp.astype(int).sum(axis=1)) > 0).all()
    assert tuple(viz.heat_colors(np.array([5.0]))[0]) == (252, 255, 164)


def test_overlay_heatmap_keeps_image_where_map_is_zero():
    img = np.full((20, 20), 0.25, np.float32)
    dens = np.zeros((20, 20), np.float32)
    dens[10, 10] = 3.0
    out = viz.overlay_heatmap(img, dens, opacity=1.0)
    assert tuple(out[0, 0]) == (64, 64, 64)
    assert tuple(out[10, 10]) == (252, 255, 164)
    assert (viz.overlay_heatmap(img, np.zeros_like(dens)) == viz.to_rgb8(img)).all()


def test_scale_unit():
    v = viz.scale_unit(np.array([0.0, 1.0, 2.0, 4.0]), high_percentile=100)
    np.testing.assert_allclose(v, [0, 0.25, 0.5, 1.0])
    assert (viz.scale_unit(np.zeros(4)) == 0).all()


def test_draw_points_and_boxes():
    rgb = np.zeros((30, 30, 3), np.uint8)
    out = viz.draw_points(rgb, [10], [20], radius=2, color=(1, 2, 3), border=None)
    assert tuple(out[10, 20]) == (1, 2, 3) and tuple(out[10, 10]) == (0, 0, 0)
    assert (rgb == 0).all()  # input not modified
    out = viz.draw_boxes(rgb, [[5, 6, 15, 16]], color=(9, 9, 9), width=1)
    assert tuple(out[6, 5]) == (9, 9, 9) and tuple(out[15, 14]) == (9, 9, 9)  # x1/y1 exclusive
    assert tuple(out[10, 10]) == (0, 0, 0) and tuple(out[16, 15]) == (0, 0, 0)
    assert (viz.draw_boxes(rgb, None) == rgb).all()
    # A box partly outside is clipped, not an error.
    assert viz.draw_boxes(rgb, [[-5, -5, 3, 3]])[0, 0].any()


def test_track_centroids_match_regionprops():
    masks = np.zeros((3, 30, 30), np.int32)
    masks[0, 2:6, 2:6] = 4
    masks[1, 4:8, 5:9] = 4
    masks[2, 10:14, 10:16] = 9
    paths = viz_tracks.track_centroids(masks)
    assert set(paths) == {4, 9}
    for t in (0, 1):
        ref = regionprops(masks[t])[0].centroid
        row = paths[4][paths[4][:, 0] == t][0]
        np.testing.assert_allclose(row[1:], ref, atol=1e-5)
    assert paths[9].shape == (1, 3)


def test_render_track_frame_colours_by_id_and_draws_tail():
    img = np.zeros((40, 40), np.float32)
    masks = np.zeros((3, 40, 40), np.int32)
    for t in range(3):
        masks[t, 5 + 10 * t : 9 + 10 * t, 5:9] = 3
    frames = viz_tracks.render_tracks([img] * 3, masks, tail=5, opacity=1.0)
    col = viz.colors_for_ids(np.array([3]))[0]
    assert all(tuple(f[7 + 10 * t, 7]) == tuple(col) for t, f in enumerate(frames))
    # The tail joins the centroids of frames 0..2: a pixel between them is coloured in frame 2 only.
    assert frames[2][12, 6].any() and not frames[0][12, 6].any()


def test_write_animation_gif(tmp_path):
    frames = [np.full((20, 30, 3), v, np.uint8) for v in (0, 100, 200)]
    path = viz.write_animation(tmp_path / "a.gif", frames, fps=5)
    with Image.open(path) as im:
        assert im.format == "GIF" and im.n_frames == 3 and im.size == (30, 20)
        assert im.info.get("loop") == 0 and im.info.get("duration") == 200
    big = [np.zeros((100, 2000), np.float32)] * 2
    with Image.open(viz.write_animation(tmp_path / "b.gif", big, max_side=500)) as im:
        assert im.size == (500, 25)
    with pytest.raises(ValueError):
        viz.write_animation(tmp_path / "c.gif", [])


def test_match_map_prefers_display_map():
    fg = np.zeros((8, 8), np.float32)
    fg[2:4, 2:4] = 1
    maps = MatchMaps(
        foreground=fg,
        centers=fg,
        scale=4.0,
        image_shape=(16, 16),
        engine="classic",
        mode="automatic",
        conditioning="",
        display={"self-cross": fg.T.copy()},
    )
    vals, name = viz.match_map(maps)
    assert name == "self-cross" and vals.shape == (16, 16)
    vals, name = viz.match_map(maps, "foreground")
    assert name == "foreground" and vals[5, 5] > 0.5 and vals[14, 14] == 0
    maps.display = {}
    assert viz.match_map(maps)[1] == "foreground"
    img = viz.match_map_image(np.zeros((16, 16), np.float32), maps)
    assert img.shape == (16, 16, 3) and img[5, 5].any() and not img[14, 14].any()


def test_upscale_nearest():
    small = np.arange(12, dtype=np.uint8).reshape(2, 2, 3)
    big = viz.upscale_nearest(small, min_side=5)
    assert (
        big.shape == (6, 6, 3) and (big[:3, :3] == small[0, 0]).all() and (big[3:, 3:] == small[1, 1]).all()
    )
    same = np.zeros((400, 100, 3), np.uint8)
    assert viz.upscale_nearest(same, 384) is same


def test_display_image_joint_stretch_keeps_colour_balance():
    rng = np.random.default_rng(0)
    rgb = np.zeros((50, 50, 3), np.float32)
    rgb[..., 2] = rng.uniform(100, 200, (50, 50))
    rgb[..., 0] = rng.uniform(0, 2, (50, 50))  # nearly empty channel
    out = viz.display_image(rgb)
    assert out.min() >= 0 and out.max() <= 1
    assert out[..., 0].max() < 0.05 and out[..., 2].mean() > 0.4  # red stays dark
    assert (viz.display_image(np.full((4, 4), 7.0)) == 0).all()


def test_track_numbers_trails_and_division_rings():
    import pandas as pd

    img = np.zeros((48, 48), np.float32)
    masks = np.zeros((4, 48, 48), np.int32)
    masks[:2, 20:28, 20:28] = 1
    masks[2:, 10:16, 20:26], masks[2:, 32:38, 20:26] = 2, 3  # 1 divides into 2 and 3 at frame 2
    tracks = pd.DataFrame([(1, 0, 1, 0), (2, 2, 3, 1), (3, 2, 3, 1)], columns=["label", "begin", "end", "parent"])
    plain = viz_tracks.render_tracks([img] * 4, masks, tracks=tracks, min_side=96)
    numbered = viz_tracks.render_tracks([img] * 4, masks, tracks=tracks, numbers=True, min_side=96)
    assert plain[0].shape == (96, 96, 3)  # enlarged twice before drawing
    white = [(f >= 200).all(axis=-1) for f in numbered]  # white digits (anti-aliased), black edge
    assert white[0][40:56, 40:56].sum() >= 4 and not (plain[0] >= 200).all(axis=-1)[40:56, 40:56].any()
    # frame 2: white rings around the new daughters, in the plain rendering too
    assert (plain[2] >= 250).all(axis=-1).sum() > 20 and not (plain[0] >= 250).all(axis=-1).any()
    # the daughters' trails start at the parent's last position (between the daughters)
    assert plain[2][44:52, 44:52].any()
