"""Issue 23 app helpers without a server: zoomed view and its box mapping, results shrunk for
display, the run's own time-left estimate, which file is loaded now."""

from __future__ import annotations

import numpy as np
import pandas as pd
import tifffile

from mm_core.app import helpers as au
from mm_core.app import zoom
from mm_core.app.current import CurrentFiles, identity
from mm_core.app.display import Estimate


def _gradient_upload(tmp_path, h=3000, w=4000):
    """An image whose every pixel says where it is: value = 4000 * row + column (float32 TIFF)."""
    yy, xx = np.mgrid[:h, :w]
    path = tmp_path / "big.tif"
    tifffile.imwrite(path, (4000.0 * yy + xx).astype(np.float32))
    return au.load_upload(path, False, tmp_path, max_pixels=h * w)


def test_window_stays_inside_and_has_a_zoomed_size():
    assert zoom.window((3000, 4000), 1, 0.5, 0.5) == (0, 0, 4000, 3000)
    x0, y0, x1, y1 = zoom.window((3000, 4000), 4, 0.5, 0.5)
    assert (x1 - x0, y1 - y0) == (1000, 750) and (x0, y0) == (1500, 1125)
    assert zoom.window((3000, 4000), 8, 1.0, 0.0) == (3500, 0, 4000, 375)  # pushed inside at an edge


def test_boxes_drawn_on_the_zoomed_view_map_back_to_full_image_pixels(tmp_path):
    loaded = _gradient_upload(tmp_path)
    assert loaded.preview_scale < 0.3  # the whole 4000 px image shown 1024 px wide: objects too small
    view = zoom.zoomed(loaded, 8, 0.3, 0.6)
    x0, y0, x1, y1 = view.info["view_window"]
    assert (x1 - x0, y1 - y0) == (500, 375) and view.folder == loaded.folder  # same file (same identity)
    assert view.preview_scale > 2  # the window fills the annotator: 8x larger on screen
    # a box drawn on the view (inclusive corners, view pixels) ...
    u0, v0, u1, v1 = 100, 80, 140, 130
    boxes = zoom.boxes_in_image((view.preview, [(u0, v0, u1, v1, "exemplar")]), view)
    s = view.preview_scale
    expected = [x0 + u0 / s, y0 + v0 / s, x0 + (u1 + 1) / s, y0 + (v1 + 1) / s]
    np.testing.assert_allclose(boxes[0], expected, atol=1e-3)
    # ... covers the same image pixels: the pixel values there say where they are
    frame = loaded.frames[0]
    bx0, by0 = int(boxes[0][0]), int(boxes[0][1])
    assert frame[by0, bx0] == 4000.0 * by0 + bx0
    assert x0 <= boxes[0][0] < boxes[0][2] <= x1 and y0 <= boxes[0][1] < boxes[0][3] <= y1
    # back to the whole image: no offset
    whole = zoom.zoomed(view, 1, 0.5, 0.5)
    np.testing.assert_allclose(zoom.boxes_in_image((whole.preview, [(10, 10, 19, 19, "exemplar")]), whole)[0],
                               np.array([10, 10, 20, 20]) / whole.preview_scale, atol=1e-3)
    assert "Showing x" in zoom.view_line(view) and zoom.view_line(whole) == "Showing the whole image."


def test_shrink_keeps_the_count_and_moves_centres():
    from types import SimpleNamespace

    density = np.zeros((5000, 4000), np.float32)
    density[1000, 2000] = 1.0
    density[4000:4002, 100:102] = 0.5
    points = pd.DataFrame({"x": [2000.0, 100.5], "y": [1000.0, 4000.5], "n": [1, 2]})
    res = SimpleNamespace(density=density, points=points, maps=None, labels=None)
    import dataclasses

    @dataclasses.dataclass
    class R:
        density: np.ndarray
        points: pd.DataFrame
        maps: object = None

    k = zoom.step(density.shape)
    assert k == 3 and res.density is density
    small, display, boxes = zoom.shrink(R(density, points), np.zeros((1667, 1334), np.uint8),
                                        np.array([[30, 30, 60, 60]], np.float32), k)
    assert max(small.density.shape) <= zoom.DISPLAY_SIDE and abs(small.density.sum() - 3.0) < 1e-4
    assert small.density.shape == display.shape
    np.testing.assert_allclose(small.points[["x", "y"]].to_numpy()[0], [2000 / 3, 1000 / 3])
    np.testing.assert_allclose(boxes, [[10, 10, 20, 20]])


def test_time_left_is_measured_on_the_run_itself():
    seen, now = [], [0.0]
    est = Estimate(lambda f, desc="": seen.append((f, desc)), clock=lambda: now[0])
    now[0] = 5.0
    est(0.05, "tile 1/20")
    assert "about" not in seen[-1][1]  # too early to say
    now[0] = 25.0
    est(0.5, "tile 10/20")
    assert seen[-1] == (0.5, "tile 10/20 · 25 s, about 25 s left")
    est(0.6, "post-processing")
    assert seen[-1][1] == "post-processing · 25 s"  # no step count: no guess
    est(0.2, "back?")  # never goes back, never past 1
    est(7, "done")
    assert [f for f, _ in seen[-2:]] == [0.6, 1.0]


def test_current_files_tell_a_late_result_apart():
    cur = CurrentFiles()
    a, b = type("L", (), {"folder": "/x/a"})(), type("L", (), {"folder": "/x/b"})()
    assert identity(a) != identity(b) and "/x" not in identity(a)  # a token, not a server path
    assert cur.is_current("s", "seg", a)  # nothing known: show it
    cur.set("s", "seg", a)
    assert cur.is_current("s", "seg", a)
    cur.let_go("s", "seg", identity(a))  # another file is being chosen in place of a
    assert not cur.is_current("s", "seg", a)
    cur.set("s", "seg", b)
    cur.let_go("s", "seg", identity(a))  # the notice came after b was read: b stays
    assert cur.is_current("s", "seg", b)
    cur.let_go("s", "seg", "")  # a notice from a page that showed no file: b stays
    assert not cur.is_current("s", "seg", a) and cur.is_current("s", "seg", b)
    assert cur.is_current("other", "seg", a) and cur.is_current(None, "seg", a)
    cur.drop_session("s")
    assert cur.is_current("s", "seg", a)
